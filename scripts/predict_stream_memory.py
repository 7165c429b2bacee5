"""Streaming prediction at scale: ``chaincrf-predict`` on a synthetic raw-text file of N tokens
and on one of N/10 tokens, reporting wall time, tokens/s and the peak memory (RSS) of each run,
to show that memory stays bounded (the two peaks should be close) while time grows with N.

The text is one sentence per line, lengths drawn from a gamma distribution (mean about 22
tokens, 1 to 120), words drawn from the NER fixture's vocabulary (``tests/fixtures/tagger``)
with a share of random lowercase words (new to the model and to spaCy), commas and a final
full stop attached to their word as in real text (``lamb.``). Each run is a separate
``chaincrf-predict`` process writing JSON lines to a file; its peak RSS is the child's
``ru_maxrss`` (from ``os.wait4``: what ``resource.getrusage(RUSAGE_CHILDREN)`` reports for a
process whose only child it is). Prints a markdown table::

    python scripts/predict_stream_memory.py tests/fixtures/model_files/v1_bundle
    python scripts/predict_stream_memory.py tests/fixtures/model_files/v1_bundle --tokens 20000
"""

from __future__ import annotations

import argparse
import os
import random
import re
import resource
import shutil
import string
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "tagger" / "train.conll"
FALLBACK_WORDS = "EU rejects German call to boycott British lamb Peter Blackburn visited Paris"
LOG_LINE = re.compile(r"tagged (\d+) sentences, (\d+) tokens in ([\d.]+) s \((\d+) tokens/s\)")
RSS_UNIT = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux


@dataclass
class Run:
    """One ``chaincrf-predict`` run: its input and what it reported."""

    input_tokens: int
    lines: int
    tagged_tokens: int
    wall_s: float
    tagging_s: float
    peak_rss_bytes: int


def vocabulary() -> list[str]:
    """The fixture's words (its first column), or a few words when the fixture is absent."""
    if not FIXTURE.is_file():
        return FALLBACK_WORDS.split()
    words = set()
    for line in FIXTURE.read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if fields and not fields[0].startswith("-DOCSTART-") and fields[0].isalnum():
            words.add(fields[0])
    return sorted(words)


def write_text(path: Path, tokens: int, oov_rate: float, seed: int) -> int:
    """Write about ``tokens`` whitespace-separated words of synthetic text, one sentence per
    line; return the number of lines."""
    rng = random.Random(seed)
    words = vocabulary()
    written = lines = 0
    with path.open("w", encoding="utf-8") as handle:
        while written < tokens:
            length = min(120, max(1, round(rng.gammavariate(2.0, 11.0))), tokens - written)
            sentence = []
            for _ in range(length):
                if rng.random() < oov_rate:
                    size = rng.randint(3, 10)
                    word = "".join(rng.choice(string.ascii_lowercase) for _ in range(size))
                else:
                    word = rng.choice(words)
                if rng.random() < 0.06:
                    word += ","
                sentence.append(word)
            sentence[0] = sentence[0][:1].upper() + sentence[0][1:]
            handle.write(" ".join(sentence).rstrip(",") + ".\n")
            written += length
            lines += 1
    return lines


def predict_command() -> list[str]:
    """``chaincrf-predict``, or the module when the entry point is not on the PATH."""
    found = shutil.which("chaincrf-predict")
    return [found] if found else [sys.executable, "-m", "chaincrf.cli.predict"]


def run(model: Path, source: Path, lines: int, tokens: int, args: argparse.Namespace) -> Run:
    """Tag ``source`` in a child process; check one record per line; measure it."""
    output = source.with_suffix(".jsonl")
    log = source.with_suffix(".log")
    command = [
        *predict_command(),
        f"ckpt_path={model}",
        f"input={source}",
        f"output={output}",
        f"tokenizer={args.tokenizer}",
        f"batch_size={args.batch_size}",
        f"chunk_size={args.chunk_size}",
    ]
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    started = time.perf_counter()
    with log.open("w") as err:
        child = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=err, cwd=source.parent, env=env
        )
        _, status, usage = os.wait4(child.pid, 0)  # this child's own resource usage
        child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    text = log.read_text(errors="replace")
    found = LOG_LINE.search(text)
    if child.returncode != 0 or found is None:
        sys.exit(f"chaincrf-predict failed ({child.returncode}):\n{text[-3000:]}")
    with output.open("rb") as handle:
        records = sum(1 for _ in handle)
    if records != lines:
        sys.exit(f"{output}: {records} records for {lines} input lines")
    return Run(
        input_tokens=tokens,
        lines=lines,
        tagged_tokens=int(found[2]),
        wall_s=wall,
        tagging_s=float(found[3]),
        peak_rss_bytes=usage.ru_maxrss * RSS_UNIT,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="a checkpoint (.ckpt) or a bundle folder")
    parser.add_argument("--tokens", type=int, default=1_000_000, help="size of the large file")
    parser.add_argument("--tokenizer", choices=("spacy", "whitespace"), default="spacy")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--chunk-size", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for the runs")
    parser.add_argument("--oov-rate", type=float, default=0.1, help="share of random words")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.tokens < 10:
        parser.error(f"--tokens must be at least 10; got {args.tokens}")
    model = args.model.resolve()
    runs = []
    with tempfile.TemporaryDirectory(prefix="chaincrf-stream-") as folder:
        for size in (args.tokens // 10, args.tokens):  # small first: its peak is its own
            source = Path(folder) / f"text_{size}.txt"
            lines = write_text(source, size, args.oov_rate, args.seed)
            runs.append(run(model, source, lines, size, args))
            source.with_suffix(".jsonl").unlink()
    children_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * RSS_UNIT
    print(f"model: {model}; tokenizer={args.tokenizer}, batch_size={args.batch_size}, "
          f"chunk_size={args.chunk_size}, threads={args.threads or 'default'}, "
          f"{os.cpu_count()} CPUs\n")  # fmt: skip
    print("| input tokens | lines | tokens tagged | wall s | tagging s | tokens/s | peak RSS MiB |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        print(
            f"| {r.input_tokens:,} | {r.lines:,} | {r.tagged_tokens:,} | {r.wall_s:.1f} "
            f"| {r.tagging_s:.1f} | {r.tagged_tokens / max(r.tagging_s, 1e-9):,.0f} "
            f"| {r.peak_rss_bytes / 2**20:,.0f} |"
        )
    small, large = runs
    print(
        f"\npeak RSS ratio (large / small): {large.peak_rss_bytes / small.peak_rss_bytes:.2f} "
        f"for {large.input_tokens / max(small.input_tokens, 1):.0f}x the tokens; "
        f"RUSAGE_CHILDREN max: {children_peak / 2**20:,.0f} MiB. wall s includes start-up and "
        "model loading; tokens/s is over the tagging time the CLI logs."
    )


if __name__ == "__main__":
    main()
