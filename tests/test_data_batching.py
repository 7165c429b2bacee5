"""Vocabularies, the sentence encoder, collation and the length-bucketed, DDP-sharded batch sampler."""

import json

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from chaincrf.data import (
    CASING_CLASSES,
    BucketBatchSampler,
    EncodedDataset,
    SentenceEncoder,
    Vocabulary,
    casing_class,
    collate,
    normalize_word,
)


def test_vocabulary_build_specials_min_freq_keep_and_order():
    vocab = Vocabulary.build(["b", "a", "b", "c", "c", "c", "d"], min_freq=2, keep=["d", "zz"])
    assert vocab.itos == ["<pad>", "<unk>", "c", "b", "d"]
    assert (vocab.pad_index, vocab.unk_index) == (0, 1)
    assert vocab.encode(["c", "a", "zz"]) == [2, 1, 1]
    assert vocab.decode(torch.tensor([2, 3])) == ["c", "b"]
    assert len(vocab) == 5 and "b" in vocab and "a" not in vocab


def test_tag_vocabulary_has_no_specials_and_rejects_unknown_tags():
    tags = Vocabulary.build(["O", "B-PER", "O"], specials=False, order="sorted")
    assert tags.itos == ["B-PER", "O"]
    assert tags.unk_index is None and tags.pad_index is None
    with pytest.raises(ValueError, match="'I-PER' is not in the vocabulary"):
        tags.encode(["I-PER"])


def test_vocabulary_errors():
    with pytest.raises(ValueError, match="must not repeat entries"):
        Vocabulary(["a", "a"])
    with pytest.raises(ValueError, match="unk='<unk>' must be one of the entries"):
        Vocabulary(["a"], unk="<unk>")
    with pytest.raises(ValueError, match="min_freq must be >= 1; got 0"):
        Vocabulary.build([], min_freq=0)
    with pytest.raises(ValueError, match=r"ids must be integers in \[0, 1\); got \[5\]"):
        Vocabulary(["a"]).decode([5])


def test_vocabulary_json_round_trip(tmp_path):
    vocab = Vocabulary.build(["Zürich", "日本", "a"])
    vocab.save(tmp_path / "v.json")
    assert json.loads((tmp_path / "v.json").read_text(encoding="utf-8"))["itos"][2:] == [
        "Zürich",
        "a",
        "日本",
    ]
    assert Vocabulary.load(tmp_path / "v.json") == vocab


@pytest.mark.parametrize(
    ("token", "name"),
    [
        ("1996", "numeric"),
        ("1996-08", "mainly_numeric"),
        ("the", "all_lower"),
        ("EU", "all_upper"),
        ("Peter", "initial_upper"),
        ("b2B", "contains_digit"),
        ("-", "other"),
    ],
)
def test_casing_classes(token, name):
    assert CASING_CLASSES[casing_class(token)] == name
    assert CASING_CLASSES[0] == "<pad>"


def test_normalize_word():
    assert normalize_word("Paris-1996", lowercase=True, digits_to_zero=True) == "paris-0000"
    assert normalize_word("Paris") == "Paris"


def make_encoder(**kwargs):
    words = Vocabulary.build(["peter", "went", "to", "0000"])
    chars = Vocabulary.build("Peterwnto")
    tags = Vocabulary(["O", "B-PER", "I-PER", "E-PER", "S-PER"])
    return SentenceEncoder(
        words, chars, tags, "BIOES", "IOB1", lowercase=True, digits_to_zero=True, **kwargs
    )


