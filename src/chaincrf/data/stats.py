"""``chaincrf-data-stats``: per-split counts of a tagging corpus.

Examples::

    chaincrf-data-stats --preset conll2003            # under $CHAINCRF_DATA
    chaincrf-data-stats train.txt dev.txt --label-column 3
    chaincrf-data-stats --preset ud_ewt --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from chaincrf import constraints
from chaincrf.data.readers import DataFormatError, Sentence, reader_for

__all__ = ["PRESETS", "SplitStats", "compute_stats", "main"]

PRESETS: dict[str, dict[str, object]] = {
    "conll2003": {
        "format": "columns",
        "label_column": 3,
        "files": ["conll2003/eng.train", "conll2003/eng.testa", "conll2003/eng.testb"],
    },
    "conll2000": {
        "format": "columns",
        "label_column": 2,
        "files": ["conll2000/train.txt", "conll2000/test.txt"],
    },
    "ud_ewt": {
        "format": "conllu",
        "label_column": "upos",
        "files": [
            "ud_english_ewt/en_ewt-ud-train.conllu",
            "ud_english_ewt/en_ewt-ud-dev.conllu",
            "ud_english_ewt/en_ewt-ud-test.conllu",
        ],
    },
}
"""Corpora laid out as in the data root (``$CHAINCRF_DATA``); the first file is the training split."""


@dataclass
class SplitStats:
    """Counts of one split.

    Attributes:
        name: the file.
        sentences: number of sentences.
        tokens: number of tokens.
        documents: number of distinct documents (0 when the file has none).
        longest: tokens in the longest sentence.
        longest_line: line of the longest sentence.
        labels: label -> count, most frequent first.
        oov_rate: share of tokens whose form does not occur in the first (training) file; None
            for the training file itself.
        spans: span type -> count when the labels are span labels (IOB1/BIO/BIOES), else None.
    """

    name: str
    sentences: int
    tokens: int
    documents: int
    longest: int
    longest_line: int | None
    labels: dict[str, int] = field(default_factory=dict)
    oov_rate: float | None = None
    spans: dict[str, int] | None = None


def compute_stats(
    name: str, sentences: Sequence[Sentence], train_vocab: set[str] | None = None
) -> SplitStats:
    """Counts of one split; ``train_vocab`` (token forms of train) gives the OOV rate."""
    tokens = sum(len(s.tokens) for s in sentences)
    longest = max(sentences, key=len, default=None)
    labels = Counter(label for s in sentences for label in s.labels)
    oov = None
    if train_vocab is not None:
        unseen = sum(token not in train_vocab for s in sentences for token in s.tokens)
        oov = unseen / tokens if tokens else 0.0
    scheme = constraints.detect_scheme(s.labels for s in sentences)
    spans = None
    if scheme is not None:
        spans = dict(
            sorted(
                Counter(
                    t for s in sentences for t, _, _ in constraints.get_spans(s.labels, scheme)
                ).items()
            )
        )
    return SplitStats(
        name=name,
        sentences=len(sentences),
        tokens=tokens,
        documents=len({s.doc for s in sentences if s.doc is not None}),
        longest=len(longest) if longest is not None else 0,
        longest_line=longest.line if longest is not None else None,
        labels=dict(labels.most_common()),
        oov_rate=oov,
        spans=spans,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chaincrf-data-stats",
        description="Per-split statistics of a tagging corpus: sentences, tokens, label counts, "
        "OOV rate against the first (training) file, longest sentence.",
    )
    parser.add_argument("files", nargs="*", help="data files; the first is the training split")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="a corpus under --root")
    parser.add_argument(
        "--root",
        default=os.environ.get("CHAINCRF_DATA"),
        help="directory relative paths and presets are resolved in (default: $CHAINCRF_DATA)",
    )
    parser.add_argument("--format", choices=["columns", "conllu"], default=None)
    parser.add_argument("--token-column", type=int, default=0)
    parser.add_argument(
        "--label-column",
        default=None,
        help="label column: an index (columns; default -1) or a CoNLL-U column name (default upos)",
    )
    parser.add_argument("--encoding", default="utf-8")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return parser


def _label_column(value: str | None) -> int | str | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (0, or 1 for a data or usage error)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    args = _parser().parse_args(argv)
    console = Console()
    error_console = Console(stderr=True, soft_wrap=True)  # errors unwrapped, whole paths
    files = list(args.files)
    fmt, label_column = args.format, _label_column(args.label_column)
    if args.preset:
        preset = PRESETS[args.preset]
        if args.root is None:
            error_console.print("[red]error:[/red] --preset needs --root or $CHAINCRF_DATA")
            return 1
        files = files or list(preset["files"])
        fmt = fmt or preset["format"]
        label_column = preset["label_column"] if label_column is None else label_column
    if not files:
        error_console.print("[red]error:[/red] give data files or --preset")
        return 1
    if fmt is None:
        fmt = "conllu" if str(files[0]).endswith(".conllu") else "columns"
    paths = [
        Path(args.root) / f if args.root and not Path(f).is_absolute() else Path(f) for f in files
    ]
    try:
        read = reader_for(fmt, args.token_column, label_column, args.encoding)
        results: list[SplitStats] = []
        train_vocab: set[str] | None = None
        for path in paths:
            sentences = read(path)
            results.append(compute_stats(str(path), sentences, train_vocab))
            if train_vocab is None:
                train_vocab = {token for s in sentences for token in s.tokens}
    except (DataFormatError, ValueError) as error:
        # a path with [brackets] is not read as markup
        error_console.print(f"[red]error:[/red] {escape(str(error))}")
        return 1
    if args.json:
        sys.stdout.write(json.dumps([asdict(r) for r in results], indent=2) + "\n")
        return 0
    summary = Table(title="splits")
    for column in ("file", "sentences", "tokens", "documents", "labels", "OOV vs train", "longest"):
        summary.add_column(column, justify="left" if column == "file" else "right")
    for r in results:
        summary.add_row(
            Path(r.name).name,
            f"{r.sentences:,}",
            f"{r.tokens:,}",
            f"{r.documents:,}",
            f"{len(r.labels):,}",
            "-" if r.oov_rate is None else f"{100 * r.oov_rate:.2f}%",
            f"{r.longest} (line {r.longest_line})" if r.longest_line else str(r.longest),
        )
    console.print(summary)
    labels = sorted({label for r in results for label in r.labels})
    table = Table(title="label counts")
    table.add_column("label")
    for r in results:
        table.add_column(Path(r.name).name, justify="right")
    for label in labels:
        table.add_row(label, *(f"{r.labels.get(label, 0):,}" for r in results))
    console.print(table)
    if all(r.spans is not None for r in results):
        spans = Table(title="spans")
        spans.add_column("type")
        for r in results:
            spans.add_column(Path(r.name).name, justify="right")
        for type_ in sorted({t for r in results for t in r.spans}):
            spans.add_row(type_, *(f"{r.spans.get(type_, 0):,}" for r in results))
        console.print(spans)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
