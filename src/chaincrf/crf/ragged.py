"""The ragged batch of the eager kernels: lengths, sort order, rows still active at each step.

The eager kernels compute time-major, ``(T, B, K)``, with the batch sorted by decreasing length,
so that the rows still inside their sequence at step ``t`` are a prefix ``[:n_active[t]]`` of
the batch; results are scattered back to the caller's row order at the end.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["active_counts", "sort_time_major"]


def sort_time_major(em: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, list[int]]:
    """Sorts a batch by decreasing length and makes it time-major.

    Args:
        em: float (B, T, K) batch-first emissions.
        lengths: long (B,) sequence lengths.

    Returns:
        ``em_tm`` float (T, B, K) contiguous, rows in decreasing length order; ``order`` long (B,),
        the original row of each sorted row; ``n_active`` list of T ints, the number of rows with
        length > t (those rows are the prefix ``[:n_active[t]]``).
    """
    order = torch.argsort(lengths, descending=True, stable=True)
    em_tm = em.index_select(0, order).transpose(0, 1).contiguous()
    return em_tm, order, active_counts(lengths, em.size(1))


def active_counts(lengths: Tensor, T: int) -> list[int]:
    """Number of rows with length > t, for t in [0, T) (one host transfer)."""
    counts = torch.bincount(lengths, minlength=T + 1)[:T]
    return (lengths.numel() - torch.cumsum(counts, 0)).tolist()
