"""The CRF's own exception types."""

from __future__ import annotations

__all__ = ["NonFiniteInputError"]


class NonFiniteInputError(ValueError):
    """NaN or +inf emissions where the mask is on, or NaN/+inf CRF parameters (a ``ValueError``)."""
