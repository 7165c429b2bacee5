"""How long a training run is and how large its steps are: ``cfg.budget`` (optimiser steps
instead of epochs, the floor for small corpora) and ``cfg.batch_scale`` / ``cfg.epoch_scale``
(a recipe's batch and epochs scaled, as ``trainer=gpu`` does). See ``conf/train.yaml``."""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf

__all__ = ["apply_batch_scale", "budget_arguments"]

log = logging.getLogger("chaincrf.train")


def budget_arguments(cfg: DictConfig, datamodule: Any) -> dict[str, Any]:
    """Trainer arguments for ``cfg.budget`` (steps instead of epochs; see conf/train.yaml)."""
    budget = cfg.get("budget") or {}
    steps, every = budget.get("steps"), budget.get("eval_every")
    floor, floor_every = budget.get("min_steps"), budget.get("min_eval_every")
    arguments: dict[str, Any] = {}
    for key in ("steps", "eval_every", "min_steps", "min_eval_every"):
        name, value = f"budget.{key}", budget.get(key)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive integer or null; got {value!r}")
    per_epoch = len(datamodule.train_dataloader()) if steps or every or floor else 0
    epochs = cfg.trainer.get("max_epochs")
    debugging = bool(cfg.trainer.get("fast_dev_run") or cfg.trainer.get("overfit_batches")) or (
        cfg.trainer.get("limit_train_batches") not in (None, 1.0)
    )
    if steps is None and floor and epochs and epochs * per_epoch < floor and not debugging:
        # a corpus too small for the recipe's epochs: train by steps (budget.min_steps), with dev
        # evaluations, early stopping and the plateau scheduler counted in budget.min_eval_every
        # steps, within budget.max_time unless trainer.max_time is set
        if not every and floor_every and floor_every > per_epoch:
            every = min(floor_every, floor)
        log.warning(
            "a small training set: %s epochs of %s batches are %s optimiser steps; training for "
            "budget.min_steps=%s steps instead, dev every %s steps (budget.min_steps=null: epochs)",
            epochs, per_epoch, epochs * per_epoch, floor, every or per_epoch,
        )  # fmt: skip
        steps = floor
        arguments["max_epochs"] = -1
        if cfg.trainer.get("max_time") is None and budget.get("max_time"):
            arguments["max_time"] = budget["max_time"]
    if steps and every and every > steps:
        raise ValueError(f"budget.eval_every={every} exceeds the budget of {steps} steps: no dev "
                         "evaluation would run")  # fmt: skip
    if steps is not None:
        arguments["max_steps"] = steps
    if every is not None:
        # dev evaluations every `every` steps, across epoch ends (Lightning's iteration-based
        # validation); the plateau scheduler follows them (SequenceTagger.configure_optimizers)
        arguments.update(val_check_interval=every, check_val_every_n_epoch=None)
    if arguments:
        log.info("budget: %s optimiser steps (%s batches per epoch), dev every %s steps",
                 steps or "no limit on", per_epoch, every or per_epoch)  # fmt: skip
    return arguments


def apply_batch_scale(cfg: DictConfig) -> str | None:
    """Scale the recipe's batch by ``cfg.batch_scale`` and its epochs by ``cfg.epoch_scale``
    (``trainer=gpu`` sets both), in place.

    ``batch_scale=N`` trains with N times the recipe's batch (``data.batch_size``, or
    ``data.max_tokens``), the learning rate times the square root of N (the square-root rule
    for Adam-type optimisers: the same noise per example seen; ``benchmarks/train_gpu.md``
    measures it on CoNLL-2003) and the step budgets (``budget.*``) divided by N, so that the
    run sees as many sentences per epoch as the recipe. The word table keeps the recipe's
    learning rate (``model.word_lr_scale`` divided by the square root of N): with the larger
    step, CoNLL-2003 with GloVe lost about 0.3 test F1 (likely the vectors of the training words
    drifting from the pretrained ones of the unseen words; ``benchmarks/train_gpu.md``).
    ``cfg.epoch_scale`` multiplies ``trainer.max_epochs`` (fewer, larger steps learn less per
    epoch; early stopping still ends a run when the dev score stops rising). Both keys are then set to 1, so that the run's
    ``config.yaml`` holds the values trained with and reads back the same.

    Returns:
        The line to log, or None when nothing was scaled (``batch_scale`` 1 or absent).

    Raises:
        ValueError: ``batch_scale`` or ``epoch_scale`` is not a positive integer.
    """
    scale, epochs = cfg.get("batch_scale", 1), cfg.get("epoch_scale", 1)
    for key, value in (("batch_scale", scale), ("epoch_scale", epochs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive integer; got {value!r}")
    parts = []
    max_epochs = cfg.trainer.get("max_epochs")
    if epochs != 1 and isinstance(max_epochs, int) and max_epochs > 0:
        cfg.trainer.max_epochs = max_epochs * epochs
        parts.append(f"trainer.max_epochs {max_epochs} -> {cfg.trainer.max_epochs}")
    cfg.epoch_scale = 1
    if scale == 1:
        return f"epoch_scale={epochs}: " + ", ".join(parts) if parts else None
    data = cfg.data
    for key in ("batch_size", "max_tokens"):
        if data.get(key) is not None:
            parts.append(f"data.{key} {data[key]} -> {data[key] * scale}")
            data[key] = data[key] * scale
    lr = OmegaConf.select(cfg, "optimizer.lr", default=None)
    if lr is not None:
        root = scale**0.5
        cfg.optimizer.lr = float(lr) * root
        parts.append(f"optimizer.lr {lr:g} -> {cfg.optimizer.lr:.4g}")
        word = OmegaConf.select(cfg, "model.word_lr_scale", default=None)
        if word:  # the word table keeps the recipe's learning rate
            cfg.model.word_lr_scale = float(word) / root
            parts.append(f"model.word_lr_scale {word:g} -> {cfg.model.word_lr_scale:.4g}")
    budget = cfg.get("budget") or {}
    for key in ("steps", "eval_every", "min_steps", "min_eval_every"):
        steps = budget.get(key)
        if isinstance(steps, int) and not isinstance(steps, bool):
            cfg.budget[key] = -(-steps // scale)
            parts.append(f"budget.{key} {steps} -> {cfg.budget[key]}")
    cfg.batch_scale = 1
    return f"batch_scale={scale}, epoch_scale={epochs}: " + ", ".join(parts)
