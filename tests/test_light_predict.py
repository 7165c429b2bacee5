"""Prediction without the training stack: ``chaincrf.predict.bundle.load_predictor`` loads a
bundle or a checkpoint and tags text with torch alone (and spaCy, for raw text) — tested in a
subprocess in which importing Lightning, torchmetrics, seqeval, Hydra or OmegaConf fails."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from chaincrf.network import config as hparams
from chaincrf.tagger import SequenceTagger

pytestmark = pytest.mark.slow  # subprocesses and ONNX exports: not in the fast lane (README)

FIXTURES = Path(__file__).parent / "fixtures" / "model_files"
BLOCKED = ("pytorch_lightning", "lightning", "lightning_fabric", "torchmetrics", "seqeval",
           "hydra", "omegaconf")  # fmt: skip

SCRIPT = """
import json, sys
class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError("blocked for this test: " + name)
sys.meta_path.insert(0, Blocked())
from chaincrf.predict.bundle import load_predictor
predictor = load_predictor({path!r})
sentences = json.loads(sys.stdin.read())
print(json.dumps([tagged.to_dict() for tagged in predictor.predict(sentences)]))
print(json.dumps(sorted(sys.modules)))
"""
SPAN_KEYS = ("type", "start", "end", "text", "confidence")  # the fixture's (v1) span fields


def run_light(model_file: str, sentences: list) -> tuple[list[dict], list[str]]:
    """``predictor.predict(sentences)`` in a subprocess that cannot import the training stack:
    its records as dicts, and the modules it loaded."""
    code = SCRIPT.format(blocked=BLOCKED, path=str(FIXTURES / model_file))
    out = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(sentences),
        capture_output=True,
        text=True,
        check=True,
    )
    records, modules = out.stdout.splitlines()
    return json.loads(records), json.loads(modules)


@pytest.mark.parametrize("model_file", ["v1_bundle", "v1.ckpt"])
def test_a_model_file_predicts_with_torch_alone(model_file):
    expected = json.loads((FIXTURES / "v1_expected.json").read_text())
    got, modules = run_light(model_file, [s["tokens"] for s in expected])
    assert [s["tags"] for s in got] == [s["tags"] for s in expected]
    # the spans of v1, plus the character offsets: none for token lists
    assert [[{k: span[k] for k in SPAN_KEYS} for span in s["spans"]] for s in got] == [
        s["spans"] for s in expected
    ]
    assert all(span["start_char"] is None for s in got for span in s["spans"])
    assert all(s["offsets"] is None for s in got)
    assert "spacy" not in modules  # pre-tokenised input never loads the tokenizer
    # nor the compiler's stack (about a second to import), which only torch.compile needs
    assert "torch._dynamo" not in modules


def test_raw_text_is_tokenised_by_spacy_with_torch_alone():
    """The default tokenizer (spaCy) on raw lines: "lamb." is split as the fixture's tokens
    were, runs of spaces are not tokens, and spans carry the line's own substrings."""
    expected = json.loads((FIXTURES / "v1_expected.json").read_text())
    lines = ["  ".join(s["tokens"][:-1]) + s["tokens"][-1] for s in expected]  # "lamb."
    assert lines[0].endswith("  lamb.")
    got, modules = run_light("v1_bundle", lines)
    assert "spacy" in modules and not [m for m in modules if m.split(".")[0] in BLOCKED]
    assert [s["tokens"] for s in got] == [s["tokens"] for s in expected]
    assert [s["tags"] for s in got] == [s["tags"] for s in expected]
    for line, record in zip(lines, got):
        assert [line[a:b] for a, b in record["offsets"]] == record["tokens"]
        for span in record["spans"]:
            assert span["text"] == line[span["start_char"] : span["end_char"]]
            assert span["start_char"] == record["offsets"][span["start"]][0]
            assert span["end_char"] == record["offsets"][span["end"] - 1][1]
    names = [span["text"] for record in got for span in record["spans"]]
    assert "Peter  Blackburn" in names  # the original text, both spaces


def test_one_config_serves_the_tagger_and_the_light_path():
    """SequenceTagger and load_predictor both build from TaggerConfig, the one signature: a
    config given whole or as its fields is the same config, and stores as the same hparams."""
    config = hparams.TaggerConfig(
        labels=["O", "B-X", "I-X"], num_words=7, num_chars=5, scheme="BIO",
        embeddings={"_target_": "chaincrf.network.embeddings.TokenEmbedder", "word_dim": 4},
        encoder={"_target_": "chaincrf.network.encoders.identity.IdentityEncoder", "_partial_": True},
    )  # fmt: skip
    whole, by_fields = SequenceTagger(config), SequenceTagger(**config.to_dict())
    assert whole.config == by_fields.config == config
    assert dict(whole.hparams) == dict(by_fields.hparams) == config.to_dict()
    assert config.optimizer == {"_target_": "torch.optim.Adam", "lr": 1e-3}  # the default, kept
    with pytest.raises(TypeError, match="scheme_name"):
        SequenceTagger(**config.to_dict(), scheme_name="BIO")
