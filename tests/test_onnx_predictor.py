"""The ONNX artefact end to end: ``chaincrf-export format=onnx`` (and ``quantize=int8``), the
onnxruntime predictor (no torch in its process), and ``chaincrf-predict`` choosing it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from hydra import compose, initialize_config_dir

from chaincrf.cli.export import export
from chaincrf.cli.predict import predict
from chaincrf.predict.bundle import load_predictor
from chaincrf.predict.onnx_predictor import OnnxPredictor, is_artefact

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

pytestmark = pytest.mark.slow  # subprocesses and ONNX exports: not in the fast lane (README)

HERE = Path(__file__).parent
CONF = HERE.parent / "conf"
CHECKPOINT = HERE / "fixtures" / "model_files" / "v1.ckpt"
SENTENCES = [
    [line.split()[0] for line in block.splitlines()]
    for block in (HERE / "fixtures" / "tagger" / "test.conll").read_text().split("\n\n")
    if block.strip()
]
RAW = [
    "EU rejects German call to boycott British lamb.",
    "",
    "Peter Blackburn  went to the U.S. on Monday, didn't he?",
]
BLOCKED = ("torch", "pytorch_lightning", "lightning", "torchmetrics", "seqeval", "hydra",
           "omegaconf", "numba")  # fmt: skip


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """The fixture checkpoint exported as a float and an int8 ONNX folder (the CLI's function)."""
    root = tmp_path_factory.mktemp("onnx")
    return {
        "float": export(CHECKPOINT, root / "float", fmt="onnx"),
        "int8": export(CHECKPOINT, root / "int8", fmt="onnx", quantize="int8"),
    }


def test_the_onnx_predictor_tags_as_the_pytorch_tagger(exported):
    torch_predictor = load_predictor(CHECKPOINT)
    onnx_predictor = OnnxPredictor(exported["float"])
    assert len(SENTENCES) > 10
    for inputs in (SENTENCES, RAW):
        want = torch_predictor.predict(inputs, batch_size=4)
        got = onnx_predictor.predict(inputs, batch_size=4)
        assert [g.tags for g in got] == [w.tags for w in want]
        assert [g.tokens for g in got] == [w.tokens for w in want]
        assert [g.offsets for g in got] == [w.offsets for w in want]
        for g, w in zip(got, want):
            assert g.confidences == pytest.approx(w.confidences, abs=2e-6)
            assert [(s.type, s.start, s.end, s.text) for s in g.spans] == [
                (s.type, s.start, s.end, s.text) for s in w.spans
            ]
    assert any(t.spans for t in got)  # the fixture model does find entities


def test_the_onnx_predictor_imports_neither_torch_nor_the_training_stack(exported):
    code = f"""
import json, sys
class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ImportError("blocked for this test: " + name)
sys.meta_path.insert(0, Blocked())
from chaincrf.predict.onnx_predictor import OnnxPredictor
predictor = OnnxPredictor({str(exported["float"])!r})
print(json.dumps([t.to_dict() for t in predictor.predict(json.loads(sys.stdin.read()))]))
print(json.dumps(sorted(sys.modules)))
"""
    out = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps([*SENTENCES[:5], *RAW]),
        capture_output=True,
        text=True,
        check=True,
    )
    records, modules = (json.loads(line) for line in out.stdout.splitlines())
    want = load_predictor(CHECKPOINT).predict([*SENTENCES[:5], *RAW])
    assert [r["tags"] for r in records] == [w.tags for w in want]
    assert not [m for m in modules if m.split(".")[0] in BLOCKED]
    assert "onnxruntime" in modules and "spacy" in modules


def test_int8_quantises_the_encoder_and_projection_and_keeps_most_tags(exported):
    ops = {node.op_type for node in onnx.load(str(exported["int8"] / "model.onnx")).graph.node}
    assert {"DynamicQuantizeLSTM", "MatMulInteger"} <= ops and "LSTM" not in ops
    assert json.loads((exported["int8"] / "tagger.json").read_text())["quantize"] == "int8"
    float_tags = [t.tags for t in OnnxPredictor(exported["float"]).predict(SENTENCES)]
    int8_tags = [t.tags for t in OnnxPredictor(exported["int8"]).predict(SENTENCES)]
    pairs = [(a, b) for x, y in zip(float_tags, int8_tags) for a, b in zip(x, y)]
    agreement = sum(a == b for a, b in pairs) / len(pairs)
    assert 0.9 <= agreement <= 1.0


@pytest.mark.parametrize("kind", ["float", "int8"])
def test_the_exported_graph_states_the_sizes_the_loader_checks(exported, kind):
    """check_model finds the embeddings and the projection by the exporter's names."""
    from chaincrf.predict.onnx_model import check_model

    assert check_model(exported[kind] / "model.onnx", 17) == {"words": 61, "chars": 46}
    with pytest.raises(ValueError, match="the model scores 17 tags"):
        check_model(exported[kind] / "model.onnx", 16)


def _predict(overrides: list[str], capsys) -> list[dict]:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="predict", overrides=overrides)
    predict(cfg)
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_chaincrf_predict_runs_an_onnx_folder_with_onnxruntime(exported, tmp_path, capsys):
    source = tmp_path / "in.txt"
    source.write_text("\n".join(RAW) + "\n", encoding="utf-8")
    folder = exported["float"]
    assert is_artefact(folder) and not is_artefact(CHECKPOINT.parent)
    common = [f"ckpt_path={folder}", f"input={source}"]
    auto = _predict(common, capsys)
    as_torch = _predict([*common, "engine=torch"], capsys)  # the bundle inside the folder
    assert len(auto) == len(RAW) and [r["tags"] for r in auto] == [r["tags"] for r in as_torch]
    assert auto[2]["tokens"][-4:] == ["did", "n't", "he", "?"]  # spaCy, as with torch
    with pytest.raises(ValueError, match="engine=onnx needs a folder"):
        _predict([f"ckpt_path={CHECKPOINT}", f"input={source}", "engine=onnx"], capsys)
    with pytest.raises(ValueError, match="engine must be one of"):
        _predict([*common, "engine=tensorrt"], capsys)
    with pytest.raises(ValueError, match="best tagging only"):
        _predict([*common, "top_k=3"], capsys)


def test_bad_folders_and_options_are_named(exported, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"tagger\.json: missing"):
        OnnxPredictor(tmp_path)
    (tmp_path / "tagger.json").write_text('{"format": "chaincrf-artefact-1", "engine": "pt"}')
    with pytest.raises(ValueError, match="not an ONNX tagger artefact"):
        OnnxPredictor(tmp_path)
    with pytest.raises(ValueError, match="quantize must be"):
        export(CHECKPOINT, tmp_path / "x", fmt="torchscript", quantize="int8")
    with pytest.raises(ValueError, match="format must be one of"):
        export(CHECKPOINT, tmp_path / "x", fmt="tflite")
    assert not (tmp_path / "x").exists()


def test_bytes_dicts_and_none_are_refused_naming_the_sentence_and_token(exported):
    predictor = OnnxPredictor(exported["float"])
    with pytest.raises(TypeError, match=r"sentence 0 must be a str \(raw text\) .*; got bytes"):
        predictor.predict([b"EU rejects"])  # not the byte values '69', '85', ...
    with pytest.raises(TypeError, match=r"sentence 1 must be .*; got dict"):
        predictor.predict([["EU"], {"tokens": ["EU", "rejects"]}])
    with pytest.raises(TypeError, match=r"sentence 0, token 1 must be a str; got NoneType None"):
        predictor.predict([["EU", None]])