def test_encoder_encodes_with_word_options_and_converts_schemes():
    encoder = make_encoder(max_word_chars=3)
    example = encoder.encode(["Peter", "went", "1996", "Xy"], ["I-PER", "O", "O", "O"])
    assert encoder.words.decode(example["words"]) == ["peter", "went", "0000", "<unk>"]
    assert encoder.chars.decode(example["chars"][0]) == ["P", "e", "t"]  # cut to 3, case kept
    assert example["chars"][3] == [1, 1]
    assert [CASING_CLASSES[c] for c in example["casing"]] == [
        "initial_upper",
        "all_lower",
        "numeric",
        "initial_upper",
    ]
    assert encoder.tags.decode(example["tags"]) == ["S-PER", "O", "O", "O"]
    assert encoder.decode_tags(example["tags"]) == ["I-PER", "O", "O", "O"]
    assert "tags" not in encoder.encode(["Peter"])


def test_encoder_json_round_trip_maps_identically(tmp_path):
    encoder = make_encoder()
    encoder.save(tmp_path / "encoder.json")
    loaded = SentenceEncoder.load(tmp_path / "encoder.json")
    tokens = ["Peter", "went", "to", "Paris", "in", "1996"]
    assert loaded.encode(tokens, ["I-PER", "O", "O", "O", "O", "O"]) == encoder.encode(
        tokens, ["I-PER", "O", "O", "O", "O", "O"]
    )
    assert loaded.to_dict() == encoder.to_dict()
    start, _end, trans = loaded.allowed_transitions()
    assert trans.shape == (5, 5) and start.tolist() == [True, True, False, False, True]


def test_encoder_checks_its_settings():
    words = Vocabulary.build(["a"])
    with pytest.raises(ValueError, match="scheme and original_scheme must both be set"):
        SentenceEncoder(words, words, Vocabulary(["O"]), scheme="BIO")
    with pytest.raises(ValueError, match="max_word_chars must be >= 1; got 0"):
        SentenceEncoder(words, words, Vocabulary(["O"]), max_word_chars=0)
    with pytest.raises(ValueError, match="encoder version must be 1; got 7"):
        SentenceEncoder.from_dict({"version": 7})


def items(lengths, labelled=True):
    out = []
    for i, n in enumerate(lengths):
        item = {
            "words": list(range(2, 2 + n)),
            "chars": [[5] * (k + 1) for k in range(n)],
            "casing": [4] * n,
            "tokens": [f"w{k}" for k in range(n)],
            "index": i,
        }
        if labelled:
            item["tags"] = [1] * n
        out.append(item)
    return out


def test_collate_pads_and_follows_the_batch_contract():
    batch = collate(items([3, 1, 0]))
    assert set(batch) == {"words", "chars", "casing", "mask", "tags", "tokens", "index"}
    assert batch["words"].dtype == torch.long and batch["mask"].dtype == torch.bool
    assert batch["words"].tolist() == [[2, 3, 4], [2, 0, 0], [0, 0, 0]]
    assert batch["mask"].tolist() == [
        [True, True, True],
        [True, False, False],
        [False, False, False],
    ]
    assert batch["chars"].shape == (3, 3, 3)
    assert batch["chars"][0].tolist() == [[5, 0, 0], [5, 5, 0], [5, 5, 5]]
    assert batch["chars"][1, 1:].abs().sum() == 0
    assert batch["casing"].tolist()[1] == [4, 0, 0]
    assert batch["tags"].tolist()[1] == [1, 0, 0]
    assert batch["index"].tolist() == [0, 1, 2]
    assert batch["tokens"][1] == ["w0"]


def test_collate_without_labels_has_no_tags_key():
    batch = collate(items([2, 2], labelled=False))
    assert "tags" not in batch


def _reference_collate(batch_items):
    """Padding one sentence and one token at a time, the obvious way."""
    B = len(batch_items)
    T = max((len(it["words"]) for it in batch_items), default=0)
    C = max([len(c) for it in batch_items for c in it["chars"]] + [1])
    K = len(batch_items[0].get("features", ())) if B else 0
    words = torch.zeros(B, T, dtype=torch.long)
    casing = torch.zeros(B, T, dtype=torch.long)
    tags = torch.zeros(B, T, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.bool)
    chars = torch.zeros(B, T, C, dtype=torch.long)
    features = torch.zeros(B, T, K, dtype=torch.long)
    for b, it in enumerate(batch_items):
        for t in range(len(it["words"])):
            words[b, t], casing[b, t], mask[b, t] = it["words"][t], it["casing"][t], True
            tags[b, t] = it["tags"][t]
            for c, ch in enumerate(it["chars"][t]):
                chars[b, t, c] = ch
            for k in range(K):
                features[b, t, k] = it["features"][k][t]
    return words, casing, tags, mask, chars, features


