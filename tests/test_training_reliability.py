"""Training that survives faults: exact resume after SIGKILL mid-epoch, checkpoints that a kill
during saving cannot corrupt, and a stop at the first non-finite loss with the checkpoints
written before it intact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from chaincrf.cli.train import train
from chaincrf.tagger import SequenceTagger
from chaincrf.training.callbacks import NonFiniteLossError
from test_cli import compose_config, run_overrides

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

TESTS = Path(__file__).resolve().parent
RANDOM = [  # dropout everywhere, so that the random generators matter
    "embeddings.dropout=0.3",
    "embeddings.word_dropout=0.1",
    "model.dropout=0.3",
    "trainer.deterministic=true",
    "trainer.max_epochs=4",
    "seed=3",
    "test=false",
    "report=false",
]


def _overrides(run_dir: Path, *extra: str) -> list[str]:
    base = [o for o in run_overrides(run_dir) if not o.startswith("embeddings.dropout=")]
    return [*base, *RANDOM, *extra]


def _subprocess_env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_resume_after_sigkill_mid_epoch_equals_the_uninterrupted_run(tmp_path):
    whole = train(compose_config(_overrides(tmp_path / "whole")))
    expected = torch.load(tmp_path / "whole" / "checkpoints" / "last.ckpt", weights_only=True)

    killed = tmp_path / "killed"
    overrides = _overrides(killed, "+callbacks.kill._target_=fault_injection.KillAtStep")
    steps_per_epoch = expected["global_step"] // 4
    overrides.append(f"+callbacks.kill.step={2 * steps_per_epoch + steps_per_epoch // 2}")
    done = subprocess.run(
        [sys.executable, "-m", "chaincrf.cli.train", *overrides],
        env=_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == -signal.SIGKILL, done.stdout[-2000:] + done.stderr[-2000:]
    last = killed / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 1  # the kill came in epoch 2

    resumed = train(compose_config(_overrides(tmp_path / "resumed", f"ckpt_path={last}")))
    final = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["global_step"] == expected["global_step"]
    assert final["lr_schedulers"] == expected["lr_schedulers"]  # the plateau scheduler too
    for name, tensor in expected["state_dict"].items():
        assert torch.equal(final["state_dict"][name], tensor), (
            name,
            (final["state_dict"][name] - tensor).abs().max(),
        )
    for key in ("val/score", "val/f1", "val/acc", "val/loss"):
        assert resumed[key] == whole[key], key


@pytest.mark.parametrize("every", [None, 3], ids=["each step", "every 3 steps"])
def test_training_stops_at_the_first_non_finite_loss(tmp_path, every):
    """Each step's loss read before its backward pass (the CPU's default), or the losses read
    every 3 steps (an accelerator's way, without a synchronisation per step): either way the
    error names the first bad step (the poisoned epoch's first), and no checkpoint holds it."""
    overrides = _overrides(
        tmp_path,
        "+callbacks.poison._target_=fault_injection.PoisonAtEpoch",
        "+callbacks.poison.epoch=2",
        f"nan_check_every={'null' if every is None else every}",
    )
    sys.path.insert(0, str(TESTS))
    try:
        with pytest.raises(NonFiniteLossError) as caught:
            train(compose_config(overrides))
    finally:
        sys.path.remove(str(TESTS))
    last = tmp_path / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    assert saved["epoch"] == 1
    message = str(caught.value)
    assert message.startswith(
        f"non-finite training loss (nan) at epoch 2, global step {saved['global_step']} "
        "(batch 1 of the epoch)"
    ), message
    assert ("read" in message) == (every is not None), message
    for path in (last, tmp_path / "checkpoints" / "best.ckpt"):
        tagger = SequenceTagger.load(path)
        assert all(torch.isfinite(p).all() for p in tagger.parameters()), path


_SAVER = textwrap.dedent(
    """
    import sys, torch
    from chaincrf.training.callbacks import AtomicCheckpointIO
    io = AtomicCheckpointIO()
    version = 0
    while True:
        version += 1
        io.save_checkpoint({"version": version, "weights": torch.full((6_000_000,), float(version))}, sys.argv[1])
        print(version, flush=True)
    """
)


@pytest.mark.slow
def test_checkpoints_survive_a_kill_while_saving(tmp_path):
    """Kill a process that keeps rewriting a 24 MB checkpoint, at 8 moments; every checkpoint file
    left loads and holds one complete version."""
    path = tmp_path / "checkpoints" / "last.ckpt"
    for delay in (0.0, 0.01, 0.03, 0.07, 0.13, 0.21, 0.34, 0.55):
        process = subprocess.Popen(
            [sys.executable, "-c", _SAVER, str(path)],
            stdout=subprocess.PIPE,
            text=True,
            env=_subprocess_env(),
        )
        assert process.stdout.readline().strip() != ""  # one save completed
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        for ckpt in path.parent.glob("*.ckpt"):
            state = torch.load(ckpt, weights_only=True)
            assert torch.equal(state["weights"], torch.full((6_000_000,), float(state["version"])))
    assert [p.name for p in path.parent.glob("*.ckpt")] == ["last.ckpt"]
