"""The eager kernels' one recursion over time, parameterised by its semiring reduction."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["scan"]


def scan(
    em: Tensor, start: Tensor, trans: Tensor, n_active: list[int], reduce: str, k: int = 1
) -> tuple[Tensor, Tensor | None]:
    """The one recursion over time, parameterised by its semiring reduction.

    ``reduce="logsumexp"`` gives forward log-scores (log semiring) and ``"topk"`` the k best
    scores per tag (k-max semiring); the max-plus case (k = 1 Viterbi) has its own faster loop,
    ``_max_scan``. Runs without autograd; gradients come from the forward-backward functions
    below.

    Args:
        em: float (T, B, K), time-major, batch sorted by decreasing length.
        start: float (K,) start scores; trans: float (K, K) ``[from, to]`` scores.
        n_active: rows with length > t, per t (see ``sort_time_major``).
        reduce: ``logsumexp`` | ``topk``.
        k: paths kept per tag (used by ``topk`` only).

    Returns:
        ``scores`` float (T, B, k, K): score of the best k (k = 1 for logsumexp: of all)
        prefixes ending in each tag at each position; ``backptr`` long (T, B, k, K) flat
        indices ``rank * K + tag`` into the previous step for ``topk``, else None.
        Entries past a row's end are never written and never read.
    """
    T, B, K = em.shape
    k = k if reduce == "topk" else 1
    scores = em.new_full((T, B, k, K), float("-inf"))
    backptr = em.new_zeros((T, B, k, K), dtype=torch.long) if reduce == "topk" else None
    if T == 0:
        return scores, backptr
    n0 = n_active[0]
    scores[0, :n0, 0] = start + em[0, :n0]
    steps, emits = scores.unbind(0), em.unbind(0)
    # k = 1: reduce over the last (contiguous) dimension, with transitions laid out [to, from]
    trans_to_from = trans.t().contiguous()
    for t in range(1, T):
        n = n_active[t]
        if n == 0:
            break
        prev, out, emit = steps[t - 1], steps[t], emits[t]
        if n < B:
            prev, out, emit = prev[:n], out[:n], emit[:n]
        if reduce == "topk":
            cand = (prev.unsqueeze(3) + trans).view(n, k * K, K)  # (n, k*K from, K to)
            torch.topk(cand, k, dim=1, out=(out, backptr[t, :n]))
        else:
            cand = prev + trans_to_from  # (n, 1, K from) + (K to, K from) -> (n, K to, K from)
            torch.logsumexp(cand, dim=2, out=out[:, 0])
        out.add_(emit.unsqueeze(1))
    return scores, backptr
