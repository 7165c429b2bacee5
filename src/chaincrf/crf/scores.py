"""The one scoring of the CRF: its parameters as the scores every computation uses (the layer,
its TorchScript form, the span confidences). Written for TorchScript too. Imports only torch."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["effective_scores"]


def effective_scores(
    start: Tensor,
    trans: Tensor,
    end: Tensor,
    start_allowed: Tensor | None,
    trans_allowed: Tensor | None,
    end_allowed: Tensor | None,
    constrained: bool,
    dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor]:
    """Start (K,), transition (K, K) indexed ``[from, to]`` and end (K,) scores in ``dtype``;
    with ``constrained``, ``-inf`` where the bool ``*_allowed`` masks (same shapes) forbid
    (without, the masks are not read: None will do). Differentiable w.r.t. the scores (0
    gradient where forbidden)."""
    if start.dtype != dtype:
        start, trans, end = start.to(dtype), trans.to(dtype), end.to(dtype)
    if constrained:
        assert start_allowed is not None and trans_allowed is not None and end_allowed is not None
        # a Python scalar, not a tensor made on the host: no copy to the device, one kernel each
        start = torch.where(start_allowed, start, float("-inf"))
        trans = torch.where(trans_allowed, trans, float("-inf"))
        end = torch.where(end_allowed, end, float("-inf"))
    return start, trans, end
