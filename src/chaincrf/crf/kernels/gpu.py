"""The Triton kernel: the kernel interface of :mod:`chaincrf.crf.kernels.eager` on the GPU
kernels of :mod:`chaincrf.crf.kernels.gpu_triton`, called through the custom ops of
:mod:`chaincrf.crf.kernels.gpu_ops` (float32/float64; CUDA tensors, or CPU tensors under
Triton's interpreter, ``TRITON_INTERPRET=1``).

The rows' lengths are the mask's row sums, computed on the device (the layer compacts a mask
with gaps first, :mod:`chaincrf.crf.gaps`). With ``validate`` the eager kernel's value checks run first (same errors, same
order); the log-likelihood's gold-path score is the eager kernel's tensor operations, minus
the log-partition op. Viterbi computes the best path only (k = 1). Where a row has no allowed
path, log Z and the Viterbi score are ``-inf`` and the path is all -1, as the eager kernel's;
its gradients and marginals are 0 (the eager kernel's are NaN there). Importing this module
imports Triton.
"""

from __future__ import annotations

import torch
from torch import Tensor

from chaincrf.crf import errors
from chaincrf.crf.kernels import eager
from chaincrf.crf.kernels import gpu_ops as ops

__all__ = ["decode", "log_likelihood", "log_partition", "marginals", "viterbi"]

GAPS = "validated"
"""How this kernel meets a mask with gaps (:mod:`chaincrf.crf.gaps`): it raises
``MaskGapError`` under ``validate`` only (the layer checks the mask itself otherwise)."""


def log_likelihood(
    em: Tensor,
    tags: Tensor,
    mask: Tensor,
    start: Tensor,
    trans: Tensor,
    end: Tensor,
    constrained: bool,
    validate: bool,
) -> Tensor:
    """Gold-path score minus log Z (B,); with ``constrained``, a forbidden gold path is an error.

    Args:
        em: float (B, T, K) emissions; tags: long (B, T) gold tags, ignored where the mask is
            off; mask: bool (B, T), left-aligned; start, end: (K,) and trans: (K, K)
            ``[from, to]`` effective scores, ``-inf`` where forbidden.
        constrained: raise ``ValueError`` for a gold path of score ``-inf`` (forbidden by
            the constraints), whether or not ``validate``, as the eager kernel.
        validate: check the values first (mask gaps, scores, emissions, tags).

    Returns:
        float (B,), differentiable w.r.t. ``em`` and the three scores.
    """
    if validate:
        eager.validate_values(em, mask, start, trans, end, tags)
    tags = tags.masked_fill(~mask, 0)
    gold = eager.gold_score(em, tags, mask, start, trans, end)
    if constrained:
        bad = torch.isneginf(gold)
        if bool(bad.any()):
            raise errors.forbidden_gold_path(int(bad.nonzero()[0]))
    return gold - ops.log_partition(em, mask.sum(1), start, trans, end)


def log_partition(
    em: Tensor, mask: Tensor, start: Tensor, trans: Tensor, end: Tensor, validate: bool
) -> Tensor:
    """Log Z of each row (B,), 0 for an empty row, ``-inf`` for a row with no allowed path;
    differentiable w.r.t. ``em`` and the three scores (arguments as in :func:`log_likelihood`)."""
    if validate:
        eager.validate_values(em, mask, start, trans, end, None)
    return ops.log_partition(em, mask.sum(1), start, trans, end)


def viterbi(
    em: Tensor, mask: Tensor, start: Tensor, trans: Tensor, end: Tensor, k: int, validate: bool
) -> tuple[Tensor, Tensor]:
    """The best path (k = 1 only) (B, 1, T), -1 past each length and where no path is allowed,
    and its score (B, 1): 0 for an empty row, ``-inf`` with no allowed path.

    Raises:
        ValueError: for ``k`` other than 1 (the planner sends k-best Viterbi to the eager
            kernel).
    """
    if k != 1:
        raise ValueError(f"the Triton kernel computes the best path only (k = 1); got k={k}")
    if validate:
        eager.validate_values(em, mask, start, trans, end, None)
    paths, scores = ops.viterbi(em, mask.sum(1), start, trans, end)
    return paths.unsqueeze(1), scores.unsqueeze(1)


def decode(
    em: Tensor, mask: Tensor, start: Tensor, trans: Tensor, end: Tensor, validate: bool
) -> list[list[int]]:
    """The best path of each row as a list of its tags (all -1 where no path is allowed)."""
    if validate:
        eager.validate_values(em, mask, start, trans, end, None)
    lengths = mask.sum(1)
    paths, _ = ops.viterbi(em, lengths, start, trans, end)
    return [row[:n] for row, n in zip(paths.tolist(), lengths.tolist())]


def marginals(
    em: Tensor, mask: Tensor, start: Tensor, trans: Tensor, end: Tensor, validate: bool
) -> Tensor:
    """Posterior tag probabilities (B, T, K): rows sum to 1 where the mask is on, else 0 (and 0
    in a row with no allowed path); not differentiable."""
    if validate:
        eager.validate_values(em, mask, start, trans, end, None)
    return ops.marginals(em, mask.sum(1), start, trans, end)
