"""Prediction without the training stack: ``chaincrf.tagger.bundle.load_predictor`` loads a
bundle or a checkpoint and tags text with torch alone — tested in a subprocess in which
importing Lightning, torchmetrics, seqeval, Hydra or OmegaConf fails."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

from chaincrf.tagger import SequenceTagger, hparams

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
from chaincrf.tagger.bundle import load_predictor
predictor = load_predictor({path!r})
sentences = json.loads(sys.stdin.read())
print(json.dumps([tagged.to_dict() for tagged in predictor.predict(sentences)]))
"""


@pytest.mark.parametrize("model_file", ["v1_bundle", "v1.ckpt"])
def test_a_model_file_predicts_with_torch_alone(model_file):
    expected = json.loads((FIXTURES / "v1_expected.json").read_text())
    code = SCRIPT.format(blocked=BLOCKED, path=str(FIXTURES / model_file))
    out = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps([s["tokens"] for s in expected]),
        capture_output=True,
        text=True,
        check=True,
    )
    got = json.loads(out.stdout)
    assert [s["tags"] for s in got] == [s["tags"] for s in expected]
    assert [s["spans"] for s in got] == [s["spans"] for s in expected]


def test_the_light_path_reads_the_taggers_defaults():
    """load_predictor builds from hparams.checked, SequenceTagger from its own signature: the
    defaults must agree, so that a model file missing a key loads the same both ways."""
    ours = inspect.signature(hparams.checked).parameters
    theirs = inspect.signature(SequenceTagger.__init__).parameters
    for name, parameter in ours.items():
        assert theirs[name].default == parameter.default, name
