"""The whole tagger as one graph (:mod:`chaincrf.predict.export`): the graph, its TorchScript
and its ONNX artefacts give the PyTorch tagger's tags (and marginals) for every supported
embedder, encoder and output layer; unsupported parts are refused by name."""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import pytest
import torch

from chaincrf.data.vocab import Vocabulary
from chaincrf.network import config as hparams
from chaincrf.predict.bundle import load_predictor
from chaincrf.predict.export import ExportableTagger, export_model, graph_inputs
from chaincrf.predict.predictor import Predictor

pytestmark = pytest.mark.slow  # the fast lane (README) leaves this module out

FIXTURES = Path(__file__).parent / "fixtures"
BUNDLE = FIXTURES / "model_files" / "v1_bundle"
SENTENCES = [
    line.split()
    for line in (FIXTURES / "tagger" / "raw.txt").read_text(encoding="utf-8").splitlines()
    if line.split()
] + [
    [line.split()[0] for line in block.splitlines()]
    for block in (FIXTURES / "tagger" / "dev.conll").read_text(encoding="utf-8").split("\n\n")
    if block.strip()
]


def _variant(name: str, seed: int = 0) -> Predictor:
    """A predictor over the v1 fixture's vocabularies with another network (random weights,
    seeded: the tags are arbitrary but must agree between the engines)."""
    base = load_predictor(BUNDLE)
    stored = json.loads((BUNDLE / "config.json").read_text())["hparams"]
    vocab = copy.deepcopy(dict(base.vocab))
    spec = copy.deepcopy(stored)
    embeddings, encoder = spec["embeddings"], spec["encoder"]
    if name == "v1":
        return base
    if name == "char_lstm":  # character BiLSTM, casing, word adapter, two BiLSTM layers
        embeddings.update(char_encoder="lstm", char_dim=6, char_hidden=5, num_casing=7)
        embeddings["word_adapter"] = True
        encoder.update(num_layers=2)
    elif name == "cnn_softmax":  # no characters, the dilated CNN, no CRF
        embeddings.update(char_encoder="none")
        encoder.clear()
        encoder.update(
            {
                "_target_": "chaincrf.network.encoders.cnn.CNNEncoder",
                "_partial_": True,
                "hidden_size": 12,
            }
        )
        spec["use_crf"] = False
    elif name == "features":  # a feature column, no encoder
        features = Vocabulary(["<pad>", "<unk>", "NN", "VB", "DT"], unk="<unk>", pad="<pad>")
        vocab.update(features=[features.to_dict()], feature_columns=[1])
        spec["feature_sizes"] = [len(features)]
        embeddings.update(feature_dim=4)
        encoder.clear()
        encoder.update(
            {"_target_": "chaincrf.network.encoders.identity.IdentityEncoder", "_partial_": True}
        )
    else:
        raise AssertionError(name)
    torch.manual_seed(seed)
    config = hparams.TaggerConfig(**spec)
    return Predictor(config.build_model().eval(), config.tag_scheme(), vocab)


VARIANTS = ["v1", "char_lstm", "cnn_softmax", "features"]


def _batch(predictor: Predictor, sentences: list[list[str]]) -> dict:
    features = None
    if predictor.sentence_encoder.features:
        pos = ["NN", "VB", "DT", "JJ"]  # JJ: unknown to the feature vocabulary
        features = [[[pos[(i + j) % 4] for j in range(len(s))]] for i, s in enumerate(sentences)]
    return predictor.encode(sentences, features)


def _reference(predictor: Predictor, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The PyTorch tagger's tags and each chosen tag's marginal."""
    with torch.no_grad():
        emissions = predictor.model.emissions(batch)
        paths = predictor.model.decode(emissions, batch["mask"])
        marginals = predictor.model.marginals(emissions, batch["mask"])
    chosen = marginals.gather(2, paths.clamp(min=0).unsqueeze(2)).squeeze(2)
    return paths, chosen * batch["mask"]


@pytest.mark.parametrize("name", VARIANTS)
def test_the_graph_and_its_torchscript_give_the_taggers_tags(name, tmp_path):
    predictor = _variant(name)
    graph = ExportableTagger(predictor.model)
    scripted = torch.jit.load(str(export_model(predictor, tmp_path, "torchscript")))
    for rows in (SENTENCES, SENTENCES[:1], SENTENCES[2:5]):  # other batch sizes and lengths
        batch = _batch(predictor, rows)
        inputs = graph_inputs(batch, graph.num_features)
        want_tags, want_conf = _reference(predictor, batch)
        with torch.no_grad():
            torch.testing.assert_close(
                graph.emissions(*inputs), predictor.model.emissions(batch), atol=1e-5, rtol=1e-5
            )
            for engine in (graph, scripted):
                tags, conf = engine(*inputs)
                assert torch.equal(tags, want_tags)
                torch.testing.assert_close(conf, want_conf, atol=1e-5, rtol=1e-4)
    meta = json.loads((tmp_path / "tagger.json").read_text())
    assert meta["labels"] == list(predictor.tags.labels) and meta["model"] == "model.pt"
    assert json.loads((tmp_path / "vocab.json").read_text()) == json.loads(
        json.dumps(dict(predictor.vocab))
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", ["v1", "char_lstm", "features"])
def test_the_onnx_artefact_gives_the_taggers_tags_in_onnxruntime(name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    predictor = _variant(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export_model(predictor, tmp_path, "onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    for rows in (SENTENCES, SENTENCES[:1], SENTENCES[3:6]):
        batch = _batch(predictor, rows)
        inputs = graph_inputs(batch, 1 if predictor.sentence_encoder.features else 0)
        tags, conf = session.run(None, {n: t.numpy() for n, t in zip(names, inputs)})
        want_tags, want_conf = _reference(predictor, batch)
        assert tags.tolist() == want_tags.tolist()
        torch.testing.assert_close(torch.from_numpy(conf), want_conf, atol=1e-5, rtol=1e-4)


def test_what_cannot_be_exported_is_named(tmp_path):
    predictor = _variant("v1")
    with pytest.raises(ValueError, match="format must be one of"):
        export_model(predictor, tmp_path, "tflite")
    predictor.model.encoder = torch.nn.Module()  # e.g. a user's own encoder
    predictor.model.encoder.output_dim = 32
    with pytest.raises(ValueError, match="the Module encoder cannot be exported"):
        ExportableTagger(predictor.model)
