"""A summary of a multirun: its configurations, their dev and test scores over seeds.

:class:`MultirunSummary` is a Hydra callback (``hydra.callbacks`` in conf/train.yaml): when a
multirun ends (``chaincrf-train -m ...``, a sweep by ``hparams_search=...``, a SLURM array by
the submitit launcher) it reads each run's ``metrics.json`` and ``.hydra/overrides.yaml`` and
writes ``summary.md`` and ``summary.json`` beside the runs, in the sweep directory. Runs whose
overrides differ only in ``seed`` are one configuration: its row has the mean ± standard
deviation of each score and the run directories; rows are sorted by mean dev score (best
first, or last for a minimised monitor). Runs that left no ``metrics.json`` (failed) are listed
apart. ``summarize(<sweep dir>)`` does the same for a folder of runs at any time.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from chaincrf.atomic import atomic_file

log = logging.getLogger("chaincrf.summary")

SCORES = ("val/score", "test/score")
"""The columns of the summary: the monitored dev score and the test score."""

GROUPED_AWAY = ("seed",)
"""Override keys whose values make repetitions of one configuration, not new ones."""


class MultirunSummary(Callback):
    """Writes the multirun's summary when it ends (see the module's note)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(str(config.hydra.sweep.dir))
        if not folder.is_dir():
            return
        maximise = str(config.get("monitor_mode", "max")) != "min"
        path = summarize(folder, maximise=maximise)
        if path is not None:
            log.info("multirun summary: %s", path)


def summarize(folder: str | Path, maximise: bool = True) -> Path | None:
    """Write ``summary.md`` and ``summary.json`` for the runs in ``folder`` (its subfolders with
    ``.hydra/overrides.yaml``); returns the Markdown file's path, or None when there are no runs.
    """
    folder = Path(folder)
    runs = [p.parent.parent for p in sorted(folder.glob("*/.hydra/overrides.yaml"))]
    if not runs:
        return None
    records = [_record(run) for run in runs]
    varying = _varying_keys(r["overrides"] for r in records)
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    failed = []
    for record in records:
        if record["metrics"] is None:
            failed.append(record)
            continue
        key = tuple(
            f"{k}={v}"
            for k, v in record["overrides"].items()
            if k in varying and k not in GROUPED_AWAY
        )
        groups.setdefault(key, []).append(record)
    rows = [_row(key, members) for key, members in groups.items()]
    sign = -1.0 if maximise else 1.0
    rows.sort(key=lambda r: sign * r["val/score"]["mean"] if r["val/score"] else math.inf)
    summary = {
        "folder": str(folder.resolve()),
        "varying": sorted(varying),
        "configurations": rows,
        "failed": [str(r["run"]) for r in failed],
    }
    with atomic_file(folder / "summary.json") as stream:
        stream.write(json.dumps(summary, indent=2))
    markdown = _markdown(summary, folder)
    with atomic_file(folder / "summary.md") as stream:
        stream.write(markdown)
    return folder / "summary.md"


def _record(run: Path) -> dict[str, Any]:
    overrides = OmegaConf.load(run / ".hydra" / "overrides.yaml")
    pairs = {}
    for item in overrides:
        key, _, value = str(item).partition("=")
        pairs[key.lstrip("+~")] = value
    metrics_file = run / "metrics.json"
    metrics = (
        json.loads(metrics_file.read_text(encoding="utf-8")) if metrics_file.is_file() else None
    )
    return {"run": run, "overrides": pairs, "metrics": metrics}


def _varying_keys(overrides: Iterable[dict[str, str]]) -> set[str]:
    """Keys whose value is not the same in every run (a key missing from a run counts as a
    value of its own)."""
    overrides = list(overrides)
    keys = {k for o in overrides for k in o}
    return {k for k in keys if len({o.get(k) for o in overrides}) > 1}


def _row(key: Sequence[str], members: list[dict[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "configuration": list(key),
        "runs": len(members),
        "seeds": [m["overrides"].get("seed") for m in members],
        "run_dirs": [str(m["run"]) for m in members],
    }
    for score in SCORES:
        values = [m["metrics"][score] for m in members if score in m["metrics"]]
        row[score] = (
            {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else None,
                "values": values,
            }
            if values
            else None
        )
    return row


def _cell(stats: dict[str, Any] | None) -> str:
    if stats is None:
        return "–"
    mean = 100 * stats["mean"]
    return f"{mean:.2f}" if stats["std"] is None else f"{mean:.2f} ± {100 * stats['std']:.2f}"


def _short(override: str) -> str:
    """``key=value`` with a long float written to 4 significant digits (the JSON keeps it)."""
    key, _, value = override.partition("=")
    try:
        number = float(value)
    except ValueError:
        return override
    return f"{key}={number:.4g}" if "." in value and len(value) > 8 else override


def _markdown(summary: dict[str, Any], folder: Path) -> str:
    lines = [
        f"# Multirun summary: {folder.name}",
        "",
        f"Scores ×100, mean ± standard deviation over the runs of each configuration (runs that "
        f"differ only in {', '.join(GROUPED_AWAY)}); best dev first. Varying: "
        f"{', '.join(f'`{k}`' for k in summary['varying']) or 'nothing'}.",
        "",
        "| configuration | runs | dev | test | run directories |",
        "|---|---|---|---|---|",
    ]
    for row in summary["configurations"]:
        name = " ".join(f"`{_short(c)}`" for c in row["configuration"]) or "(all runs)"
        dirs = ", ".join(Path(d).name for d in row["run_dirs"])
        lines.append(
            f"| {name} | {row['runs']} | {_cell(row['val/score'])} | "
            f"{_cell(row['test/score'])} | {dirs} |"
        )
    if summary["failed"]:
        lines += ["", f"Runs without metrics (failed or unfinished): "
                  f"{', '.join(Path(f).name for f in summary['failed'])}"]  # fmt: skip
    return "\n".join(lines) + "\n"
