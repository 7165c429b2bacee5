"""Datasets of encoded sentences, length-bucketed batch sampling and collation to padded tensors."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import BatchSampler, Dataset, DistributedSampler, Sampler

from chaincrf.data.layout import bucketed, pad

__all__ = ["BucketBatchSampler", "EncodedDataset", "collate", "to_device"]


class EncodedDataset(Dataset):
    """Encoded sentences (see :meth:`SentenceEncoder.encode`) plus their raw tokens.

    Item ``i`` is a dict with ``words``, ``chars``, ``casing`` (and ``tags`` when labelled),
    ``tokens`` (the raw tokens) and ``index`` (= ``i``).
    """

    def __init__(self, examples: Sequence[dict[str, Any]], tokens: Sequence[Sequence[str]]) -> None:
        if len(examples) != len(tokens):
            raise ValueError(
                f"examples and tokens must have the same length; got {len(examples)} and {len(tokens)}"
            )
        self.examples = list(examples)
        self.tokens = [list(t) for t in tokens]

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.examples[index], "tokens": self.tokens[index], "index": index}

    @property
    def lengths(self) -> list[int]:
        return [len(t) for t in self.tokens]


def collate(
    items: Sequence[dict[str, Any]],
    length_buckets: Sequence[int] | None = None,
    pin: bool = False,
) -> dict[str, Any]:
    """Pad a list of dataset items into a batch (to one of ``length_buckets``' lengths when
    given: :func:`chaincrf.data.layout.pad`); with ``pin``, its tensors in pinned memory (for a
    copy to a GPU without blocking: the DataLoader's own pinning walks every token string).

    The arrays are :func:`chaincrf.data.layout.pad`'s (the layout the ONNX predictor feeds too),
    wrapped as tensors without a copy.

    Returns:
        ``words``: long (B, T), 0 = pad, 1 = unknown; ``chars``: long (B, T, C), 0 = pad;
        ``casing``: long (B, T) casing-class ids, 0 = pad; ``mask``: bool (B, T), left-aligned;
        ``tags``: long (B, T) training-scheme tag ids, 0 at padding (only when every item is
        labelled); ``features``: long (B, T, K) ids of the K feature columns, 0 = pad (only
        when the items have features); ``tokens``: list of B token lists; ``index``: long (B,)
        each sentence's index in its split.

    Raises:
        ValueError: if the items do not all have the same number of feature columns.
    """
    batch: dict[str, Any] = {
        name: torch.from_numpy(array) for name, array in pad(items, length_buckets).items()
    }
    batch["tokens"] = [item["tokens"] for item in items]
    batch["index"] = torch.tensor([item["index"] for item in items], dtype=torch.long)
    if pin:
        batch = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return batch


class _EpochSampler(Sampler[int]):
    """A placeholder sampler over ``range(n)`` that remembers the epoch Lightning sets."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.epoch = 0

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.n))

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class BucketBatchSampler(BatchSampler):
    """Length-bucketed batches, sized by sentences or by a padded-token budget, DDP-sharded.

    Batches are formed over the whole split, identically on every rank: with ``shuffle``, the
    sentences are permuted (seeded by ``seed + epoch``), cut into pools of about
    ``bucket_factor`` batches, each pool sorted by length and cut into batches, and the batches
    shuffled. Without ``shuffle``, the split is sorted by length (stable) and cut. The number of
    batches is then brought to a multiple of the number of replicas ``W`` by halving the largest
    batches (or, with ``drop_last``, by dropping the last ones), and rank ``r`` takes batches
    ``r, r + W, ...``: every rank runs the same number of steps and every sentence is seen exactly
    once per epoch. Only a split with fewer sentences than replicas repeats sentences (their
    ``index`` tells).

    When Lightning injects a :class:`~torch.utils.data.DistributedSampler` as ``sampler``, its
    ``num_replicas``, ``rank`` and ``epoch`` are used (its index order is not); otherwise
    ``num_replicas`` and ``rank``, and the epoch set by :meth:`set_epoch`.

    Args:
        sampler: a sampler over the dataset (only its length and, if distributed, its replica
            information are used), or None for ``range(len(lengths))``.
        batch_size: sentences per batch; exactly one of ``batch_size`` and ``max_tokens``.
        drop_last: drop the last, smaller batch of each pool (``batch_size`` only), and trim the
            batch list to a multiple of the replicas instead of padding it.
        lengths: the length of every sentence of the split.
        max_tokens: budget of padded tokens per batch (``sentences * longest``, the longest
            padded to its length bucket); a sentence longer than the budget forms a batch of
            its own.
        shuffle: shuffle as described above.
        seed: base seed of the shuffling.
        bucket_factor: batches per sorting pool.
        num_replicas: number of DDP processes (default 1) when ``sampler`` is not distributed.
        rank: this process's rank (default 0) when ``sampler`` is not distributed.
        length_buckets: the lengths the batches are padded to (:func:`layout.bucketed`), which
            ``max_tokens`` counts.
    """

    def __init__(
        self,
        sampler: Sampler[int] | None = None,
        batch_size: int | None = 32,
        drop_last: bool = False,
        *,
        lengths: Sequence[int],
        max_tokens: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        bucket_factor: int = 50,
        num_replicas: int | None = None,
        rank: int | None = None,
        length_buckets: Sequence[int] | None = None,
    ) -> None:
        if (batch_size is None) == (max_tokens is None):
            raise ValueError(
                f"exactly one of batch_size and max_tokens must be set; got batch_size={batch_size}, "
                f"max_tokens={max_tokens}"
            )
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1; got {max_tokens}")
        if bucket_factor < 1:
            raise ValueError(f"bucket_factor must be >= 1; got {bucket_factor}")
        self.lengths = list(lengths)
        self.sampler = sampler if sampler is not None else _EpochSampler(len(self.lengths))
        if len(self.sampler) < len(self.lengths) and not isinstance(
            self.sampler, DistributedSampler
        ):
            raise ValueError(
                f"sampler must cover all {len(self.lengths)} sentences; got {len(self.sampler)}"
            )
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.max_tokens = max_tokens
        self.shuffle = shuffle
        self.seed = seed
        self.bucket_factor = bucket_factor
        self.length_buckets = list(length_buckets) if length_buckets else None
        self._num_replicas = 1 if num_replicas is None else num_replicas
        self._rank = 0 if rank is None else rank
        if not 0 <= self._rank < self._num_replicas:
            raise ValueError(f"rank must be in [0, {self._num_replicas}); got {self._rank}")
        self._epoch = 0
        self._cache: tuple[tuple[int, int, int], list[list[int]]] | None = None
        # Lightning re-creates custom batch samplers to inject a DistributedSampler (DDP) or
        # drop_last=False (prediction) from the arguments it records when it builds the loaders
        # itself. Record them here too, so loaders built outside Lightning's hooks (e.g.
        # ``trainer.predict(dataloaders=dm.loader_for(...))``) can be re-created the same way.
        if not hasattr(self, "__pl_saved_args"):
            arguments = {
                "sampler": sampler,
                "batch_size": batch_size,
                "drop_last": drop_last,
                "lengths": self.lengths,
                "max_tokens": max_tokens,
                "shuffle": shuffle,
                "seed": seed,
                "bucket_factor": bucket_factor,
                "num_replicas": num_replicas,
                "rank": rank,
            }
            object.__setattr__(self, "__pl_saved_args", ())
            object.__setattr__(self, "__pl_saved_kwargs", arguments)
            object.__setattr__(self, "__pl_saved_arg_names", ())
            object.__setattr__(self, "__pl_saved_default_kwargs", {})

    @property
    def num_replicas(self) -> int:
        if isinstance(self.sampler, DistributedSampler):
            return self.sampler.num_replicas
        return self._num_replicas

    @property
    def rank(self) -> int:
        if isinstance(self.sampler, DistributedSampler):
            return self.sampler.rank
        return self._rank

    @property
    def epoch(self) -> int:
        return getattr(self.sampler, "epoch", self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds the shuffling (Lightning calls this on ``sampler``)."""
        self._epoch = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def _pools(self, order: list[int]) -> list[list[int]]:
        if not self.shuffle:
            return [order]
        if self.batch_size is not None:
            pool = self.batch_size * self.bucket_factor
        else:
            mean = max(sum(self.lengths) / max(len(self.lengths), 1), 1.0)
            pool = max(1, int(self.max_tokens * self.bucket_factor / mean))
        return [order[i : i + pool] for i in range(0, len(order), pool)]

    def _cut(self, pool: list[int]) -> list[list[int]]:
        lengths = self.lengths
        pool = sorted(pool, key=lengths.__getitem__)
        if self.batch_size is not None:
            batches = [pool[i : i + self.batch_size] for i in range(0, len(pool), self.batch_size)]
            if self.drop_last and batches and len(batches[-1]) < self.batch_size:
                batches.pop()
            return batches
        batches, current, longest = [], [], 0
        for index in pool:
            longest_if_added = max(longest, lengths[index])
            padded = bucketed(longest_if_added, self.length_buckets)
            if current and padded * (len(current) + 1) > self.max_tokens:
                batches.append(current)
                current, longest_if_added = [], lengths[index]
            current.append(index)
            longest = longest_if_added
        if current:
            batches.append(current)
        return batches

    def global_batches(self) -> list[list[int]]:
        """All batches of the current epoch, over all ranks, before sharding."""
        order = list(range(len(self.lengths)))
        rng = random.Random(self.seed + self.epoch)
        if self.shuffle:
            rng.shuffle(order)
        batches = [batch for pool in self._pools(order) for batch in self._cut(pool)]
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def _shard(self) -> list[list[int]]:
        key = (self.epoch, self.num_replicas, self.rank)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        batches = self.global_batches()
        W = self.num_replicas
        if len(batches) % W and self.drop_last:
            batches = batches[: len(batches) - len(batches) % W]
        while len(batches) % W and any(len(batch) > 1 for batch in batches):
            largest = max(range(len(batches)), key=lambda i: len(batches[i]))
            batch = batches[largest]
            batches[largest : largest + 1] = [batch[: len(batch) // 2], batch[len(batch) // 2 :]]
        if len(batches) % W:  # fewer sentences than replicas: repeat some
            missing = W - len(batches) % W
            batches = batches + [batches[i % len(batches)] for i in range(missing)]
        shard = batches[self.rank :: W]
        self._cache = (key, shard)
        return shard

    def __iter__(self) -> Iterator[list[int]]:
        # A generator: the batches are cut at the first ``next``, not at ``iter``. A resumed
        # Lightning run creates the training iterator before it sets the epoch; cutting then
        # would replay epoch 0's order.
        yield from self._shard()

    def __len__(self) -> int:
        return len(self._shard())


def to_device(batch: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """A batch (:func:`collate`'s: tensors, and the sentences' token lists) on ``device``: its
    tensors moved (without blocking, from pinned memory, on an accelerator), the rest passed on
    as it is. (Lightning's default transfer walks every entry down to each token string: 8.9 ms
    per batch of 256 sentences on this project's CPU.)"""
    device = torch.device(device)
    non_blocking = device.type not in ("cpu", "mps")  # (as Lightning moves tensors)
    return {
        key: value.to(device, non_blocking=non_blocking)
        if isinstance(value, torch.Tensor)
        else value
        for key, value in batch.items()
    }
