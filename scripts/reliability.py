"""Fault injection and hostile inputs against every entry point; writes the reliability table.

Each probe tries a class of faults (crafted model files, pickles, remote checkpoints, long input,
odd line ends, special files, random bytes, NaN, kills during training and saving) and counts the
outcomes:

- ``code run``: a marker file that only the injected code could create appeared;
- ``crash``: an exception other than the clear, documented one (a traceback for the user);
- ``silent wrong``: a result was returned that is wrong (misaligned records, a NaN score, a
  corrupted or different checkpoint) without an error;
- ``hang``: no answer within the probe's time limit;
- ``refused clearly`` / ``correct``: the clear error naming the file/line/argument, or the right
  result.

Everything runs on the test fixtures (``tests/fixtures/tagger``) with a tiny model trained first,
so the script needs no corpus and no network::

    OMP_WAIT_POLICY=PASSIVE python3 scripts/reliability.py --output benchmarks/reliability.md
    python3 scripts/reliability.py --quick        # fewer kills and fuzz inputs, no 1M-line run
"""

from __future__ import annotations

import argparse
import contextlib
import http.server
import json
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "tagger"
TESTS = ROOT / "tests"
OUTCOMES = ("code run", "crash", "silent wrong", "hang", "ok")

# Callables that, called with keyword arguments only (all a spec can give), create MARKER*.
TARGETS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "subprocess.getoutput": lambda m: {"cmd": f"touch {m}"},
    "subprocess.run": lambda m: {"args": f"touch {m}", "shell": True},
    "subprocess.Popen": lambda m: {"args": f"touch {m}", "shell": True},
    "subprocess.check_output": lambda m: {"args": f"touch {m}", "shell": True},
    "os.makedirs": lambda m: {"name": str(m)},
    "shutil.copyfile": lambda m: {"src": __file__, "dst": str(m)},
    "logging.FileHandler": lambda m: {"filename": str(m)},
    "tempfile.mkdtemp": lambda m: {"dir": str(m.parent), "prefix": m.name},
}
PLACEMENTS = ("embeddings.char_encoder", "encoder", "encoder.layers[0]", "optimizer", "scheduler")


class Payload:
    """Unpickling runs ``function(*args)``."""

    def __init__(self, function: Callable[..., Any], *args: Any) -> None:
        self.function, self.args = function, args

    def __reduce__(self):
        return (self.function, self.args)


def pickle_payloads(marker: Path) -> dict[str, Payload]:
    import builtins
    import logging
    import shutil as sh

    return {
        "os.system": Payload(os.system, f"touch {marker}"),
        "subprocess.getoutput": Payload(subprocess.getoutput, f"touch {marker}"),
        "builtins.exec": Payload(builtins.exec, f"open({str(marker)!r}, 'w')"),
        "builtins.eval": Payload(builtins.eval, f"open({str(marker)!r}, 'w')"),
        "pathlib.Path.touch": Payload(Path.touch, marker),
        "os.makedirs": Payload(os.makedirs, str(marker)),
        "shutil.copyfile": Payload(sh.copyfile, __file__, str(marker)),
        "logging.FileHandler": Payload(logging.FileHandler, str(marker)),
        "tempfile.mkdtemp": Payload(tempfile.mkdtemp, "", marker.name, str(marker.parent)),
    }


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, int, Counter, str]] = []

    def add(self, finding: str, what: str, outcomes: Counter, note: str = "") -> None:
        self.rows.append((finding, what, sum(outcomes.values()), outcomes, note))
        counts = ", ".join(f"{k} {outcomes.get(k, 0)}" for k in OUTCOMES)
        print(f"[{finding}] {what}: {counts} {note}", flush=True)

    def markdown(self) -> str:
        lines = [
            "| # | fault or input class | tried | code run | crash | silent wrong | hang | "
            "refused clearly / correct | note |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for finding, what, total, c, note in self.rows:
            lines.append(
                f"| {finding} | {what} | {total} | {c.get('code run', 0)} | {c.get('crash', 0)} "
                f"| {c.get('silent wrong', 0)} | {c.get('hang', 0)} | {c.get('ok', 0)} | {note} |"
            )
        totals = Counter()
        for *_, c, _ in self.rows:
            totals.update(c)
        lines.append(
            f"| | **total** | {sum(totals.values())} | {totals.get('code run', 0)} | "
            f"{totals.get('crash', 0)} | {totals.get('silent wrong', 0)} | "
            f"{totals.get('hang', 0)} | {totals.get('ok', 0)} | |"
        )
        return "\n".join(lines)


def markers_in(folder: Path) -> bool:
    return any(p.name.startswith("MARKER") for p in folder.iterdir())


def classify(call: Callable[[], Any], folder: Path, expected: type | tuple, match: str = "") -> str:
    """Run ``call``; the outcome when it must fail with ``expected`` (message holding ``match``)."""
    try:
        call()
    except expected as error:
        if markers_in(folder):
            return "code run"
        return "ok" if match in str(error) else "crash"
    except SystemExit as error:
        return "code run" if markers_in(folder) else ("ok" if error.code == 1 else "crash")
    except Exception:
        return "code run" if markers_in(folder) else "crash"
    return "code run" if markers_in(folder) else "silent wrong"


# ---------------------------------------------------------------- the model the probes use


def compose(overrides: list[str], name: str = "train"):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name=name, overrides=overrides)


def train_overrides(run_dir: Path, *extra: str) -> list[str]:
    return [
        "data=custom",
        "data.root=null",
        f"data.train={FIXTURES / 'train.conll'}",
        f"data.dev={FIXTURES / 'dev.conll'}",
        f"data.test={FIXTURES / 'test.conll'}",
        "data.batch_size=8",
        "embeddings.word_dim=16",
        "embeddings.char_dim=8",
        "embeddings.char_hidden=8",
        "encoder.hidden_size=16",
        "optimizer.lr=0.02",
        "callbacks=minimal",
        "logger=none",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "threads=1",
        "report=false",
        f"run_dir={run_dir}",
        *extra,
    ]


def crafted_copy(run: Path, folder: Path, edit: Callable[[dict], None]) -> Path:
    copy = folder / "run"
    shutil.copytree(run, copy)
    ckpt = copy / "checkpoints" / "best.ckpt"
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    edit(checkpoint["hyper_parameters"])
    torch.save(checkpoint, ckpt)
    return ckpt


def place(hparams: dict, placement: str, spec: dict) -> None:
    if placement == "embeddings.char_encoder":
        hparams["embeddings"]["char_encoder"] = spec
    elif placement == "encoder.layers[0]":
        hparams["encoder"] = {
            "_target_": "chaincrf.network.encoders.stacked.StackedEncoder",
            "layers": [spec],
        }
    else:
        hparams[placement] = spec


def entry_points(folder: Path) -> dict[str, Callable[[Path], Any]]:
    from chaincrf.cli.evaluate import evaluate
    from chaincrf.cli.export import export
    from chaincrf.cli.predict import predict
    from chaincrf.tagger import SequenceTagger

    text = folder / "in.txt"
    text.write_text("EU rejects German call .\n")
    return {
        "SequenceTagger.load": lambda p: SequenceTagger.load(p),
        "chaincrf-predict": lambda p: predict(
            compose([f"ckpt_path={p}", f"input={text}", f"output={folder / 'o.jsonl'}"], "predict")
        ),
        "chaincrf-eval": lambda p: evaluate(compose([f"ckpt_path={p}", "split=dev"], "eval")),
        "chaincrf-export": lambda p: export(p, folder / "bundle"),
    }


# ---------------------------------------------------------------- probes


