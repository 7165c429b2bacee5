"""The tagger's output types and its rule for raw text: :class:`TaggedSentence` (tags in the
corpus's scheme, per-token confidences, spans) and :class:`TaggedSpan`; :func:`tokenize`."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["TaggedSentence", "TaggedSpan", "tokenize"]


def tokenize(text: str) -> list[str]:
    """The documented tokenisation rule for raw text: split on whitespace.

    Args:
        text: one sentence, e.g. ``"EU rejects German call ."``.

    Returns:
        The tokens, e.g. ``["EU", "rejects", "German", "call", "."]``.
    """
    return text.split()


@dataclass
class TaggedSpan:
    """A predicted span: tokens ``start .. end - 1`` have type ``type``.

    ``confidence`` is the model's probability of exactly this labelling of the span (with a CRF:
    the posterior probability of every path that labels these tokens so, computed exactly; with
    the softmax baseline: the product of the tokens' probabilities).
    """

    type: str
    start: int
    end: int
    text: str
    confidence: float


@dataclass
class TaggedSentence:
    """One tagged sentence. ``tags`` are in the corpus's original scheme; ``confidences[i]`` is
    the marginal probability of ``tags[i]`` (in the training scheme) at token ``i``."""

    tokens: list[str]
    tags: list[str]
    confidences: list[float]
    spans: list[TaggedSpan] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (the JSON-lines output of ``chaincrf-predict``)."""
        return asdict(self)
