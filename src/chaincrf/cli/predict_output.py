"""chaincrf-predict's output side: records written as JSON lines or CoNLL columns, to stdout as
they are done or to a file written atomically, and the progress display on stderr."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from chaincrf.cli.common import atomic_output
from chaincrf.predict.outputs import TaggedSentence

__all__ = [
    "PredictSummary",
    "counted",
    "open_output",
    "progress_display",
    "show_progress",
    "write_output",
]


@dataclass(frozen=True)
class PredictSummary:
    """What :func:`predict` tagged: the number of sentences (records) and of tokens, and the
    wall time in seconds of reading, tagging and writing them (model loading excluded)."""

    sentences: int
    tokens: int
    seconds: float = 0.0


def write_output(
    stream: IO[str],
    results: Iterable[TaggedSentence],
    fmt: str,
    gold: Sequence[Sequence[str]] | None = None,
) -> PredictSummary:
    """Write tagged sentences as JSON lines or CoNLL columns to a text stream, as they come.

    Each sentence is written with one ``write`` call: a stream never holds half a record.

    Returns:
        The number of sentences and tokens written.
    """
    sentences = tokens = 0
    for i, tagged in enumerate(results):
        sentences += 1
        tokens += len(tagged.tokens)
        if fmt == "jsonl":
            stream.write(json.dumps(tagged.to_dict(), ensure_ascii=False) + "\n")
        elif tagged.tokens:
            rows = (
                [token, gold[i][j], tag] if gold is not None else [token, tag]
                for j, (token, tag) in enumerate(zip(tagged.tokens, tagged.tags))
            )
            stream.write("".join(" ".join(columns) + "\n" for columns in rows) + "\n")
    return PredictSummary(sentences, tokens)


@contextlib.contextmanager
def open_output(output: str | None) -> Iterator[IO[str]]:
    """The output stream: stdout, written as records are done, or a file written atomically.

    Raises:
        OSError: ``cannot write output <path>: <reason>`` (one line) when the file cannot be
            created, before anything is tagged.
    """
    if output is None or str(output) == "-":
        yield sys.stdout
        sys.stdout.flush()
        return
    path = Path(output)
    if path.is_dir():
        raise OSError(f"cannot write output {output}: it is a folder")
    folder = next((p for p in path.parents if p.exists()), None)
    if folder is not None and not folder.is_dir():
        raise OSError(f"cannot write output {output}: {folder} is not a folder")
    stack = contextlib.ExitStack()
    try:
        stream = stack.enter_context(atomic_output(output))
    except OSError as error:
        reason = error.strerror or str(error)
        raise OSError(f"cannot write output {output}: {reason} (in {path.parent})") from None
    with stack:
        yield stream


def show_progress(output: str | None) -> bool:
    """Whether to show a progress display: stderr is a terminal and the records do not go to a
    terminal on stdout (they would scroll through it)."""

    def is_terminal(stream: object) -> bool:
        isatty = getattr(stream, "isatty", None)
        return bool(isatty()) if callable(isatty) else False

    to_stdout = output is None or str(output) == "-"
    return is_terminal(sys.stderr) and not (to_stdout and is_terminal(sys.stdout))


@contextlib.contextmanager
def progress_display(enabled: bool) -> Iterator[Callable[[int, int], None]]:
    """A ``rich`` progress display on stderr, or nothing.

    Args:
        enabled: show it (see :func:`show_progress`); when False nothing is imported or shown.

    Returns:
        A context manager giving ``update(lines, tokens)``, to call with the totals so far.
    """
    if not enabled:
        yield lambda lines, tokens: None
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    progress = Progress(
        SpinnerColumn(),
        TextColumn("tagging {task.completed:,.0f} lines, {task.fields[tokens]:,} tokens"),
        TextColumn("({task.fields[speed]} tokens/s)"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        redirect_stdout=False,  # records written to stdout must never pass through rich
        redirect_stderr=False,
        transient=True,  # the final log line sums it up
    )
    task = progress.add_task("tagging", total=None, tokens=0, speed="-")
    start = time.perf_counter()

    def update(lines: int, tokens: int) -> None:
        speed = tokens / max(time.perf_counter() - start, 1e-9)
        progress.update(task, completed=lines, tokens=tokens, speed=f"{speed:,.0f}")

    with progress:
        yield update


def counted(
    results: Iterable[TaggedSentence], every: int, update: Callable[[int, int], None]
) -> Iterator[TaggedSentence]:
    """Pass ``results`` through, calling ``update(lines, tokens)`` after every ``every``
    results have been consumed (a chunk's end) and at the end."""
    lines = tokens = 0
    for tagged in results:
        yield tagged
        lines += 1
        tokens += len(tagged.tokens)
        if lines % every == 0:
            update(lines, tokens)
    update(lines, tokens)
