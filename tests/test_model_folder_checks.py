"""Model folders are confined and checked before anything is built: a bundle (``config.json``,
``weights.pt``, ``vocab.json``) and an ONNX folder (``tagger.json``, ``model.onnx``,
``vocab.json``) whose files lead outside the folder, hold mistyped fields, sizes that disagree
with the weights, or JSON nested without end, are refused with one line naming the file and
the field, before a tensor is allocated or onnxruntime reads a model."""

from __future__ import annotations

import json
import os
import resource
import shutil
from pathlib import Path

import numpy as np
import pytest

from chaincrf.files.model_checks import MAX_JSON_DEPTH, ModelFileError
from chaincrf.predict.bundle import load_predictor
from chaincrf.predict.onnx_predictor import OnnxPredictor, is_artefact

HERE = Path(__file__).parent
BUNDLE = HERE / "fixtures" / "model_files" / "v1_bundle"
CONF = HERE.parent / "conf"
TOKENS = [["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."]]


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(json.dumps(data), encoding="utf-8")


@pytest.fixture
def bundle(tmp_path) -> Path:
    """A copy of the fixture bundle (61 words, 46 characters, 17 tags), to be edited."""
    return Path(shutil.copytree(BUNDLE, tmp_path / "bundle"))


def _model_proto(words: int = 61, chars: int = 46, tags: int = 17):
    """A tiny ONNX tagger with the exporter's inputs, outputs and initializer names: word
    embeddings, a projection to ``tags`` scores, the arg-max and its probability (the character
    embeddings are there for their size only)."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    dim = 4
    initializers = [
        numpy_helper.from_array(rng.normal(size=(words, dim)).astype(np.float32),
                                "word_embedding.weight"),
        numpy_helper.from_array(rng.normal(size=(chars, dim)).astype(np.float32),
                                "chars.embedding.weight"),
        numpy_helper.from_array(rng.normal(size=(dim, tags)).astype(np.float32), "val_217"),
        numpy_helper.from_array(rng.normal(size=(tags,)).astype(np.float32), "projection.bias"),
        numpy_helper.from_array(np.array([2], np.int64), "axes"),
    ]  # fmt: skip
    nodes = [
        helper.make_node("Gather", ["word_embedding.weight", "words"], ["embedded"]),
        helper.make_node("MatMul", ["embedded", "val_217"], ["scores0"]),
        helper.make_node("Add", ["scores0", "projection.bias"], ["scores"]),
        helper.make_node("ArgMax", ["scores"], ["tags"], axis=2, keepdims=0),
        helper.make_node("Softmax", ["scores"], ["probabilities"], axis=2),
        helper.make_node("ReduceMax", ["probabilities", "axes"], ["confidences"], keepdims=0),
    ]
    inputs = [
        helper.make_tensor_value_info("words", TensorProto.INT64, ["batch", "length"]),
        helper.make_tensor_value_info("chars", TensorProto.INT64, ["batch", "length", "c"]),
        helper.make_tensor_value_info("casing", TensorProto.INT64, ["batch", "length"]),
        helper.make_tensor_value_info("mask", TensorProto.BOOL, ["batch", "length"]),
    ]
    outputs = [
        helper.make_tensor_value_info("tags", TensorProto.INT64, ["batch", "length"]),
        helper.make_tensor_value_info("confidences", TensorProto.FLOAT, ["batch", "length"]),
    ]
    graph = helper.make_graph(nodes, "tagger", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def _onnx_folder(root: Path, **sizes) -> Path:
    """An exported-ONNX-style folder: the tiny model, the fixture's vocabularies and labels."""
    import onnx

    folder = root / "onnx"
    folder.mkdir(parents=True)
    onnx.save(_model_proto(**sizes), str(folder / "model.onnx"))
    shutil.copy(BUNDLE / "vocab.json", folder / "vocab.json")
    hparams = json.loads((BUNDLE / "config.json").read_text())["hparams"]
    meta = {
        "format": "chaincrf-artefact-1",
        "model": "model.onnx",
        "engine": "onnx",
        "quantize": None,
        "inputs": ["words", "chars", "casing", "mask"],
        "outputs": ["tags", "confidences"],
        "labels": hparams["labels"],
        "scheme": hparams["scheme"],
        "original_scheme": hparams["original_scheme"],
    }
    (folder / "tagger.json").write_text(json.dumps(meta), encoding="utf-8")
    return folder


