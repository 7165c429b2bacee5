"""The fused CPU kernels as torch ops: what torch.compile and torch.export see of
:mod:`chaincrf.crf.kernels.fused.custom_ops` (whose docstring lists them). Each op has its fake
(shape-only) implementation. ``log_partition`` and ``log_likelihood`` are custom ops with
their autograd formulas; the ops a compiled training or decoding step calls
(``log_likelihood_sum``, ``viterbi``, ``marginals``) are defined with the low-level API and
have no autograd kernel (see "direct ops" below). Importing this module registers them; it
imports only torch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from chaincrf.crf.kernels.fused.impl import (
    _check_gold,
    _forward_backward_impl,
    _likelihood_gradient_impl,
    _log_likelihood_impl,
    _log_partition_impl,
    _marginals_impl,
    _viterbi_impl,
)
from chaincrf.crf.kernels.library import direct_op

__all__: list[str] = []

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


# ------------------------------------------------------------------------------ direct ops
# The ops a compiled training or decoding step calls, without a Python autograd layer
# (:mod:`chaincrf.crf.kernels.library`): the likelihood's gradient comes with its value, and
# the traced :class:`chaincrf.crf.kernels.fused.autograd.CompiledLikelihoodSum` carries it.


def _log_likelihood_sum_kernel(
    emissions: Tensor,
    tags: Tensor,
    mask: Tensor,
    start: Tensor,
    transitions: Tensor,
    end: Tensor,
    constrained: bool,
    validate: bool,
    weight: float,
    with_gradient: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``weight`` times the log-likelihoods' sum (a 0-d tensor) and, ``with_gradient``, its
    gradients (emissions, start, transitions, end) from the same pass (else empty tensors)."""
    args = (emissions, tags, mask, start, transitions, end)
    if not with_gradient:
        llh = _log_likelihood_impl(*args, constrained, validate)[0]
        empty = emissions.new_empty(0)
        total = llh.sum() if weight == 1.0 else llh.sum() * weight
        return total, empty, empty.clone(), empty.clone(), empty.clone()
    _lengths, unit, log_z, gold = _likelihood_gradient_impl(*args, validate, weight)
    if constrained:
        _check_gold(gold)
    total = torch.tensor(float((gold - log_z).sum()) * weight, dtype=emissions.dtype)
    return (total, *unit)


def _log_likelihood_sum_fake(
    emissions: Tensor,
    tags: Tensor,
    mask: Tensor,
    start: Tensor,
    transitions: Tensor,
    end: Tensor,
    constrained: bool,
    validate: bool,
    weight: float,
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


log_likelihood_sum_op = direct_op(
    "log_likelihood_sum(Tensor emissions, Tensor tags, Tensor mask, Tensor start, "
    "Tensor transitions, Tensor end, bool constrained, bool validate, float weight, "
    "bool with_gradient) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    _log_likelihood_sum_kernel,
    _log_likelihood_sum_fake,
    differentiable=(0, 3, 4, 5),
)


def _viterbi_fake(
    emissions: Tensor, mask: Tensor, start: Tensor, transitions: Tensor, end: Tensor, validate: bool
) -> tuple[Tensor, Tensor, Tensor]:
    B, T, _ = emissions.shape
    long = torch.long
    return (
        emissions.new_empty((B, T), dtype=long),
        emissions.new_empty(B),
        mask.new_empty(B, dtype=long),
    )


viterbi_op = direct_op(
    "viterbi(Tensor emissions, Tensor mask, Tensor start, Tensor transitions, Tensor end, "
    "bool validate) -> (Tensor, Tensor, Tensor)",
    _viterbi_impl,
    _viterbi_fake,
    differentiable=(0, 2, 3, 4),
)


def _marginals_fake(
    emissions: Tensor, mask: Tensor, start: Tensor, transitions: Tensor, end: Tensor, validate: bool
) -> Tensor:
    return emissions.new_empty(emissions.shape)


marginals_op = direct_op(
    "marginals(Tensor emissions, Tensor mask, Tensor start, Tensor transitions, Tensor end, "
    "bool validate) -> Tensor",
    _marginals_impl,
    _marginals_fake,
    differentiable=(0, 2, 3, 4),
)
