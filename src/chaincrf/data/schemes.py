"""Tag schemes (IOB1, BIO, BIOES) as plain data: allowed transitions, spans and conversion, and
:class:`TagScheme`, the one object the data, the tagger, the metrics and the report use for a
tag set (its training and original schemes, ids to labels, conversion, spans, constraints).

A span label is ``"O"`` or ``"<prefix>-<type>"`` such as ``"B-PER"``; the type may itself contain
``-`` (``"I-ARG-1"`` has type ``"ARG-1"``). The schemes:

- ``"IOB1"``: ``I-X`` marks tokens inside a span of type ``X``; ``B-X`` starts a span of type ``X``
  (the original CoNLL-2003 files use it only where two spans of type ``X`` touch).
- ``"BIO"`` (alias ``"IOB2"``): every span starts with ``B-X``; ``I-X`` continues it.
- ``"BIOES"`` (aliases ``"BILOU"``, ``"IOBES"``): ``S-X`` is a one-token span, ``B-X`` / ``I-X`` /
  ``E-X`` begin, continue and end a longer one. ``U-`` and ``L-`` are accepted as ``S-`` and ``E-``.

Spans are read with the semantics of ``conlleval`` (and seqeval's default, non-strict mode), so
ill-formed sequences (``O I-X``, ``B-X I-Y``) still have one well-defined reading.

Transition matrices are indexed ``[from, to]``: ``transitions_allowed[i, j]`` says whether tag
``labels[j]`` may follow tag ``labels[i]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING

from chaincrf.data.chunks import (
    BILOU_TO_BIOES,
    batch_spans,
    end_of_chunk,
    prefix_and_type,
    start_of_chunk,
)

if TYPE_CHECKING:  # torch is imported where tensors are built: tag schemes need none
    import torch


__all__ = [
    "SCHEMES",
    "Span",
    "TagScheme",
    "allowed_transitions",
    "convert_tags",
    "detect_scheme",
    "get_spans",
    "normalize_scheme",
    "scheme_labels",
    "split_label",
    "tag_inventory",
    "validate_labels",
]

SCHEMES: tuple[str, ...] = ("IOB1", "BIO", "BIOES")
"""The canonical scheme names, as returned by :func:`normalize_scheme`."""

_ALIASES: dict[str, str] = {
    "IOB1": "IOB1",
    "BIO": "BIO",
    "IOB2": "BIO",
    "BIOES": "BIOES",
    "IOBES": "BIOES",
    "BILOU": "BIOES",
}

_PREFIXES: dict[str, frozenset[str]] = {
    "IOB1": frozenset("BI"),
    "BIO": frozenset("BI"),
    "BIOES": frozenset("BIESLU"),
}

Span = tuple[str, int, int]
"""A span as ``(type, start, end)`` with ``end`` exclusive: tokens ``start .. end - 1``."""


def normalize_scheme(scheme: str) -> str:
    """Return the canonical name (``"IOB1"``, ``"BIO"`` or ``"BIOES"``) of a scheme or alias.

    Args:
        scheme: a scheme name, case-insensitive: ``IOB1``, ``BIO``, ``IOB2``, ``BIOES``,
            ``IOBES`` or ``BILOU``.

    Raises:
        ValueError: for any other name; the message lists the valid ones.
    """
    if not isinstance(scheme, str) or scheme.upper() not in _ALIASES:
        raise ValueError(
            f"scheme must be one of {', '.join(sorted(_ALIASES))} (case-insensitive); got {scheme!r}"
        )
    return _ALIASES[scheme.upper()]


def split_label(label: str, scheme: str) -> tuple[str, str]:
    """Split a span label into its prefix and type, checking that it fits ``scheme``.

    Args:
        label: ``"O"`` or ``"<prefix>-<type>"``.
        scheme: a scheme name or alias (see :func:`normalize_scheme`).

    Returns:
        ``(prefix, type)``: ``("O", "")`` for ``"O"``; otherwise the prefix is one of ``B``, ``I``
        (and ``E``, ``S`` for BIOES, with ``L``/``U`` mapped to ``E``/``S``).

    Raises:
        ValueError: if the label does not fit the scheme; the message names the label.
    """
    return _split_label(label, normalize_scheme(scheme))


@lru_cache(maxsize=65536)
def _split_label(label: str, canonical: str) -> tuple[str, str]:
    if label == "O":
        return "O", ""
    if (
        not isinstance(label, str)
        or len(label) < 3
        or label[1] != "-"
        or label[0] not in _PREFIXES[canonical]
    ):
        prefixes = "/".join(sorted(_PREFIXES[canonical]))
        raise ValueError(
            f"label {label!r} does not fit the {canonical} scheme: expected 'O' or "
            f"'<{prefixes}>-<type>'"
        )
    prefix = BILOU_TO_BIOES.get(label[0], label[0])
    return prefix, label[2:]


def validate_labels(labels: Iterable[str], scheme: str) -> None:
    """Raise ``ValueError`` naming the first label that does not fit ``scheme``."""
    canonical = normalize_scheme(scheme)
    for label in labels:
        _split_label(label, canonical)


def allowed_transitions(
    scheme: str, labels: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Which tags may start, end and follow each other under a tag scheme.

    The result is the ``constraints=`` argument of :class:`chaincrf.crf.CRF`.

    IOB1 is given as the corpora use it, not as the textbook states it: ``B-X`` may follow ``O``
    and start a sentence (CoNLL-2003 ``eng.train`` has ``O B-MISC`` twice), but never follows a tag
    of another type (``I-Y B-X`` says nothing ``I-Y I-X`` does not). Everything else is allowed
    in IOB1. BIO forbids ``I-X`` at the start and after anything but ``B-X``/``I-X``. BIOES
    forbids, in addition, ending or leaving a span without its ``E-X``/``S-X``.

    Args:
        scheme: ``"IOB1"``, ``"BIO"`` (alias ``"IOB2"``) or ``"BIOES"`` (aliases ``"BILOU"``,
            ``"IOBES"``), case-insensitive.
        labels: the tag names in tag-id order, e.g. ``["O", "B-PER", "I-PER"]`` (length K).

    Returns:
        ``(start_allowed, end_allowed, transitions_allowed)``: bool tensors of shapes ``(K,)``,
        ``(K,)`` and ``(K, K)``; ``transitions_allowed[i, j]`` is True when tag ``j`` may follow
        tag ``i`` (indexed ``[from, to]``).

    Raises:
        ValueError: for an unknown scheme (the message lists the valid ones) or a label that does
            not fit the scheme (the message names it).
    """
    canonical = normalize_scheme(scheme)
    if isinstance(labels, str):
        raise ValueError(f"labels must be a sequence of label strings; got the string {labels!r}")
    import torch

    parts = [split_label(label, canonical) for label in labels]
    K = len(parts)
    start = torch.zeros(K, dtype=torch.bool)
    end = torch.zeros(K, dtype=torch.bool)
    trans = torch.zeros(K, K, dtype=torch.bool)
    for j, (to_prefix, _) in enumerate(parts):
        start[j] = _may_start(canonical, to_prefix)
        end[j] = _may_end(canonical, to_prefix)
    for i, (from_prefix, from_type) in enumerate(parts):
        for j, (to_prefix, to_type) in enumerate(parts):
            trans[i, j] = _may_follow(canonical, from_prefix, from_type, to_prefix, to_type)
    return start, end, trans