def probe_crafted_targets(table: Table, run: Path, work: Path) -> None:
    from omegaconf import OmegaConf

    from chaincrf.cli.evaluate import evaluate
    from chaincrf.cli.export import export

    outcomes: Counter = Counter()
    for target, arguments in TARGETS.items():
        for placement in PLACEMENTS:
            for entry in (
                "SequenceTagger.load",
                "chaincrf-predict",
                "chaincrf-eval",
                "chaincrf-export",
            ):
                folder = Path(tempfile.mkdtemp(dir=work))
                marker = folder / "MARKER"
                spec = {"_target_": target, **arguments(marker)}
                ckpt = crafted_copy(run, folder, lambda h, p=placement, s=spec: place(h, p, s))
                call = entry_points(folder)[entry]
                outcomes[classify(lambda c=call, k=ckpt: c(k), folder, ValueError, target)] += 1
    table.add(
        "1",
        "crafted `_target_` in a checkpoint (8 callables x 5 places x 4 entry points)",
        outcomes,
    )

    outcomes = Counter()
    good = export(run / "checkpoints" / "best.ckpt", work / "good_bundle")
    for target, arguments in TARGETS.items():
        for placement in PLACEMENTS:
            for entry in ("SequenceTagger.load", "chaincrf-predict", "chaincrf-export"):
                folder = Path(tempfile.mkdtemp(dir=work))
                marker = folder / "MARKER"
                bundle = folder / "bundle_in"
                shutil.copytree(good, bundle)
                config = json.loads((bundle / "config.json").read_text())
                place(config["hparams"], placement, {"_target_": target, **arguments(marker)})
                (bundle / "config.json").write_text(json.dumps(config))
                call = entry_points(folder)[entry]
                outcomes[classify(lambda c=call, b=bundle: c(b), folder, ValueError, target)] += 1
    table.add("1", "crafted `_target_` in a bundle's config.json (8 x 5 x 3)", outcomes)

    outcomes = Counter()
    for target, arguments in TARGETS.items():
        folder = Path(tempfile.mkdtemp(dir=work))
        marker = folder / "MARKER"
        ckpt = crafted_copy(run, folder, lambda h: None)
        config_path = ckpt.parents[1] / "config.yaml"
        config = OmegaConf.load(config_path)
        config.data = {"_target_": target, **arguments(marker)}
        OmegaConf.save(config, config_path)
        call = lambda c=ckpt: evaluate(compose([f"ckpt_path={c}", "split=dev"], "eval"))  # noqa: E731
        outcomes[classify(call, folder, ValueError, target)] += 1
    table.add(
        "1",
        "crafted `data._target_` in the config.yaml beside a checkpoint (chaincrf-eval)",
        outcomes,
    )

    outcomes = Counter()
    for target in TARGETS:
        folder = Path(tempfile.mkdtemp(dir=work))
        ckpt = crafted_copy(run, folder, lambda h, t=target: h.update(_instantiator=t))
        call = entry_points(folder)["SequenceTagger.load"]
        outcomes[classify(lambda c=call, k=ckpt: c(k), folder, ValueError, "_instantiator")] += 1
    table.add("1", "Lightning `_instantiator` in a checkpoint's hyper-parameters", outcomes)


def probe_pickles(table: Table, run: Path, work: Path) -> None:
    from chaincrf.cli.export import export
    from chaincrf.cli.train import train

    outcomes: Counter = Counter()
    names = list(pickle_payloads(work / "MARKER"))
    for name in names:
        for entry in (
            "SequenceTagger.load",
            "chaincrf-predict",
            "chaincrf-eval",
            "chaincrf-export",
        ):
            folder = Path(tempfile.mkdtemp(dir=work))
            payload = pickle_payloads(folder / "MARKER")[name]
            ckpt = crafted_copy(run, folder, lambda h, p=payload: h.update(labels=p))
            call = entry_points(folder)[entry]
            outcomes[classify(lambda c=call, k=ckpt: c(k), folder, ValueError, "pickled")] += 1
        folder = Path(tempfile.mkdtemp(dir=work))
        bundle = export(run / "checkpoints" / "best.ckpt", folder / "bundle_in")
        state = torch.load(bundle / "weights.pt", weights_only=True)
        state["payload"] = pickle_payloads(folder / "MARKER")[name]
        torch.save(state, bundle / "weights.pt")
        call = entry_points(folder)["SequenceTagger.load"]
        outcomes[classify(lambda c=call, b=bundle: c(b), folder, ValueError, "pickled")] += 1
        folder = Path(tempfile.mkdtemp(dir=work))
        last = folder / "last.ckpt"
        checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
        checkpoint["payload"] = pickle_payloads(folder / "MARKER")[name]
        torch.save(checkpoint, last)
        cfg = compose(train_overrides(folder / "resumed", f"ckpt_path={last}"))
        outcomes[
            classify(lambda c=cfg: train(c), folder, pickle.UnpicklingError, "Weights only")
        ] += 1
    table.add(
        "1",
        f"pickle payloads ({len(names)} kinds) in a checkpoint (4 entry points), a bundle's "
        "weights.pt and a resumed last.ckpt",
        outcomes,
    )


def probe_remote(table: Table, run: Path, work: Path) -> None:
    from chaincrf.cli.evaluate import evaluate
    from chaincrf.cli.predict import predict
    from chaincrf.cli.train import train
    from chaincrf.tagger import SequenceTagger

    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            body = (run / "checkpoints" / "last.ckpt").read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    urls = [
        f"http://127.0.0.1:{port}/evil.ckpt",
        f"https://127.0.0.1:{port}/evil.ckpt",
        "s3://bucket/evil.ckpt",
        f"file://{run / 'checkpoints' / 'last.ckpt'}",
        f"HTTP://127.0.0.1:{port}/evil.ckpt",
    ]
    outcomes: Counter = Counter()
    for url in urls:
        calls = {
            "train resume": lambda u=url: train(
                compose(train_overrides(work / "remote", f"ckpt_path={u}"))
            ),
            "predict": lambda u=url: predict(compose([f"ckpt_path={u}"], "predict")),
            "eval": lambda u=url: evaluate(compose([f"ckpt_path={u}"], "eval")),
            "load": lambda u=url: SequenceTagger.load(u),
        }
        for call in calls.values():
            before = len(hits)
            outcome = classify(call, work, ValueError, "must be a local file")
            outcomes["silent wrong" if len(hits) > before else outcome] += 1
    server.shutdown()
    table.add(
        "2",
        "remote `ckpt_path` (5 URL forms x train resume, predict, eval, load)",
        outcomes,
        f"requests reaching the server: {len(hits)}",
    )


def _peak_rss_subprocess(code: str, timeout: float) -> tuple[str, float, str]:
    """Run ``code`` in a fresh interpreter; (outcome, peak RSS in MiB, its last stdout line)."""
    wrapper = (
        code
        + "\nimport resource; print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", wrapper],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    except subprocess.TimeoutExpired:
        return "hang", float("nan"), ""
    if done.returncode != 0:
        return "crash", float("nan"), done.stderr.strip().splitlines()[-1] if done.stderr else ""
    lines = done.stdout.strip().splitlines()
    peak = float(lines[-1].split()[1])
    return "ok", peak, lines[-2] if len(lines) > 1 else ""


