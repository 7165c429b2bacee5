"""A corpus checked and encoded: the files' tag scheme detected, every label checked against it,
the vocabularies built on the training split, and each split turned into encoded examples —
each bad sentence a :class:`~chaincrf.data.readers.DataFormatError` naming its file and line
(or, with ``skip_bad_sentences``, skipped and counted). The data module calls these; they know
no model."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from chaincrf.data import schemes as constraints
from chaincrf.data.batching import EncodedDataset
from chaincrf.data.readers import DataFormatError, Sentence
from chaincrf.data.vocab import SentenceEncoder, Vocabulary, normalize_word

__all__ = [
    "Where",
    "WordOptions",
    "build_encoder",
    "check_scheme",
    "detect_original_scheme",
    "encode_split",
    "fresh_openings",
    "iob_styles",
    "split_dev",
    "tag_vocabulary",
]

logger = logging.getLogger("chaincrf.data.datamodule")


@dataclass(frozen=True)
class Where:
    """Where a sentence's error points, and what to do with it.

    Attributes:
        resolve: split name -> its file's path (None for an unset split).
        format: ``"columns"`` (a sentence's tokens on consecutive lines) or ``"conllu"``.
        skip_bad_sentences: skip bad sentences with one counted warning instead of failing.
    """

    resolve: Callable[[str], Path | None]
    format: str
    skip_bad_sentences: bool

    def error(self, split: str, sentence: Sentence, offset: int, reason: str) -> DataFormatError:
        """The error of token ``offset`` of ``sentence`` in ``split``'s file."""
        path = self.resolve(split) or self.resolve("train")
        line = None
        if sentence.line is not None:
            line = sentence.line + offset if self.format == "columns" else sentence.line
            if self.format != "columns":
                reason = f"token {offset + 1} of the sentence starting here: {reason}"
        return DataFormatError(path, line, reason)

    def skip_or_raise(self, split: str, errors: list[DataFormatError]) -> None:
        """Raise the first error, or (``skip_bad_sentences``) log how many were skipped."""
        if not errors:
            return
        if not self.skip_bad_sentences:
            raise errors[0]
        logger.warning(
            "skipped %d sentence(s) of %s with bad labels; the first: %s",
            len(errors),
            split,
            errors[0],
        )


def split_dev(
    train: list[Sentence], fraction: float, seed: int
) -> tuple[list[Sentence], list[Sentence]]:
    """A fixed ``fraction`` of the training file as dev (chosen by ``seed``, independent of the
    training seed), in file order: (train, dev)."""
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    dev_ids = set(order[: round(fraction * len(train))])
    return (
        [s for i, s in enumerate(train) if i not in dev_ids],
        [s for i, s in enumerate(train) if i in dev_ids],
    )


def fresh_openings(labels: Sequence[str]) -> Iterator[tuple[int, str]]:
    """(offset, prefix) of each span that opens fresh (at the sentence start, after ``O`` or
    after another type) with a ``B-`` or ``I-`` label: IOB2 opens all of them with ``B-``, IOB1
    with ``I-``."""
    prev = "O"
    for offset, label in enumerate(labels):
        prefix, kind = label[:1], label[2:]
        if prefix in ("B", "I") and (prev == "O" or prev[2:] != kind):
            yield offset, prefix
        prev = label


def iob_styles(sequences: Iterable[Sequence[str]]) -> tuple[int, int]:
    """(spans opened by ``I-`` as IOB1 writes them, spans opened by ``B-`` where IOB1 writes
    ``I-``: at a sentence start, after ``O`` or after another type), in B/I labels."""
    iob1 = iob2 = 0
    for labels in sequences:
        for _, prefix in fresh_openings(labels):
            if prefix == "I":
                iob1 += 1
            else:
                iob2 += 1
    return iob1, iob2


def detect_original_scheme(
    train: list[Sentence], scheme: str | None, source_scheme: str | None, where: Where
) -> str | None:
    """The files' scheme: ``source_scheme`` if set, else detected on the training split (None
    without a training ``scheme``: labels that are not spans). Labels that mix IOB1 and IOB2
    (spans opening with ``I-`` and with ``B-`` where IOB1 writes ``I-``) are read in the scheme
    most spans follow, IOB1 on a tie; the data module's checks name the other spans."""
    if scheme is None:
        return None
    if source_scheme is not None:
        return source_scheme
    detected = constraints.detect_scheme(s.labels for s in train)
    if detected == "IOB1":  # some span opens with I-: the majority decides (a stray one in IOB2)
        iob1, iob2 = iob_styles(s.labels for s in train)
        return "BIO" if iob2 > iob1 else "IOB1"
    if detected is not None:
        return detected
    for sentence in train:
        for offset, label in enumerate(sentence.labels):
            try:
                constraints.split_label(label, "BIOES")
            except ValueError:
                raise where.error(
                    "train",
                    sentence,
                    offset,
                    f"label {label!r} is not a span label ('O' or '<B/I/E/S>-<type>'); "
                    f"set scheme: null for labels that are not spans",
                ) from None
    return scheme  # every label is "O"


def check_scheme(
    split: str, sentences: list[Sentence], original_scheme: str, where: Where
) -> list[Sentence]:
    """The sentences whose labels fit ``original_scheme`` (the others raise, or are skipped)."""
    try:
        for sentence in sentences:
            constraints.validate_labels(sentence.labels, original_scheme)
        return sentences
    except ValueError:
        pass  # find every bad sentence below, with its line
    kept, errors = [], []
    for sentence in sentences:
        error = None
        for offset, label in enumerate(sentence.labels):
            try:
                constraints.split_label(label, original_scheme)
            except ValueError as problem:
                error = where.error(split, sentence, offset, str(problem))
                break
        if error is None:
            kept.append(sentence)
        else:
            errors.append(error)
    where.skip_or_raise(split, errors)
    return kept


@dataclass(frozen=True)
class WordOptions:
    """How words enter the vocabulary (the data module's settings of the same names)."""

    lowercase: bool
    digits_to_zero: bool
    min_freq: int
    max_word_chars: int
    feature_columns: Sequence[int | str]

    def normalize(self, token: str) -> str:
        return normalize_word(token, self.lowercase, self.digits_to_zero)


def build_encoder(
    train: list[Sentence],
    tags: Vocabulary,
    scheme: str | None,
    original_scheme: str | None,
    options: WordOptions,
    pretrained_words: Callable[[Iterable[str]], set[str]] | None = None,
    extra_words: Iterable[str] = (),
) -> SentenceEncoder:
    """The vocabularies of the training split.

    Args:
        train: the training sentences.
        tags: the tag vocabulary (:func:`tag_vocabulary`).
        scheme, original_scheme: the training and the files' schemes.
        options: word normalisation and vocabulary settings.
        pretrained_words: given words -> those with a pretrained vector (kept whatever their
            frequency), or None without pretrained vectors.
        extra_words: dev/test words to add when they have a pretrained vector.
    """
    words = [options.normalize(t) for s in train for t in s.tokens]
    keep: set[str] = set()
    if pretrained_words is not None:
        keep = pretrained_words(set(words))
        seen = set(words)
        extra = sorted(pretrained_words({options.normalize(t) for t in extra_words} - seen))
        words.extend(extra)
        keep.update(extra)
    return SentenceEncoder(
        Vocabulary.build(words, min_freq=options.min_freq, keep=keep),
        Vocabulary.build(c for s in train for t in s.tokens for c in t[: options.max_word_chars]),
        tags,
        scheme=scheme,
        original_scheme=original_scheme,
        lowercase=options.lowercase,
        digits_to_zero=options.digits_to_zero,
        max_word_chars=options.max_word_chars,
        features=[
            Vocabulary.build(value for s in train for value in s.features[k])
            for k in range(len(options.feature_columns))
        ],
        feature_columns=list(options.feature_columns) or None,
    )


def tag_vocabulary(
    train: list[Sentence], train_file: list[Sentence], scheme: str | None, original: str | None
) -> Vocabulary:
    """The tags: with a scheme, every tag of the training scheme for the span types of the
    whole training file (with ``dev_fraction`` it also holds the dev part, so a label of the
    file is never "unseen" in the dev split cut from it); without, the labels seen, sorted."""
    if scheme is None:
        return Vocabulary.build(
            (label for s in train_file for label in s.labels), specials=False, order="sorted"
        )
    types = {
        constraints.split_label(label, original)[1]
        for s in train
        for label in s.labels
        if label != "O"
    }
    for sentence in train_file:
        try:
            constraints.validate_labels(sentence.labels, original)
        except ValueError:
            continue  # reported (or skipped) when its split is encoded
        types.update(label[2:] for label in sentence.labels if label != "O")
    return Vocabulary(constraints.tag_inventory(types, scheme))


def encode_split(
    split: str, sentences: list[Sentence], encoder: SentenceEncoder, where: Where
) -> tuple[list[Sentence], EncodedDataset]:
    """The sentences kept and their encoded examples (labels in the training scheme)."""
    if encoder.scheme is not None:
        sentences = check_scheme(split, sentences, encoder.original_scheme, where)
    kept, examples, errors = [], [], []
    tag_index = encoder.tags.stoi
    for sentence in sentences:
        if sentence.labels and len(sentence.labels) != len(sentence.tokens):
            errors.append(where.error(split, sentence, 0, "tokens and labels differ in number"))
            continue
        labels = encoder.to_training_scheme(sentence.labels) if sentence.labels else []
        unseen = next((i for i, label in enumerate(labels) if label not in tag_index), None)
        if unseen is not None:
            errors.append(
                where.error(
                    split,
                    sentence,
                    unseen,
                    f"label {sentence.labels[unseen]!r} was not seen in the training data "
                    f"(known tags: {', '.join(encoder.tags.itos[:20])}"
                    f"{', ...' if len(encoder.tags) > 20 else ''})",
                )
            )
            continue
        example = encoder.encode(sentence.tokens, features=sentence.features)
        if labels:
            example["tags"] = [tag_index[label] for label in labels]
        examples.append(example)
        kept.append(sentence)
    where.skip_or_raise(split, errors)
    return kept, EncodedDataset(examples, [s.tokens for s in kept])
