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
gradients); under torch.compile / torch.export they call the custom ops.

This module imports only torch (and the numpy that torch brings); numba is imported, and the
kernels compiled (``cache=True``: once per machine), on the first call.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from chaincrf.crf import tracing
from chaincrf.crf.kernels.fused.autograd import LogLikelihood, LogPartition
from chaincrf.crf.kernels.fused.impl import (
    _check_gold,
    _check_inputs,
    _forward_backward_impl,
    _likelihood_gradient_impl,
    _log_likelihood_impl,
    _log_partition_impl,
    _marginals_impl,
    _mask_of,
    _viterbi_impl,
    available,
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


# ------------------------------------------------------------------------------ custom ops
# What torch.compile and torch.export see: each op with its fake (shape-only) implementation
# and, for the two differentiable ones, its autograd formula. Run eagerly, the functions below
# call the implementations directly instead (through a torch.autograd.Function for the
# gradients): the custom-op dispatcher costs several times the kernel itself on one sentence
# (figures and command: benchmarks/crf_kernels.md, design figures).


@torch.library.custom_op("chaincrf::log_partition", mutates_args=())
def _log_partition_op(
    emissions: Tensor, mask: Tensor, start: Tensor, transitions: Tensor, end: Tensor, validate: bool
) -> tuple[Tensor, Tensor]:
    return _log_partition_impl(emissions, mask, start, transitions, end, validate)


@_log_partition_op.register_fake
def _(
    emissions: Tensor, mask: Tensor, start: Tensor, transitions: Tensor, end: Tensor, validate: bool
) -> tuple[Tensor, Tensor]:
    B = emissions.shape[0]
    return emissions.new_empty(B), emissions.new_empty(B, dtype=torch.long)


@torch.library.custom_op("chaincrf::log_likelihood", mutates_args=())
def _log_likelihood_op(
    emissions: Tensor,
    tags: Tensor,
    mask: Tensor,
    start: Tensor,
    transitions: Tensor,
    end: Tensor,
    constrained: bool,
    validate: bool,
) -> tuple[Tensor, Tensor]:
    return _log_likelihood_impl(
        emissions, tags, mask, start, transitions, end, constrained, validate
    )


@_log_likelihood_op.register_fake
def _(
    emissions: Tensor,
    tags: Tensor,
    mask: Tensor,
    start: Tensor,
    transitions: Tensor,
    end: Tensor,
    constrained: bool,
    validate: bool,
) -> tuple[Tensor, Tensor]:
    B = emissions.shape[0]
    return emissions.new_empty(B), emissions.new_empty(B, dtype=torch.long)


@torch.library.custom_op("chaincrf::forward_backward", mutates_args=())
def _forward_backward_op(
    grad: Tensor,
    emissions: Tensor,
    tags: Tensor,
    lengths: Tensor,
    start: Tensor,
    transitions: Tensor,
    end: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _forward_backward_impl(grad, emissions, tags, lengths, start, transitions, end)[:4]


@_forward_backward_op.register_fake
def _(
    grad: Tensor,
    emissions: Tensor,
    tags: Tensor,
    lengths: Tensor,
    start: Tensor,
    transitions: Tensor,
    end: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return (
        emissions.new_empty(emissions.shape),
        start.new_empty(start.shape),
        transitions.new_empty(transitions.shape),
        end.new_empty(end.shape),
    )


def _save_log_partition(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    emissions, _mask, start, transitions, end, _validate = inputs
    ctx.save_for_backward(emissions, output[1], start, transitions, end)


def _log_partition_backward(
    ctx: Any, grad: Tensor, _grad_lengths: Tensor | None
) -> tuple[Tensor, None, Tensor, Tensor, Tensor, None]:
    emissions, lengths, start, transitions, end = ctx.saved_tensors
    no_tags = lengths.new_empty((0, 0))
    d_em, d_start, d_trans, d_end = _forward_backward_op(
        grad, emissions, no_tags, lengths, start, transitions, end
    )
    return d_em, None, d_start, d_trans, d_end, None


def _save_log_likelihood(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    emissions, tags, _mask, start, transitions, end, _constrained, _validate = inputs
    ctx.save_for_backward(emissions, tags, output[1], start, transitions, end)


def _log_likelihood_backward(
    ctx: Any, grad: Tensor, _grad_lengths: Tensor | None
) -> tuple[Tensor, None, None, Tensor, Tensor, Tensor, None, None]:
    emissions, tags, lengths, start, transitions, end = ctx.saved_tensors
    d_em, d_start, d_trans, d_end = _forward_backward_op(
        grad, emissions, tags, lengths, start, transitions, end
    )
    return d_em, None, None, d_start, d_trans, d_end, None, None


_log_partition_op.register_autograd(_log_partition_backward, setup_context=_save_log_partition)
_log_likelihood_op.register_autograd(_log_likelihood_backward, setup_context=_save_log_likelihood)


@torch.library.custom_op("chaincrf::log_likelihood_sum", mutates_args=())
def _log_likelihood_sum_op(
    emissions: Tensor,
    tags: Tensor,
    mask: Tensor,
    start: Tensor,
    transitions: Tensor,
    end: Tensor,
    constrained: bool,
    validate: bool,
    with_gradient: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The log-likelihoods' sum (a 0-d tensor) and, ``with_gradient``, its gradients
    (emissions, start, transitions, end) from the same pass (else empty tensors)."""
    args = (emissions, tags, mask, start, transitions, end)
    if not with_gradient:
        llh = _log_likelihood_impl(*args, constrained, validate)[0]
        empty = emissions.new_empty(0)
        return llh.sum(), empty, empty.clone(), empty.clone(), empty.clone()
    _lengths, unit, log_z, gold = _likelihood_gradient_impl(*args, validate)
    if constrained:
        _check_gold(gold)
    total = torch.tensor(float((gold - log_z).sum()), dtype=emissions.dtype)
    return (total, *unit)


@_log_likelihood_sum_op.register_fake
def _(
    emissions: Tensor,
    tags: Tensor,
    mask: Tensor,
    start: Tensor,
    transitions: Tensor,
    end: Tensor,
    constrained: bool,
    validate: bool,
    with_gradient: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    if not with_gradient:
        empty = emissions.new_empty(0)
        return emissions.new_empty(()), empty, empty.clone(), empty.clone(), empty.clone()
    return (
        emissions.new_empty(()),
        emissions.new_empty(emissions.shape),
        start.new_empty(start.shape),
        transitions.new_empty(transitions.shape),
        end.new_empty(end.shape),
    )


def _save_log_likelihood_sum(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    ctx.save_for_backward(*output[1:])


def _log_likelihood_sum_backward(
    ctx: Any, grad: Tensor, *_unused: Tensor | None
) -> tuple[Tensor, None, None, Tensor, Tensor, Tensor, None, None, None]:
    d_em, d_start, d_trans, d_end = ctx.saved_tensors
    return d_em * grad, None, None, d_start * grad, d_trans * grad, d_end * grad, None, None, None


_log_likelihood_sum_op.register_autograd(
    _log_likelihood_sum_backward, setup_context=_save_log_likelihood_sum
)


@torch.library.custom_op("chaincrf::viterbi", mutates_args=())
def _viterbi_op(
    emissions: Tensor, mask: Tensor, start: Tensor, transitions: Tensor, end: Tensor, validate: bool
) -> tuple[Tensor, Tensor, Tensor]:
    return _viterbi_impl(emissions, mask, start, transitions, end, validate)


@_viterbi_op.register_fake
def _(
    emissions: Tensor, mask: Tensor, start: Tensor, transitions: Tensor, end: Tensor, validate: bool
) -> tuple[Tensor, Tensor, Tensor]:
    B, T, _ = emissions.shape
    long = torch.long
    return (
        emissions.new_empty((B, T), dtype=long),
        emissions.new_empty(B),
        mask.new_empty(B, dtype=long),
    )


@torch.library.custom_op("chaincrf::marginals", mutates_args=())
def _marginals_op(
    emissions: Tensor, mask: Tensor, start: Tensor, transitions: Tensor, end: Tensor, validate: bool
) -> Tensor:
    return _marginals_impl(emissions, mask, start, transitions, end, validate)


@_marginals_op.register_fake
def _(
    emissions: Tensor, mask: Tensor, start: Tensor, transitions: Tensor, end: Tensor, validate: bool
) -> Tensor:
    return emissions.new_empty(emissions.shape)


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
) -> Tensor:
    """Gold score - log Z (B,); differentiable w.r.t. emissions and scores."""
    args = (emissions, tags, mask, start, transitions, end, constrained, validate)
    if _is_compiling():
        llh: Tensor = _log_likelihood_op(*args)[0]  # a custom op's call is typed Any
        return llh
    if not torch.is_grad_enabled():  # inside Function.forward needs_input_grad ignores no_grad
        return _log_likelihood_impl(*args)[0]
    llh = LogLikelihood.apply(*args)  # type: ignore[no-untyped-call]  # apply is unannotated
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
) -> Tensor:
    """The sum of the rows' gold score - log Z (0-d); differentiable w.r.t. emissions and
    scores. Under torch.compile one custom op computes it and its gradient in one pass (the
    backward only scales that gradient: no second pass over the rows, no second op call)."""
    args = (emissions, tags, mask, start, transitions, end, constrained, validate)
    if _is_compiling():
        grad = torch.is_grad_enabled() and any(
            x.requires_grad for x in (emissions, start, transitions, end)
        )
        total: Tensor = _log_likelihood_sum_op(*args, grad)[0]  # a custom op's call is Any
        return total
    return log_likelihood_masked(*args).sum()


def viterbi_masked(
    emissions: Tensor, mask: Tensor, start: Tensor, transitions: Tensor, end: Tensor, validate: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """(best paths (B, T) -1 padded, their scores (B,), lengths (B,)); not differentiable."""
    if _is_compiling():
        em, start, transitions, end = _detached(emissions, start, transitions, end)
        best: tuple[Tensor, Tensor, Tensor] = _viterbi_op(
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
        probs: Tensor = _marginals_op(em, mask, start, transitions, end, validate)
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
