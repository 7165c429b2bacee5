"""Fused CPU kernels for the linear-chain CRF, compiled with numba, exposed as torch custom ops.

Each kernel runs one batch row at a time (over fixed chunks of rows where parameter gradients
are summed, in a fixed order); a large call splits its rows over torch's own OpenMP threads
(``chaincrf.crf.tuning.FUSED``; the results do not depend on the split). The log-partition and
its gradient accumulate in float64 whatever the emissions' dtype (float32 or float64); Viterbi
computes in the emissions' dtype, the eager kernel's sums step for step. Inputs are batch-first; a row covers the leading on positions of its mask, and
positions past its length are never read. Transitions are indexed ``[from, to]``; forbidden
moves are ``-inf`` scores (see ``chaincrf.crf.confidence.crf_scores``).

* ``chaincrf::log_partition`` (mask) -> (log Z, lengths): the forward recursion in exp space
  (:mod:`chaincrf.crf.kernels.fused.exp`), O(K) scratch per row; a row whose scale underflows is
  recomputed exactly in log space (:mod:`chaincrf.crf.kernels.fused.loops`).
* ``chaincrf::log_likelihood`` (tags, mask) -> (gold score - log Z, lengths): the same pass
  plus the gold path's score.
* ``chaincrf::forward_backward`` (grad, tags or none, lengths): the gradient of either, for the
  emissions and the three score tensors: forward messages kept (O(T·K) per row), backward
  messages over them, pairwise marginals summed into one (K, K) buffer per chunk of rows.
* ``chaincrf::viterbi`` (mask) -> (paths, scores, lengths): the max-plus recursion, every
  step's messages kept and the arg-max of the chosen tag recomputed in the back-trace; ties go
  to the lowest tag index at every argmax, as the eager kernel's.
* ``chaincrf::marginals`` (mask): the backward kernel with unit gradient, no pairwise sums.

With ``validate`` the kernels also check the values in the pass that counts the lengths (mask
gaps, NaN/+inf scores and emissions, tags out of range: the eager kernel's errors, in its
order); tags are always range-checked before they index anything. Run eagerly, the public
functions call the implementations directly (through ``torch.autograd.Function`` for the
gradients); under torch.compile / torch.export they call the custom ops
(:mod:`chaincrf.crf.kernels.fused.registered`).

This module imports only torch (and the numpy that torch brings); numba is imported, and the
kernels compiled (``cache=True``: once per machine), on the first call.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from chaincrf.crf import tracing
from chaincrf.crf.kernels.fused.autograd import CompiledLikelihoodSum, LogLikelihood, LogPartition
from chaincrf.crf.kernels.fused.impl import (
    _check_inputs,
    _log_likelihood_impl,
    _marginals_impl,
    _mask_of,
    _viterbi_impl,
    available,
)
from chaincrf.crf.kernels.fused.registered import (
    _log_likelihood_op,
    _log_partition_op,
    marginals_op,
    viterbi_op,
)

__all__ = [
    "available",
    "log_likelihood",
    "log_likelihood_masked",
    "log_likelihood_sum_masked",
    "log_partition",
    "log_partition_masked",
    "marginals",
    "marginals_masked",
    "viterbi",
    "viterbi_masked",
    "warm_up",
]


@functools.cache
def warm_up() -> None:
    """Load (compile, or read from numba's disk cache) the float32 kernels now, once per
    process, when a CRF that may use them is built: the first training step then does not
    pay for it. float64 kernels load on their first call."""
    tiny = torch.zeros(1, 1, 1)
    scores = (tiny[0, 0], tiny[0], tiny[0, 0])
    lengths = torch.ones(1, dtype=torch.long)
    with torch.enable_grad():
        emissions = tiny.clone().requires_grad_(True)
        log_partition(emissions, lengths, *scores).sum().backward()  # type: ignore[no-untyped-call]  # Tensor.backward: unannotated in torch
    viterbi(tiny, lengths, *scores)


# ------------------------------------------------------------------------------ eager calls
# (the autograd Functions that call the implementations directly: fused/autograd.py)


def _detached(*tensors: Tensor) -> list[Tensor]:
    return [x.detach() for x in tensors]


_is_compiling = tracing.is_compiling


# ------------------------------------------------------------------------------ masked calls
# What the kernel interface (chaincrf.crf.kernels.fused.ops) calls: a left-aligned bool mask, the
# value checks in the kernel (``validate``), the lengths returned with the results.


def log_partition_masked(
    emissions: Tensor, mask: Tensor, start: Tensor, transitions: Tensor, end: Tensor, validate: bool
) -> tuple[Tensor, Tensor]:
    """(log Z (B,), lengths (B,)); differentiable w.r.t. emissions and the scores."""
    # torch types a custom op's call and autograd.Function.apply as Any (apply: unannotated)
    out: tuple[Tensor, Tensor]
    if _is_compiling():
        out = _log_partition_op(emissions, mask, start, transitions, end, validate)
    else:
        out = LogPartition.apply(emissions, mask, start, transitions, end, validate)  # type: ignore[no-untyped-call]
    return out


def log_likelihood_masked(
    emissions: Tensor,
    tags: Tensor,
    mask: Tensor,
    start: Tensor,
    transitions: Tensor,
    end: Tensor,
    constrained: bool,
    validate: bool,
    scale: float = 1.0,
) -> Tensor:
    """``scale`` times (gold score - log Z) (B,) (-1: the negative log-likelihood, in the
    kernel's pass); differentiable w.r.t. emissions and scores."""
    args = (emissions, tags, mask, start, transitions, end, constrained, validate)
    if _is_compiling():
        llh: Tensor = _log_likelihood_op(*args)[0]  # a custom op's call is typed Any
        return llh if scale == 1.0 else -llh if scale == -1.0 else llh * scale
    if not torch.is_grad_enabled():  # inside Function.forward needs_input_grad ignores no_grad
        llh = _log_likelihood_impl(*args)[0]
        return llh if scale == 1.0 else llh * scale
    llh = LogLikelihood.apply(*args, scale, False)  # type: ignore[no-untyped-call]  # (unannotated)
    return llh


def log_likelihood_sum_masked(
    emissions: Tensor,
    tags: Tensor,
    mask: Tensor,
    start: Tensor,
    transitions: Tensor,
    end: Tensor,
    constrained: bool,
    validate: bool,
    scale: float = 1.0,
) -> Tensor:
    """``scale`` times the sum of the rows' gold score - log Z (0-d); differentiable w.r.t.
    emissions and scores. Under torch.compile one custom op computes it and its gradient in
    one pass (the backward only scales that gradient: no second pass over the rows, no second
    op call); eagerly the sum and the scale are the autograd Function's own (no node of
    their own)."""
    args = (emissions, tags, mask, start, transitions, end, constrained, validate)
    if _is_compiling():
        grad = torch.is_grad_enabled() and any(
            x.requires_grad for x in (emissions, start, transitions, end)
        )
        total: Tensor = CompiledLikelihoodSum.apply(*args, scale, grad)[0]  # type: ignore[no-untyped-call]  # (unannotated)
        return total
    if not torch.is_grad_enabled():
        return log_likelihood_masked(*args, scale).sum()
    total = LogLikelihood.apply(*args, scale, True)  # type: ignore[no-untyped-call]  # (unannotated)
    return total


def viterbi_masked(
    emissions: Tensor, mask: Tensor, start: Tensor, transitions: Tensor, end: Tensor, validate: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """(best paths (B, T) -1 padded, their scores (B,), lengths (B,)); not differentiable."""
    if _is_compiling():
        em, start, transitions, end = _detached(emissions, start, transitions, end)
        best: tuple[Tensor, Tensor, Tensor] = viterbi_op(
            em, mask, start, transitions, end, validate
        )
        return best  # (a custom op's call is typed Any)
    return _viterbi_impl(emissions, mask, start, transitions, end, validate)


def marginals_masked(
    emissions: Tensor, mask: Tensor, start: Tensor, transitions: Tensor, end: Tensor, validate: bool
) -> Tensor:
    """Posterior tag probabilities (B, T, K), 0 past each length; not differentiable."""
    if _is_compiling():
        em, start, transitions, end = _detached(emissions, start, transitions, end)
        probs: Tensor = marginals_op(em, mask, start, transitions, end, validate)
        return probs  # (a custom op's call is typed Any)
    return _marginals_impl(emissions, mask, start, transitions, end, validate)


# ------------------------------------------------------------------------------ public API


def log_partition(
    emissions: Tensor, lengths: Tensor, start: Tensor, transitions: Tensor, end: Tensor
) -> Tensor:
    """Log-partition of each row, differentiable w.r.t. emissions and the three score tensors.

    Args:
        emissions: float32 or float64 tensor (batch, seq_len, num_tags), unnormalised scores;
            positions past a row's length are never read.
        lengths: int64 tensor (batch,), each in [0, seq_len] (else ``ValueError``).
        start: float tensor (num_tags,), score of starting in each tag; ``-inf`` forbids it.
        transitions: float tensor (num_tags, num_tags), ``transitions[i, j]`` scores tag i
            followed by tag j; ``-inf`` forbids the move.
        end: float tensor (num_tags,), score of ending in each tag; ``-inf`` forbids it.

    Returns:
        tensor (batch,) in the emissions' dtype: 0 for an empty row, ``-inf`` for a row with no
        allowed path (its gradients are 0). Gradients come back in each input's dtype.
    """
    _check_inputs(emissions, lengths, start, transitions, end)
    mask = _mask_of(emissions, lengths)
    return log_partition_masked(emissions, mask, start, transitions, end, False)[0]


def log_likelihood(
    emissions: Tensor,
    tags: Tensor,
    lengths: Tensor,
    start: Tensor,
    transitions: Tensor,
    end: Tensor,
    constrained: bool = False,
) -> Tensor:
    """Log-likelihood of the gold paths ``tags[b, :lengths[b]]``: their score minus log Z, in
    one pass; differentiable w.r.t. emissions and the three scores.

    Args:
        emissions, lengths, start, transitions, end: as in :func:`log_partition`.
        tags: int64 tensor (batch, seq_len), each in [0, num_tags) inside its row's length
            (else ``ValueError``); positions past it are never read.
        constrained: refuse gold paths that score ``-inf`` (forbidden by the constraints).

    Returns:
        tensor (batch,) in the emissions' dtype (0 for an empty row).
    """
    _check_inputs(emissions, lengths, start, transitions, end)
    if tuple(tags.shape) != tuple(emissions.shape[:2]) or tags.dtype != torch.int64:
        raise ValueError(
            f"tags must be an int64 tensor of shape {tuple(emissions.shape[:2])}; "
            f"got {tags.dtype} {tuple(tags.shape)}"
        )
    mask = _mask_of(emissions, lengths)
    args = (emissions, tags.contiguous(), mask, start, transitions, end, constrained, False)
    return log_likelihood_masked(*args)


def viterbi(
    emissions: Tensor, lengths: Tensor, start: Tensor, transitions: Tensor, end: Tensor
) -> tuple[Tensor, Tensor]:
    """Best tag path of each row; ties go to the lowest tag index at every step.

    Args:
        emissions, lengths, start, transitions, end: as in :func:`log_partition`.

    Returns:
        ``paths`` int64 tensor (batch, seq_len), the best tags, -1 past each row's length and
        in a row with no allowed path; ``scores`` tensor (batch,) in the emissions' dtype, the
        best path's score (0 for an empty row, ``-inf`` with no allowed path). Not
        differentiable.
    """
    _check_inputs(emissions, lengths, start, transitions, end)
    mask = _mask_of(emissions, lengths)
    return viterbi_masked(emissions, mask, start, transitions, end, False)[:2]


def marginals(
    emissions: Tensor, lengths: Tensor, start: Tensor, transitions: Tensor, end: Tensor
) -> Tensor:
    """Posterior probability of each tag at each position.

    Args:
        emissions, lengths, start, transitions, end: as in :func:`log_partition`.

    Returns:
        tensor (batch, seq_len, num_tags) in the emissions' dtype: each position's row sums to
        1 inside the row's length; 0 past it and in a row with no allowed path. Not
        differentiable.
    """
    _check_inputs(emissions, lengths, start, transitions, end)
    mask = _mask_of(emissions, lengths)
    return marginals_masked(emissions, mask, start, transitions, end, False)
