"""Masks with gaps: the chain runs over the kept positions.

A mask may switch off and on again inside a row (a first-subword mask under a transformer, a
masked ``[CLS]``, left padding): the masked positions are skipped, and the CRF scores the
path through the kept positions, in order, as if they were adjacent. The layer computes this
by compaction: each row's kept positions move to the front, in order (a stable sort of the
mask), the kernel runs on that left-aligned batch, and per-position results go back to the
original positions (-1 paths, 0 marginals where masked). Gradients flow back through the
gathers. A left-aligned mask never comes here: the kernels see it as before.

Kernels find gaps themselves where that costs nothing (the fused kernel, in the pass that
counts each row's length; every kernel under ``validate``) and raise
:class:`chaincrf.crf.errors.MaskGapError`, which the layer answers by compacting; otherwise
(the eager and Triton kernels without ``validate``) the layer checks the mask first
(:func:`has_gaps`, one comparison and a host synchronisation). The export kernel takes gaps
natively (a masked step keeps its state), in eager, scripted and exported graphs alike.
Importing this module imports only torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from chaincrf.crf import tracing
from chaincrf.crf.errors import MaskGapError
from chaincrf.crf.kernels.eager import ops as eager

__all__ = ["Compaction", "compaction", "has_gaps", "run"]


def has_gaps(mask: Tensor) -> bool:
    """Whether any row of the (B, T) bool mask switches on after an off position."""
    if mask.size(1) < 2:
        return False
    return bool((mask[:, 1:] > mask[:, :-1]).any())


@dataclass(frozen=True)
class Compaction:
    """Kept positions first: ``order[b, i]`` is the original position of compacted position i
    of row b (the kept ones, in order, then the masked ones); ``mask`` is left-aligned."""

    order: Tensor
    mask: Tensor

    def gather(self, x: Tensor) -> Tensor:
        """(B, T, ...) in original positions -> compacted (differentiable)."""
        index = self.order.view(*self.order.shape, *([1] * (x.dim() - 2))).expand_as(x)
        return x.gather(1, index)

    def scatter(self, y: Tensor, batch_dim: int = 0, dim: int = 1) -> Tensor:
        """Compacted (batch at ``batch_dim``, positions at ``dim`` > ``batch_dim``) -> original
        positions; the entries past each row's length (padding: -1 paths, 0 marginals) land
        on the masked positions."""
        shape = [1] * y.dim()
        shape[batch_dim], shape[dim] = self.order.shape
        return torch.empty_like(y).scatter_(dim, self.order.view(shape).expand_as(y), y)

    def scatter_pairs(self, pairs: Tensor) -> Tensor:
        """Compacted pairwise marginals (B, T - 1, K, K) -> original positions: the pair
        (previous kept position, t) is stored at index t - 1; 0 where t is masked or first."""
        B, T = self.order.shape
        full = pairs.new_zeros(B, T, *pairs.shape[2:])
        index = self.order[:, 1:].view(B, T - 1, 1, 1).expand_as(pairs)
        return full.scatter(1, index, pairs)[:, 1:]


def compaction(mask: Tensor) -> Compaction:
    """The compaction of a (B, T) bool mask (a stable sort: kept positions keep their order)."""
    order = torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices
    lengths = mask.sum(1, keepdim=True)
    return Compaction(order, torch.arange(mask.size(1), device=mask.device) < lengths)


def run(
    kernel: ModuleType,
    operation: str,
    em: Tensor,
    mask: Tensor,
    scores: tuple[Tensor, Tensor, Tensor],
    tags: Tensor | None = None,
    k: int = 1,
    constrained: bool = False,
    validate: bool = True,
) -> Any:
    """``operation`` of ``kernel`` (a registered kernel, :mod:`chaincrf.crf.kernels.base`) on
    batch-first inputs whose mask may have gaps: as it is when the mask is left-aligned (or
    the kernel takes gaps natively, or a graph is being traced), else on the compacted batch,
    the results put back in the original positions."""
    call = getattr(kernel.operations(), operation)
    if kernel.GAPS == "native" or tracing.is_compiling():
        return call(em, mask, *scores, tags, k, constrained, validate)
    if kernel.GAPS == "validated" and not validate and has_gaps(mask):
        return _compacted(call, operation, em, mask, scores, tags, k, constrained, validate)
    try:
        return call(em, mask, *scores, tags, k, constrained, validate)
    except MaskGapError:
        return _compacted(call, operation, em, mask, scores, tags, k, constrained, validate)


def _compacted(call, operation, em, mask, scores, tags, k, constrained, validate):
    """The gap path: values checked in the original positions (errors name those), then the
    kernel on the compacted batch, the per-position results put back."""
    if validate:
        eager.validate_values(em, mask, *scores, tags, gaps=True)
    packed = compaction(mask)
    tags_c = None if tags is None else packed.gather(tags)
    out = call(packed.gather(em), packed.mask, *scores, tags_c, k, constrained, False)
    if operation == "viterbi":
        paths, best = out
        return packed.scatter(paths, 0, 2), best
    if operation == "marginals":
        return packed.scatter(out)
    return out  # per row: log-likelihood, log-partition; decode: the kept positions' tags
