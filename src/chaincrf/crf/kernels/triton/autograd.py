"""The Triton likelihood's autograd Function for eager calls: one forward launch, one backward
launch, called directly (:mod:`chaincrf.crf.kernels.triton.launch`), without the custom-op
dispatcher's Python layers; under torch.compile / torch.export the custom ops of
:mod:`chaincrf.crf.kernels.triton.custom_ops` run instead, with the same launches."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from chaincrf.crf.kernels.triton import launch as kernels

__all__ = ["Likelihood"]


class Likelihood(torch.autograd.Function):
    """The likelihood's forward launch and its backward launch, for eager calls: the custom
    ops' launches without the dispatcher's Python layers (several times the kernels' own time
    on one sentence: ``scripts/bench_crf_gpu.py --sections launches`` reports the host time
    per call; ``--sections host`` chaincrf's share, on the CPU). The options travel as one
    tuple, and the gold scores and checks (``aux``) are an output only when asked for: each
    argument and output costs autograd host time, every call."""

    @staticmethod
    def forward(
        ctx: Any,
        emissions: Tensor,
        tags: Tensor | None,
        mask: Tensor,
        start: Tensor,
        transitions: Tensor,
        end: Tensor,
        options: tuple[float, bool, bool, bool, bool, bool],
    ) -> Tensor | tuple[Tensor, Tensor]:
        scale, keep_alpha, accumulator, total, with_aux, check = options
        em, (s, t, e) = kernels.prepared(emissions, start, transitions, end)
        if tags is not None and not tags.is_contiguous():
            tags = tags.contiguous()
        if not mask.is_contiguous():
            mask = mask.contiguous()
        out, aux, alpha, acc = kernels.forward(
            em, tags, mask, s, t, e, scale, keep_alpha, accumulator, check
        )
        log_z = aux[0] if tags is not None else out
        ctx.save_for_backward(em, tags, mask, t, e, alpha, log_z, aux[2])  # prepared: as they are
        ctx.acc, ctx.scale, ctx.added = acc, scale, False
        ctx.dtypes = (emissions.dtype, start.dtype, transitions.dtype, end.dtype)
        # the rows' sum as this call's output: autograd runs no reduction node, and the
        # backward reads the scalar gradient for every row (stride 0); one row is its own sum
        # (a view: no launch)
        result = (out.view(()) if out.shape[0] == 1 else out.sum()) if total else out
        if not with_aux:
            return result
        ctx.mark_non_differentiable(aux)
        ctx.set_materialize_grads(False)  # no zeros made for ``aux``'s (absent) gradient
        return result, aux

    @staticmethod
    def backward(
        ctx: Any, grad: Tensor | None, *_aux: Tensor | None
    ) -> tuple[Tensor | None, None, None, Tensor | None, Tensor | None, Tensor | None, None]:
        if grad is None:  # undefined (grads not materialised): zero, as are the inputs'
            return None, None, None, None, None, None, None
        em, tags, mask, transitions, end, alpha, log_z, flags = ctx.saved_tensors
        acc = ctx.acc if ctx.acc.numel() > 0 else None
        if acc is not None:
            if ctx.added:  # a second backward through a retained graph: a new zeroed buffer
                # (the first backward's gradients may live on in the old one, as a .grad)
                acc = ctx.acc = torch.zeros_like(acc)
            ctx.added = True
        d_em, d_par = kernels.backward(
            grad, em, tags, mask, transitions, end, alpha, log_z, ctx.scale, True, acc, flags
        )
        K = d_par.shape[1]
        d_start, d_trans, d_end = d_par[0], d_par[1 : K + 1], d_par[K + 1]
        em_dtype, start_dtype, trans_dtype, end_dtype = ctx.dtypes
        computed = d_par.dtype  # (a conversion only where the dtypes differ: host time)
        if d_em.dtype != em_dtype:
            d_em = d_em.to(em_dtype)
        if computed != start_dtype:
            d_start = d_start.to(start_dtype)
        if computed != trans_dtype:
            d_trans = d_trans.to(trans_dtype)
        if computed != end_dtype:
            d_end = d_end.to(end_dtype)
        return d_em, None, None, d_start, d_trans, d_end, None
