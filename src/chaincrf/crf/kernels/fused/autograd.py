"""The fused kernels' autograd Functions for eager calls: they call the implementations
(:mod:`chaincrf.crf.kernels.fused.impl`) directly, without the custom-op dispatcher (60-90 us a
call); under torch.compile the custom ops of :mod:`chaincrf.crf.kernels.fused.custom_ops` run
instead, with the same implementations."""

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