def probe_long_input(table: Table, run: Path, work: Path, quick: bool) -> None:
    ckpt = run / "checkpoints" / "best.ckpt"
    outcomes: Counter = Counter()
    notes = []
    for length in (1_000, 4_000, 20_000, 100_000):
        code = (
            "import torch; torch.set_num_threads(1)\n"
            "from chaincrf.tagger import SequenceTagger\n"
            f"t = SequenceTagger.load({str(ckpt)!r})\n"
            "import resource; base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
            f"words = ('EU rejects German call to boycott British lamb . ' * {length // 10 + 1}).split()[:{length}]\n"
            "r = t.predict([words])[0]\n"
            "assert len(r.tags) == len(words)\n"
            "print('BASE', base, 'SPANS', len(r.spans))\n"
        )
        outcome, peak, line = _peak_rss_subprocess(code, timeout=900)
        outcomes[outcome] += 1
        if outcome == "ok":
            base = float(line.split()[1])
            notes.append(f"{length:,} tokens: +{peak - base:.0f} MiB")
    table.add(
        "3",
        "one sentence of 1,000 / 4,000 / 20,000 / 100,000 tokens (SequenceTagger.predict)",
        outcomes,
        "; ".join(notes) + " (peak RSS over the loaded model)",
    )

    outcomes = Counter()
    notes = []
    cases = [("one 100,000-token line", 1, 100_000)]
    if not quick:
        cases.append(("1,000,000 lines of 3 tokens", 1_000_000, 3))
    else:
        cases.append(("100,000 lines of 3 tokens", 100_000, 3))
    for label, lines, tokens in cases:
        source = work / f"long_{lines}.txt"
        with source.open("w") as handle:
            line = " ".join(["Germany"] * tokens) + "\n"
            for _ in range(lines):
                handle.write(line)
        output = work / "long.jsonl"
        started = time.perf_counter()
        try:
            done = subprocess.run(
                [
                    "/usr/bin/time",
                    "-f",
                    "MAXRSS %M",
                    sys.executable,
                    "-m",
                    "chaincrf.cli.predict",
                    f"ckpt_path={ckpt}",
                    f"input={source}",
                    f"output={output}",
                    # a line of 100,000 tokens is over the default 100,000 characters
                    "max_line_chars=1000000",
                ],
                capture_output=True,
                text=True,
                timeout=1800,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
        except subprocess.TimeoutExpired:
            outcomes["hang"] += 1
            continue
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            outcomes["crash"] += 1
            continue
        with output.open() as handle:
            records = sum(1 for _ in handle)
        peak = [ln for ln in done.stderr.splitlines() if ln.startswith("MAXRSS")]
        rss = int(peak[-1].split()[1]) / 1024 if peak else float("nan")
        outcomes["ok" if records == lines else "silent wrong"] += 1
        notes.append(f"{label}: {records:,} records, peak RSS {rss:.0f} MiB, {seconds:.0f} s")
        source.unlink()
        output.unlink()
    table.add("3", "chaincrf-predict on long input (file to file)", outcomes, "; ".join(notes))


def probe_line_separators(table: Table, run: Path, work: Path) -> None:
    from chaincrf.cli.predict import predict

    ckpt = run / "checkpoints" / "best.ckpt"
    separators = ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\r"]
    outcomes: Counter = Counter()
    for separator in separators:
        for ending in ("\n", "\r\n"):
            source = work / "sep.txt"
            lines = [f"EU rejects{separator}German call .", "Peter Blackburn"]
            source.write_text(ending.join(lines) + ending, encoding="utf-8", newline="")
            output = work / "sep.jsonl"
            try:
                predict(
                    compose([f"ckpt_path={ckpt}", f"input={source}", f"output={output}"], "predict")
                )
            except Exception:
                outcomes["crash"] += 1
                continue
            records = [json.loads(x) for x in output.read_text(encoding="utf-8").split("\n") if x]
            right = [line.split() for line in lines]
            outcomes["ok" if [r["tokens"] for r in records] == right else "silent wrong"] += 1
    table.add(
        "4",
        "raw text with \\x0b \\x0c \\x1c-\\x1e \\x85 U+2028 U+2029 or a lone \\r inside a line (\\n and \\r\\n files)",
        outcomes,
        "one record per input line",
    )


def probe_reader_inputs(table: Table, work: Path, quick: bool) -> None:
    from chaincrf.data import DataFormatError, read_columns, read_conllu

    def limited(call: Callable[[], Any], seconds: int = 20) -> str:
        def alarm(*_):
            raise TimeoutError

        previous = signal.signal(signal.SIGALRM, alarm)
        signal.alarm(seconds)
        try:
            call()
            return "returned"
        except DataFormatError:
            return "ok"
        except TimeoutError:
            return "hang"
        except Exception:
            return "crash"
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)

    outcomes: Counter = Counter()
    cr_only = work / "cr_only.conll"
    cr_only.write_bytes(b"EU B-ORG\rrejects O\r\rGerman B-MISC\rcall O\r")
    stray = work / "stray.conll"
    stray.write_bytes(b"EU B-ORG\nrejects\rO O\n")
    for reader in (read_columns, read_conllu):
        for path in (cr_only, stray):
            result = limited(lambda r=reader, p=path: r(p))
            outcomes["silent wrong" if result == "returned" else result] += 1
    crlf = work / "crlf.conll"
    crlf.write_bytes(b"EU B-ORG\r\nrejects O\r\n\r\nGerman B-MISC\r\ncall O\r\n")
    sentences = read_columns(crlf)
    outcomes[
        "ok"
        if [s.tokens for s in sentences] == [["EU", "rejects"], ["German", "call"]]
        else "silent wrong"
    ] += 1
    table.add(
        "5",
        "`\\r`-only and stray-`\\r` files (read_columns, read_conllu); a CRLF file",
        outcomes,
        "\\r-only refused with file:line; CRLF reads right",
    )

    outcomes = Counter()
    fifo = work / "fifo"
    os.mkfifo(fifo)
    special = [Path("/dev/zero"), Path("/dev/urandom"), fifo, work]
    long_line = work / "long_line.conll"
    long_line.write_text("x" * 2_000_000 + " O\n")
    for path in [*special, long_line]:
        for reader in (read_columns, read_conllu):
            result = limited(lambda r=reader, p=path: r(p))
            outcomes["silent wrong" if result == "returned" else result] += 1
    table.add(
        "6",
        "/dev/zero, /dev/urandom, a FIFO without writer, a directory, a 2M-character line (both readers)",
        outcomes,
        "refused before reading (special files) or at the line (max_line_chars)",
    )

    outcomes = Counter()
    rng = random.Random(0)
    seeds = [
        (FIXTURES / name).read_bytes() for name in ("train.conll", "dev.conll", "train.conllu")
    ]
    count = 100 if quick else 400
    for i in range(count):
        data = bytearray(rng.choice(seeds)[: rng.randint(0, 3000)])
        for _ in range(rng.randint(1, 20)):
            if data and rng.random() < 0.5:
                data[rng.randrange(len(data))] = rng.randrange(256)
            else:
                data[rng.randrange(len(data) + 1) : 0] = bytes(
                    [rng.choice(b"\t \n\r#-_\x00\xff\xc3")]
                )
        path = work / f"fuzz_{i}.txt"
        path.write_bytes(bytes(data))
        reader = read_conllu if i % 2 else read_columns
        result = limited(lambda r=reader, p=path: r(p), seconds=10)
        outcomes["ok" if result in ("ok", "returned") else result] += 1
        path.unlink()
    table.add(
        "6",
        f"random mutations of fixture files ({count}) into the readers",
        outcomes,
        "ok = sentences or DataFormatError with file:line",
    )