def test_the_unedited_folders_load_and_tag(bundle, tmp_path):
    assert len(load_predictor(bundle).predict(TOKENS)[0].tags) == 9
    folder = _onnx_folder(tmp_path)
    tagged = OnnxPredictor(folder, tokenizer="whitespace").predict(TOKENS)
    assert len(tagged[0].tags) == 9


# --- paths stay inside the folder ---------------------------------------------------------


@pytest.mark.parametrize("where", ["relative", "absolute", "link"])
def test_a_model_path_leading_outside_the_onnx_folder_is_refused(tmp_path, where):
    elsewhere = _onnx_folder(tmp_path / "other")  # a working model, just not this folder's
    folder = _onnx_folder(tmp_path / "mine")
    outside = elsewhere / "model.onnx"
    if where == "link":
        (folder / "model.onnx").unlink()
        (folder / "model.onnx").symlink_to(outside)
        name = "model.onnx"
    else:
        name = "../../other/onnx/model.onnx" if where == "relative" else str(outside)
        _edit_json(folder / "tagger.json", lambda meta: meta.update(model=name))
    with pytest.raises(ModelFileError, match="outside the model folder") as caught:
        OnnxPredictor(folder)
    assert str(folder / "tagger.json") in str(caught.value) and repr(name) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_model_path_to_a_system_file_is_refused_before_it_is_read(tmp_path):
    folder = _onnx_folder(tmp_path)
    escape = "../" * 12 + "etc/passwd"
    _edit_json(folder / "tagger.json", lambda meta: meta.update(model=escape))
    with pytest.raises(ModelFileError, match=r"tagger\.json: model .*outside the model folder"):
        OnnxPredictor(folder)


def test_external_data_outside_the_folder_is_refused(tmp_path):
    import onnx
    from onnx.external_data_helper import set_external_data

    folder = _onnx_folder(tmp_path)
    model = onnx.load(str(folder / "model.onnx"))
    tensor = next(t for t in model.graph.initializer if t.name == "projection.bias")
    set_external_data(tensor, location="../../secret.bin")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    onnx.save(model, str(folder / "model.onnx"))
    with pytest.raises(
        ModelFileError, match=r"external data of tensor 'projection.bias'.*outside the model"
    ):
        OnnxPredictor(folder)


def test_a_bundle_file_linked_from_outside_is_refused(bundle, tmp_path):
    outside = tmp_path / "weights_elsewhere.pt"
    shutil.move(bundle / "weights.pt", outside)
    (bundle / "weights.pt").symlink_to(outside)
    with pytest.raises(ModelFileError, match=r"weights\.pt: the file .*outside the model folder"):
        load_predictor(bundle)


# --- sizes agree with the weights, before anything is allocated ----------------------------


def test_a_huge_num_words_is_refused_before_the_model_is_built(bundle):
    config = bundle / "config.json"
    _edit_json(config, lambda c: c["hparams"].update(num_words=50_000_000))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with pytest.raises(
        ModelFileError,
        match=rf"{config}: weights do not fit the model: num_words is 50000000, but the weights' "
        r"model\.embedder\.word_embedding\.weight has 61 rows",
    ):
        load_predictor(bundle)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown < 1024 * 1024  # under 1 GiB more at peak: the 3.2 GB table was never made


def test_an_absurd_layer_count_is_refused_by_the_weights_present(bundle):
    _edit_json(bundle / "config.json", lambda c: c["hparams"]["encoder"].update(num_layers=10000))
    with pytest.raises(
        ModelFileError, match=r"encoder\.num_layers is 10000, more than the 20 weight tensors"
    ) as caught:
        load_predictor(bundle)
    assert len(str(caught.value)) < 300


def test_an_absurd_hidden_size_is_refused(bundle):
    _edit_json(bundle / "config.json", lambda c: c["hparams"]["encoder"].update(hidden_size=10**7))
    with pytest.raises(ModelFileError, match=r"encoder\.hidden_size is 10000000, more than"):
        load_predictor(bundle)


