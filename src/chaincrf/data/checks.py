"""Data that does not fit the recipe says so, with counts (issue 20).

:func:`warn_about_corpus` runs in the data module's ``setup`` once the splits are read and the
vocabularies built: a training set smaller than one batch, span labels that mix IOB1 and IOB2,
labels of dev/test never seen in training, and pretrained vectors that cover few of the words
(a language the vectors mostly lack). Each is one warning naming the file and the counts; the
labels unseen in training then also fail (or are skipped with ``skip_bad_sentences``) when their
split is encoded, as before.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

from chaincrf.data.corpus import Where, fresh_openings, iob_styles

logger = logging.getLogger("chaincrf.data.datamodule")

MIN_PRETRAINED_COVERAGE = 0.5
"""Below this share of the vocabulary's words having a pretrained vector, the vectors are probably
for another language (GloVe covers 93.7% of CoNLL-2003's training words, 95% of UD-EWT's)."""


MAX_NAMED = 5
"""The places a warning names at most (then "and N more")."""


def _mixed_schemes(datamodule: Any, train: Sequence[Any], train_file: Any) -> str | None:
    """The warning for training labels that mix IOB1 and IOB2, naming the minority's spans by
    file and line (:data:`MAX_NAMED` of them), or None."""
    iob1, iob2 = iob_styles(s.labels for s in train)
    if not (iob1 and iob2):
        return None
    odd = "I" if datamodule.original_scheme == "BIO" else "B"
    where = Where(datamodule.resolve, datamodule.format, False)
    places = [
        where.error("train", sentence, offset, "")
        for sentence in train
        for offset, prefix in fresh_openings(sentence.labels)
        if prefix == odd
    ]
    named = ", ".join(
        f"{p.path}:{p.line}" if p.line is not None else p.path for p in places[:MAX_NAMED]
    )
    more = f" and {len(places) - MAX_NAMED} more" if len(places) > MAX_NAMED else ""
    name = "IOB2" if datamodule.original_scheme == "BIO" else "IOB1"
    return (
        f"{train_file}: the labels mix IOB1 and IOB2: {iob1} spans open with I- (IOB1) and "
        f"{iob2} with B- where IOB1 writes I- (IOB2); read as {name}, the scheme of most "
        f"spans; the {len(places)} opening with {odd}- instead: {named}{more} (check them, or "
        "set data.source_scheme)"
    )


def warn_about_corpus(datamodule: Any) -> list[str]:
    """Log (and return) one warning per problem of the data module's set-up corpus."""
    warnings: list[str] = []
    train = datamodule.sentences.get("train", [])
    train_file = datamodule.resolve("train")
    batch = datamodule.batch_size
    if train and batch is not None and len(train) < batch:
        warnings.append(
            f"{train_file}: {len(train)} training sentences, fewer than one batch "
            f"(batch_size={batch}): one optimiser step per epoch; try "
            f"data.batch_size={max(1, len(train) // 4)}"
        )
    if datamodule.scheme is not None and datamodule.original_scheme in ("IOB1", "BIO"):
        mixed = _mixed_schemes(datamodule, train, train_file)
        if mixed is not None:
            warnings.append(mixed)
    encoder = datamodule.encoder
    if encoder is not None and train:
        known = set(encoder.tags.itos)
        for split in ("dev", "test"):
            unseen: Counter[str] = Counter()
            for sentence in datamodule.sentences.get(split, []):
                labels = sentence.labels
                if labels and encoder.scheme is not None:
                    try:
                        labels = encoder.to_training_scheme(labels)
                    except ValueError:
                        continue  # a scheme error, reported when the split is encoded
                unseen.update(
                    orig for orig, tag in zip(sentence.labels, labels) if tag not in known
                )
            if unseen:
                listed = ", ".join(f"{label} ({n})" for label, n in unseen.most_common(10))
                warnings.append(
                    f"{datamodule.resolve(split)}: {sum(unseen.values())} tokens with "
                    f"{len(unseen)} labels never seen in training: {listed}"
                )
    coverage = datamodule.pretrained_coverage
    if coverage is not None and coverage["rate"] < MIN_PRETRAINED_COVERAGE:
        warnings.append(
            f"pretrained vectors {datamodule.pretrained} cover only {coverage['found']} of "
            f"{coverage['total']} words ({100 * coverage['rate']:.1f}%): the corpus is probably in "
            "a language they lack; train without them (embeddings=default data.pretrained=null)"
        )
    for warning in warnings:
        logger.warning("%s", warning)
    return warnings


def check_options(
    dev_fraction: float | None, dev: str | None, min_freq: int, max_word_chars: int
) -> None:
    """The data module's scalar options (``ValueError`` naming the first wrong one)."""
    if dev_fraction is not None:
        if not 0.0 < dev_fraction < 1.0:
            raise ValueError(f"dev_fraction must be in (0, 1); got {dev_fraction}")
        if dev is not None:
            raise ValueError(
                f"dev_fraction and dev are exclusive; got dev_fraction={dev_fraction}, dev={dev!r}"
            )
    for name, value in (("min_freq", min_freq), ("max_word_chars", max_word_chars)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1; got {value!r}")


__all__ = [
    "MAX_NAMED",
    "MIN_PRETRAINED_COVERAGE",
    "check_options",
    "fresh_openings",
    "iob_styles",
    "warn_about_corpus",
]