def probe_non_finite(table: Table, run: Path, work: Path) -> None:
    from chaincrf import CRF
    from chaincrf.cli.train import train
    from chaincrf.data import DataFormatError
    from chaincrf.data.pretrained import load_pretrained
    from chaincrf.tagger import SequenceTagger
    from chaincrf.training.callbacks import NonFiniteLossError

    outcomes: Counter = Counter()
    for value in ("nan", "NaN", "inf", "-inf", "1e39"):
        path = work / "vectors.txt"
        path.write_text(f"the 0.1 0.2\ncat {value} 0.3\ndog 0.5 0.6\n")
        try:
            load_pretrained(path)
            outcomes["silent wrong"] += 1
        except DataFormatError as error:
            outcomes["ok" if "'cat'" in str(error) and ":2:" in str(error) else "crash"] += 1
        except Exception:
            outcomes["crash"] += 1
    table.add(
        "7",
        "non-finite pretrained vectors (nan, NaN, inf, -inf, 1e39)",
        outcomes,
        "refused naming file:line and word",
    )

    outcomes = Counter()
    torch.manual_seed(0)
    crf = CRF(4, batch_first=True)
    tags = torch.zeros(2, 5, dtype=torch.long)
    methods = {
        "nll": lambda e: crf.nll(e, tags),
        "log_partition": lambda e: crf.log_partition(e),
        "viterbi": lambda e: crf.viterbi(e),
        "viterbi k=3": lambda e: crf.viterbi(e, k=3),
        "decode": lambda e: crf.decode(e),
        "marginals": lambda e: crf.marginals(e),
        "partial": lambda e: crf.partial_log_likelihood(e, torch.ones(2, 5, 4, dtype=torch.bool)),
    }
    for value in (float("nan"), float("inf")):
        for method in methods.values():
            emissions = torch.randn(2, 5, 4)
            emissions[1, 3, 2] = value
            try:
                method(emissions)
                outcomes["silent wrong"] += 1
            except ValueError as error:
                outcomes["ok" if "batch row 1, position 3" in str(error) else "crash"] += 1
    table.add(
        "7",
        "NaN / +inf emissions into every CRF method",
        outcomes,
        "ValueError naming row and position",
    )

    outcomes = Counter()
    sys.path.insert(0, str(TESTS))
    folder = work / "nan_run"
    overrides = train_overrides(
        folder,
        "trainer.max_epochs=4",
        "seed=1",
        "+callbacks.poison._target_=fault_injection.PoisonAtEpoch",
        "+callbacks.poison.epoch=2",
    )
    try:
        train(compose(overrides))
        outcomes["silent wrong"] += 1
    except NonFiniteLossError as error:
        last = SequenceTagger.load(folder / "checkpoints" / "last.ckpt")
        finite = all(torch.isfinite(p).all() for p in last.parameters())
        outcomes["ok" if finite and "epoch 2" in str(error) else "silent wrong"] += 1
    except Exception:
        outcomes["crash"] += 1
    table.add(
        "7",
        "NaN weights injected at epoch 2 of training",
        outcomes,
        "stops at the first non-finite loss; last.ckpt (epoch 1) intact and finite",
    )


def probe_resume(table: Table, work: Path) -> None:
    from chaincrf.cli.train import train

    common = [
        "embeddings.dropout=0.3",
        "embeddings.word_dropout=0.1",
        "model.dropout=0.3",
        "trainer.deterministic=true",
        "trainer.max_epochs=4",
        "seed=3",
        "test=false",
    ]
    whole = train(compose(train_overrides(work / "whole", *common)))
    expected = torch.load(work / "whole" / "checkpoints" / "last.ckpt", weights_only=True)
    steps = expected["global_step"] // 4
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    outcomes: Counter = Counter()
    notes = []
    for kill_at in (steps + 1, 2 * steps + steps // 2, 3 * steps + 1):
        killed = work / f"killed_{kill_at}"
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "chaincrf.cli.train",
                *train_overrides(killed, *common),
                "+callbacks.kill._target_=fault_injection.KillAtStep",
                f"+callbacks.kill.step={kill_at}",
            ],
            capture_output=True,
            text=True,
            timeout=900,
            env=env,
        )
        if done.returncode != -signal.SIGKILL:
            outcomes["crash"] += 1
            continue
        resumed_dir = work / f"resumed_{kill_at}"
        resumed = train(
            compose(
                train_overrides(
                    resumed_dir, *common, f"ckpt_path={killed / 'checkpoints' / 'last.ckpt'}"
                )
            )
        )
        final = torch.load(resumed_dir / "checkpoints" / "last.ckpt", weights_only=True)
        diff = max(  # float weights by their largest difference; buffers (masks) must be equal
            (final["state_dict"][k] - v).abs().max().item()
            if v.is_floating_point()
            else float(not torch.equal(final["state_dict"][k], v))
            for k, v in expected["state_dict"].items()
        )
        same = (
            diff == 0
            and resumed["val/score"] == whole["val/score"]
            and final["lr_schedulers"] == expected["lr_schedulers"]
        )
        outcomes["ok" if same else "silent wrong"] += 1
        notes.append(f"kill at step {kill_at}: largest weight difference {diff:g}")
    table.add(
        "8",
        "SIGKILL mid-epoch, resume from last.ckpt (seed 3, deterministic, dropout on)",
        outcomes,
        "; ".join(notes) + "; metrics and scheduler state equal",
    )


SAVER = """
import sys, torch, importlib
module, name = sys.argv[2].rsplit('.', 1)
io = getattr(importlib.import_module(module), name)()
version = 0
while True:
    version += 1
    io.save_checkpoint({'version': version, 'weights': torch.full((6_000_000,), float(version))}, sys.argv[1])
    print(version, flush=True)
"""


def probe_kill_while_saving(table: Table, work: Path, quick: bool) -> None:
    kills = 8 if quick else 20
    rng = random.Random(1)
    for io_class, label in (
        (
            "pytorch_lightning.plugins.io.TorchCheckpointIO",
            "Lightning's TorchCheckpointIO (before)",
        ),
        (
            "chaincrf.training.callbacks.AtomicCheckpointIO",
            "chaincrf AtomicCheckpointIO (train uses it)",
        ),
    ):
        outcomes: Counter = Counter()
        folder = work / label.split()[0].replace("'", "")
        folder.mkdir()
        path = folder / "last.ckpt"
        for _ in range(kills):
            process = subprocess.Popen(
                [sys.executable, "-c", SAVER, str(path), io_class],
                stdout=subprocess.PIPE,
                text=True,
            )
            process.stdout.readline()
            time.sleep(rng.uniform(0.0, 0.6))
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=60)
            try:
                state = torch.load(path, weights_only=True)
                whole = torch.equal(
                    state["weights"], torch.full((6_000_000,), float(state["version"]))
                )
                outcomes["ok" if whole else "silent wrong"] += 1
            except Exception:
                outcomes["silent wrong"] += 1  # a corrupted checkpoint left where the good one was
        table.add(
            "8",
            f"SIGKILL while saving a 24 MB checkpoint in a loop: {label}",
            outcomes,
            "ok = the file left loads and holds one whole version",
        )


