"""The CRF's own exception type, and the errors every kernel raises for bad values (one place
for their wording: the eager and fused kernels must raise the same ones, in the same order)."""

from __future__ import annotations

__all__ = [
    "MaskGapError",
    "NonFiniteInputError",
    "bad_tag",
    "forbidden_gold_path",
    "mask_gap",
    "non_finite_emissions",
    "non_finite_scores",
]


class NonFiniteInputError(ValueError):
    """NaN or +inf emissions where the mask is on, or NaN/+inf CRF parameters (a ``ValueError``)."""


class MaskGapError(ValueError):
    """A kernel's signal that a mask has gaps (the layer then compacts the batch,
    :mod:`chaincrf.crf.gaps`); raised to the caller only by a kernel called directly."""


def mask_gap(row: int) -> MaskGapError:
    return MaskGapError(
        "this kernel takes left-aligned masks (a run of on, then off); "
        f"batch row {row} switches back on after an off position"
    )


def non_finite_scores(name: str) -> NonFiniteInputError:
    return NonFiniteInputError(
        f"CRF parameter {name} holds NaN or +inf values (did training diverge?)"
    )


def non_finite_emissions(row: int, position: int, what: str) -> NonFiniteInputError:
    return NonFiniteInputError(
        f"emissions must be finite (or -inf) where the mask is on; batch row {row}, "
        f"position {position} holds {what}"
    )


def bad_tag(num_tags: int, tag: int, row: int, position: int) -> ValueError:
    return ValueError(
        f"tags must be in [0, {num_tags}) where the mask is on; got {tag} at batch row {row}, "
        f"position {position}"
    )


def forbidden_gold_path(row: int) -> ValueError:
    return ValueError(
        f"tags at batch row {row} break the transition constraints (a forbidden start, "
        "transition or end); the gold path has probability zero"
    )
