"""Nothing deleted that chaincrf did not write: ``chaincrf-export`` refuses a folder holding
anything but a previous export's listed files (and leaves it untouched); writers never replace a
device or FIFO they are pointed at; temporary files do not outlive an error, Ctrl-C or SIGTERM.

The tests use the fixture checkpoint (``fixtures/model_files/v1.ckpt``); nothing is trained."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import chaincrf
from chaincrf.atomic import atomic_file, deferred_signals
from chaincrf.cli.common import atomic_output, run_cli, sigterm_as_exit
from chaincrf.cli.export import MANIFEST, export, export_command
from chaincrf.cli.predict import open_output
from chaincrf.data import DownloadError, download_file
from chaincrf.tagger import SequenceTagger

HERE = Path(__file__).parent
CONF = HERE.parent / "conf"
CHECKPOINT = HERE / "fixtures" / "model_files" / "v1.ckpt"
BUNDLE_FILES = ["config.json", "vocab.json", "weights.pt"]

pytestmark = pytest.mark.usefixtures("one_thread")


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under ``folder`` (relative path -> content; None for a folder)."""
    return {
        str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes()
        for p in sorted(folder.rglob("*"))
    }


def export_cli(overrides: list[str]) -> int:
    """``chaincrf-export`` with these overrides: its exit status (1 for a user error)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="export", overrides=overrides)
    try:
        run_cli(export_command, cfg)
    except SystemExit as stop:
        return int(stop.code)
    return 0


def hidden(folder: Path) -> list[str]:
    """The dot-entries in ``folder`` (where temporary files and folders would be left)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------- export


