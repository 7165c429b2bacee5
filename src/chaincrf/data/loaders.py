"""Batches of encoded sentences: length-bucketed DataLoaders (sharded under DDP) and the
encoding of in-memory sentences or token lists with a data module's vocabularies."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch.utils.data import DataLoader

from chaincrf.data.batching import BucketBatchSampler, EncodedDataset, collate
from chaincrf.data.layout import check_length_buckets
from chaincrf.data.readers import Sentence
from chaincrf.data.vocab import SentenceEncoder

__all__ = ["batch_loader", "check_batching", "encode_items", "replicas"]


def check_batching(
    batch_size: int | None,
    max_tokens: int | None,
    eval_batch_size: int | None,
    length_buckets: Sequence[int] | None = None,
) -> None:
    """Exactly one of ``batch_size`` (sentences) and ``max_tokens`` sets the training batches;
    each set value a positive int, ``length_buckets`` None or positive ints (``ValueError``
    naming it otherwise)."""
    check_length_buckets(length_buckets)
    if (batch_size is None) == (max_tokens is None):
        raise ValueError(
            "exactly one of batch_size and max_tokens must be set; "
            f"got batch_size={batch_size}, max_tokens={max_tokens}"
        )
    for name, value in (
        ("batch_size", batch_size),
        ("max_tokens", max_tokens),
        ("eval_batch_size", eval_batch_size),
    ):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive integer; got {value!r}")


def replicas(trainer: Any) -> tuple[int, int]:
    """(number of ranks, this rank): the trainer's, else torch.distributed's, else (1, 0)."""
    if trainer is not None:
        return trainer.world_size, trainer.global_rank
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def on_gpu(trainer: Any) -> bool:
    """Whether ``trainer`` (None outside one) trains on a CUDA device: its batches are pinned."""
    device = getattr(getattr(trainer, "strategy", None), "root_device", None)
    return getattr(device, "type", None) == "cuda"


def batch_loader(
    dataset: EncodedDataset,
    batch_size: int | None,
    max_tokens: int | None,
    drop_last: bool,
    shuffle: bool,
    seed: int,
    bucket_factor: int,
    num_workers: int,
    num_replicas: int = 1,
    rank: int = 0,
    pin_memory: bool = False,
    length_buckets: Sequence[int] | None = None,
) -> DataLoader:
    """A DataLoader of length-bucketed batches (:class:`BucketBatchSampler`), this rank's
    shard of them; ``pin_memory`` for a GPU (the batch is then copied to it without blocking);
    ``length_buckets``: pad each batch to one of these lengths (:func:`layout.bucketed`)."""
    sampler = BucketBatchSampler(
        None,
        batch_size,
        drop_last,
        lengths=dataset.lengths,
        max_tokens=max_tokens,
        shuffle=shuffle,
        seed=seed,
        bucket_factor=bucket_factor,
        num_replicas=num_replicas,
        rank=rank,
        length_buckets=length_buckets,
    )
    # In the training process (no workers) the batch's tensors are pinned as it is collated:
    # the DataLoader's pinning walks the batch down to each token string (1.7 ms per batch of
    # 256 sentences on this project's CPU). Workers leave it to the DataLoader, whose pinning
    # thread is in the training process (a worker must not touch CUDA).
    pin_in_collate = pin_memory and num_workers == 0
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=partial(collate, length_buckets=length_buckets, pin=pin_in_collate),
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory and not pin_in_collate,
    )


def encode_items(
    encoder: SentenceEncoder,
    items: Sequence[Sentence] | Sequence[Sequence[str]],
    labelled: bool | None = None,
) -> EncodedDataset:
    """In-memory :class:`Sentence` objects or token lists encoded as in training.

    Args:
        encoder: the vocabularies.
        items: sentences, or token lists (raw text, no labels).
        labelled: include ``tags`` (every sentence must have labels); default: when every
            item is a Sentence with labels.

    Raises:
        ValueError: naming the item, for an empty token or a label or feature the
            vocabularies refuse.
    """
    sentences = [item if isinstance(item, Sentence) else Sentence(list(item)) for item in items]
    if labelled is None:
        labelled = bool(sentences) and all(s.labels for s in sentences)
    examples = []
    for i, sentence in enumerate(sentences):
        if any(not token or token.isspace() for token in sentence.tokens):
            raise ValueError(f"items[{i}] has an empty token: {sentence.tokens!r}")
        labels = sentence.labels if labelled else None
        try:
            examples.append(encoder.encode(sentence.tokens, labels, sentence.features))
        except ValueError as error:
            raise ValueError(f"items[{i}]: {error}") from None
    return EncodedDataset(examples, [s.tokens for s in sentences])
