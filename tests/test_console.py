"""What a training run says on the console and in its ``train.log``: the run directory first,
one line per epoch, a final summary; Lightning's tips and deprecation noise hidden unless
``verbose=true``; a missing test file skipped with a warning instead of a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "tagger"

pytestmark = pytest.mark.slow


def _train(tmp_path: Path, *extra: str) -> tuple[str, str]:
    out = subprocess.run(
        [
            sys.executable, "-m", "chaincrf.cli.train", "data=custom",
            f"data.train={FIXTURES / 'train.conll'}", f"data.dev={FIXTURES / 'dev.conll'}",
            "embeddings.word_dim=8", "encoder.hidden_size=8", "trainer.max_epochs=2",
            "report=false", "callbacks=minimal", f"hydra.run.dir={tmp_path / 'run'}", *extra,
        ],
        capture_output=True, text=True, cwd=tmp_path, check=True,
    )  # fmt: skip
    return out.stdout + out.stderr, (tmp_path / "run" / "train.log").read_text()


def test_the_console_and_the_log_say_what_happened(tmp_path):
    console, logged = _train(tmp_path)
    lines = [line for line in console.splitlines() if "[chaincrf.train]" in line]
    assert lines[0].endswith(f"run directory: {tmp_path / 'run'}")
    for text in (console, logged):
        epochs = [line for line in text.splitlines() if " - epoch " in line]
        assert len(epochs) == 2 and "epoch 2/2  train loss " in epochs[1]
        assert "val/score" in epochs[1] and "(best " in epochs[1] and "min left" in epochs[1]
        assert "no test file (data.test is null): the test is skipped" in text
        assert "done in " in text and "checkpoints/best.ckpt" in text
    assert "Tip:" not in console and "LeafSpec" not in console


def test_verbose_shows_the_third_party_lines_again(tmp_path):
    console, _ = _train(tmp_path, "verbose=true")
    assert "Tip:" in console
