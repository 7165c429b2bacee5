"""Learning-rate schedules the tagger's configs name (``conf/scheduler/``) that torch lacks."""

from __future__ import annotations

import torch

__all__ = ["InverseTimeDecay"]


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
