"""``chaincrf-data-stats``: per-split counts of the corpus a data config names.

Examples::

    chaincrf-data-stats data=conll2003                   # under $CHAINCRF_DATA
    chaincrf-data-stats data=custom data.train=train.txt data.dev=dev.txt data.label_column=3
    chaincrf-data-stats data=ud_ewt json=true

The splits are read as training reads them (the data module's paths, formats, columns and
downloads); the first one present is the training split the OOV rates are measured against.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from chaincrf.cli.common import build, hydra_main, run_cli
from chaincrf.data.stats import SplitStats, compute_stats

__all__ = ["data_stats", "main"]


def data_stats(cfg: DictConfig) -> list[SplitStats]:
    """Count the splits of ``cfg.data``; print tables (or JSON with ``json=true``).

    Returns:
        One :class:`SplitStats` per configured split (train, dev, test).

    Raises:
        ValueError: naming the file and line of a malformed record (a user error: one line).
        OSError: for a split file that cannot be read.
    """
    datamodule = build(cfg.data, "data")
    results: list[SplitStats] = []
    splits: list[str] = []
    train_vocab: set[str] | None = None
    for split in ("train", "dev", "test"):
        if datamodule.paths[split] is None:
            continue
        splits.append(split)
        sentences = datamodule.read_split(split)
        results.append(compute_stats(str(datamodule.resolve(split)), sentences, train_vocab))
        if train_vocab is None:
            train_vocab = {token for s in sentences for token in s.tokens}
    if not results:
        raise ValueError("the data config names no split file (data.train, data.dev, data.test)")
    if cfg.get("json", False):
        sys.stdout.write(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    else:
        _print_tables(results, splits)
    return results


def _print_tables(results: list[SplitStats], splits: list[str]) -> None:
    """The tables: each split by its name (train, dev, test) and its file's whole name, folded
    over lines in a narrow terminal, never cut (file names often differ only at their end:
    en_ewt-ud-train.conllu, en_ewt-ud-dev.conllu)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    summary = Table(title="splits")
    summary.add_column("split: file", overflow="fold", min_width=12)
    for column in ("sentences", "tokens", "documents", "labels", "OOV vs train", "longest"):
        summary.add_column(column, justify="right")
    for split, r in zip(splits, results):
        summary.add_row(
            f"{split}: {Path(r.name).name}",
            f"{r.sentences:,}",
            f"{r.tokens:,}",
            f"{r.documents:,}",
            f"{len(r.labels):,}",
            "-" if r.oov_rate is None else f"{100 * r.oov_rate:.2f}%",
            f"{r.longest} (line {r.longest_line})" if r.longest_line else str(r.longest),
        )
    console.print(summary)
    console.print(_counts("label counts", "label", results, splits, lambda r: r.labels))
    if all(r.spans is not None for r in results):
        console.print(_counts("spans", "type", results, splits, lambda r: r.spans))


def _counts(
    title: str, what: str, results: list[SplitStats], splits: list[str], counts: Any
) -> Any:
    from rich.table import Table

    table = Table(title=title)
    table.add_column(what)
    for split in splits:
        table.add_column(split, justify="right", no_wrap=True)
    for key in sorted({key for r in results for key in counts(r)}):
        table.add_row(key, *(f"{counts(r).get(key, 0):,}" for r in results))
    return table


@hydra_main("data_stats")
def main(cfg: DictConfig) -> None:
    """Entry point of ``chaincrf-data-stats``."""
    run_cli(data_stats, cfg)


if __name__ == "__main__":
    main()
