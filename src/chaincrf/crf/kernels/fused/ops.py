"""The fused CPU kernel: the kernel interface of :mod:`chaincrf.crf.kernels.eager` on the
compiled loops of :mod:`chaincrf.crf.kernels.fused.custom_ops` (numba; float32/float64 CPU tensors).

The value checks (``validate``) run inside the kernels, in the pass that counts each row's
length: same errors, same order as the eager kernel, without a host synchronisation in Python.
"""

from __future__ import annotations

from torch import Tensor

from chaincrf.crf.kernels.fused import custom_ops as ops

__all__ = [
    "decode",
    "log_likelihood",
    "log_likelihood_sum",
    "log_partition",
    "marginals",
    "negative_log_likelihood",
    "negative_log_likelihood_sum",
    "viterbi",
]


def _likelihood(
    name: str,
    em: Tensor,
    mask: Tensor,
    start: Tensor,
    trans: Tensor,
    end: Tensor,
    tags: Tensor | None,
    constrained: bool,
    validate: bool,
    scale: float = 1.0,
    summed: bool = False,
) -> Tensor:
    """``scale`` times the log-likelihood of each row, or (``summed``) their sum."""
    if tags is None:
        raise ValueError(f"{name} needs tags")
    args = (em, tags.contiguous(), mask, start, trans, end, constrained, validate, scale)
    if summed:
        return ops.log_likelihood_sum_masked(*args)
    return ops.log_likelihood_masked(*args)


def log_likelihood(
    em: Tensor,
    mask: Tensor,
    start: Tensor,
    trans: Tensor,
    end: Tensor,
    tags: Tensor | None = None,
    k: int = 1,
    constrained: bool = False,
    validate: bool = True,
) -> Tensor:
    """Gold-path score minus log Z (B,); with ``constrained``, a forbidden gold path is an error."""
    return _likelihood("log_likelihood", em, mask, start, trans, end, tags, constrained, validate)


def negative_log_likelihood(
    em: Tensor,
    mask: Tensor,
    start: Tensor,
    trans: Tensor,
    end: Tensor,
    tags: Tensor | None = None,
    k: int = 1,
    constrained: bool = False,
    validate: bool = True,
) -> Tensor:
    """``-log_likelihood(...)`` from the same pass (no negation node, forward or backward)."""
    args = (em, mask, start, trans, end, tags, constrained, validate, -1.0)
    return _likelihood("negative_log_likelihood", *args)


def log_likelihood_sum(
    em: Tensor,
    mask: Tensor,
    start: Tensor,
    trans: Tensor,
    end: Tensor,
    tags: Tensor | None = None,
    k: int = 1,
    constrained: bool = False,
    validate: bool = True,
) -> Tensor:
    """The sum over the rows of the gold-path score minus log Z (0-d): computed with its
    gradient in one pass (a reduced loss needs no per-row weights), and eagerly with no
    reduction node for autograd (``EAGER_SUMS``)."""
    args = (em, mask, start, trans, end, tags, constrained, validate, 1.0, True)
    return _likelihood("log_likelihood_sum", *args)


def negative_log_likelihood_sum(
    em: Tensor,
    mask: Tensor,
    start: Tensor,
    trans: Tensor,
    end: Tensor,
    tags: Tensor | None = None,
    k: int = 1,
    constrained: bool = False,
    validate: bool = True,
) -> Tensor:
    """``-log_likelihood_sum(...)``: sign and sum in the same call, no node of their own."""
    args = (em, mask, start, trans, end, tags, constrained, validate, -1.0, True)
    return _likelihood("negative_log_likelihood_sum", *args)


def log_partition(
    em: Tensor,
    mask: Tensor,
    start: Tensor,
    trans: Tensor,
    end: Tensor,
    tags: Tensor | None = None,
    k: int = 1,
    constrained: bool = False,
    validate: bool = True,
) -> Tensor:
    """Log Z of each row (B,), 0 for an empty row."""
    return ops.log_partition_masked(em, mask, start, trans, end, validate)[0]


def viterbi(
    em: Tensor,
    mask: Tensor,
    start: Tensor,
    trans: Tensor,
    end: Tensor,
    tags: Tensor | None = None,
    k: int = 1,
    constrained: bool = False,
    validate: bool = True,
) -> tuple[Tensor, Tensor]:
    """The best path (k = 1 only) (B, 1, T), -1 past each length, and its score (B, 1)."""
    if k != 1:
        raise ValueError(f"the fused CPU kernel computes the best path only (k = 1); got k={k}")
    paths, scores, _ = ops.viterbi_masked(em, mask, start, trans, end, validate)
    return paths.unsqueeze(1), scores.unsqueeze(1)


def decode(
    em: Tensor,
    mask: Tensor,
    start: Tensor,
    trans: Tensor,
    end: Tensor,
    tags: Tensor | None = None,
    k: int = 1,
    constrained: bool = False,
    validate: bool = True,
) -> list[list[int]]:
    """The best path of each row as a list of its tags (all -1 where no path is allowed)."""
    paths, _, lengths = ops.viterbi_masked(em, mask, start, trans, end, validate)
    return [row[:n] for row, n in zip(paths.tolist(), lengths.tolist())]


def marginals(
    em: Tensor,
    mask: Tensor,
    start: Tensor,
    trans: Tensor,
    end: Tensor,
    tags: Tensor | None = None,
    k: int = 1,
    constrained: bool = False,
    validate: bool = True,
) -> Tensor:
    """Posterior tag probabilities (B, T, K): rows sum to 1 where the mask is on, else 0."""
    return ops.marginals_masked(em, mask, start, trans, end, validate)
