"""conlleval's chunk rules (seqeval's default, non-strict mode): where a span ends and where
one starts between two consecutive labels. :func:`chaincrf.data.schemes.get_spans` applies them
to one sentence; :func:`batch_spans` applies them to a batch of tag ids at once, as tables
over a label set, with tensor operations (prediction: no Python loop over the tokens)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where tensors are built: the rules need none
    import torch

__all__ = ["BILOU_TO_BIOES", "batch_spans", "end_of_chunk", "prefix_and_type", "start_of_chunk"]

BILOU_TO_BIOES = {"L": "E", "U": "S"}
"""BILOU's prefixes that BIOES writes otherwise (``L-`` is ``E-``, ``U-`` is ``S-``)."""


@lru_cache(maxsize=65536)
def prefix_and_type(label: str) -> tuple[str, str]:
    """Prefix and type as seqeval's default mode reads them (``O`` has type ``"_"``)."""
    prefix = BILOU_TO_BIOES.get(label[:1], label[:1])
    type_ = label[1:].split("-", maxsplit=1)[-1] or "_"
    return prefix, type_


def end_of_chunk(prev_prefix: str, prefix: str, prev_type: str, type_: str) -> bool:
    """Whether a span ends before a label (``prefix``, ``type_``) that follows another."""
    if prev_prefix in ("E", "S"):
        return True
    if prev_prefix in ("B", "I") and prefix in ("B", "S", "O"):
        return True
    return prev_prefix != "O" and prev_type != type_


def start_of_chunk(prev_prefix: str, prefix: str, prev_type: str, type_: str) -> bool:
    """Whether a span starts at a label (``prefix``, ``type_``) that follows another."""
    if prefix in ("B", "S"):
        return True
    if prev_prefix in ("E", "S", "O") and prefix in ("E", "I"):
        return True
    return prefix != "O" and prev_type != type_


@lru_cache(maxsize=64)
def _tables(
    labels: tuple[str, ...],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """The rules over ``labels`` and a sentinel ``"O"`` (index ``len(labels)``): ``starts`` and
    ``ends`` bool (K + 1, K + 1) ``[previous, current]``, each label's type index (K + 1,),
    and the types."""
    import torch

    parsed = [prefix_and_type(label) for label in labels] + [("O", "_")]
    types = tuple(sorted({type_ for prefix, type_ in parsed if prefix != "O"}))
    index = {type_: i for i, type_ in enumerate(types)}
    starts = [[start_of_chunk(pp, p, pt, t) for p, t in parsed] for pp, pt in parsed]
    ends = [[end_of_chunk(pp, p, pt, t) for p, t in parsed] for pp, pt in parsed]
    type_ids = [index.get(type_, 0) for _, type_ in parsed]
    return torch.tensor(starts), torch.tensor(ends), torch.tensor(type_ids), types


def batch_spans(
    labels: Sequence[str], ids: torch.Tensor, mask: torch.Tensor
) -> list[list[tuple[str, int, int]]]:
    """The spans of each row of a batch of tag ids, as ``get_spans`` reads each row, found with
    tensor operations on the host (ids on an accelerator are copied over once, with their
    mask).

    Args:
        labels: the tags in id order.
        ids: long (batch, seq_len) tag ids; values off the mask are ignored.
        mask: bool (batch, seq_len), left-aligned.

    Returns:
        Per row, its spans ``(type, start, end)`` in order, ``end`` exclusive.
    """
    import torch

    starts, ends, type_ids, types = _tables(tuple(labels))
    B, K = ids.shape[0], len(labels)  # K: the sentinel "O" before and after each row
    cur = torch.where(mask.cpu(), ids.cpu(), K)
    cur = torch.cat([cur, cur.new_full((B, 1), K)], dim=1)  # (B, T + 1)
    prev = torch.cat([cur.new_full((B, 1), K), cur[:, :-1]], dim=1)
    begun = starts[prev, cur].nonzero()  # (N, 2), row-major
    ended = ends[prev, cur].nonzero()  # (N, 2): each span's end, in order
    if begun.shape != ended.shape:  # the rules always alternate starts and ends
        raise AssertionError(f"{begun.shape[0]} span starts but {ended.shape[0]} ends")
    last = cur[ended[:, 0], ended[:, 1] - 1]  # the span's last tag (get_spans's type)
    found = torch.stack([begun[:, 0], type_ids[last], begun[:, 1], ended[:, 1]])
    result: list[list[tuple[str, int, int]]] = [[] for _ in range(B)]
    for row, type_id, start, end in zip(*found.tolist()):
        result[row].append((types[type_id], start, end))
    return result