def probe_clear_errors(table: Table, run: Path, work: Path) -> None:
    from chaincrf.cli.export import export
    from chaincrf.cli.predict import predict
    from chaincrf.tagger import SequenceTagger

    outcomes: Counter = Counter()
    bundle = export(run / "checkpoints" / "best.ckpt", work / "err_bundle")
    for text, expected in (
        ('{"format": 1,\n "hparams": {,}}', "config.json:2:"),
        ("{}", "has no 'hparams' entry"),
        ("[1, 2]", "has no 'hparams' entry"),
        ('{"format": 9, "hparams": {}}', "bundle format 9"),
        ('{"hparams": {"labels": ["O"]}}', "lack"),
    ):
        (bundle / "config.json").write_text(text)
        outcomes[classify(lambda: SequenceTagger.load(bundle), work, ValueError, expected)] += 1
    truncated = work / "truncated.ckpt"
    truncated.write_bytes((run / "checkpoints" / "best.ckpt").read_bytes()[:5000])
    outcomes[
        classify(lambda: SequenceTagger.load(truncated), work, ValueError, str(truncated))
    ] += 1
    blocker = work / "a_file"
    blocker.write_text("")
    text = work / "in.txt"
    text.write_text("EU rejects German call .\n")
    outcomes[
        classify(
            lambda: export(run / "checkpoints" / "best.ckpt", blocker / "bundle"),
            work,
            OSError,
            "cannot write",
        )
    ] += 1
    outcomes[
        classify(
            lambda: predict(
                compose(
                    [
                        f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}",
                        f"input={text}",
                        f"output={blocker / 'o.jsonl'}",
                    ],
                    "predict",
                )
            ),
            work,
            OSError,
            str(blocker),
        )
    ] += 1
    env = {**os.environ, "CHAINCRF_OUTPUT": str(work / "out"), "OMP_NUM_THREADS": "1"}
    env.pop("CHAINCRF_TRACEBACK", None)
    overrides = [
        o for o in train_overrides(work / "x") if not o.startswith(("run_dir=", "data.dev="))
    ]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "chaincrf.cli.train",
            *overrides,
            f"data.dev={work / 'missing.conll'}",
            "task_name=fails",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    left = list((work / "out" / "fails").iterdir()) if (work / "out" / "fails").exists() else []
    output = done.stdout + done.stderr
    clear = (
        done.returncode == 1
        and "missing.conll: file not found" in output
        and "Traceback" not in output
    )
    outcomes["ok" if clear and not left else "crash"] += 1
    table.add(
        "9",
        "bad bundle JSON (5 kinds), truncated checkpoint, unwritable output (export, predict), a run failing before training",
        outcomes,
        "errors name the file (and line); the failed run's folder is removed",
    )


