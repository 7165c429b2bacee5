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
from collections.abc import Iterable, Sequence
from typing import Any

logger = logging.getLogger("chaincrf.data.datamodule")

MIN_PRETRAINED_COVERAGE = 0.5
"""Below this share of the vocabulary's words having a pretrained vector, the vectors are probably
for another language (GloVe covers 93.7% of CoNLL-2003's training words, 95% of UD-EWT's)."""


def iob_styles(sequences: Iterable[Sequence[str]]) -> tuple[int, int]:
    """(spans opened by ``I-`` as IOB1 writes them, spans opened by ``B-`` where IOB1 writes
    ``I-``: at a sentence start, after ``O`` or after another type), in B/I labels."""
    iob1 = iob2 = 0
    for labels in sequences:
        prev = "O"
        for label in labels:
            prefix, kind = label[:1], label[2:]
            opens_fresh = prev == "O" or prev[2:] != kind
            if prefix == "I" and opens_fresh:
                iob1 += 1
            elif prefix == "B" and opens_fresh:
                iob2 += 1
            prev = label
    return iob1, iob2


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
        iob1, iob2 = iob_styles(s.labels for s in train)
        if iob1 and iob2:
            warnings.append(
                f"{train_file}: the labels mix IOB1 and IOB2: {iob1} spans open with I- (IOB1) and "
                f"{iob2} with B- where IOB1 writes I- (IOB2); they are read as "
                f"{datamodule.original_scheme}: convert the file to one scheme, or set "
                "data.source_scheme"
            )
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


__all__ = ["MIN_PRETRAINED_COVERAGE", "iob_styles", "warn_about_corpus"]
