"""The batch layout: encoded sentences padded into arrays, with numpy only.

The one definition of how a batch lies in memory, shared by training
(:func:`chaincrf.data.batching.collate` wraps the arrays as tensors) and by the ONNX Runtime
predictor (:class:`chaincrf.predict.onnx_predictor.OnnxPredictor` feeds them as they are,
without torch).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from typing import Any

import numpy as np

__all__ = ["bucketed", "check_length_buckets", "pad"]


def check_length_buckets(buckets: Sequence[int] | None) -> None:
    """``None`` or a non-empty list of positive ints (``ValueError`` naming it otherwise)."""
    if buckets is None:
        return
    if isinstance(buckets, (str, bytes)) or not isinstance(buckets, Sequence) or not buckets:
        raise ValueError(f"length_buckets must be a non-empty list of lengths; got {buckets!r}")
    if not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in buckets):
        raise ValueError(f"length_buckets must hold positive ints; got {list(buckets)!r}")


def bucketed(n: int, buckets: Sequence[int] | None) -> int:
    """The padded length of a batch whose longest sentence has ``n`` tokens: the smallest of
    ``buckets`` that holds it, past the largest a multiple of the largest (None: ``n``)."""
    if not buckets or n == 0:
        return n
    fits = [b for b in buckets if b >= n]
    if fits:
        return min(fits)
    top = max(buckets)
    return -(-n // top) * top


def pad(
    items: Sequence[dict[str, Any]], length_buckets: Sequence[int] | None = None
) -> dict[str, np.ndarray]:
    """Pad encoded sentences (:meth:`SentenceEncoder.encode`'s dicts) into one batch.

    With ``length_buckets`` the batch is padded to one of a few lengths (:func:`bucketed`) and
    its characters per token to a power of two, so that the shapes repeat from batch to batch
    (cuDNN's plans, compiled graphs and CUDA graphs are reused); padding changes no result.

    The ids of the whole batch are flattened into one array per field and scattered into the
    padded layout with a boolean mask (a few array operations rather than a padded Python list
    per sentence and token).

    Returns:
        ``words``: int64 (B, T), 0 = pad, 1 = unknown; ``chars``: int64 (B, T, C), 0 = pad, C at
        least 1; ``casing``: int64 (B, T) casing-class ids, 0 = pad; ``mask``: bool (B, T),
        left-aligned; ``tags``: int64 (B, T) training-scheme tag ids, 0 at padding (only when
        every item is labelled); ``features``: int64 (B, T, F) ids of the F feature columns,
        0 = pad (only when the items have features).

    Raises:
        ValueError: if the items do not all have the same number of feature columns.
    """
    B = len(items)
    lengths = np.fromiter((len(item["words"]) for item in items), np.int64, B)
    T = bucketed(int(lengths.max()) if B else 0, length_buckets)
    token_chars = [ids for item in items for ids in item["chars"]]  # N real tokens
    char_lengths = np.fromiter((len(ids) for ids in token_chars), np.int64, len(token_chars))
    C = max(int(char_lengths.max()) if len(token_chars) else 0, 1)
    if length_buckets:
        C = 1 << (C - 1).bit_length()
    F = len(items[0].get("features", ())) if B else 0
    if any(len(item.get("features", ())) != F for item in items):
        raise ValueError("every item of a batch must have the same number of feature columns")

    mask = np.arange(T) < lengths[:, None]  # (B, T)

    def scatter(values: Any, *trailing: int) -> np.ndarray:
        """Ids of the real tokens, in order -> int64 (B, T, *trailing), 0 at padding."""
        out = np.zeros((B, T, *trailing), np.int64)
        out[mask] = np.fromiter(values, np.int64).reshape(-1, *trailing)
        return out

    per_token = np.zeros((len(token_chars), C), np.int64)  # (N, C)
    per_token[np.arange(C) < char_lengths[:, None]] = np.fromiter(
        chain.from_iterable(token_chars), np.int64
    )
    chars = np.zeros((B, T, C), np.int64)
    chars[mask] = per_token
    batch = {
        "words": scatter(chain.from_iterable(item["words"] for item in items)),
        "chars": chars,
        "casing": scatter(chain.from_iterable(item["casing"] for item in items)),
        "mask": mask,
    }
    if B and all("tags" in item for item in items):
        batch["tags"] = scatter(chain.from_iterable(item["tags"] for item in items))
    if F:
        # item["features"]: F columns of n ids each -> n rows of F ids, token-major
        batch["features"] = scatter(
            (i for item in items for row in zip(*item["features"]) for i in row), F
        )
    return batch