@pytest.mark.parametrize("seed", range(5))
def test_collate_equals_a_token_by_token_reference_on_random_ragged_items(seed):
    rng = torch.Generator().manual_seed(seed)

    def ids(n, high):
        return torch.randint(1, high, (n,), generator=rng).tolist()

    K = seed % 3  # 0, 1 or 2 feature columns
    batch_items = []
    for index in range(int(torch.randint(1, 7, (1,), generator=rng))):
        n = int(torch.randint(0, 9, (1,), generator=rng))  # empty sentences too
        batch_items.append(
            {
                "words": ids(n, 50),
                # tokens of 0 to 11 characters (0: a token the character vocabulary cannot spell)
                "chars": [
                    ids(int(torch.randint(0, 12, (1,), generator=rng)), 30) for _ in range(n)
                ],
                "casing": ids(n, 8),
                "tags": ids(n, 5),
                "features": [ids(n, 20) for _ in range(K)],
                "tokens": [f"w{i}" for i in range(n)],
                "index": index,
            }
        )
    batch = collate(batch_items)
    words, casing, tags, mask, chars, features = _reference_collate(batch_items)
    assert torch.equal(batch["words"], words) and torch.equal(batch["casing"], casing)
    assert torch.equal(batch["tags"], tags) and torch.equal(batch["mask"], mask)
    assert torch.equal(batch["chars"], chars)
    assert batch["chars"].dtype == torch.long and batch["mask"].dtype == torch.bool
    if K:
        assert torch.equal(batch["features"], features)
    else:
        assert "features" not in batch
    assert batch["index"].tolist() == list(range(len(batch_items)))


def test_collate_of_no_items_is_an_empty_batch():
    batch = collate([])
    assert batch["words"].shape == (0, 0) and batch["chars"].shape == (0, 0, 1)
    assert batch["mask"].dtype == torch.bool and batch["tokens"] == []


def test_bucket_sampler_sorted_batches_without_shuffle():
    lengths = [5, 1, 3, 2, 4, 1]
    sampler = BucketBatchSampler(batch_size=2, lengths=lengths, shuffle=False)
    batches = list(sampler)
    assert batches == [[1, 5], [3, 2], [4, 0]]
    assert len(sampler) == 3


def test_bucket_sampler_shuffles_buckets_per_epoch_and_covers_everything():
    lengths = [(i * 7) % 23 + 1 for i in range(200)]
    sampler = BucketBatchSampler(batch_size=8, lengths=lengths, bucket_factor=5, seed=3)
    first = list(sampler)
    assert sorted(i for b in first for i in b) == list(range(200))
    # each batch comes from one sorted pool: its lengths are close together
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in first) / len(
        first
    )
    assert spread < 8
    assert list(sampler) == first  # same epoch, same batches
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first
    assert sorted(i for b in second for i in b) == list(range(200))


def test_bucket_sampler_token_budget():
    lengths = [10, 3, 3, 3, 3, 50, 4]
    sampler = BucketBatchSampler(batch_size=None, max_tokens=12, lengths=lengths, shuffle=False)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(7))
    for batch in batches:
        assert len(batch) * max(lengths[i] for i in batch) <= 12 or len(batch) == 1
    assert [5] in batches  # longer than the budget: alone