def _timed_cli(arguments: list[str], timeout: float) -> tuple[str, float, float, float]:
    """Run ``chaincrf-predict`` with ``arguments``: (outcome, seconds, peak RSS in MiB, seconds
    tagging); outcome "ok" for exit status 0, "refused" for 1, "hang" past ``timeout``, else
    "crash"; the tagging time is the command's own log line's (reading, tokenising, tagging and
    writing: start-up and model loading excluded)."""
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [
                "/usr/bin/time",
                "-f",
                "MAXRSS %M",
                sys.executable,
                "-m",
                "chaincrf.cli.predict",
                *arguments,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    except subprocess.TimeoutExpired:
        return "hang", float("nan"), float("nan"), float("nan")
    seconds = time.perf_counter() - started
    peak = [ln for ln in done.stderr.splitlines() if ln.startswith("MAXRSS")]
    rss = int(peak[-1].split()[1]) / 1024 if peak else float("nan")
    outcome = {0: "ok", 1: "refused"}.get(done.returncode, "crash")
    tagged = re.findall(r"tokens in ([0-9.]+) s", done.stderr)
    return outcome, seconds, rss, float(tagged[-1]) if tagged else float("nan")


def probe_bounded_work(table: Table, run: Path, work: Path) -> None:
    """Bounded time and memory for any input, and the right input or a clear refusal."""
    from chaincrf.cli.predict import predict, text_lines
    from chaincrf.cli.train import train
    from chaincrf.tagger import SequenceTagger

    ckpt = run / "checkpoints" / "best.ckpt"
    rng = random.Random(10)
    punctuation = "()[]{}\"'.,;:!?-/"
    lines = {
        "30,000 `)`": ")" * 30_000,
        "40,011 quotes and parentheses": '"(' * 20_005 + '"',
        "100,000 random punctuation": "".join(rng.choice(punctuation) for _ in range(100_000)),
        "99,973: runs of 256 `)` (the longest spaCy gets)": (")" * 256 + " ") * 389,
    }
    outcomes: Counter = Counter()
    notes = []
    for label, line in lines.items():
        source = work / "worst.txt"
        source.write_text(line + "\n")
        outcome, seconds, rss, tagging = _timed_cli(
            [f"ckpt_path={ckpt}", f"input={source}", f"output={work / 'worst.jsonl'}"], 300
        )
        bounded = outcome == "ok" and tagging < 30 and rss < 1536
        outcomes["ok" if bounded else ("hang" if outcome in ("ok", "hang") else "crash")] += 1
        notes.append(f"{label}: {tagging:.1f} s ({seconds:.0f} s with start-up), {rss:.0f} MiB")
    source = work / "worst_1mb.txt"  # ten 100,000-character lines: 1 MB
    source.write_text(("".join(rng.choice(punctuation) for _ in range(99_999)) + "\n") * 10)
    outcome, seconds, rss, tagging = _timed_cli(
        [f"ckpt_path={ckpt}", f"input={source}", f"output={work / 'worst.jsonl'}"], 600
    )
    outcomes["ok" if outcome == "ok" and rss < 1536 else "crash"] += 1
    notes.append(f"1 MB of punctuation (10 lines): {tagging:.1f} s, {rss:.0f} MiB")
    table.add(
        "10",
        "worst lines for the spaCy tokenizer, chaincrf-predict file to file (time, peak RSS)",
        outcomes,
        "; ".join(notes) + " (ok: a line under 30 s, peak RSS under 1.5 GB)",
    )

    outcomes = Counter()
    notes = []
    nine = ["EU", "rejects", "German", "call", "to", "boycott", "British", "lamb", "."]
    for top_k in (1_000_000, 1000):
        code = (
            "import torch; torch.set_num_threads(1)\n"
            "from chaincrf.tagger import SequenceTagger\n"
            f"t = SequenceTagger.load({str(ckpt)!r})\n"
            "try:\n"
            f"    r = t.predict([{nine!r}], top_k={top_k})[0]\n"
            "    print('ALTERNATIVES', len(r.alternatives))\n"
            "except ValueError as error:\n"
            "    print('REFUSED', error)\n"
        )
        outcome, peak, line = _peak_rss_subprocess(code, timeout=300)
        right = (
            ("REFUSED top_k must be at most 1000" in line)
            if top_k > 1000
            else (line.startswith("ALTERNATIVES 1000"))
        )
        outcomes["ok" if outcome == "ok" and right and peak < 1536 else "crash"] += 1
        notes.append(f"top_k={top_k:,}: {line.split(' (')[0]}, peak RSS {peak:.0f} MiB")
    table.add("10", "top_k on a 9-token sentence (SequenceTagger.predict)", outcomes,
              "; ".join(notes))  # fmt: skip

    outcomes = Counter()
    notes = []
    started = time.perf_counter()
    cfg = compose(train_overrides(work / "deep", "encoder.num_layers=10000"))
    outcomes[classify(lambda: train(cfg), work, ValueError, "num_layers must be an int")] += 1
    notes.append(f"training override: refused in {time.perf_counter() - started:.1f} s")
    from chaincrf.cli.export import export

    good = export(ckpt, work / "bounded_bundle")
    for field, edit, match in (
        ("hparams.encoder.num_layers=10000", lambda c: c["hparams"]["encoder"].update(
            num_layers=10_000), "num_layers is 10000"),
    ):  # fmt: skip
        bundle = work / "bounded_crafted"
        shutil.rmtree(bundle, ignore_errors=True)
        shutil.copytree(good, bundle)
        config = json.loads((bundle / "config.json").read_text())
        edit(config)
        (bundle / "config.json").write_text(json.dumps(config))
        started = time.perf_counter()
        outcomes[classify(lambda b=bundle: SequenceTagger.load(b), work, ValueError, match)] += 1
        notes.append(f"bundle {field}: refused in {time.perf_counter() - started:.1f} s")
    bundle = work / "bounded_crafted"
    shutil.rmtree(bundle)
    shutil.copytree(good, bundle)
    vocab = json.loads((bundle / "vocab.json").read_text())
    vocab["lowercase"] = "no"
    (bundle / "vocab.json").write_text(json.dumps(vocab))
    outcomes[classify(lambda: SequenceTagger.load(bundle), work, ValueError, "lowercase")] += 1
    notes.append('vocab.json lowercase: "no" refused')
    table.add("10", "num_layers=10000 (training override, bundle config); lowercase: \"no\"",
              outcomes, "; ".join(notes))  # fmt: skip

    outcomes = Counter()
    predictors = {"torch": SequenceTagger.load(ckpt).predictor}
    try:
        from chaincrf.predict.onnx_predictor import OnnxPredictor

        predictors["onnx"] = OnnxPredictor(export(ckpt, work / "bounded_onnx", fmt="onnx"))
    except ImportError:
        pass
    bad_inputs = [
        ([b"EU rejects"], "sentence 0 must be a str"),
        ([["EU"], {"tokens": ["EU", "rejects"]}], "sentence 1 must be a str"),
        ([None], "sentence 0 must be a str"),
        ([["EU", None]], "sentence 0, token 1 must be a str"),
        ([["EU", 7]], "sentence 0, token 1 must be a str"),
        ([["EU", b"rejects"]], "sentence 0, token 1 must be a str"),
    ]
    for predictor in predictors.values():
        for sentences, match in bad_inputs:
            call = lambda p=predictor, s=sentences: p.predict(s)  # noqa: E731
            outcomes[classify(call, work, TypeError, match)] += 1
    table.add(
        "10",
        f"bytes, dict, None and non-str tokens ({' and '.join(predictors)} predictor.predict)",
        outcomes,
        "TypeError naming the sentence (and token); no stringified tokens",
    )

    outcomes = Counter()
    source = work / "crcrlf.txt"
    source.write_bytes(b"abcde\r\r\nxy\n")
    try:
        list(text_lines(str(source), max_line_chars=5))
        outcomes["silent wrong"] += 1
    except ValueError as error:
        outcomes["ok" if f"{source}:1: line is longer than 5" in str(error) else "crash"] += 1
    source.write_bytes(b"abcde\r\nfghij\r\n")
    output = work / "crcrlf.jsonl"
    predict(compose([f"ckpt_path={ckpt}", f"input={source}", f"output={output}",
                     "max_line_chars=5"], "predict"))  # fmt: skip
    records = [json.loads(x)["tokens"] for x in output.read_text().splitlines()]
    outcomes["ok" if records == [["abcde"], ["fghij"]] else "silent wrong"] += 1
    table.add(
        "10",
        "max_line_chars=5: `abcde\\r\\r\\n` (6 characters), `abcde\\r\\n` x 2",
        outcomes,
        "the first refused naming line 1; the second 2 records (the line end not counted)",
    )

    outcomes = Counter()
    notes = []
    source = work / "interrupt.txt"
    source.write_text(")" * 30_000 + "\n" + "EU rejects German call .\n" * 20_000)
    for signum in (signal.SIGTERM, signal.SIGINT):
        out = work / f"interrupt_{signum.name}"
        out.mkdir()
        process = subprocess.Popen(
            [sys.executable, "-m", "chaincrf.cli.predict", f"ckpt_path={ckpt}", f"input={source}",
             f"output={out / 'o.jsonl'}", f"hydra.run.dir={work / 'interrupt_hydra'}"],
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while not any(out.iterdir()) and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        started = time.perf_counter()
        process.send_signal(signum)
        try:  # a service manager's grace period, then SIGKILL
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        left = [p.name for p in out.iterdir()]
        stopped = process.returncode in (128 + signum, -signum)
        outcomes["ok" if stopped and not left else "silent wrong"] += 1
        notes.append(
            f"{signum.name}: stopped in {time.perf_counter() - started:.2f} s, "
            f"{len(left)} file(s) left"
        )
    table.add(
        "10",
        "SIGTERM / SIGINT while chaincrf-predict tags a 30,000-`)` line into a file (5 s grace)",
        outcomes,
        "; ".join(notes),
    )


def _one_line_cli(
    module: str,
    args: list[str],
    work: Path,
    expected: str,
    *,
    stdin: bytes | None = None,
    close: tuple[int, ...] = (),
    file_limit: int | None = None,
    timeout: float = 300,
) -> str:
    """The outcome of ``chaincrf-<module> args`` in a subprocess that must fail with one error
    line holding ``expected``, exit status 1 and no traceback: ``close`` names file descriptors
    closed at its start (0: stdin, 1: stdout), ``file_limit`` a full disk (``RLIMIT_FSIZE``,
    ``SIGXFSZ`` ignored: a write past it fails with ``OSError: [Errno 27]``)."""
    prelude = "import runpy, sys\n"
    if file_limit is not None:
        prelude += (
            "import resource, signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({file_limit}, resource.RLIM_INFINITY))\n"
        )
    prelude += (
        f"sys.argv = ['chaincrf-{module}', *{args!r}]\n"
        f"runpy.run_module('chaincrf.cli.{module}', run_name='__main__', alter_sys=True)\n"
    )
    env = {**os.environ, "CHAINCRF_OUTPUT": str(work / "out"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(TESTS)])}  # fmt: skip
    env.pop("CHAINCRF_TRACEBACK", None)
    try:
        done = subprocess.run(
            [sys.executable, "-c", prelude],
            input=stdin,
            stdin=None if stdin is not None or 0 in close else subprocess.DEVNULL,
            stdout=None if 1 in close else subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=(lambda: [os.close(fd) for fd in close]) if close else None,
            cwd=work,
            env=env,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return "hang"
    output = (done.stdout or b"").decode(errors="replace") + done.stderr.decode(errors="replace")
    if done.returncode == 0:
        return "silent wrong"
    errors = [line for line in output.splitlines() if "ERROR" in line]
    clear = (
        done.returncode == 1
        and "Traceback" not in output
        and len(errors) == 1
        and expected in errors[0]
    )
    return "ok" if clear else "crash"


def probe_one_line_errors(table: Table, run: Path, work: Path) -> None:
    """Every row a chaincrf command in a subprocess that must end in one error line naming the
    file (and line or field) or the option, exit status 1, no traceback, nothing half-written."""
    import onnx
    from onnx import TensorProto, helper

    from chaincrf.cli.export import export

    work = work / "one_line"
    work.mkdir()
    ckpt = run / "checkpoints" / "best.ckpt"
    text = work / "in.txt"
    text.write_text("EU rejects German call .\n", encoding="utf-8")
    onnx_dir = export(ckpt, work / "onnx", fmt="onnx")
    bundle = export(ckpt, work / "bundle")

    def copy(source: Path, name: str, edit: Callable[[Path], None]) -> Path:
        folder = work / name
        shutil.copytree(source, folder)
        edit(folder)
        return folder

    def edit_json(name: str, change: Callable[[Any], None]) -> Callable[[Path], None]:
        def edit(folder: Path) -> None:
            data = json.loads((folder / name).read_text(encoding="utf-8"))
            change(data)
            (folder / name).write_text(json.dumps(data), encoding="utf-8")

        return edit

    def predict(folder: Path, expected: str, *extra: str, **options: Any) -> str:
        args = [f"ckpt_path={folder}", f"input={text}", f"output={work / 'o.jsonl'}", *extra]
        return _one_line_cli("predict", args, work, expected, **options)

    # onnxruntime: bad model files
    outcomes: Counter = Counter()
    model = (onnx_dir / "model.onnx").read_bytes()

    def foreign(folder: Path) -> None:
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
        graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
        onnx.save(helper.make_model(graph), str(folder / "model.onnx"))

    def custom_op(folder: Path) -> None:
        proto = onnx.load(str(folder / "model.onnx"))
        node = proto.graph.node[len(proto.graph.node) // 2]
        node.op_type, node.domain = "MyCustomOp", "com.example"
        proto.opset_import.append(helper.make_opsetid("com.example", 1))
        onnx.save(proto, str(folder / "model.onnx"))

    for name, edit in (
        ("truncated", lambda f: (f / "model.onnx").write_bytes(model[: len(model) // 3])),
        ("empty", lambda f: (f / "model.onnx").write_bytes(b"")),
        ("foreign", foreign),
        ("custom_op", custom_op),
    ):
        folder = copy(onnx_dir, f"onnx_{name}", edit)
        outcomes[predict(folder, f"{folder / 'model.onnx'}: ")] += 1
    table.add("11", "onnxruntime: truncated, empty, foreign, custom-op model.onnx", outcomes)

    # JSON nested 100,000 deep
    outcomes = Counter()
    deep = "[" * 100_000 + "]" * 100_000
    for source, name in ((onnx_dir, "tagger.json"), (onnx_dir, "vocab.json"),
                         (bundle, "config.json"), (bundle, "vocab.json")):  # fmt: skip
        folder = copy(
            source, f"deep_{source.name}_{name}", lambda f, n=name: (f / n).write_text(deep)
        )
        outcomes[predict(folder, f"{folder / name}: JSON nested")] += 1
    table.add("11", "JSON nested 100,000 deep (tagger.json, vocab.json, config.json)", outcomes)

    # options
    outcomes = Counter()
    overrides = [
        *(o for o in train_overrides(work / "x") if not o.startswith(("run_dir=", "report="))),
        "trainer.max_epochs=1",
    ]
    outcomes[_one_line_cli("train", [*overrides, "data.max_word_chars=2.5", "task_name=mwc"],
                           work, "max_word_chars must be an int >= 1; got 2.5")] += 1  # fmt: skip
    table.add("11", "float max_word_chars (chaincrf-train data.max_word_chars=2.5)", outcomes)
    outcomes = Counter()
    outcomes[_one_line_cli("predict", [f"ckpt_path={ckpt}", "input=-"], work,
                           "input=-: stdin is closed", close=(0,))] += 1  # fmt: skip
    outcomes[_one_line_cli("predict", [f"ckpt_path={ckpt}", f"input={text}", "output=-"], work,
                           "output=-: stdout is closed", close=(1,))] += 1  # fmt: skip
    table.add("11", "closed stdin (input=- <&-), closed stdout (output=- >&-)", outcomes)
    outcomes = Counter()
    for name in ("rot13", "base64", "no-such-codec"):
        outcomes[predict(ckpt, "encoding must name a text encoding", f"encoding={name}")] += 1
    table.add("11", "encoding=rot13, base64, an unknown name", outcomes)
    outcomes = Counter()
    latin = work / "latin1.txt"
    latin.write_bytes("EU rejects\nCafé au lait .\n".encode("latin-1"))
    conll = work / "latin1.conll"
    conll.write_bytes("EU B-ORG\nCafé O\n\n".encode("latin-1"))
    args = [f"ckpt_path={ckpt}", f"output={work / 'o.jsonl'}"]
    outcomes[_one_line_cli("predict", [*args, f"input={latin}"], work,
                           f"{latin}:2: bytes b'\\xe9' cannot be decoded as utf-8")] += 1  # fmt: skip
    outcomes[_one_line_cli("predict", [*args, "input=-"], work, "stdin:2: bytes b'\\xe9'",
                           stdin=latin.read_bytes())] += 1  # fmt: skip
    outcomes[_one_line_cli("predict", [*args, f"input={conll}"], work,
                           f"{conll}:2: bytes")] += 1  # fmt: skip
    table.add("11", "Latin-1 input read as UTF-8 (text file, stdin, CoNLL file)", outcomes,
              "the error names file:line and encoding=")  # fmt: skip

    # a full disk
    outcomes = Counter()
    before = work / "full_before"
    result = _one_line_cli("train", [*overrides, f"hydra.run.dir={before}"], work,
                           "File too large", file_limit=4000)  # fmt: skip
    outcomes["crash" if result == "ok" and before.exists() else result] += 1
    table.add("11", "full disk before training (Hydra's record, config, vocabularies)", outcomes,
              "ok = one line, no run folder left")  # fmt: skip
    outcomes = Counter()
    after = work / "full_after"
    result = _one_line_cli(
        "train",
        [*overrides, f"hydra.run.dir={after}",
         "+callbacks.disk._target_=fault_injection.FullDiskAfterFit", "+callbacks.disk.limit=10000"],
        work,
        "the training itself is complete",
    )  # fmt: skip
    empty = [
        p.name
        for p in after.rglob("*")
        if p.is_file() and (p.stat().st_size == 0 or ".tmp" in p.name)
    ]
    try:
        torch.load(after / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    except Exception:
        empty.append("best.ckpt unreadable")
    outcomes["silent wrong" if result == "ok" and empty else result] += 1
    table.add("11", "full disk at the end of training (metrics, plots, report)", outcomes,
              "ok = one line, best.ckpt intact, no empty or .tmp file")  # fmt: skip

    # model folders whose sizes disagree, and mistyped fields
    outcomes = Counter()
    more = lambda v: v["words"]["itos"].extend(f"w{i}" for i in range(500))  # noqa: E731
    cases = [
        (bundle, "vocab.json", more, "vocabulary has"),
        (onnx_dir, "vocab.json", more, "vocabulary has"),
        (bundle, "config.json", lambda c: c["hparams"].update(labels=c["hparams"]["labels"][:3]),
         "labels name 3 tags"),
        (onnx_dir, "tagger.json", lambda c: c.update(labels=c["labels"][:3]), "labels name 3"),
        (onnx_dir, "tagger.json", lambda c: c["labels"].__setitem__(1, c["labels"][0]),
         "must not repeat"),
        (onnx_dir, "vocab.json", lambda v: v.update(lowercase="no"), "lowercase must be a boolean"),
    ]  # fmt: skip
    for i, (source, name, change, expected) in enumerate(cases):
        folder = copy(source, f"mismatch{i}", edit_json(name, change))
        outcomes[predict(folder, expected)] += 1
    folder = copy(
        onnx_dir,
        "tagger_dir",
        lambda f: ((f / "tagger.json").unlink(), (f / "tagger.json").mkdir()),
    )
    outcomes[predict(folder, "tagger.json: cannot be read")] += 1
    table.add(
        "11",
        "model folders: vocab > embedding, labels < tag count (bundle, ONNX), duplicate labels, "
        'lowercase: "no", tagger.json unreadable',
        outcomes,
        "refused at load, naming the file and field",
    )


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (links and special files as their kind) with its content."""
    out: dict[str, bytes] = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            out[key] = b"special"
        elif path.is_file():
            out[key] = path.read_bytes()
    return out


def probe_nothing_outside(table: Table, run: Path, work: Path) -> None:
    """Nothing deleted or replaced that chaincrf did not write, nothing read outside a model
    folder, and a model folder's stated sizes checked before anything is allocated."""
    import stat

    from chaincrf.cli.export import export

    work = work / "outside"
    work.mkdir()
    ckpt = run / "checkpoints" / "best.ckpt"
    text = work / "in.txt"
    text.write_text("EU rejects German call .\n", encoding="utf-8")

    # 1. chaincrf-export into folders it did not write: refused, every file left as it was
    outcomes: Counter = Counter()
    mine = work / "my_files"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes\n")
    (mine / "data").mkdir()
    (mine / "data" / "train.conll").write_text("EU B-ORG\n")
    cwd = work / "cwd"
    cwd.mkdir()
    (cwd / "thesis.tex").write_text("\\begin{document}\n")
    for output, folder in (
        (str(run), run),  # the run folder
        (".", cwd),  # the working directory
        (str(mine), mine),  # a folder of the user's files
    ):
        before = _snapshot(folder)
        outcome = _one_line_cli(
            "export", [f"ckpt_path={ckpt}", f"output={output}"], cwd, "cannot export into"
        )
        if outcome == "ok" and _snapshot(folder) != before:
            outcome = "silent wrong"
        outcomes[outcome] += 1
    again = work / "exported"
    export(ckpt, again)
    try:  # a previous export's folder: replaced, its own files only
        export(ckpt, again)
        listed = json.loads((again / ".chaincrf-export.json").read_text())["files"]
        outcomes[
            "ok"
            if sorted(listed)
            == sorted(p.name for p in again.iterdir() if p.name != ".chaincrf-export.json")
            else "silent wrong"
        ] += 1
    except Exception:
        outcomes["crash"] += 1
    table.add(
        "12",
        "chaincrf-export into the run folder, `.`, a folder of the user's files; over a previous export",
        outcomes,
        "refused in one line, every file left as it was; a previous export replaced (its listed files only)",
    )

    # 2. outputs that are not regular files: written in place, never replaced
    outcomes = Counter()
    targets = []
    if os.access("/dev/null", os.W_OK):
        targets.append(Path("/dev/null"))
    fifo = work / "out.fifo"
    os.mkfifo(fifo)
    targets.append(fifo)
    for target in targets:
        drained: list[int] = []
        reader = None
        if target == fifo:

            def drain(path: Path = fifo, into: list[int] = drained) -> None:
                with path.open("rb") as handle:
                    into.append(len(handle.read()))

            reader = threading.Thread(target=drain, daemon=True)
            reader.start()
        kind = stat.S_IFMT(target.stat().st_mode)
        done = subprocess.run(
            [sys.executable, "-m", "chaincrf.cli.predict", f"ckpt_path={ckpt}", f"input={text}",
             f"output={target}"],
            capture_output=True, text=True, timeout=300,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
        if reader is not None:
            reader.join(30)
        same = stat.S_IFMT(target.stat().st_mode) == kind
        if done.returncode != 0:
            outcomes["crash"] += 1
        else:
            outcomes[
                "ok"
                if same and (reader is None or (drained and drained[0] > 0))
                else "silent wrong"
            ] += 1
    table.add(
        "12",
        "chaincrf-predict output=/dev/null (as root) and output=<a FIFO>",
        outcomes,
        "written in place: the device and the FIFO are still what they were",
    )

    # 3. an ONNX folder's paths lead outside it: refused before anything is read
    outcomes = Counter()
    onnx_dir = export(ckpt, work / "onnx", fmt="onnx")
    other = work / "other"
    shutil.copytree(onnx_dir, other)
    for number, target in enumerate(
        (
            "../other/model.onnx",
            str(other / "model.onnx"),
            "../../../../../../../../etc/passwd",
        )
    ):
        folder = work / f"onnx_{number}"
        shutil.copytree(onnx_dir, folder)
        meta = json.loads((folder / "tagger.json").read_text())
        meta["model"] = target
        (folder / "tagger.json").write_text(json.dumps(meta))
        args = [f"ckpt_path={folder}", f"input={text}", f"output={work / 'o.jsonl'}"]
        outcomes[_one_line_cli("predict", args, work, "tagger.json")] += 1
    table.add(
        "12",
        "an ONNX folder's tagger.json naming ../other/model.onnx, an absolute path, ../../etc/passwd",
        outcomes,
        "refused at load naming tagger.json and the path (resolved after links, inside the folder only)",
    )

    # 4. a bundle stating huge sizes: refused before the model is built, in bounded memory
    outcomes = Counter()
    notes = []
    bundle = export(ckpt, work / "bundle")
    for field, value in (("num_words", 50_000_000), ("num_chars", 2_000_000_000)):
        folder = work / f"huge_{field}"
        shutil.copytree(bundle, folder)
        config = json.loads((folder / "config.json").read_text())
        config["hparams"][field] = value
        (folder / "config.json").write_text(json.dumps(config))
        code = (
            "from chaincrf.predict.bundle import load_predictor\n"
            "try:\n"
            f"    load_predictor({str(folder)!r})\n"
            "    print('LOADED')\n"
            "except ValueError as error:\n"
            "    print('REFUSED', str(error).splitlines()[0][:80])\n"
        )
        outcome, peak, line = _peak_rss_subprocess(code, timeout=300)
        if outcome == "ok":
            outcome = "ok" if line.startswith("REFUSED") and peak < 1536 else "silent wrong"
        outcomes[outcome] += 1
        notes.append(f"{field}={value:,}: peak RSS {peak:.0f} MiB")
    table.add(
        "12",
        "a bundle's config.json stating num_words=50,000,000 / num_chars=2,000,000,000",
        outcomes,
        "refused before the network is built; " + "; ".join(notes),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, help="write the Markdown table here")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help="run only this probe (repeatable), e.g. --only bounded_work",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    import logging

    logging.disable(logging.WARNING)
    from chaincrf.cli.train import train

    table = Table()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="chaincrf-reliability-") as tmp:
        work = Path(tmp)
        run = work / "model"
        train(compose(train_overrides(run, "trainer.max_epochs=2", "seed=1")))
        probes = {
            "crafted_targets": lambda: probe_crafted_targets(table, run, work),
            "pickles": lambda: probe_pickles(table, run, work),
            "remote": lambda: probe_remote(table, run, work),
            "long_input": lambda: probe_long_input(table, run, work, args.quick),
            "line_separators": lambda: probe_line_separators(table, run, work),
            "reader_inputs": lambda: probe_reader_inputs(table, work, args.quick),
            "non_finite": lambda: probe_non_finite(table, run, work),
            "resume": lambda: probe_resume(table, work),
            "kill_while_saving": lambda: probe_kill_while_saving(table, work, args.quick),
            "clear_errors": lambda: probe_clear_errors(table, run, work),
            "bounded_work": lambda: probe_bounded_work(table, run, work),
            "one_line_errors": lambda: probe_one_line_errors(table, run, work),
            "nothing_outside": lambda: probe_nothing_outside(table, run, work),
        }
        unknown = sorted(set(args.only or ()) - set(probes))
        if unknown:
            parser.error(f"--only: no probe {unknown}; the probes: {', '.join(probes)}")
        for name, probe in probes.items():
            if args.only and name not in args.only:
                continue
            with contextlib.suppress(KeyboardInterrupt):
                probe()
    text = table.markdown()
    print(text)
    print(f"\n{time.perf_counter() - started:.0f} s", flush=True)
    if args.output:
        args.output.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
