"""Collect finished chaincrf-train runs into a Markdown accuracy table.

Reads every ``<root>/<task>/<run>/metrics.json`` (written at the end of ``chaincrf-train``), the
run's Hydra overrides (``.hydra/overrides.yaml``) and its CSV log (epochs), and prints one row per
run plus mean ± std over seeds for each task.

    python3 scripts/accuracy_table.py outputs/ > table.md
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path


def _overrides(run: Path) -> list[str]:
    path = run / ".hydra" / "overrides.yaml"
    if not path.exists():
        return []
    return [line[2:].strip() for line in path.read_text().splitlines() if line.startswith("- ")]


def _epochs(run: Path) -> int | None:
    path = run / "csv" / "metrics.csv"
    if not path.exists():
        return None
    # epochs trained = distinct epochs with a training loss (the final dev and test rows of
    # the best checkpoint carry the next epoch number)
    epochs = {
        int(float(row["epoch"]))
        for row in csv.DictReader(path.open())
        if row.get("epoch") and row.get("train/loss")
    }
    return len(epochs) or None


def _score(metrics: dict, split: str) -> tuple[str, float | None]:
    """The headline figure of a split: span F1 when present, else token accuracy."""
    for key, name in ((f"{split}/f1", "F1"), (f"{split}/acc", "acc"), (f"{split}/score", "score")):
        if key in metrics:
            return name, 100 * float(metrics[key])
    return "-", None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", type=Path, help="the runs' parent folder (CHAINCRF_OUTPUT)")
    args = parser.parse_args()
    rows = []
    for metrics_path in sorted(args.root.glob("*/*/metrics.json")):
        run = metrics_path.parent
        metrics = json.loads(metrics_path.read_text())
        kind, dev = _score(metrics, "val")
        _, test = _score(metrics, "test")
        overrides = [
            o
            for o in _overrides(run)
            if not o.startswith(("trainer.enable_progress_bar", "threads"))
        ]
        seedless = " ".join(o for o in overrides if not o.startswith("seed="))
        rows.append(
            {
                "task": run.parent.name,
                "config": seedless,
                "run": f"{run.parent.name}/{run.name}",
                "metric": kind,
                "dev": dev,
                "test": test,
                "epochs": _epochs(run),
                "minutes": (metrics.get("setup_seconds", 0) + metrics.get("fit_seconds", 0)) / 60,
                "train_tok_s": metrics.get("train_tokens_per_s"),
                "test_tok_s": metrics.get("test_tokens_per_s"),
                "command": "chaincrf-train " + " ".join(_overrides(run)),
            }
        )
    fmt = lambda v, p=2: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
    print(
        "| run | metric | dev | test | epochs | fit+setup min | train tok/s | test tok/s | command |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['run']} | {r['metric']} | {fmt(r['dev'])} | {fmt(r['test'])} | {r['epochs'] or '-'} "
            f"| {fmt(r['minutes'], 1)} | {fmt(r['train_tok_s'], 0)} | {fmt(r['test_tok_s'], 0)} | `{r['command']}` |"
        )
    groups: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        if r["test"] is not None:
            groups[r["config"]].append(r["test"])
    print("\n| configuration | runs | test mean | test std |\n|---|---|---|---|")
    for config, values in groups.items():
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"| `{config}` | {len(values)} | {statistics.mean(values):.2f} | {std:.2f} |")


if __name__ == "__main__":
    main()
