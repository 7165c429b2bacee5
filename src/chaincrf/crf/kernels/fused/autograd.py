"""The fused kernels' autograd Functions for eager calls: they call the implementations
(:mod:`chaincrf.crf.kernels.fused.impl`) directly, without the custom-op dispatcher (60-90 us a
call); under torch.compile the custom ops of :mod:`chaincrf.crf.kernels.fused.custom_ops` run
instead, with the same implementations."""

from __future__ import annotations

from typing import Any

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

__all__ = ["LogLikelihood", "LogPartition"]


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
    """The log-likelihood; when a gradient will be needed, the forward pass runs the
    forward-backward kernel once and keeps the gradient of a unit output (one pass over the
    rows instead of a forward and, later, a forward-backward)."""

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
    ) -> Tensor:
        if not any(ctx.needs_input_grad):
            return _log_likelihood_impl(
                emissions, tags, mask, start, transitions, end, constrained, validate
            )[0]
        scores = (start, transitions, end)
        lengths, unit, log_z, gold = _likelihood_gradient_impl(
            emissions, tags, mask, *scores, validate
        )
        if constrained:
            _check_gold(gold)
        ctx.save_for_backward(emissions, tags, lengths, start, transitions, end, *unit)
        return torch.from_numpy((gold - log_z).astype(_NUMPY_DTYPES[emissions.dtype]))

    @staticmethod
    def backward(
        ctx: Any, grad: Tensor
    ) -> tuple[Tensor, None, None, Tensor, Tensor, Tensor, None, None]:
        emissions, tags, lengths, start, transitions, end, *unit = ctx.saved_tensors
        B = grad.shape[0]
        # one weight for every row (a sum's gradient is expanded: stride 0): scale the sums;
        # a weight of exactly 1 (a summed loss) leaves them as they are
        if B and (B == 1 or grad.stride(0) == 0 or bool((grad == grad[0]).all())):
            weight = float(grad[0])
            if weight == 1.0:
                return unit[0], None, None, *unit[1:], None, None
            d_em, d_start, d_trans, d_end = (g * weight for g in unit)
        else:
            grads = _forward_backward_impl(grad, emissions, tags, lengths, start, transitions, end)[
                :4
            ]
            d_em, d_start, d_trans, d_end = grads
        return d_em, None, None, d_start, d_trans, d_end, None, None