def test_labels_shorter_than_the_bundle_weights_are_refused(bundle):
    def drop_last_tag(config):
        config["hparams"]["labels"] = config["hparams"]["labels"][:-1]

    _edit_json(bundle / "config.json", drop_last_tag)
    with pytest.raises(
        ModelFileError, match=r"labels name 16 tags, but the weights' model\.projection\.weight"
    ):
        load_predictor(bundle)


def test_labels_shorter_than_the_onnx_model_tag_count_are_refused_at_load(tmp_path):
    folder = _onnx_folder(tmp_path)
    for name, edit in (
        ("tagger.json", lambda meta: meta.update(labels=meta["labels"][:-1])),
        ("vocab.json", lambda vocab: vocab["tags"].update(itos=vocab["tags"]["itos"][:-1])),
    ):
        _edit_json(folder / name, edit)
    with pytest.raises(ModelFileError, match=r"model\.onnx: the model scores 17 tags .* name 16"):
        OnnxPredictor(folder)


def _more_words(vocab):
    vocab["words"]["itos"] = vocab["words"]["itos"] + [f"extra{i}" for i in range(9)]


def test_a_vocabulary_larger_than_the_bundle_embedding_is_refused_at_load(bundle):
    _edit_json(bundle / "vocab.json", _more_words)
    with pytest.raises(
        ModelFileError, match=r"vocab\.json: the words vocabulary has 70 entries, more than the 61"
    ):
        load_predictor(bundle)


def test_a_vocabulary_larger_than_the_onnx_embedding_is_refused_at_load(tmp_path):
    folder = _onnx_folder(tmp_path)
    _edit_json(folder / "vocab.json", _more_words)
    with pytest.raises(
        ModelFileError, match=r"vocab\.json: the words vocabulary has 70 entries, more than the 61"
    ):
        OnnxPredictor(folder)


def test_vocabulary_tags_other_than_the_labels_are_refused(tmp_path):
    folder = _onnx_folder(tmp_path)
    _edit_json(folder / "vocab.json", lambda v: v["tags"]["itos"].reverse())
    with pytest.raises(ModelFileError, match=r"vocab\.json: tags\.itos must be the model's 17"):
        OnnxPredictor(folder)


# --- every field has its type -------------------------------------------------------------


def test_duplicate_onnx_labels_are_refused(tmp_path):
    folder = _onnx_folder(tmp_path)
    _edit_json(folder / "tagger.json", lambda meta: meta["labels"].__setitem__(2, "B-LOC"))
    with pytest.raises(
        ModelFileError, match=r"tagger\.json: labels must not repeat entries; got \['B-LOC'\]"
    ):
        OnnxPredictor(folder)


@pytest.mark.parametrize("engine", ["bundle", "onnx"])
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("lowercase", "no", r"lowercase must be a boolean \(true or false\); got str 'no'"),
        ("digits_to_zero", 0, r"digits_to_zero must be a boolean \(true or false\); got int 0"),
        ("max_word_chars", 50.0, r"max_word_chars must be an int; got float 50\.0"),
        ("max_word_chars", True, r"max_word_chars must be an int; got bool True"),
        ("scheme", 3, r"scheme must be a string or null; got int 3"),
    ],
)
def test_mistyped_vocabulary_fields_are_named(bundle, tmp_path, engine, field, value, message):
    folder = bundle if engine == "bundle" else _onnx_folder(tmp_path)
    _edit_json(folder / "vocab.json", lambda vocab: vocab.update({field: value}))
    load = load_predictor if engine == "bundle" else OnnxPredictor
    with pytest.raises(ModelFileError, match=rf"{folder / 'vocab.json'}: {message}"):
        load(folder)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("num_words", True, "num_words must be an int; got bool True"),
        ("num_chars", "46", "num_chars must be an int; got str '46'"),
        ("feature_sizes", [2.0], r"feature_sizes\[0\] must be an int; got float 2\.0"),
    ],
)
def test_mistyped_hyper_parameters_are_named(bundle, field, value, message):
    _edit_json(bundle / "config.json", lambda c: c["hparams"].update({field: value}))
    with pytest.raises(ModelFileError, match=rf"{bundle / 'config.json'}: {message}"):
        load_predictor(bundle)