def _may_start(scheme: str, prefix: str) -> bool:
    if scheme == "IOB1":
        return True
    return prefix in ("O", "B", "S")


def _may_end(scheme: str, prefix: str) -> bool:
    if scheme == "BIOES":
        return prefix in ("O", "E", "S")
    return True


def _may_follow(
    scheme: str, from_prefix: str, from_type: str, to_prefix: str, to_type: str
) -> bool:
    same_type = from_prefix != "O" and from_type == to_type
    if scheme == "IOB1":
        if to_prefix == "B":
            return from_prefix == "O" or same_type
        return True
    if scheme == "BIO":
        if to_prefix == "I":
            return same_type
        return True
    # BIOES: inside a span (after B or I) only I or E of the same type; outside, no I or E.
    if from_prefix in ("B", "I"):
        return to_prefix in ("I", "E") and same_type
    return to_prefix in ("O", "B", "S")


def get_spans(tags: Sequence[str], scheme: str) -> list[Span]:
    """Read the spans of a tag sequence with conlleval's (and seqeval's default) semantics.

    Args:
        tags: one sentence's labels, e.g. ``["B-PER", "I-PER", "O"]``.
        scheme: the scheme the tags are written in; every tag is checked against it.

    Returns:
        ``[(type, start, end), ...]`` in order, ``end`` exclusive.

    Raises:
        ValueError: for an unknown scheme or a tag that does not fit it.
    """
    validate_labels(tags, scheme)
    spans: list[Span] = []
    prev_prefix, prev_type = "O", "_"
    begin = 0
    for i, label in enumerate([*tags, "O"]):
        prefix, type_ = prefix_and_type(label)
        if end_of_chunk(prev_prefix, prefix, prev_type, type_):
            spans.append((prev_type, begin, i))
        if start_of_chunk(prev_prefix, prefix, prev_type, type_):
            begin = i
        prev_prefix, prev_type = prefix, type_
    return spans


