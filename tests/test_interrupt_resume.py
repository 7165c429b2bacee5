"""Ctrl-C and SIGTERM save the training state and print the resume command; resuming continues
in the same run folder (one config, continuous metrics, logs appended, one report)."""

from __future__ import annotations

import csv
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fixture_runs import foreign_lines

FIXTURES = Path(__file__).parent / "fixtures" / "tagger"
OVERRIDES = [
    "data=custom", f"data.train={FIXTURES / 'train.conll'}", f"data.dev={FIXTURES / 'dev.conll'}",
    "embeddings.word_dim=8", "encoder.hidden_size=8", "trainer.max_epochs=25",
    "callbacks=minimal", "test=false",
]  # fmt: skip
COMMAND = [sys.executable, "-u", "-m", "chaincrf.cli.train"]

pytestmark = pytest.mark.slow


def _interrupted(tmp_path: Path, sig: signal.Signals) -> tuple[int, str]:
    """A training run stopped by ``sig`` after its third epoch: exit status and output."""
    run = subprocess.Popen(
        [*COMMAND, *OVERRIDES, f"hydra.run.dir={tmp_path / 'run'}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
    )  # fmt: skip
    lines = []
    assert run.stdout is not None
    for line in run.stdout:
        lines.append(line)
        if " - epoch 3/25 " in line:
            run.send_signal(sig)
    return run.wait(timeout=120), "".join(lines)


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupt_saves_the_state_and_resuming_continues_in_the_same_folder(
    tmp_path, sig, status
):
    code, output = _interrupted(tmp_path, sig)
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    assert code == status, output[-2000:]
    assert last.is_file() and not (run / "report.md").exists()
    resume = output.split("resume with:\n", 1)[1].splitlines()[0].strip()
    assert resume.startswith("chaincrf-train ") and resume.endswith(f"ckpt_path={last}")
    # the printed command, as printed (the module instead of the installed script)
    resumed = subprocess.run(
        [*COMMAND, *shlex.split(resume)[1:]], cwd=tmp_path, check=True, capture_output=True,
        text=True,
    )  # fmt: skip
    # the resume's console: chaincrf's lines only (no Lightning notes about the folder, the
    # checkpoint or the dataloader), each epoch from the interrupted one on, once
    assert foreign_lines(resumed.stdout + resumed.stderr) == []
    before = [int(n) for n in re.findall(r" - epoch (\d+)/25 ", output)]
    after = [int(n) for n in re.findall(r" - epoch (\d+)/25 ", resumed.stderr)]
    assert after == list(range(before[-1] + 1, 26)), resumed.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no second run folder
    assert (run / "report.md").is_file() and len(list(run.glob("config.yaml"))) == 1
    rows = list(csv.DictReader((run / "csv" / "metrics.csv").open()))
    epochs = [int(r["epoch"]) for r in rows if r.get("val/score")]
    assert epochs[:25] == list(range(25))  # every epoch once, before and after the interrupt
    log = (run / "train.log").read_text()
    assert log.count("run directory:") == 2 and "interrupted:" in log and "done in" in log
