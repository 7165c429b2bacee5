"""What a command says on the console and in its ``train.log``: the run directory, the data, one
line per epoch (numbered from 1), a final summary — all on stderr, stdout left empty — and
nothing from Lightning or the ONNX exporter unless ``verbose=true``; chaincrf's own warnings (a
missing test file) still show."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from fixture_runs import FIXTURES, foreign_lines

pytestmark = pytest.mark.slow

CHECKPOINT = Path(__file__).parent / "fixtures" / "model_files" / "v1.ckpt"
EPOCHS = 2


def _train(folder: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """A small fixture run (the default callbacks: checkpoints, early stopping, progress bar,
    learning-rate monitor) with its console captured."""
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [
            sys.executable, "-m", "chaincrf.cli.train", "data=custom",
            f"data.train={FIXTURES / 'train.conll'}", f"data.dev={FIXTURES / 'dev.conll'}",
            "embeddings.word_dim=8", "encoder.hidden_size=8", f"trainer.max_epochs={EPOCHS}",
            "report=false", f"hydra.run.dir={folder / 'run'}", *extra,
        ],
        capture_output=True, text=True, cwd=folder, check=True,
    )  # fmt: skip


@pytest.fixture(scope="module")
def quiet_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    folder = tmp_path_factory.mktemp("quiet")
    return folder, _train(folder)


def test_a_run_prints_chaincrfs_lines_only_on_one_stream(quiet_run):
    folder, run = quiet_run
    assert run.stdout == ""  # one stream: stderr
    assert foreign_lines(run.stderr) == []
    lines = run.stderr.splitlines()
    # run directory, data, model, the epochs, best checkpoint, no test file, done, val/score
    assert len(lines) == 7 + EPOCHS, run.stderr
    assert lines[0].endswith(f"run directory: {folder / 'run'}")
    assert re.search(r"data: train 40 sentences \(\d+ tokens\), dev 12 \(\d+ tokens\); 17 tags, "
                     r"IOB1 trained as BIOES$", lines[1])  # fmt: skip


def test_the_console_and_the_log_say_what_happened(quiet_run):
    folder, run = quiet_run
    logged = (folder / "run" / "train.log").read_text()
    for text in (run.stderr, logged):
        epochs = [line for line in text.splitlines() if " - epoch " in line]
        assert len(epochs) == EPOCHS and f"epoch {EPOCHS}/{EPOCHS}  train loss " in epochs[-1]
        assert "val/score" in epochs[-1] and "(best " in epochs[-1] and "min left" in epochs[-1]
        assert re.search(r"  [\d,]+ tokens/s$", epochs[-1]), epochs[-1]
        assert "no test file (data.test is null): the test is skipped" in text
        assert "done in " in text and "checkpoints/best.ckpt" in text


def test_verbose_shows_lightnings_lines_again_on_the_same_stream(tmp_path):
    run = _train(tmp_path, "verbose=true")
    assert run.stdout == ""
    for line in ("Seed set to 42", "GPU available: False", "Total params", "`Trainer.fit` stopped"):
        assert line in run.stderr
    assert " - epoch 2/2  train loss " in run.stderr


def test_an_onnx_export_prints_at_most_five_lines(tmp_path):
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    run = subprocess.run(
        [sys.executable, "-m", "chaincrf.cli.export", f"ckpt_path={CHECKPOINT}",
         f"output={tmp_path / 'model'}", "format=onnx"],
        capture_output=True, text=True, cwd=tmp_path, check=True,
    )  # fmt: skip
    console = (run.stdout + run.stderr).splitlines()
    assert len(console) <= 5, "\n".join(console[:20])
    assert foreign_lines(run.stderr) == [] and run.stdout == ""
    assert console[-1].endswith(f"wrote {tmp_path / 'model'}")