def _spans_to_tags(spans: Sequence[Span], length: int, scheme: str) -> list[str]:
    tags = ["O"] * length
    previous_end, previous_type = -1, None
    for type_, start, end in spans:
        if scheme == "BIOES" and end - start == 1:
            tags[start] = f"S-{type_}"
        elif scheme == "BIOES":
            tags[start] = f"B-{type_}"
            tags[start + 1 : end - 1] = [f"I-{type_}"] * (end - start - 2)
            tags[end - 1] = f"E-{type_}"
        else:
            if scheme == "BIO" or (previous_end == start and previous_type == type_):
                tags[start] = f"B-{type_}"
            else:
                tags[start] = f"I-{type_}"
            tags[start + 1 : end] = [f"I-{type_}"] * (end - start - 1)
        previous_end, previous_type = end, type_
    return tags


def convert_tags(tags: Sequence[str], source: str, target: str) -> list[str]:
    """Rewrite one sentence's tags from one scheme into another, keeping its spans.

    The spans are read as :func:`get_spans` reads them, so ill-formed input is repaired the way
    conlleval would score it. Converting IOB1 to BIO reproduces the CoNLL-2003 ``iob2`` files.

    Args:
        tags: one sentence's labels in ``source``.
        source: the scheme ``tags`` are written in.
        target: the scheme to write.

    Returns:
        The labels in ``target``, same length as ``tags``.

    Raises:
        ValueError: for an unknown scheme or a tag that does not fit ``source``.
    """
    source_canonical = normalize_scheme(source)
    target_canonical = normalize_scheme(target)
    spans = get_spans(tags, source_canonical)
    return _spans_to_tags(spans, len(tags), target_canonical)


def detect_scheme(sequences: Iterable[Sequence[str]]) -> str | None:
    """Guess the scheme of a corpus's label sequences.

    Args:
        sequences: label sequences, one per sentence.

    Returns:
        ``"BIOES"`` if any label has an ``E-``, ``S-``, ``L-`` or ``U-`` prefix; otherwise
        ``"IOB1"`` if some ``I-X`` starts a span (at the start of a sentence, after ``O`` or after
        another type); otherwise ``"BIO"`` when there is at least one ``B-``/``I-`` label. ``None``
        when the labels are not span labels (e.g. part-of-speech tags) or are all ``O``.
    """
    has_span_label = False
    has_bioes = False
    has_iob1_start = False
    for sequence in sequences:
        prev_prefix, prev_type = "O", ""
        for label in sequence:
            if label == "O":
                prev_prefix, prev_type = "O", ""
                continue
            if len(label) < 3 or label[1] != "-" or label[0] not in "BIESLU":
                return None
            has_span_label = True
            prefix, type_ = BILOU_TO_BIOES.get(label[0], label[0]), label[2:]
            if prefix in ("E", "S"):
                has_bioes = True
            if prefix == "I" and (prev_prefix not in ("B", "I") or prev_type != type_):
                has_iob1_start = True
            prev_prefix, prev_type = prefix, type_
    if not has_span_label:
        return None
    if has_bioes:
        return "BIOES"
    return "IOB1" if has_iob1_start else "BIO"


_LABEL_PREFIXES: dict[str, str] = {"IOB1": "IB", "BIO": "BI", "BIOES": "BIES"}


def scheme_labels(types: Iterable[str], scheme: str) -> list[str]:
    """Every label a corpus in ``scheme`` can write for these span types: ``"O"``, then per
    type in the given order its prefixes (IOB1 ``I-``, ``B-``; BIO ``B-``, ``I-``; BIOES ``B-``,
    ``I-``, ``E-``, ``S-``)."""
    prefixes = _LABEL_PREFIXES[normalize_scheme(scheme)]
    return ["O", *(f"{p}-{t}" for t in types for p in prefixes)]