def test_export_into_its_run_folder_is_refused_and_keeps_every_file(tmp_path, caplog):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(CHECKPOINT, run / "checkpoints" / "best.ckpt")
    (run / "report.md").write_text("# the run's report\n")
    (run / "logs").mkdir()
    (run / "logs" / "metrics.csv").write_text("epoch,step\n0,1\n")
    (run / "curves.png").write_bytes(b"\x89PNG")
    before = snapshot(run)
    with caplog.at_level(logging.ERROR):
        code = export_cli([f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}", f"output={run}"])
    assert code == 1
    assert snapshot(run) == before
    assert hidden(tmp_path) == []  # no temporary folder left beside it
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    assert str(run) in errors[0]
    assert "choose a new or empty folder" in errors[0]


def test_export_into_a_folder_of_user_files_is_refused(tmp_path):
    mine = tmp_path / "mine"
    (mine / "notes").mkdir(parents=True)
    (mine / "thesis.tex").write_text("\\section{Results}\n")
    (mine / "notes" / "todo.txt").write_text("back up\n")
    (mine / "config.json").write_text("{}")  # a name a bundle also has: still not an export's
    before = snapshot(mine)
    with pytest.raises(FileExistsError, match=r"mine: it holds 3 entries .*new or empty folder"):
        export(CHECKPOINT, mine)
    assert snapshot(mine) == before


def test_export_into_the_working_directory_with_files_is_refused(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "data.conll").write_text("EU B-ORG\n")
    monkeypatch.chdir(work)
    with pytest.raises(FileExistsError, match=r"data\.conll"):
        export(CHECKPOINT, ".")
    assert snapshot(work) == {"data.conll": b"EU B-ORG\n"}


def test_an_export_folder_with_an_added_file_is_refused_and_kept_whole(tmp_path):
    bundle = export(CHECKPOINT, tmp_path / "bundle")
    (bundle / "README.txt").write_text("my notes on this model\n")
    before = snapshot(bundle)
    with pytest.raises(FileExistsError, match=r"README\.txt"):
        export(CHECKPOINT, bundle)
    assert snapshot(bundle) == before


def test_a_file_where_the_folder_should_be_is_refused(tmp_path):
    (tmp_path / "bundle").write_text("not a folder\n")
    with pytest.raises(FileExistsError, match=r"bundle: it exists and is not a folder"):
        export(CHECKPOINT, tmp_path / "bundle")
    assert (tmp_path / "bundle").read_text() == "not a folder\n"


def test_export_writes_its_manifest_and_replaces_a_previous_export(tmp_path):
    bundle = export(CHECKPOINT, tmp_path / "bundle")
    manifest = json.loads((bundle / MANIFEST).read_text())
    assert manifest["files"] == BUNDLE_FILES
    assert sorted(os.listdir(bundle)) == sorted([MANIFEST, *BUNDLE_FILES])
    (bundle / "weights.pt").write_bytes(b"stale")  # the previous export's file, changed
    again = export(CHECKPOINT, bundle)
    assert again == bundle
    assert sorted(os.listdir(bundle)) == sorted([MANIFEST, *BUNDLE_FILES])
    assert (bundle / "weights.pt").read_bytes() != b"stale"
    SequenceTagger.load(bundle)
    assert hidden(tmp_path) == []  # neither the new folder's nor the old one's temporary name


def test_export_into_an_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    bundle = export(CHECKPOINT, tmp_path / "empty")
    assert sorted(os.listdir(bundle)) == sorted([MANIFEST, *BUNDLE_FILES])
    assert json.loads((bundle / MANIFEST).read_text())["files"] == BUNDLE_FILES
    SequenceTagger.load(bundle)


@pytest.mark.slow
def test_int8_quantisation_keeps_a_file_of_the_folder_named_like_its_temporary(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from chaincrf.predict.bundle import load_predictor
    from chaincrf.predict.export import export_model

    folder = tmp_path / "artefact"
    folder.mkdir()
    (folder / "model.float.onnx").write_bytes(b"the user's own float model")
    export_model(load_predictor(CHECKPOINT), folder, "onnx", quantize="int8")
    assert (folder / "model.float.onnx").read_bytes() == b"the user's own float model"
    assert (folder / "model.onnx").is_file()
    assert hidden(folder) == []


# ---------------------------------------------------------------- devices and FIFOs


@contextlib.contextmanager
def fifo_reader(path: Path):
    """A FIFO at ``path`` with a thread reading it; yields the list its bytes are appended to."""
    os.mkfifo(path)
    received: list[bytes] = []
    thread = threading.Thread(target=lambda: received.append(path.read_bytes()), daemon=True)
    thread.start()
    yield received
    thread.join(timeout=30)


def test_a_fifo_is_written_in_place_not_replaced(tmp_path):
    fifo = tmp_path / "out.fifo"
    with fifo_reader(fifo) as received, open_output(str(fifo)) as stream:  # chaincrf-predict's
        stream.write('{"tokens": ["EU"]}\n')
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert received == [b'{"tokens": ["EU"]}\n']
    assert hidden(tmp_path) == []


def null_device(tmp_path: Path) -> Path:
    """A character device to write to: a copy of /dev/null's node in ``tmp_path`` when the
    tests run as root (so that a regression could only replace that copy), /dev/null itself
    otherwise (which only root could replace)."""
    if os.geteuid() != 0:
        return Path("/dev/null")
    node = tmp_path / "null"
    os.mknod(node, stat.S_IFCHR | 0o666, os.stat("/dev/null").st_rdev)
    return node


@pytest.mark.parametrize("writer", ["predict", "atomic_output", "atomic_file"])
def test_a_character_device_is_written_in_place_not_replaced(tmp_path, writer):
    device = null_device(tmp_path)
    opened = {"predict": open_output, "atomic_output": atomic_output, "atomic_file": atomic_file}
    with opened[writer](str(device)) as stream:
        stream.write("tagged\n")
    assert stat.S_ISCHR(os.lstat(device).st_mode)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    if device.parent == tmp_path:
        assert hidden(tmp_path) == []


def test_a_folder_as_the_output_file_is_named(tmp_path):
    folder = rf"{re.escape(str(tmp_path))} is a folder"
    with pytest.raises(IsADirectoryError, match=folder), atomic_file(tmp_path) as stream:
        stream.write("x")


def test_a_symbolic_link_is_kept_and_its_file_replaced(tmp_path):
    (tmp_path / "real.txt").write_text("old\n")
    (tmp_path / "link.txt").symlink_to("real.txt")
    with atomic_file(tmp_path / "link.txt") as stream:
        stream.write("new\n")
    assert (tmp_path / "link.txt").is_symlink()
    assert (tmp_path / "real.txt").read_text() == "new\n"


def test_a_download_is_not_written_over_a_fifo(tmp_path):
    fifo = tmp_path / "corpus.conllu"
    os.mkfifo(fifo)
    with pytest.raises(DownloadError, match=r"corpus\.conllu is not a regular file"):
        download_file("https://127.0.0.1:9/corpus.conllu", fifo, "0" * 64, retries=0)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


# ---------------------------------------------------------------- interrupts


@pytest.mark.parametrize("stop", [KeyboardInterrupt, SystemExit])
def test_an_interrupted_write_leaves_the_old_file_and_no_temporary_file(tmp_path, stop):
    path = tmp_path / "predictions.jsonl"
    path.write_text("old\n")
    with pytest.raises(stop), atomic_file(path) as stream:
        stream.write("half of the ne")
        raise stop()
    assert path.read_text() == "old\n"
    assert hidden(tmp_path) == []


@pytest.mark.parametrize(
    ("signum", "stop"), [(signal.SIGTERM, SystemExit), (signal.SIGINT, KeyboardInterrupt)]
)
def test_an_interrupt_while_a_temporary_file_is_created_or_removed_waits_for_it(signum, stop):
    """atomic_file creates and removes its temporary file with interrupts held back: a signal
    between creating the file and knowing its name, or during its removal after a first
    interrupt, would leave it behind."""
    done = []
    with sigterm_as_exit(), pytest.raises(stop):
        with deferred_signals():
            os.kill(os.getpid(), signum)
            time.sleep(0.05)  # a handler would have run by now
            done.append("the block ran to its end")
        done.append("not reached: the signal is delivered when the block ends")
    assert done == ["the block ran to its end"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


COMMAND = """
import sys, time
from chaincrf.cli.common import atomic_output, hydra_main

@hydra_main("export")
def main(cfg):
    with atomic_output(cfg.output) as stream:
        stream.write("half of the output")
        stream.flush()
        time.sleep(120)

main()
"""


@pytest.mark.slow
def test_sigterm_stops_a_command_without_leaving_its_temporary_file(tmp_path):
    out = tmp_path / "out" / "predictions.jsonl"
    env = {**os.environ, "PYTHONPATH": str(Path(chaincrf.__file__).parents[1])}
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(COMMAND), "ckpt_path=x", f"output={out}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out.parent.is_dir() and hidden(out.parent)):
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "the command never started writing"
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 143
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert os.listdir(out.parent) == []
