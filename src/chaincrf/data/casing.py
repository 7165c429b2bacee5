"""Casing classes of tokens (Reimers & Gurevych, 2017): a data feature, computed from the text
by the sentence encoder (:mod:`chaincrf.data.vocab`) and embedded by the model, which needs only
their number (``num_casing`` = ``len(CASING_CLASSES)`` = 8 enables the feature)."""

from __future__ import annotations

__all__ = ["CASING_CLASSES", "casing_id", "casing_ids"]

CASING_CLASSES: tuple[str, ...] = (
    "<pad>",
    "other",
    "numeric",
    "mainly_numeric",
    "all_lower",
    "all_upper",
    "initial_upper",
    "contains_digit",
)
"""Casing classes of a token; a token's casing id is its index here (0 is padding)."""

_CASING_INDEX = {name: i for i, name in enumerate(CASING_CLASSES)}


def casing_id(token: str) -> int:
    """Return the casing class id (an index into :data:`CASING_CLASSES`, never 0) of a token.

    The classes, checked in this order as in Reimers & Gurevych (2017): ``numeric`` (all
    digits), ``mainly_numeric`` (more than half digits), ``all_lower`` (``str.islower``, so
    ``"b2b"`` too), ``all_upper``, ``initial_upper`` (first character upper case),
    ``contains_digit``, else ``other`` (also for the empty string).
    """
    if not token:
        return _CASING_INDEX["other"]
    digits = sum(ch.isdigit() for ch in token)
    if token.isdigit():
        name = "numeric"
    elif digits / len(token) > 0.5:
        name = "mainly_numeric"
    elif token.islower():
        name = "all_lower"
    elif token.isupper():
        name = "all_upper"
    elif token[0].isupper():
        name = "initial_upper"
    elif digits > 0:
        name = "contains_digit"
    else:
        name = "other"
    return _CASING_INDEX[name]


def casing_ids(tokens: list[str]) -> list[int]:
    """Return :func:`casing_id` of each token of a sentence."""
    return [casing_id(token) for token in tokens]