def tag_inventory(types: Iterable[str], scheme: str) -> list[str]:
    """All tags of ``scheme`` for the given span types: ``"O"`` first, then per sorted type
    (``B-``, ``I-``, and ``E-``, ``S-`` for BIOES): a tag vocabulary that never misses a tag
    a conversion can produce."""
    prefixes = "BIES" if normalize_scheme(scheme) == "BIOES" else "BI"
    return ["O", *(f"{p}-{t}" for t in sorted(set(types)) for p in prefixes)]


@dataclass(frozen=True, eq=False)
class TagScheme:
    """A tag set and its schemes.

    Args:
        labels: the tags in id order, in the training scheme.
        scheme: the training scheme (any alias), or None for tags without spans (POS).
        original: the scheme of the corpus files, in which spans are scored and output is
            written (any alias); defaults to ``scheme``.

    Raises:
        ValueError: for an unknown scheme, an original scheme without a training one, or a
            label that does not fit the training scheme.
    """

    labels: tuple[str, ...]
    scheme: str | None = None
    original: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(self.labels))
        if self.scheme is not None:
            object.__setattr__(self, "scheme", normalize_scheme(self.scheme))
        if self.original is not None:
            if self.scheme is None:
                raise ValueError(
                    f"original_scheme={self.original!r} needs a training scheme; got scheme=None"
                )
            object.__setattr__(self, "original", normalize_scheme(self.original))
        elif self.scheme is not None:
            object.__setattr__(self, "original", self.scheme)

    @property
    def is_span_task(self) -> bool:
        """True when the tags have a span scheme (NER, chunking), False for POS-like tags."""
        return self.scheme is not None

    @cached_property
    def entity_types(self) -> list[str]:
        """Sorted span types, e.g. ``["LOC", "MISC", "ORG", "PER"]`` (empty for POS)."""
        if self.scheme is None:
            return []
        return sorted({label[2:] for label in self.labels if label != "O"})

    @cached_property
    def original_labels(self) -> list[str]:
        """The label set as the corpus writes it (original scheme), for tables and plots."""
        if self.scheme is None or self.original == self.scheme:
            return list(self.labels)
        return scheme_labels(self.entity_types, self.original)

    def to_original(self, tags: Sequence[str], spans: Sequence[Span] | None = None) -> list[str]:
        """One sentence's training-scheme tags in the original scheme (``spans``: their spans,
        :meth:`spans`, when already read)."""
        if self.scheme is None or self.original == self.scheme:
            return list(tags)
        assert self.original is not None  # set with the scheme
        if spans is None:
            return convert_tags(tags, self.scheme, self.original)
        return _spans_to_tags(spans, len(tags), self.original)

    def to_training(self, tags: Sequence[str]) -> list[str]:
        """One sentence's original-scheme tags in the training scheme."""
        if self.scheme is None or self.original == self.scheme:
            return list(tags)
        return convert_tags(tags, self.original, self.scheme)

    def decode(self, ids: Iterable[int] | torch.Tensor, original: bool = False) -> list[str]:
        """One sentence's tag ids (unpadded) as labels (training scheme, or the original)."""
        values = ids.tolist() if hasattr(ids, "tolist") else ids
        tags = [self.labels[i] for i in values]
        return self.to_original(tags) if original else tags

    def decode_batch(
        self, ids: torch.Tensor, mask: torch.Tensor, original: bool = False
    ) -> list[list[str]]:
        """Tag ids (batch, seq_len) as label lists, each cut at its row's length (a
        left-aligned bool ``mask``)."""
        lengths = mask.long().sum(-1).tolist()
        return [self.decode(row[:n], original) for row, n in zip(ids.tolist(), lengths)]

    def spans(self, tags: Sequence[str]) -> list[Span]:
        """The spans of one sentence's training-scheme tags (none without a scheme)."""
        return get_spans(tags, self.scheme) if self.scheme is not None else []

    def batch_spans(self, ids: torch.Tensor, mask: torch.Tensor) -> list[list[Span]]:
        """The spans of each row of a batch of training-scheme tag ids (long (batch, seq_len),
        a left-aligned bool mask), as :meth:`spans` reads each row, found with tensor
        operations (:func:`chaincrf.data.chunks.batch_spans`; none without a scheme)."""
        if self.scheme is None:
            return [[] for _ in range(ids.shape[0])]
        return batch_spans(self.labels, ids, mask)

    def allowed_transitions(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The CRF constraints of the training scheme (None without a scheme)."""
        return allowed_transitions(self.scheme, self.labels) if self.scheme else None
