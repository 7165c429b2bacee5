"""The tagger's output types: :class:`TaggedSentence` (tags in the corpus's scheme, per-token
confidences, spans, character offsets, top-k alternatives) and :class:`TaggedSpan`; and
:func:`tokenize`, the whitespace rule (the tokenizers with offsets are in
:mod:`chaincrf.predict.tokenizers`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["TaggedSentence", "TaggedSpan", "tokenize"]


def tokenize(text: str) -> list[str]:
    """The whitespace rule for raw text (the ``"whitespace"`` tokenizer without offsets).

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

    ``start_char`` / ``end_char`` (end exclusive) locate the span in the original line when the
    sentence came as raw text (then ``text == line[start_char:end_char]``, the original
    substring); they are None for pre-tokenised input (then ``text`` is the tokens joined by
    spaces).
    """

    type: str
    start: int
    end: int
    text: str
    confidence: float
    start_char: int | None = None
    end_char: int | None = None


@dataclass
class TaggedSentence:
    """One tagged sentence. ``tags`` are in the corpus's original scheme; ``confidences[i]`` is
    the marginal probability of ``tags[i]`` (in the training scheme) at token ``i``.

    ``offsets[i]`` is token ``i``'s ``(start, end)`` character offsets into the original line
    (raw text input), or ``offsets`` is None (token lists, ``Sentence`` objects, CoNLL files).

    ``alternatives`` holds, when prediction asked for ``top_k > 1``, up to ``top_k`` taggings
    of the sentence, best first: ``{"tags": [...], "probability": p}`` with tags in the original
    scheme and ``p`` the posterior probability of that tagging (not rounded); the first one's
    tags are ``tags``. It is empty otherwise, and then left out of :meth:`to_dict`.
    """

    tokens: list[str]
    tags: list[str]
    confidences: list[float]
    spans: list[TaggedSpan] = field(default_factory=list)
    offsets: list[tuple[int, int]] | None = None
    alternatives: list[dict[str, Any]] = field(default_factory=list)

    def attach_offsets(self, line: str, offsets: list[tuple[int, int]]) -> None:
        """Give a sentence tagged from a raw line's tokens its character offsets, in place:
        :attr:`offsets`, and each span's ``start_char``, ``end_char`` and ``text`` (the line's
        original substring).

        Args:
            line: the raw text.
            offsets: per token, ``(start, end)`` into ``line``.

        Raises:
            ValueError: if ``offsets`` does not have one pair per token.
        """
        if len(offsets) != len(self.tokens):
            raise ValueError(
                f"offsets must have one (start, end) pair per token ({len(self.tokens)}); "
                f"got {len(offsets)}"
            )
        self.offsets = list(offsets)
        for span in self.spans:
            span.start_char = offsets[span.start][0]
            span.end_char = offsets[span.end - 1][1]
            span.text = line[span.start_char : span.end_char]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (the JSON-lines output of ``chaincrf-predict``).

        Returns:
            ``tokens``, ``tags``, ``confidences``, ``spans`` (each with ``type``, ``start``,
            ``end``, ``text``, ``confidence``, ``start_char``, ``end_char``), ``offsets`` (a
            list of ``[start, end]`` lists, or None) and, only when not empty,
            ``alternatives``.
        """
        out = asdict(self)
        if self.offsets is not None:
            out["offsets"] = [list(pair) for pair in self.offsets]
        if not self.alternatives:
            del out["alternatives"]
        return out
