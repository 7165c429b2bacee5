"""Feature columns (e.g. the POS column of CoNLL-2000) as input features, end to end: reader ->
vocabulary -> batch -> embedder -> tagger -> checkpoint -> eval / predict CLIs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from chaincrf.cli.evaluate import evaluate
from chaincrf.cli.predict import predict
from chaincrf.cli.train import train
from chaincrf.data import (
    Sentence,
    SentenceEncoder,
    TaggingDataModule,
    Vocabulary,
    read_columns,
    read_conllu,
    reader_for,
)
from chaincrf.data.batching import collate
from chaincrf.network.embeddings import TokenEmbedder
from chaincrf.tagger import SequenceTagger
from test_cli import compose_config, run_overrides

DATA = Path(__file__).parent / "fixtures" / "data"
TAGGER = Path(__file__).parent / "fixtures" / "tagger"

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- readers


def test_read_columns_keeps_the_feature_columns_per_sentence():
    sentences = read_columns(DATA / "ner_iob1.txt", label_column=3, feature_columns=[1, -2])
    assert sentences[1].tokens == ["Peter", "Blackburn"]
    assert sentences[1].features == [["NNP", "NNP"], ["I-NP", "I-NP"]]
    for sentence in sentences:
        assert [len(values) for values in sentence.features] == [len(sentence)] * 2
    assert read_columns(DATA / "ner_iob1.txt", label_column=3)[1].features == []


def test_read_conllu_feature_columns_by_name_or_index():
    sentences = read_conllu(DATA / "tiny.conllu", feature_columns=["xpos", 2])
    first = sentences[0]
    assert len(first.features) == 2
    assert all(len(values) == len(first) for values in first.features)
    assert first.features[0] != first.labels  # XPOS, not UPOS


def test_bad_feature_columns_are_named():
    with pytest.raises(Exception, match=r"feature_columns\[1\]=7 is out of range .*4 columns"):
        read_columns(DATA / "ner_iob1.txt", feature_columns=[1, 7])
    with pytest.raises(ValueError, match=r"feature_columns\[0\] must be an integer column index"):
        reader_for("columns", feature_columns=["pos"])
    with pytest.raises(ValueError, match=r"feature_columns\[0\] must be a CoNLL-U column name"):
        reader_for("conllu", feature_columns=["postag"])
    with pytest.raises(ValueError, match="feature_columns must be a list"):
        reader_for("columns", feature_columns=1)


# ---------------------------------------------------------------- encoder and batches


def _encoder() -> SentenceEncoder:
    return SentenceEncoder(
        Vocabulary.build(["a", "b"]),
        Vocabulary.build("ab"),
        Vocabulary(["O", "B-X", "I-X", "E-X", "S-X"]),
        scheme="BIOES",
        original_scheme="BIO",
        features=[Vocabulary.build(["NN", "VB"])],
        feature_columns=[1],
    )


def test_encoder_encodes_features_and_round_trips():
    encoder = _encoder()
    example = encoder.encode(["a", "b", "c"], features=[["NN", "VB", "JJ"]])
    nn_id, vb_id = encoder.features[0].stoi["NN"], encoder.features[0].stoi["VB"]
    assert example["features"] == [[nn_id, vb_id, 1]]  # an unseen value is <unk> (1)
    again = SentenceEncoder.from_dict(json.loads(json.dumps(encoder.to_dict())))
    assert again.to_dict() == encoder.to_dict()
    assert again.feature_columns == [1]
    assert again.encode(["a"], features=[["VB"]])["features"] == [[vb_id]]


def test_encoder_without_features_reads_old_dicts_and_ignores_features():
    plain = SentenceEncoder(Vocabulary.build(["a"]), Vocabulary.build("a"), Vocabulary(["O"]))
    data = plain.to_dict()
    del data["features"], data["feature_columns"]  # a vocabulary written before feature columns
    old = SentenceEncoder.from_dict(data)
    assert old.features == [] and "features" not in old.encode(["a"], features=[["NN"]])


def test_encoder_rejects_missing_or_misshapen_features():
    encoder = _encoder()
    with pytest.raises(
        ValueError, match=r"reads 1 feature column\(s\) \(columns \[1\]\).*raw text"
    ):
        encoder.encode(["a", "b"])
    with pytest.raises(ValueError, match="feature column 0 has 1 values for 2 tokens"):
        encoder.encode(["a", "b"], features=[["NN"]])


def test_collate_pads_features_to_batch_time_columns():
    encoder = _encoder()
    items = [
        {
            **encoder.encode(["a", "b", "a"], features=[["NN", "VB", "NN"]]),
            "tokens": [],
            "index": 0,
        },
        {**encoder.encode(["b"], features=[["VB"]]), "tokens": [], "index": 1},
    ]
    batch = collate(items)
    vocab = encoder.features[0].stoi
    assert batch["features"].shape == (2, 3, 1)
    assert batch["features"][:, :, 0].tolist() == [
        [vocab["NN"], vocab["VB"], vocab["NN"]],
        [vocab["VB"], 0, 0],
    ]
    assert "features" not in collate([{k: v for k, v in items[0].items() if k != "features"}])


# ---------------------------------------------------------------- data module and embedder


def test_data_module_builds_a_vocabulary_per_feature_column():
    dm = TaggingDataModule(
        root=str(DATA),
        train="ner_iob1.txt",
        dev="ner_iob1_dev.txt",
        label_column=3,
        feature_columns=[1, 2],
        batch_size=2,
    )
    dm.setup("fit")
    pos = {v for s in dm.sentences["train"] for v in s.features[0]}
    assert dm.vocabs["feature0"].itos[:2] == ["<pad>", "<unk>"]
    assert set(dm.vocabs["feature0"].itos[2:]) == pos
    assert dm.feature_sizes == [len(pos) + 2, len(dm.vocabs["feature1"])]
    batch = next(iter(dm.train_dataloader()))
    B, T = batch["words"].shape
    assert batch["features"].shape == (B, T, 2)
    assert torch.all(batch["features"][~batch["mask"]] == 0)
    assert torch.all(batch["features"][batch["mask"]] > 0)


def test_saved_vocabularies_keep_the_feature_columns(tmp_path):
    settings = dict(root=str(DATA), label_column=3, batch_size=2)
    dm = TaggingDataModule(train="ner_iob1.txt", feature_columns=[1], **settings)
    dm.setup("fit")
    path = dm.save_vocabs(tmp_path)
    again = TaggingDataModule(
        encoder_path=str(path), test="ner_iob1_dev.txt", feature_columns=[1], **settings
    )
    again.setup("test")
    assert again.feature_sizes == dm.feature_sizes
    sentences = read_columns(DATA / "ner_iob1_dev.txt", label_column=3, feature_columns=[1])
    a, b = next(iter(dm.loader_for(sentences))), next(iter(again.test_dataloader()))
    assert torch.equal(a["features"], b["features"])
    mismatched = TaggingDataModule(encoder_path=str(path), test="ner_iob1_dev.txt", **settings)
    with pytest.raises(
        ValueError,
        match=r"saved vocabularies have 1 feature column\(s\) \(columns \[1\]\); got feature_columns=\[\]",
    ):
        mismatched.setup("test")


def test_embedder_adds_one_embedding_per_feature_column():
    embedder = TokenEmbedder(
        10, word_dim=4, char_encoder="none", feature_sizes=[5, 7], feature_dim=3
    )
    assert embedder.output_dim == 4 + 2 * 3
    mask = torch.tensor([[True, True, False]])
    batch = {
        "words": torch.tensor([[2, 3, 0]]),
        "mask": mask,
        "features": torch.tensor([[[2, 6], [4, 1], [0, 0]]]),
    }
    embedder.eval()
    out = embedder(batch)
    assert out.shape == (1, 3, 10)
    assert torch.equal(out[0, 0, 4:7], embedder.feature_embeddings[0].weight[2])
    assert torch.equal(out[0, 1, 7:], embedder.feature_embeddings[1].weight[1])
    assert torch.all(out[0, 2] == 0)
    with pytest.raises(
        ValueError, match=r"batch\['features'\] must be a long tensor of shape \(1, 3, 2\)"
    ):
        embedder({"words": batch["words"], "mask": mask})
    with pytest.raises(ValueError, match=r"feature_sizes\[1\] must be"):
        TokenEmbedder(10, char_encoder="none", feature_sizes=[5, 0])


class WordsOnly(torch.nn.Module):
    """An embedder that knows nothing of feature columns."""

    def __init__(self, num_words: int) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(num_words, 4)
        self.output_dim = 4

    def forward(self, batch: dict) -> torch.Tensor:
        return self.embedding(batch["words"])


def test_tagger_rejects_an_embedder_that_ignores_the_features():
    words_only = {"_target_": f"{__name__}.WordsOnly"}
    encoder = {"_target_": "chaincrf.network.encoders.identity.IdentityEncoder"}
    SequenceTagger(["O", "S-X"], 5, 5, embeddings=words_only, encoder=encoder)  # no features: fine
    with pytest.raises(ValueError, match=r"reads 1 feature column\(s\), but the embeddings target"):
        SequenceTagger(["O"], 5, 5, embeddings=words_only, encoder=encoder, feature_sizes=[3])
    with pytest.raises(ValueError, match=r"feature_sizes must be a list of positive ints"):
        SequenceTagger(["O"], 5, 5, embeddings=words_only, encoder=encoder, feature_sizes=[3, -1])


# ---------------------------------------------------------------- the features reach the model


def _write_feature_only_corpus(path: Path, n: int, seed: int) -> None:
    """Every token is the word ``x``; only the second column says whether it is an entity."""
    g = torch.Generator().manual_seed(seed)
    lines = []
    for _ in range(n):
        for flag in torch.randint(0, 2, (6,), generator=g).tolist():
            lines.append(f"x {'A' if flag else 'Z'} {'S-E' if flag else 'O'}")
        lines.append("")
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.slow
@pytest.mark.parametrize("with_features", [True, False])
def test_a_label_only_the_feature_column_predicts_is_learned_only_with_it(tmp_path, with_features):
    for split, seed in (("train", 0), ("dev", 1), ("test", 2)):
        _write_feature_only_corpus(tmp_path / f"{split}.txt", 40, seed)
    cfg = compose_config(
        [
            "data=custom",
            "data.root=null",
            f"data.train={tmp_path / 'train.txt'}",
            f"data.dev={tmp_path / 'dev.txt'}",
            f"data.test={tmp_path / 'test.txt'}",
            "data.scheme=BIOES",
            "data.batch_size=8",
            f"data.feature_columns={[1] if with_features else []}",
            "embeddings=no_chars",
            "embeddings.word_dim=4",
            "embeddings.feature_dim=4",
            "embeddings.dropout=0.0",
            "encoder=identity",
            "optimizer.lr=0.1",
            "callbacks=minimal",
            "trainer.max_epochs=15",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            "threads=1",
            "seed=1",
            f"run_dir={tmp_path / 'run'}",
        ]
    )
    metrics = train(cfg)
    if with_features:
        assert metrics["val/f1"] == pytest.approx(1.0)
        assert metrics["test/f1"] == pytest.approx(1.0)
    else:  # the same word everywhere: no better than chance
        assert metrics["val/acc"] < 0.75


# ---------------------------------------------------------------- checkpoint, eval, predict


@pytest.fixture(scope="module")
def pos_feature_run(tmp_path_factory) -> dict:
    run_dir = tmp_path_factory.mktemp("features")
    cfg = compose_config(
        run_overrides(run_dir, "trainer.max_epochs=3", "seed=1", "data.feature_columns=[1]")
    )
    return {"run_dir": run_dir, "metrics": train(cfg)}


def test_feature_model_checkpoint_eval_and_conll_predict(pos_feature_run, tmp_path):
    ckpt = pos_feature_run["run_dir"] / "checkpoints" / "best.ckpt"
    tagger = SequenceTagger.load(ckpt)
    assert len(tagger.hparams["feature_sizes"]) == 1
    assert tagger.sentence_encoder.feature_columns == [1]
    results = evaluate(compose_config([f"ckpt_path={ckpt}", "split=dev"], name="eval"))
    assert results["val/f1"] == pytest.approx(pos_feature_run["metrics"]["val/f1"], abs=1e-9)

    # A 4-column file: the POS column is read as the feature, the last column as gold.
    output = tmp_path / "dev.out.conll"
    cfg = compose_config(
        [
            f"ckpt_path={ckpt}",
            f"input={TAGGER / 'dev.conll'}",
            "output_format=conll",
            f"output={output}",
        ],
        name="predict",
    )
    summary = predict(cfg)
    gold = read_columns(TAGGER / "dev.conll", feature_columns=[1])
    rows = [line.split() for line in output.read_text().split("\n") if line.strip()]
    assert [r[1] for r in rows] == [label for s in gold for label in s.labels]
    direct = tagger.predict(gold)
    assert _predicted_tags(output) == [r.tags for r in direct]
    assert summary.sentences == len(direct)

    # A 2-column file (token, POS) has no gold column.
    two = tmp_path / "two.conll"
    two.write_text(
        "".join("".join(f"{t} {p}\n" for t, p in zip(s.tokens, s.features[0])) + "\n" for s in gold)
    )
    cfg = compose_config(
        [
            f"ckpt_path={ckpt}",
            f"input={two}",
            "output_format=conll",
            f"output={tmp_path / 'two.out'}",
        ],
        name="predict",
    )
    predict(cfg)
    assert _predicted_tags(tmp_path / "two.out") == [r.tags for r in direct]
    assert all(
        len(line.split()) == 2 for line in (tmp_path / "two.out").read_text().split("\n") if line
    )


def _predicted_tags(path: Path) -> list[list[str]]:
    """The last column of a CoNLL output file, per sentence."""
    blocks = path.read_text().strip().split("\n\n")
    return [[line.split()[-1] for line in block.splitlines()] for block in blocks]


def test_feature_model_refuses_raw_text_and_leaves_no_output(pos_feature_run, tmp_path):
    ckpt = pos_feature_run["run_dir"] / "checkpoints" / "best.ckpt"
    output = tmp_path / "tags.jsonl"
    cfg = compose_config(
        [f"ckpt_path={ckpt}", f"input={TAGGER / 'raw.txt'}", f"output={output}"], name="predict"
    )
    with pytest.raises(
        ValueError, match=r"sentence 0 .*reads 1 feature column\(s\) \(columns \[1\]\)"
    ):
        predict(cfg)
    assert not output.exists()
    with pytest.raises(ValueError, match="feature column"):
        SequenceTagger.load(ckpt).predict(["EU rejects German call ."])
    tagged = SequenceTagger.load(ckpt).predict(
        [Sentence(["EU", "rejects"], features=[["NNP", "VBZ"]])]
    )
    assert len(tagged[0].tags) == 2
