"""Fixed random subsets of a training file, saved as a seed and sentence indices.

Learning curves over training-set size (1,000, 3,500, all sentences) need the same subsets in
every run and every session, without copying a corpus whose licence forbids it: a subset file is
JSON holding the seed, the size, the number of sentences of the file it was drawn from, its
sha256, and the sorted indices of the chosen sentences. ``scripts/make_subsets.py`` writes them;
the data module's ``train_subset=<file>`` trains on one (dev and test unchanged).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

FORMAT = 1


def draw(total: int, size: int, seed: int) -> list[int]:
    """``size`` distinct sentence indices out of ``total``, sorted: the same for the same
    arguments on any machine (Python's ``random.Random(seed).sample``)."""
    if not 0 < size <= total:
        raise ValueError(f"subset size must be in 1..{total} (the file's sentences); got {size}")
    return sorted(random.Random(seed).sample(range(total), size))


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe(source: str | Path, total: int, size: int, seed: int) -> dict[str, Any]:
    """The subset file's content for ``size`` sentences of ``source`` (``total`` sentences)."""
    return {
        "format": FORMAT,
        "source": Path(source).name,
        "source_sha256": sha256(source),
        "sentences": total,
        "size": size,
        "seed": seed,
        "indices": draw(total, size, seed),
    }


def apply(subset_file: str | Path, source: str | Path | None, sentences: Sequence[T]) -> list[T]:
    """The sentences of ``subset_file``'s subset.

    Raises:
        ValueError: naming the subset file, when it is not a subset file, or was drawn from a
            file with another number of sentences or another content.
    """
    path = Path(subset_file)
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"train_subset={path}: not a readable subset file ({error})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("indices"), list):
        raise ValueError(f"train_subset={path}: not a subset file (no 'indices' list)")
    if spec.get("sentences") != len(sentences):
        raise ValueError(
            f"train_subset={path}: drawn from a file of {spec.get('sentences')} sentences "
            f"({spec.get('source')}); the training file has {len(sentences)}"
        )
    if source is not None and spec.get("source_sha256") not in (None, sha256(source)):
        raise ValueError(
            f"train_subset={path}: drawn from another version of {spec.get('source')} "
            f"(sha256 differs from {source})"
        )
    indices = spec["indices"]
    if not all(isinstance(i, int) and 0 <= i < len(sentences) for i in indices):
        raise ValueError(f"train_subset={path}: indices outside 0..{len(sentences) - 1}")
    return [sentences[i] for i in indices]
