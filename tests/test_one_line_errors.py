"""One line and exit 1, everywhere (issue 32, part 5): a closed stdin or stdout, an encoding
that is no text encoding, bytes the encoding cannot decode, a float ``max_word_chars`` and a
full disk (before training, and while the report is written) are each one error naming the
option, the file and line, or the file, never a traceback; a full disk leaves no truncated or
empty file and no half-made run folder.

A full disk is simulated without root by ``RLIMIT_FSIZE`` in a subprocess (with ``SIGXFSZ``
ignored a write past the limit fails with ``OSError: [Errno 27] File too large``), which
exercises the same ``OSError`` paths as ``ENOSPC``."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from chaincrf.cli.predict import predict, text_lines
from chaincrf.data import TaggingDataModule
from fixture_runs import CONF, FIXTURES, NER_DATA, TINY_MODEL

HERE = Path(__file__).parent
SRC = HERE.parent / "src"
CHECKPOINT = HERE / "fixtures" / "model_files" / "v1.ckpt"
RAW = FIXTURES / "raw.txt"
LATIN1 = "EU rejects German call\nCafé au lait .\n".encode("latin-1")


def predict_config(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="predict", overrides=[f"ckpt_path={CHECKPOINT}", *overrides])


def under_file_size_limit(limit: int, code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -c code`` with files limited to ``limit`` bytes (a full disk)."""
    prelude = textwrap.dedent(f"""
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.RLIM_INFINITY))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(HERE)]),
           "OMP_NUM_THREADS": "1", "CHAINCRF_OUTPUT": str(cwd / "outputs")}  # fmt: skip
    env.pop("CHAINCRF_TRACEBACK", None)
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


# ---------------------------------------------------------------- closed stdin and stdout


def test_input_from_a_closed_stdin_names_the_option(monkeypatch):
    monkeypatch.setattr(sys, "stdin", None)  # what Python makes of `<&-`
    with pytest.raises(OSError, match=r"^input=-: stdin is closed; .*input=<file>"):
        predict(predict_config("input=-"))


def test_output_to_a_closed_stdout_names_the_option_before_the_model_loads(monkeypatch):
    monkeypatch.setattr(sys, "stdout", None)  # what Python makes of `>&-`
    with pytest.raises(OSError, match=r"^output=-: stdout is closed; pass output=<file>"):
        predict(predict_config(f"input={RAW}", "output=-", "ckpt_path=/no/such/model.ckpt"))


# ---------------------------------------------------------------- encodings


@pytest.mark.parametrize("name", ["rot13", "base64", "zlib_codec", "no-such-codec"])
def test_an_encoding_that_is_no_text_encoding_is_one_error_naming_the_option(name):
    with pytest.raises(ValueError, match=rf"^encoding must name a text encoding .*got '{name}'"):
        predict(predict_config(f"input={RAW}", f"encoding={name}"))


def test_the_encoding_the_error_suggests_reads_the_file(tmp_path):
    source = tmp_path / "latin1.txt"
    source.write_bytes(LATIN1)
    config = predict_config(f"input={source}", "encoding=latin-1", "tokenizer=whitespace",
                            f"output={tmp_path / 'tags.jsonl'}")  # fmt: skip
    assert predict(config).tokens == 8
    assert '"Café"' in (tmp_path / "tags.jsonl").read_text(encoding="utf-8")


def test_undecodable_bytes_name_the_file_line_and_the_encoding_option(tmp_path):
    source = tmp_path / "latin1.txt"
    source.write_bytes(LATIN1)
    lines = text_lines(str(source))
    assert next(lines) == "EU rejects German call"  # the good line before it is read
    with pytest.raises(
        ValueError, match=r"latin1\.txt:2: bytes b'\\xe9' cannot be decoded as utf-8"
    ) as caught:
        next(lines)
    assert "encoding=latin-1" in str(caught.value) and "\n" not in str(caught.value)
    assert list(text_lines(str(source), "latin-1"))[1] == "Café au lait ."


def test_undecodable_bytes_on_stdin_name_stdin_and_the_line(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(LATIN1)))
    with pytest.raises(ValueError, match=r"^stdin:2: bytes b'\\xe9' cannot be decoded"):
        list(text_lines("-"))


# ---------------------------------------------------------------- training options


@pytest.mark.parametrize("value", [2.5, "50", True, 0])
def test_max_word_chars_must_be_a_positive_int_at_construction(value):
    with pytest.raises(ValueError, match=rf"max_word_chars must be an int >= 1; got {value!r}"):
        TaggingDataModule(train=str(FIXTURES / "train.conll"), max_word_chars=value)


def test_a_float_max_word_chars_override_is_one_line_naming_it_and_the_config_node(
    tmp_path, caplog
):
    from chaincrf.cli.common import run_cli
    from chaincrf.cli.train import train

    overrides = [*NER_DATA, *TINY_MODEL, "data.max_word_chars=2.5", f"run_dir={tmp_path / 'run'}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with pytest.raises(SystemExit) as stop:
        run_cli(train, cfg)
    assert stop.value.code == 1
    [error] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert error == (
        "ValueError: max_word_chars must be an int >= 1; got 2.5 "
        "(while building the config node `data`)"
    )
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- a full disk


@pytest.mark.slow
def test_a_full_disk_while_the_report_is_written_leaves_no_empty_or_truncated_file(tmp_path):
    done = under_file_size_limit(
        8000,
        """
        from types import SimpleNamespace
        import torch
        from chaincrf.training.report import write_report
        labels = [f"TAG{i}" for i in range(8)]
        tags = SimpleNamespace(is_span_task=False, original_labels=labels, scheme=None)
        tagger = SimpleNamespace(labels=labels, tags=tags, hparams={}, parameters=lambda: [])
        try:
            write_report("run", tagger, {"val": {"val/acc": 0.5}},
                         confusion={"val": torch.arange(64).reshape(8, 8)})
        except OSError as error:
            print("ERROR", error)
        """,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [line] = [line for line in done.stdout.splitlines() if line.startswith("ERROR")]
    assert re.match(r"ERROR cannot write run/\w+\.png: File too large$", line), line
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == []  # no .tmp, no 0-byte plot


@pytest.mark.slow
def test_a_full_disk_before_training_is_one_line_and_leaves_no_run_folder(tmp_path):
    overrides = [*NER_DATA, *TINY_MODEL, "callbacks=minimal", "logger=none", "threads=1",
                 "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    done = under_file_size_limit(
        4000,  # the config fits, Hydra's record of the command (about 5 kB) does not
        f"""
        import sys
        sys.argv = ["chaincrf-train", *{overrides!r}]
        from chaincrf.cli.train import main
        main()
        """,
        tmp_path,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1 and "Traceback" not in output, output[-3000:]
    [error] = [line for line in output.splitlines() if "ERROR" in line]
    assert f"OSError: cannot write {tmp_path / 'run' / '.hydra'}" in error
    assert "File too large" in error
    assert not (tmp_path / "run").exists()  # Hydra's folder, never trained: removed
