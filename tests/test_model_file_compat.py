"""Model files written before the tagger became a package (issue 16) still load and predict
exactly what they predicted then: a training checkpoint and an exported bundle, made by
``tests/fixtures/model_files/make_model_files.py`` with the old code and committed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chaincrf.tagger import SequenceTagger

HERE = Path(__file__).parent / "fixtures" / "model_files"
EXPECTED = json.loads((HERE / "v1_expected.json").read_text())


@pytest.mark.parametrize("path", ["v1.ckpt", "v1_bundle"])
def test_old_model_files_load_and_predict_as_before(path):
    tagger = SequenceTagger.load(HERE / path)
    got = [tagged.to_dict() for tagged in tagger.predict([s["tokens"] for s in EXPECTED])]
    assert [s["tags"] for s in got] == [s["tags"] for s in EXPECTED]
    keys = ("type", "start", "end", "text", "confidence")  # v1's span fields (offsets came later)
    spans = [[{k: span[k] for k in keys} for span in s["spans"]] for s in got]
    assert spans == [s["spans"] for s in EXPECTED]
    for ours, theirs in zip(got, EXPECTED):
        assert ours["confidences"] == pytest.approx(theirs["confidences"], abs=2e-6)


# Model files written by main on 2026-12-05, before the package was regrouped by role (issue 29):
# ``tests/fixtures/model_files/make_model_files_v2.py``. A whole training checkpoint, a bundle and
# an ONNX export folder; each loads with today's code and predicts what that code predicted.
EXPECTED_V2 = json.loads((HERE / "v2_expected.json").read_text())
SENTENCES_V2 = [s["tokens"] for s in EXPECTED_V2]


def assert_same_predictions(got: list[dict], tolerance: float, expected=EXPECTED_V2) -> None:
    assert [s["tags"] for s in got] == [s["tags"] for s in expected]
    for ours, theirs in zip(got, expected):
        assert [(s["type"], s["start"], s["end"]) for s in ours["spans"]] == [
            (s["type"], s["start"], s["end"]) for s in theirs["spans"]
        ]
        assert ours["confidences"] == pytest.approx(theirs["confidences"], abs=tolerance)
        spans = [s["confidence"] for s in ours["spans"]]
        assert spans == pytest.approx([s["confidence"] for s in theirs["spans"]], abs=tolerance)


@pytest.mark.parametrize("path", ["v2.ckpt", "v2_bundle", "v2_onnx"])
def test_v2_model_files_load_and_predict_as_before(path):
    tagger = SequenceTagger.load(HERE / path)
    got = [tagged.to_dict() for tagged in tagger.predict(SENTENCES_V2, top_k=2)]
    assert_same_predictions(got, tolerance=2e-6)
    for ours, theirs in zip(got, EXPECTED_V2):
        assert [a["tags"] for a in ours["alternatives"]] == [
            a["tags"] for a in theirs["alternatives"]
        ]
        assert [a["probability"] for a in ours["alternatives"]] == pytest.approx(
            [a["probability"] for a in theirs["alternatives"]], abs=2e-6
        )


@pytest.mark.parametrize("path", ["v2.ckpt", "v2_onnx"])
def test_v2_model_files_load_for_prediction_without_lightning(path):
    from chaincrf.predict.bundle import load_predictor

    got = [tagged.to_dict() for tagged in load_predictor(HERE / path).predict(SENTENCES_V2)]
    assert_same_predictions(got, tolerance=2e-6)


def test_v2_onnx_export_runs_under_onnxruntime_as_before():
    pytest.importorskip("onnxruntime")
    from chaincrf.tagger import OnnxPredictor

    expected = json.loads((HERE / "v2_expected_onnx.json").read_text())
    got = [tagged.to_dict() for tagged in OnnxPredictor(HERE / "v2_onnx").predict(SENTENCES_V2)]
    assert_same_predictions(got, tolerance=2e-6, expected=expected)


def test_v2_onnx_export_states_its_sizes_to_the_loader():
    """The exported graph's initializers were renamed (the embedder's graph became a part):
    the loader's size checks still find them in a model exported before."""
    pytest.importorskip("onnx")
    from chaincrf.predict.onnx_model import check_model

    labels = json.loads((HERE / "v2_onnx" / "tagger.json").read_text())["labels"]
    rows = check_model(HERE / "v2_onnx" / "model.onnx", len(labels))
    assert rows["words"] is not None and rows["chars"] is not None
