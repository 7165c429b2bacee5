"""The layer's arguments checked and laid out: shapes and dtypes only (no values, so nothing
syncs with the device), errors that name the argument, the expected shape and what arrived;
and the reductions of per-row log-likelihoods."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "HALF",
    "REDUCTIONS",
    "allowed_batch_first",
    "batch_first_tags",
    "check_allowed",
    "check_reduction",
    "compute_dtype",
    "emissions_and_mask",
    "reduce",
    "reduce_total",
]

REDUCTIONS = ("none", "sum", "mean", "token_mean")


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"invalid reduction: expected one of {REDUCTIONS}; got {reduction!r}")


def _layout(batch_first: bool, what: str) -> str:
    return f"(batch, seq_len{what})" if batch_first else f"(seq_len, batch{what})"


HALF = (torch.float16, torch.bfloat16)
"""Emission dtypes the CRF computes in float32."""


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the CRF computes in for emissions of ``dtype``: float32 for half precision."""
    return torch.float32 if dtype in HALF else dtype


def emissions_and_mask(
    emissions: Tensor,
    mask: Tensor | None,
    num_tags: int,
    batch_first: bool,
    keep_half: bool = False,
) -> tuple[Tensor, Tensor]:
    """Checks shapes and dtypes; returns batch-first float emissions (B, T, K) (half
    precision upcast to float32 unless ``keep_half``) and a bool mask (B, T)."""
    if not isinstance(emissions, Tensor):
        raise ValueError(f"emissions must be a torch.Tensor; got {type(emissions).__name__}")
    if emissions.dim() != 3:
        raise ValueError(
            f"emissions must have 3 dimensions {_layout(batch_first, f', {num_tags}')}; "
            f"got shape {tuple(emissions.shape)}"
        )
    if emissions.size(2) != num_tags:
        raise ValueError(
            f"emissions must have shape {_layout(batch_first, f', {num_tags}')}: last dimension "
            f"{num_tags} (num_tags); got {tuple(emissions.shape)}"
        )
    if not emissions.is_floating_point():
        raise ValueError(f"emissions must be a floating point tensor; got dtype {emissions.dtype}")
    em = emissions if batch_first else emissions.transpose(0, 1)
    if not keep_half and em.dtype in HALF:
        em = em.float()
    B, T, _ = em.shape
    if mask is None:
        return em, torch.ones(B, T, dtype=torch.bool, device=em.device)
    if not isinstance(mask, Tensor):
        raise ValueError(f"mask must be a torch.Tensor; got {type(mask).__name__}")
    if tuple(mask.shape) != tuple(emissions.shape[:2]):
        raise ValueError(
            f"mask must have shape {_layout(batch_first, '')} = {tuple(emissions.shape[:2])} "
            f"matching emissions; got {tuple(mask.shape)}"
        )
    if mask.dtype not in (torch.bool, torch.uint8):
        raise ValueError(f"mask must be a bool or uint8 tensor; got dtype {mask.dtype}")
    return em, (mask if batch_first else mask.t()).bool()


def batch_first_tags(tags: Tensor, em: Tensor, batch_first: bool) -> Tensor:
    """Checks the tags' shape (that of the batch-first emissions ``em``'s first two
    dimensions, in the layer's layout) and dtype; returns them (B, T) long, batch-first."""
    if not isinstance(tags, Tensor):
        raise ValueError(f"tags must be a torch.Tensor; got {type(tags).__name__}")
    expected = tuple(em.shape[:2]) if batch_first else (em.shape[1], em.shape[0])
    if tuple(tags.shape) != expected:
        raise ValueError(
            f"tags must have shape {_layout(batch_first, '')} = {expected} matching emissions; "
            f"got {tuple(tags.shape)}"
        )
    if tags.is_floating_point() or tags.dtype == torch.bool or tags.is_complex():
        raise ValueError(f"tags must be an integer tensor; got dtype {tags.dtype}")
    return (tags if batch_first else tags.t()).long()


def reduce(llh: Tensor, mask: Tensor, reduction: str) -> Tensor:
    """Per-row log-likelihoods (B,) reduced as ``reduction`` says (``token_mean``: over the
    mask's tokens)."""
    if reduction == "none":
        return llh
    if reduction == "sum":
        return llh.sum()
    if reduction == "mean":
        return llh.mean()
    return llh.sum() / mask.sum().clamp(min=1).to(llh.dtype)  # no 0/0 for all-empty batches


def reduce_total(total: Tensor, mask: Tensor, reduction: str) -> Tensor:
    """The rows' summed log-likelihood (0-d) reduced as ``reduction`` says (not ``none``)."""
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / mask.size(0)  # as llh.mean(): NaN for an empty batch
    return total / mask.sum().clamp(min=1).to(total.dtype)


def check_allowed(allowed: Tensor, emissions: Tensor) -> None:
    """``allowed`` (partial labels) must be a bool tensor shaped like ``emissions``."""
    if not isinstance(allowed, Tensor) or allowed.dtype != torch.bool:
        raise ValueError(
            f"allowed must be a bool tensor; got {getattr(allowed, 'dtype', type(allowed).__name__)}"
        )
    if tuple(allowed.shape) != tuple(emissions.shape):
        raise ValueError(
            f"allowed must have the shape of emissions {tuple(emissions.shape)}; "
            f"got {tuple(allowed.shape)}"
        )


def allowed_batch_first(
    allowed: Tensor, mask_bt: Tensor, batch_first: bool, validate: bool
) -> Tensor:
    """``allowed`` batch-first; with ``validate``, every unmasked position allows a tag."""
    allowed_bt = allowed if batch_first else allowed.transpose(0, 1)
    if validate:
        empty = mask_bt & ~allowed_bt.any(-1)
        if bool(empty.any()):
            b, t = (int(i) for i in empty.nonzero()[0])
            raise ValueError(
                f"allowed must allow at least one tag at every unmasked position; "
                f"batch row {b}, position {t} allows none"
            )
    return allowed_bt
