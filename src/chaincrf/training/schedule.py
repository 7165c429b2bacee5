"""Optimisation: the optimiser and scheduler a :class:`~chaincrf.network.config.TaggerConfig`
names, as Lightning's ``configure_optimizers`` returns them, and the learning-rate schedules the
configs name (``conf/scheduler/``) that torch lacks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from chaincrf.spec import build_from_spec

__all__ = ["InverseTimeDecay", "configure_optimizers"]


def configure_optimizers(model: nn.Module, config: Any, trainer: Any = None) -> Any:
    """The optimiser (and scheduler) of ``config`` over ``model``'s parameters.

    The word table (the per-word correction with ``word_adapter``) gets its own parameter group
    with the learning rate scaled by ``config.word_lr_scale``. A fused optimiser under mixed
    precision with gradient clipping runs unfused (Lightning cannot clip what it unscales itself;
    the updates are the same). A plateau scheduler watches ``config.monitor`` and, when the dev
    set is evaluated every N steps, steps after each evaluation.

    Args:
        model: the :class:`~chaincrf.network.model.TaggerModel`.
        config: the :class:`~chaincrf.network.config.TaggerConfig`.
        trainer: the Lightning trainer, or None outside one.

    Returns:
        The optimiser, or ``{"optimizer": ..., "lr_scheduler": {...}}``.
    """
    spec = config.optimizer
    if (
        trainer is not None
        and str(trainer.precision).endswith("-mixed")
        and trainer.gradient_clip_val
        and isinstance(spec, Mapping)
        and spec.get("fused")
    ):
        spec = {**spec, "fused": False}
    embedder = getattr(model, "embedder", None)
    word = getattr(embedder, "word_residual", None) or getattr(embedder, "word_embedding", None)
    if config.word_lr_scale == 1.0 or word is None:
        optimizer = build_from_spec(spec, "optimizer", model.parameters())
    else:
        rest = [p for p in model.parameters() if p is not word.weight]
        groups = [{"params": rest}, {"params": [word.weight]}]
        optimizer = build_from_spec(spec, "optimizer", groups)
        optimizer.param_groups[1]["lr"] *= config.word_lr_scale  # before a scheduler reads it
    if config.scheduler is None:
        return optimizer
    scheduler = build_from_spec(config.scheduler, "scheduler", optimizer)
    schedule: dict[str, Any] = {"scheduler": scheduler, "interval": config.scheduler_interval}
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        schedule["monitor"] = config.monitor
        schedule["strict"] = False  # epochs without validation (overfit, val every n) just skip
        if trainer is not None and trainer.check_val_every_n_epoch is None:
            # dev evaluated every N steps (budget.eval_every): step the plateau after each
            schedule.update(interval="step", frequency=int(trainer.val_check_interval))
    return {"optimizer": optimizer, "lr_scheduler": schedule}


class InverseTimeDecay(torch.optim.lr_scheduler.LRScheduler):
    """``lr = base_lr / (1 + decay * step)``, the schedule of Ma & Hovy 2016 (decay 0.05 per epoch).

    Args:
        optimizer: the wrapped optimiser.
        decay: the decay rate ``rho`` (>= 0).
        last_epoch: index of the last step, -1 to start afresh.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, decay: float = 0.05, last_epoch: int = -1):
        if not decay >= 0:
            raise ValueError(f"decay must be >= 0; got {decay!r}")
        self.decay = float(decay)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        return [base / (1.0 + self.decay * self.last_epoch) for base in self.base_lrs]