@pytest.mark.parametrize("max_tokens", [None, 40])
@pytest.mark.parametrize("world", [2, 3, 4])
def test_ddp_shards_are_disjoint_cover_the_data_once_and_have_equal_batch_counts(max_tokens, world):
    lengths = [(i * 13) % 17 + 1 for i in range(101)]
    kwargs = dict(lengths=lengths, seed=5, bucket_factor=4)
    if max_tokens:
        kwargs.update(batch_size=None, max_tokens=max_tokens)
    else:
        kwargs.update(batch_size=4)
    shards = [list(BucketBatchSampler(num_replicas=world, rank=r, **kwargs)) for r in range(world)]
    assert len({len(s) for s in shards}) == 1
    seen = sorted(i for shard in shards for batch in shard for i in batch)
    assert seen == list(range(101))  # every sentence exactly once


def test_ddp_with_fewer_sentences_than_replicas_repeats_some():
    shards = [
        list(BucketBatchSampler(batch_size=4, lengths=[3], num_replicas=2, rank=r))
        for r in range(2)
    ]
    assert shards == [[[0]], [[0]]]


def test_drop_last_trims_to_full_batches_and_a_multiple_of_replicas():
    lengths = [1] * 10
    shards = [
        list(
            BucketBatchSampler(
                batch_size=3, drop_last=True, lengths=lengths, num_replicas=2, rank=r
            )
        )
        for r in range(2)
    ]
    assert [len(s) for s in shards] == [1, 1]
    assert all(len(b) == 3 for s in shards for b in s)


def test_injected_distributed_sampler_sets_rank_replicas_and_epoch():
    lengths = list(range(1, 41))
    dataset = list(range(40))
    shards = []
    for rank in range(2):
        dist = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=0)
        sampler = BucketBatchSampler(dist, 4, False, lengths=lengths, seed=1)
        assert (sampler.num_replicas, sampler.rank) == (2, rank)
        shards.append(list(sampler))
        dist.set_epoch(2)  # Lightning calls set_epoch on batch_sampler.sampler
        assert sampler.epoch == 2
    assert len(shards[0]) == len(shards[1]) == 5
    assert sorted(i for s in shards for b in s for i in b) == list(range(40))


def test_bucket_sampler_errors():
    with pytest.raises(ValueError, match="exactly one of batch_size and max_tokens must be set"):
        BucketBatchSampler(batch_size=None, lengths=[1])
    with pytest.raises(ValueError, match="batch_size must be >= 1; got 0"):
        BucketBatchSampler(batch_size=0, lengths=[1])
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\); got 2"):
        BucketBatchSampler(batch_size=1, lengths=[1], num_replicas=2, rank=2)


def test_dataloader_end_to_end():
    examples = items([3, 1, 2, 5])
    dataset = EncodedDataset(
        [{k: e[k] for k in ("words", "chars", "casing", "tags")} for e in examples],
        [e["tokens"] for e in examples],
    )
    loader = DataLoader(
        dataset,
        batch_sampler=BucketBatchSampler(batch_size=2, lengths=dataset.lengths, shuffle=False),
        collate_fn=collate,
    )
    batches = list(loader)
    assert [b["index"].tolist() for b in batches] == [[1, 2], [0, 3]]
    assert batches[1]["mask"].sum(1).tolist() == [3, 5]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("workers", [0, 1])
def test_a_gpu_runs_loader_gives_pinned_batches(workers):
    """For a GPU the batches' tensors are pinned (copied to the device without blocking): by
    the collate function in the training process, by the DataLoader's pinning thread with
    workers (a worker must not touch CUDA)."""
    from chaincrf.data.loaders import batch_loader

    examples = items([3, 1, 2, 5])
    dataset = EncodedDataset(
        [{k: e[k] for k in ("words", "chars", "casing", "tags")} for e in examples],
        [e["tokens"] for e in examples],
    )
    loader = batch_loader(dataset, 2, None, False, False, 0, 1, workers, pin_memory=True)
    for batch in loader:
        assert all(v.is_pinned() for v in batch.values() if isinstance(v, torch.Tensor))
        assert batch["tokens"] == [dataset.tokens[i] for i in batch["index"].tolist()]
