"""Per-split counts of a tagging corpus (:func:`compute_stats`); ``chaincrf-data-stats``
(:mod:`chaincrf.cli.data_stats`) prints them for a data config."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from chaincrf.data import schemes as constraints
from chaincrf.data.readers import Sentence

__all__ = ["SplitStats", "compute_stats"]


@dataclass
class SplitStats:
    """Counts of one split.

    Attributes:
        name: the file.
        sentences: number of sentences.
        tokens: number of tokens.
        documents: number of distinct documents (0 when the file has none).
        longest: tokens in the longest sentence.
        longest_line: line of the longest sentence.
        labels: label -> count, most frequent first.
        oov_rate: share of tokens whose form does not occur in the first (training) file; None
            for the training file itself.
        spans: span type -> count when the labels are span labels (IOB1/BIO/BIOES), else None.
    """

    name: str
    sentences: int
    tokens: int
    documents: int
    longest: int
    longest_line: int | None
    labels: dict[str, int] = field(default_factory=dict)
    oov_rate: float | None = None
    spans: dict[str, int] | None = None


def compute_stats(
    name: str, sentences: Sequence[Sentence], train_vocab: set[str] | None = None
) -> SplitStats:
    """Counts of one split; ``train_vocab`` (token forms of train) gives the OOV rate."""
    tokens = sum(len(s.tokens) for s in sentences)
    longest = max(sentences, key=len, default=None)
    labels = Counter(label for s in sentences for label in s.labels)
    oov = None
    if train_vocab is not None:
        unseen = sum(token not in train_vocab for s in sentences for token in s.tokens)
        oov = unseen / tokens if tokens else 0.0
    scheme = constraints.detect_scheme(s.labels for s in sentences)
    spans = None
    if scheme is not None:
        spans = dict(
            sorted(
                Counter(
                    t for s in sentences for t, _, _ in constraints.get_spans(s.labels, scheme)
                ).items()
            )
        )
    return SplitStats(
        name=name,
        sentences=len(sentences),
        tokens=tokens,
        documents=len({s.doc for s in sentences if s.doc is not None}),
        longest=len(longest) if longest is not None else 0,
        longest_line=longest.line if longest is not None else None,
        labels=dict(labels.most_common()),
        oov_rate=oov,
        spans=spans,
    )