# --- JSON is bounded ----------------------------------------------------------------------


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 100_000])
@pytest.mark.parametrize("engine", ["bundle", "onnx"])
def test_deeply_nested_json_is_one_line_error(bundle, tmp_path, depth, engine):
    folder = bundle if engine == "bundle" else _onnx_folder(tmp_path)
    (folder / "vocab.json").write_text("[" * depth + "]" * depth, encoding="utf-8")
    load = load_predictor if engine == "bundle" else OnnxPredictor
    with pytest.raises(ModelFileError, match=r"vocab\.json: JSON nested") as caught:
        load(folder)
    assert "\n" not in str(caught.value)


# --- onnxruntime failures and the engine choice --------------------------------------------


@pytest.mark.parametrize("content", [b"", b"garbage that is no protobuf \xff\xfe", "truncated"])
def test_a_broken_model_onnx_is_one_line_error_naming_it(tmp_path, content):
    folder = _onnx_folder(tmp_path)
    model = folder / "model.onnx"
    if content == "truncated":
        content = model.read_bytes()[: model.stat().st_size // 2]
    model.write_bytes(content)
    with pytest.raises(ModelFileError, match=rf"{model}: ") as caught:
        OnnxPredictor(folder)
    assert "\n" not in str(caught.value)


def test_an_unknown_operator_is_one_line_error(tmp_path):
    import onnx

    folder = _onnx_folder(tmp_path)
    model = onnx.load(str(folder / "model.onnx"))
    model.graph.node[0].domain = "com.example.custom"
    model.opset_import.append(onnx.helper.make_opsetid("com.example.custom", 1))
    onnx.save(model, str(folder / "model.onnx"))
    with pytest.raises(ModelFileError, match=r"model\.onnx: onnxruntime cannot load it") as caught:
        OnnxPredictor(folder)
    assert "\n" not in str(caught.value)


def _predict_cli(folder: Path, tmp_path: Path, caplog) -> int:
    """``chaincrf-predict ckpt_path=<folder>`` through its entry function; the exit status."""
    from hydra import compose, initialize_config_dir

    from chaincrf.cli.common import run_cli
    from chaincrf.cli.predict import predict

    source = tmp_path / "in.txt"
    source.write_text("EU rejects German call\n", encoding="utf-8")
    overrides = [f"ckpt_path={folder}", f"input={source}", "tokenizer=whitespace"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="predict", overrides=overrides)
    os.environ.pop("CHAINCRF_TRACEBACK", None)
    with pytest.raises(SystemExit) as stop:
        run_cli(predict, cfg)
    return stop.value.code


def test_an_unreadable_tagger_json_is_an_error_not_a_torch_fallback(bundle, tmp_path, caplog):
    (bundle / "tagger.json").write_text('{"engine": "onnx",', encoding="utf-8")  # cut short
    with pytest.raises(ModelFileError, match=r"tagger\.json:1:\d+: invalid JSON"):
        is_artefact(bundle)
    assert _predict_cli(bundle, tmp_path, caplog) == 1  # the bundle beside it is not used
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "tagger.json:1:" in errors[0] and "invalid JSON" in errors[0]


def test_a_broken_onnx_folder_is_one_line_from_the_cli(tmp_path, caplog):
    folder = _onnx_folder(tmp_path)
    (folder / "model.onnx").write_bytes(b"")
    assert _predict_cli(folder, tmp_path, caplog) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "model.onnx" in errors[0] and "\n" not in errors[0]


def test_a_foreign_onnx_model_is_refused_at_load_not_at_the_first_batch(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    folder = _onnx_folder(tmp_path)  # its vocabularies and labels, somebody else's model
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "foreign", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(folder / "model.onnx"))
    with pytest.raises(
        ModelFileError, match=r"model\.onnx: not a chaincrf tagger: it takes \['x'\]"
    ) as caught:
        OnnxPredictor(folder)
    assert "chaincrf-export" in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("kind", ["folder", "dangling link"])
def test_a_tagger_json_that_cannot_be_read_is_an_error_not_a_torch_fallback(bundle, kind):
    meta = bundle / "tagger.json"
    if kind == "folder":
        meta.mkdir()
    else:
        meta.symlink_to(bundle / "gone.json")
    with pytest.raises((ModelFileError, FileNotFoundError), match=r"tagger\.json: ") as caught:
        is_artefact(bundle)
    assert "\n" not in str(caught.value)
