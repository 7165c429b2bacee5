"""Models by name (issue 33, part 4): ``chaincrf-package`` builds a pip-installable wheel of a run
(model files in the Hub layout, card, licence and data attribution, entry point
``chaincrf.models``); once installed, ``SequenceTagger.load(<name>)`` and ``chaincrf-predict
model=<name>`` find it; a model trained on CoNLL-2003 is refused; ``save_pretrained`` /
``from_pretrained`` round-trip, offline."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from chaincrf.cli.common import run_cli
from chaincrf.cli.package import package_command, source_first
from chaincrf.cli.packaging import package_model
from chaincrf.cli.predict import model_alias, predict
from chaincrf.files.models import ENTRY_POINT_GROUP, installed_models
from chaincrf.predict.hub import read_metadata
from chaincrf.tagger import SequenceTagger
from fixture_runs import CONF

HERE = Path(__file__).parent
SRC = HERE.parent / "src"
CHECKPOINT = HERE / "fixtures" / "model_files" / "v1.ckpt"
BUNDLE = HERE / "fixtures" / "model_files" / "v1_bundle"
RAW = HERE / "fixtures" / "tagger" / "raw.txt"
NAME = "en_fixture_upos"

UD_EWT_DATA = """\
task_name: ud_ewt_pos
data:
  download: ud_ewt
  root: null
  train: {root}/ud_english_ewt/en_ewt-ud-train.conllu
  dev: {root}/ud_english_ewt/en_ewt-ud-dev.conllu
  test: {root}/ud_english_ewt/en_ewt-ud-test.conllu
  label_column: upos
"""
CONLL2003_DATA = """\
data:
  root: {root}
  train: conll2003/eng.train
  dev: conll2003/eng.testa
  test: conll2003/eng.testb
