"""Resume never loses a run: a resume that fails changes nothing in the run's folder, the printed
resume command works pasted into a fresh shell from any folder, the run config's data paths are
absolute (``chaincrf-eval`` works from anywhere), and a set-up failure removes only a folder the
run created itself."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from chaincrf.cli.evaluate import evaluate
from chaincrf.cli.run_folder import absolute_data_paths, resume_command
from chaincrf.cli.train import resume_in_place, train
from fixture_runs import FIXTURES, TINY_MODEL
from test_cli import compose_config

pytestmark = pytest.mark.slow  # the fast lane (README) leaves this module out

TESTS = Path(__file__).resolve().parent
TRAIN = [sys.executable, "-u", "-m", "chaincrf.cli.train"]
EVAL = [sys.executable, "-m", "chaincrf.cli.evaluate"]
RUN = [
    "data=custom", "data.train=train.conll", "data.dev=dev.conll", "data.batch_size=32",
    "embeddings.word_dim=8", "encoder.hidden_size=8", "trainer.max_epochs=5",
    "callbacks=minimal", "test=false", "report=false",
]  # fmt: skip
"""A run on the fixture corpus, its split files relative to the data root: 2 batches an epoch."""


def _env(**extra: str) -> dict[str, str]:
    """A fresh shell's environment (no $CHAINCRF_DATA), the tests' folder on PYTHONPATH (for
    ``fault_injection``; every entry absolute, as the commands run in other folders), one
    thread."""
    env = {k: v for k, v in os.environ.items() if k not in ("CHAINCRF_DATA", "CHAINCRF_CACHE")}
    paths = [str(TESTS), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) for p in paths if p)
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder``: relative name -> sha256."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if "[ERROR]" in line]


@pytest.mark.slow
def test_a_wrong_resume_changes_nothing_and_the_printed_command_resumes_from_anywhere(tmp_path):
    corpus, start, elsewhere, other = (tmp_path / n for n in ("corpus", "start", "elsewhere", "x"))
    for folder in (start, elsewhere, other):
        folder.mkdir()
    shutil.copytree(FIXTURES, corpus)
    # the quick start's way: the data root relative and inline; Ctrl-C in the 3rd epoch
    interrupt = [
        "+callbacks.stop._target_=fault_injection.InterruptAtStep",
        "+callbacks.stop.step=5",
    ]
    first = subprocess.run(
        [*TRAIN, *RUN, *interrupt], cwd=start, env=_env(CHAINCRF_DATA="../corpus"),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert first.returncode == 130, first.stderr[-3000:]
    (run,) = (start / "outputs" / "train").iterdir()
    printed = (first.stdout + first.stderr).split("resume with:\n", 1)[1].splitlines()[0].strip()
    resume = shlex.split(printed)
    assert resume[0] == "chaincrf-train" and f"data.root={corpus.resolve()}" in resume
    assert resume[-1] == f"ckpt_path={run.resolve() / 'checkpoints' / 'last.ckpt'}"
    saved = OmegaConf.load(run / "config.yaml")
    assert saved.data.root == str(corpus.resolve())
    before = _snapshot(run)
    assert {"config.yaml", "encoder.json", "checkpoints/last.ckpt", "train.log"} <= set(before)

    # resumed wrong, in a fresh shell elsewhere: without the data root, then with a bad one
    without_root = [a for a in resume[1:] if not a.startswith("data.root=")]
    for wrong in (without_root, [*resume[1:], f"data.root={tmp_path / 'nowhere'}"]):
        failed = subprocess.run(
            [*TRAIN, *wrong], cwd=elsewhere, env=_env(), capture_output=True, text=True,
            timeout=600,
        )  # fmt: skip
        assert failed.returncode == 1, failed.stderr[-3000:]
        output = failed.stdout + failed.stderr
        assert len(_errors(output)) == 1 and "Traceback" not in output, output[-3000:]
        assert _snapshot(run) == before  # not one file deleted, added or rewritten
        assert [p.name for p in (start / "outputs" / "train").iterdir()] == [run.name]
        assert list(elsewhere.iterdir()) == []

    # resumed right: the printed command, as printed, in a fresh shell elsewhere
    resumed = subprocess.run(
        [*TRAIN, *resume[1:]], cwd=elsewhere, env=_env(), capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [p.name for p in (start / "outputs" / "train").iterdir()] == [run.name]
    assert list(elsewhere.iterdir()) == []
    assert " - epoch 3/5 " in resumed.stdout + resumed.stderr  # the interrupted epoch gets its line
    assert (run / "metrics.json").is_file()
    figures = json.loads((run / "metrics.json").read_text())

    # chaincrf-eval of the run's best checkpoint, from yet another folder
    evaluated = subprocess.run(
        [*EVAL, f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}", "split=val", "output=val.json"],
        cwd=other, env=_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    results = json.loads((other / "val.json").read_text())
    for key in ("val/f1", "val/acc", "val/precision", "val/recall"):
        assert results[key] == pytest.approx(figures[key], abs=1e-9), key


@pytest.mark.usefixtures("one_thread")
def test_relative_data_paths_are_stored_absolute_and_eval_works_from_another_folder(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(FIXTURES.parent)
    run_dir = tmp_path / "run"
    data = [
        "data=custom", "data.root=null", "data.train=tagger/train.conll",
        "data.dev=tagger/dev.conll", "data.test=null", "test=false",
    ]  # fmt: skip
    figures = train(
        compose_config([*data, *TINY_MODEL, "trainer.max_epochs=1", f"run_dir={run_dir}"])
    )
    saved = OmegaConf.load(run_dir / "config.yaml")
    assert saved.data.root is None
    assert saved.data.train == str(FIXTURES / "train.conll")
    assert saved.data.dev == str(FIXTURES / "dev.conll")

    monkeypatch.chdir(tmp_path)
    results = evaluate(
        compose_config(
            [f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}", "split=val"], name="eval"
        )
    )
    assert results["val/f1"] == pytest.approx(figures["val/f1"], abs=1e-9)


@pytest.mark.usefixtures("one_thread")
def test_a_failed_set_up_keeps_an_existing_folder_and_removes_only_a_new_one(tmp_path):
    bad = ["data=custom", "data.root=null", f"data.train={tmp_path / 'missing.conll'}"]
    reused = tmp_path / "reused"
    reused.mkdir()
    for name in ("config.yaml", "encoder.json", "notes.txt"):  # an earlier run's files
        (reused / name).write_text(f"earlier {name}\n")
    before = _snapshot(reused)
    with pytest.raises(ValueError, match=r"missing\.conll"):
        train(compose_config([*bad, *TINY_MODEL, f"run_dir={reused}"]))
    assert _snapshot(reused) == before

    new = tmp_path / "new"
    with pytest.raises(ValueError, match=r"missing\.conll"):
        train(compose_config([*bad, *TINY_MODEL, f"run_dir={new}"]))
    assert not new.exists()


def test_the_resume_command_carries_the_environment_as_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CHAINCRF_DATA", "corpus")  # relative, as in the quick start
    monkeypatch.setenv("CHAINCRF_CACHE", "cache")
    given = ["data=ud_ewt", "run_dir=run", "data.dev=dev.conllu"]
    cfg = compose_config(given)
    absolute_data_paths(cfg.data, tmp_path)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    mine = str(tmp_path / "mine")
    command = shlex.split(resume_command(cfg.data, given, last, tmp_path / "run", [mine]))
    assert command[:3] == ["chaincrf-train", "--config-dir", mine]
    assert command[-1] == f"ckpt_path={last}"
    for expected in (
        "data=ud_ewt",
        f"data.root={tmp_path / 'corpus'}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.dev=dev.conllu",  # relative to the data root, as given
        f"run_dir={tmp_path / 'run'}",
    ):
        assert expected in command
    assert "run_dir=run" not in command


def test_a_resume_continues_in_the_checkpoints_folder_even_without_its_config(tmp_path):
    run = tmp_path / "run"  # a run whose config.yaml an earlier failure removed
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    argv = ["data=custom", f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"]
    assert resume_in_place(argv) == [
        *argv,
        f"hydra.run.dir={run.resolve()}",
        "hydra.output_subdir=null",  # Hydra's record is rewritten once the set-up succeeds
    ]
