"""The fused kernels' autograd Functions. For eager calls, :class:`LogPartition` and
:class:`LogLikelihood` call the implementations (:mod:`chaincrf.crf.kernels.fused.impl`)
directly, without the op dispatcher (60-90 us a call); under torch.compile the ops of
:mod:`chaincrf.crf.kernels.fused.registered` run instead, with the same implementations, a
reduced likelihood's through :class:`CompiledLikelihoodSum`, which torch.compile traces."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from chaincrf.crf.kernels.fused.impl import (
    _NO_TAGS,
    _NUMPY_DTYPES,
    _check_gold,
    _forward_backward_impl,
    _likelihood_gradient_impl,
    _log_likelihood_impl,
    _log_partition_impl,
)
from chaincrf.crf.kernels.fused.registered import log_likelihood_sum_op

__all__ = ["CompiledLikelihoodSum", "LogLikelihood", "LogPartition"]


class LogPartition(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        emissions: Tensor,
        mask: Tensor,
        start: Tensor,
        transitions: Tensor,
        end: Tensor,
        validate: bool,
    ) -> tuple[Tensor, Tensor]:
        log_z, lengths = _log_partition_impl(emissions, mask, start, transitions, end, validate)
        ctx.save_for_backward(emissions, lengths, start, transitions, end)
        ctx.mark_non_differentiable(lengths)
        return log_z, lengths

    @staticmethod
    def backward(
        ctx: Any, grad: Tensor, _grad_lengths: Tensor | None
    ) -> tuple[Tensor, None, Tensor, Tensor, Tensor, None]:
        emissions, lengths, start, transitions, end = ctx.saved_tensors
        grads = _forward_backward_impl(grad, emissions, _NO_TAGS, lengths, start, transitions, end)[
            :4
        ]
        d_em, d_start, d_trans, d_end = grads
        return d_em, None, d_start, d_trans, d_end, None


class LogLikelihood(torch.autograd.Function):
    """The log-likelihood times ``scale`` (-1: the negative log-likelihood, with no negation
    node), per row or (``total``) summed (with no reduction node); when a gradient will be
    needed, the forward pass runs the forward-backward kernel once and keeps the gradient of a
    unit output (one pass over the rows instead of a forward and, later, a forward-backward)."""

    @staticmethod
    def forward(
        ctx: Any,
        emissions: Tensor,
        tags: Tensor,
        mask: Tensor,
        start: Tensor,
        transitions: Tensor,
        end: Tensor,
        constrained: bool,
        validate: bool,
        scale: float = 1.0,
        total: bool = False,
    ) -> Tensor:
        dtype = _NUMPY_DTYPES[emissions.dtype]
        if not any(ctx.needs_input_grad):
            llh: Tensor = _log_likelihood_impl(
                emissions, tags, mask, start, transitions, end, constrained, validate
            )[0]
            llh = llh if scale == 1.0 else llh * scale
            return llh.sum() if total else llh
        scores = (start, transitions, end)
        lengths, unit, log_z, gold = _likelihood_gradient_impl(
            emissions, tags, mask, *scores, validate, scale
        )
        if constrained:
            _check_gold(gold)
        ctx.save_for_backward(emissions, tags, lengths, start, transitions, end, *unit)
        ctx.scale = scale
        rows = (gold - log_z) * scale
        return torch.from_numpy(np.asarray(rows.sum() if total else rows, dtype=dtype))

    @staticmethod
    def backward(
        ctx: Any, grad: Tensor
    ) -> tuple[Tensor, None, None, Tensor, Tensor, Tensor, None, None, None, None]:
        emissions, tags, lengths, start, transitions, end, *unit = ctx.saved_tensors
        # one weight for every row (a sum's gradient: a 0-d total's, or expanded: stride 0):
        # scale the sums; a weight of exactly 1 (a summed loss) leaves them as they are
        if grad.dim() == 0:
            weight: float | None = float(grad)
        else:
            B = grad.shape[0]
            one = B and (B == 1 or grad.stride(0) == 0 or bool((grad == grad[0]).all()))
            weight = float(grad[0]) if one else None
        if weight is not None:
            if weight == 1.0:
                return unit[0], None, None, *unit[1:], None, None, None, None
            d_em, d_start, d_trans, d_end = (g * weight for g in unit)
        else:  # the unit gradients were ``scale``'s: the rows' own weights times it
            weights = grad if ctx.scale == 1.0 else grad * ctx.scale
            grads = _forward_backward_impl(
                weights, emissions, tags, lengths, start, transitions, end
            )[:4]
            d_em, d_start, d_trans, d_end = grads
        return d_em, None, None, d_start, d_trans, d_end, None, None, None, None


class CompiledLikelihoodSum(torch.autograd.Function):
    """What torch.compile traces for a reduced likelihood on the fused kernel: ``weight`` times
    the rows' summed log-likelihood and its gradient from one call of
    ``chaincrf::log_likelihood_sum`` (no second pass over the rows); the backward only scales
    that gradient. (The op has no autograd kernel of its own: see
    :mod:`chaincrf.crf.kernels.fused.registered`.)"""

    @staticmethod
    def forward(
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
        args = (emissions, tags, mask, start, transitions, end, constrained, validate)
        out: tuple[Tensor, Tensor, Tensor, Tensor, Tensor] = log_likelihood_sum_op(
            *args, weight, with_gradient
        )
        return out

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        ctx.save_for_backward(*output[1:])
        ctx.mark_non_differentiable(*output[1:])

    @staticmethod
    def backward(
        ctx: Any, grad: Tensor, *_unused: Tensor | None
    ) -> tuple[Tensor, None, None, Tensor, Tensor, Tensor, None, None, None, None]:
        d_em, d_start, d_trans, d_end = ctx.saved_tensors
        scaled = (d_start * grad, d_trans * grad, d_end * grad)
        return d_em * grad, None, None, *scaled, None, None, None, None