"""


REPORT = "# chaincrf training report\n\n- **seed**: 42\n\n## Overall\n\n| split | accuracy |\n"


def make_run(folder: Path, config: str) -> Path:
    """A run folder: the fixture checkpoint as ``checkpoints/best.ckpt`` and a ``config.yaml``
    whose ``data`` node says what it was trained on."""
    (folder / "checkpoints").mkdir(parents=True)
    shutil.copy(CHECKPOINT, folder / "checkpoints" / "best.ckpt")
    (folder / "config.yaml").write_text(config.format(root=folder / "data"), encoding="utf-8")
    (folder / "report.md").write_text(REPORT, encoding="utf-8")
    return folder


def compose_config(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def tags_of(tagger, lines: list[str]) -> list[list[str]]:
    return [t.tags for t in tagger.predict([line.split() for line in lines])]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory, one_thread) -> Path:
    """The fixture run, recorded as trained on UD English-EWT, packaged as ``en_fixture_upos``."""
    run = make_run(tmp_path_factory.mktemp("run") / "run", UD_EWT_DATA)
    return package_model(run, tmp_path_factory.mktemp("dist"), NAME, version="1.2.0")


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel installed offline (no index, no dependencies) into a folder of its own."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--target", str(target), str(wheel)],
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return target


# ---------------------------------------------------------------- licences: refused first


def test_a_model_trained_on_conll2003_is_refused_in_one_line(tmp_path, caplog):
    run = make_run(tmp_path / "run", CONLL2003_DATA)
    with pytest.raises(
        ValueError, match=r"trained on CoNLL-2003.*research-only licence.*never shipped"
    ):
        package_model(run, tmp_path / "dist", "en_ner", license="MIT", attribution="mine")
    cfg = compose_config(
        "package", source_first([str(run), "name=en_ner", f"output={tmp_path / 'dist'}"])
    )
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as stop:
        run_cli(package_command, cfg)
    assert stop.value.code == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0] and "CoNLL-2003" in errors[0]
    assert not (tmp_path / "dist").exists()  # nothing written


def test_data_of_unknown_licence_needs_license_and_attribution(tmp_path):
    with pytest.raises(
        ValueError, match=r"no record of its training data; pass license=.*attribution="
    ):
        package_model(BUNDLE, tmp_path, "my_ner")
    with pytest.raises(ValueError, match=r"attributed to CoNLL-2003.*never shipped"):
        package_model(BUNDLE, tmp_path, "my_ner", license="MIT", attribution="CoNLL 2003, renamed")
    with pytest.raises(ValueError, match=r"license must be an SPDX licence expression"):
        package_model(BUNDLE, tmp_path, "my_ner", license="research only", attribution="x")


def test_a_known_corpus_keeps_its_licence_and_names_are_checked(tmp_path):
    run = make_run(tmp_path / "run", UD_EWT_DATA)
    with pytest.raises(
        ValueError, match=r"license=MIT: .* UD English-EWT r2.16, licensed CC-BY-SA-4.0"
    ):
        package_model(run, tmp_path / "dist", "en_ewt_upos", license="MIT")
    with pytest.raises(
        ValueError, match=r"name must be a lower-case Python package name.*'En-EWT'"
    ):
        package_model(run, tmp_path / "dist", "En-EWT")
    with pytest.raises(ValueError, match=r"version must be a PEP 440 version.*'one'"):
        package_model(run, tmp_path / "dist", version="one")  # the name: en_ewt_upos
    (tmp_path / "dist").mkdir()
    (tmp_path / "dist" / "en_ewt_upos-0.1.0-py3-none-any.whl").write_text("mine")
    with pytest.raises(FileExistsError, match=r"en_ewt_upos-0.1.0-py3-none-any.whl exists"):
        package_model(run, tmp_path / "dist")
    assert (tmp_path / "dist" / "en_ewt_upos-0.1.0-py3-none-any.whl").read_text() == "mine"
    with pytest.raises(ValueError, match=r"pass name=<the model's name"):
        package_model(BUNDLE, tmp_path / "dist", license="MIT", attribution="x")


# ---------------------------------------------------------------- the wheel, installed


@pytest.mark.slow
def test_the_wheel_holds_the_model_its_card_licence_and_entry_point(wheel):
    assert wheel.name == f"{NAME}-1.2.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        text = {n: archive.read(n).decode("utf-8") for n in names if not n.endswith(".safetensors")}
    for file in ("config.json", "model.safetensors", "vocab.json", "README.md"):
        assert f"{NAME}/model/{file}" in names
    entry_points = text[f"{NAME}-1.2.0.dist-info/entry_points.txt"]
    assert f"[{ENTRY_POINT_GROUP}]\n{NAME} = {NAME}" in entry_points
    metadata = text[f"{NAME}-1.2.0.dist-info/METADATA"]
    assert "License-Expression: CC-BY-SA-4.0" in metadata
    assert "Requires-Dist: chaincrf>=" in metadata
    assert "Requires-Dist: safetensors>=" in metadata  # the weights are model.safetensors
    card = text[f"{NAME}/model/README.md"]
    assert card.startswith("---\nlicense: cc-by-sa-4.0\nlanguage:\n- en\n")
    assert "datasets:\n- universal_dependencies\n" in card
    assert "UD_English-EWT" in card and "CoNLL-2003 are never packaged" in card
    assert "## Training report\n\n- **seed**: 42\n\n### Overall\n" in card  # the run's report
    assert "CC-BY-SA-4.0" in text[f"{NAME}/LICENSE"] and "Silveira" in text[f"{NAME}/LICENSE"]


@pytest.mark.slow
def test_an_installed_model_is_found_by_name(installed, monkeypatch):
    monkeypatch.syspath_prepend(str(installed))
    assert NAME in installed_models()
    lines = RAW.read_text(encoding="utf-8").splitlines()[:5]
    by_name = SequenceTagger.load(NAME)
    assert tags_of(by_name, lines) == tags_of(SequenceTagger.load(CHECKPOINT), lines)
    with pytest.raises(
        FileNotFoundError, match=rf"'en_missing' is neither .*installed models: .*{NAME}"
    ):
        SequenceTagger.load("en_missing")


@pytest.mark.slow
def test_chaincrf_predict_tags_with_an_installed_model_from_another_folder(installed, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "chaincrf.cli.predict", f"model={NAME}", f"input={RAW}",
         "tokenizer=whitespace"],
        cwd=elsewhere, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(installed), str(SRC)])},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in result.stdout.splitlines()]
    lines = RAW.read_text(encoding="utf-8").splitlines()
    assert [r["tags"] for r in records] == tags_of(SequenceTagger.load(CHECKPOINT), lines)


def test_a_name_that_is_no_path_and_no_installed_model_is_one_line(tmp_path):
    cfg = compose_config("predict", model_alias(["model=en_nowhere", f"input={RAW}"]))
    with pytest.raises(
        FileNotFoundError,
        match=r"^'en_nowhere' is neither a file or folder nor an installed model \(installed models: [^\n]*\)[^\n]*$",
    ):
        predict(cfg)


def test_predict_takes_model_as_a_path_and_refuses_two_models(tmp_path):
    out = tmp_path / "out.jsonl"
    args = model_alias([f"model={BUNDLE}", f"input={RAW}", f"output={out}", "tokenizer=whitespace"])
    assert predict(compose_config("predict", args)).sentences == len(
        RAW.read_text(encoding="utf-8").splitlines()
    )
    with pytest.raises(ValueError, match=r"pass model= or ckpt_path=, not both"):
        model_alias([f"model={BUNDLE}", f"ckpt_path={CHECKPOINT}"])


# ---------------------------------------------------------------- the Hub layout


def test_save_pretrained_and_from_pretrained_give_identical_predictions(tmp_path, one_thread):
    tagger = SequenceTagger.load(BUNDLE)
    folder = tagger.save_pretrained(
        tmp_path / "hub", metadata={"license": "mit", "language": ["en"], "datasets": ["mine"]}
    )
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "config.json", "model.safetensors", "vocab.json"
    ]  # fmt: skip
    meta = read_metadata(folder)
    assert meta["license"] == "mit" and meta["language"] == ["en"] and meta["datasets"] == ["mine"]
    assert meta["library_name"] == "chaincrf" and "chaincrf" in meta["tags"]
    lines = RAW.read_text(encoding="utf-8").splitlines()
    loaded = SequenceTagger.from_pretrained(folder)
    assert tags_of(loaded, lines) == tags_of(tagger, lines)
    confidences = [t.confidences for t in loaded.predict([line.split() for line in lines])]
    assert confidences == [t.confidences for t in tagger.predict([line.split() for line in lines])]


def test_without_huggingface_hub_a_repo_id_is_one_line_naming_the_hub_extra(tmp_path, monkeypatch):
    tagger = SequenceTagger.load(BUNDLE)
    for name in ("huggingface_hub", "safetensors", "safetensors.torch"):
        monkeypatch.setitem(sys.modules, name, None)  # Python's own "not installed"
    folder = tagger.save_pretrained(tmp_path / "saved")
    # without safetensors the layout keeps the bundle's own weights file, and loads
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "config.json", "vocab.json", "weights.pt"
    ]  # fmt: skip
    lines = RAW.read_text(encoding="utf-8").splitlines()
    assert tags_of(SequenceTagger.from_pretrained(folder), lines) == tags_of(tagger, lines)
    with pytest.raises(ImportError) as error:
        SequenceTagger.from_pretrained("chaincrf/en_ewt_upos")
    assert str(error.value) == (
        "SequenceTagger.from_pretrained('chaincrf/en_ewt_upos') needs the hub extra: "
        "pip install \"chaincrf[hub]\" (no module named 'huggingface_hub')"
    )


def test_a_repo_id_loads_from_the_local_hub_cache_offline(tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--chaincrf--en_fixture"
    tagger = SequenceTagger.load(BUNDLE)
    tagger.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    by_id = SequenceTagger.from_pretrained(
        "chaincrf/en_fixture", cache_dir=tmp_path / "cache", local_files_only=True
    )
    lines = RAW.read_text(encoding="utf-8").splitlines()
    assert tags_of(by_id, lines) == tags_of(tagger, lines)


def test_chaincrf_package_help_lists_its_options():
    from chaincrf.cli.usage import PROGRAMS, help_text

    assert PROGRAMS["package"] == "chaincrf-package"
    text = help_text("package", CONF)
    for key in ("source=???", "name=null", "output=dist", "version=0.1.0", "license=null"):
        assert key in text
