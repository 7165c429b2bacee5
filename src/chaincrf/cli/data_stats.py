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
    train_vocab: set[str] | None = None
    for split in ("train", "dev", "test"):
        if datamodule.paths[split] is None:
            continue
        sentences = datamodule.read_split(split)
        results.append(compute_stats(str(datamodule.resolve(split)), sentences, train_vocab))
        if train_vocab is None:
            train_vocab = {token for s in sentences for token in s.tokens}
    if not results:
        raise ValueError("the data config names no split file (data.train, data.dev, data.test)")
    if cfg.get("json", False):
        sys.stdout.write(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    else:
        _print_tables(results)
    return results


def _print_tables(results: list[SplitStats]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
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
    console.print(_counts("label counts", "label", results, lambda r: r.labels))
    if all(r.spans is not None for r in results):
        console.print(_counts("spans", "type", results, lambda r: r.spans))


def _counts(title: str, what: str, results: list[SplitStats], counts: Any) -> Any:
    from rich.table import Table

    table = Table(title=title)
    table.add_column(what)
    for r in results:
        table.add_column(Path(r.name).name, justify="right")
    for key in sorted({key for r in results for key in counts(r)}):
        table.add_row(key, *(f"{counts(r).get(key, 0):,}" for r in results))
    return table


@hydra_main("data_stats")
def main(cfg: DictConfig) -> None:
    """Entry point of ``chaincrf-data-stats``."""
    run_cli(data_stats, cfg)


if __name__ == "__main__":
    main()
