"""End-of-training report: a Markdown summary and PNG plots in the run directory.

:func:`write_report` writes

- ``report.md``: overall dev/test figures, a per-type (per-tag for POS) table, the plots;
- ``learning_curves.png``: training/dev loss and the dev score per epoch, read from the CSV logger;
- ``transitions.png``: the learned CRF transition matrix as a labelled heatmap (forbidden moves
  greyed out), the part of a CRF one can read;
- ``per_type_f1.png``: F1 per span type (NER, chunking) or per tag (POS), dev and test;
- ``confusion.png``: the test (else dev) confusion matrix over the labels as scored (the
  corpus's own scheme for spans), normalised per gold label.

Plots use matplotlib's object API with the Agg canvas: no pyplot, no global backend switch.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

from chaincrf.atomic import atomic_file

__all__ = ["per_tag_scores", "read_metrics_csv", "save", "write_report"]

log = logging.getLogger(__name__)


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(figure)
    return figure


def save(figure: Any, path: Path) -> None:
    """Write ``figure`` as a PNG at ``path`` atomically (a temporary file, renamed when
    complete): a full disk leaves the old file or none, never a truncated one.

    Raises:
        OSError: ``cannot write <path>: <reason>``, the temporary file removed.
    """
    try:
        with atomic_file(path, binary=True) as stream:
            figure.savefig(stream, format="png")
    except OSError as error:
        raise OSError(f"cannot write {path}: {error.strerror or error}") from None


def read_metrics_csv(path: str | Path) -> dict[str, list[tuple[float, float]]]:
    """Read a Lightning ``CSVLogger`` ``metrics.csv`` into per-metric ``(epoch, value)`` series.

    Args:
        path: the ``metrics.csv`` file.

    Returns:
        ``{"train/loss": [(epoch, value), ...], "val/score": [...], ...}``; empty cells skipped.
    """
    series: dict[str, list[tuple[float, float]]] = {}
    with open(path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            epoch = row.get("epoch") or ""
            if epoch == "":
                continue
            for key, value in row.items():
                if key in ("epoch", "step") or value in ("", None):
                    continue
                try:
                    series.setdefault(key, []).append((float(epoch), float(value)))
                except ValueError:
                    continue
    return series


def per_tag_scores(confusion: Tensor, labels: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per-tag precision, recall, F1 and support from a confusion matrix.

    Args:
        confusion: long tensor (K, K), ``confusion[gold, predicted]`` token counts.
        labels: the K tag names.

    Returns:
        ``{tag: {"precision": p, "recall": r, "f1": f, "support": n}}`` for tags seen in gold or
        predictions.
    """
    confusion = confusion.double()
    true_pos = confusion.diag()
    gold = confusion.sum(1)
    pred = confusion.sum(0)
    scores = {}
    for k, label in enumerate(labels):
        if gold[k] == 0 and pred[k] == 0:
            continue
        p = float(true_pos[k] / pred[k]) if pred[k] > 0 else 0.0
        r = float(true_pos[k] / gold[k]) if gold[k] > 0 else 0.0
        f = 2 * p * r / (p + r) if p + r > 0 else 0.0
        scores[label] = {"precision": p, "recall": r, "f1": f, "support": float(gold[k])}
    return scores


def _per_type(results: Mapping[str, float], stage: str) -> dict[str, dict[str, float]]:
    """``{"val/f1_PER": ..}`` -> ``{"PER": {"f1": ..}}`` for one stage."""
    table: dict[str, dict[str, float]] = {}
    prefix = f"{stage}/"
    for key, value in results.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        for metric in ("precision", "recall", "f1", "support"):
            if name.startswith(metric + "_"):
                table.setdefault(name[len(metric) + 1 :], {})[metric] = value
    return table


def learning_curves(
    series: Mapping[str, list[tuple[float, float]]],
) -> tuple[dict[str, list[tuple[float, float]]], float | None]:
    """The learning curves to draw: ``train/loss``, ``val/loss`` and ``val/score`` per epoch
    trained, and the test score apart (None without one).

    The epochs are numbered from 1, as the console's epoch lines (``epoch 12/12``), not as
    Lightning logs them (from 0). The re-validation of the best checkpoint after training and the
    test are logged at the epoch after the last one trained: they are not points of the curves.
    """
    trained = max((x for x, _ in series.get("train/loss", [])), default=math.inf)
    curves = {
        key: [(x + 1, y) for x, y in series[key] if x <= trained]
        for key in ("train/loss", "val/loss", "val/score")
        if key in series
    }
    test = series["test/score"][-1][1] if series.get("test/score") else None
    return {k: v for k, v in curves.items() if v}, test


def _plot_learning_curves(
    series: Mapping[str, list[tuple[float, float]]], path: Path, score_name: str
) -> bool:
    curves, test = learning_curves(series)
    if not curves:
        return False
    from matplotlib.ticker import MaxNLocator

    figure = _figure(10, 4)
    left, right = figure.subplots(1, 2)
    for key in ("train/loss", "val/loss"):
        if key in curves:
            xs, ys = zip(*curves[key])
            left.plot(xs, ys, marker="o", label=key)
    left.set_xlabel("epoch")
    left.set_ylabel("loss (per token)")
    left.set_title("Loss")
    if "val/score" in curves:
        xs, ys = zip(*curves["val/score"])
        right.plot(xs, [100 * y for y in ys], marker="o", label="dev, each epoch")
    if test is not None:  # one figure, of the best checkpoint: a line apart from the curve
        right.axhline(
            100 * test,
            linestyle="--",
            color="grey",
            label=f"test, best checkpoint: {100 * test:.2f}",
        )
    for axis in (left, right):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
        axis.legend()
    right.set_xlabel("epoch")
    right.set_ylabel(f"{score_name} (%)")
    right.set_title(f"Dev {score_name}")
    figure.tight_layout()
    save(figure, path)
    return True


def _plot_transitions(
    transitions: Tensor, allowed: Tensor | None, labels: Sequence[str], path: Path
) -> None:
    import numpy as np

    K = len(labels)
    values = transitions.detach().float().cpu().numpy()
    masked = np.ma.masked_array(
        values, mask=~allowed.cpu().numpy() if allowed is not None else None
    )
    size = max(5.0, 0.35 * K + 2)
    figure = _figure(size + 1, size)
    axes = figure.subplots()
    from matplotlib import colormaps

    cmap = colormaps["RdBu_r"].with_extremes(bad="#bbbbbb")
    limit = float(np.abs(values).max()) or 1.0
    image = axes.imshow(masked, cmap=cmap, vmin=-limit, vmax=limit)
    axes.set_xticks(range(K), labels, rotation=90, fontsize=7 if K > 20 else 9)
    axes.set_yticks(range(K), labels, fontsize=7 if K > 20 else 9)
    axes.set_xlabel("to tag")
    axes.set_ylabel("from tag")
    axes.set_title("Learned transition scores [from, to] (grey: forbidden)")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    figure.tight_layout()
    save(figure, path)


def _plot_per_type(
    tables: Mapping[str, Mapping[str, Mapping[str, float]]], path: Path, what: str
) -> bool:
    names = sorted({name for table in tables.values() for name in table})
    if not names:
        return False
    figure = _figure(max(6.0, 0.45 * len(names) * len(tables) + 2), 4)
    axes = figure.subplots()
    width = 0.8 / max(len(tables), 1)
    for i, (stage, table) in enumerate(tables.items()):
        xs = [j + i * width for j in range(len(names))]
        ys = [100 * table.get(name, {}).get("f1", 0.0) for name in names]
        bars = axes.bar(xs, ys, width=width, label=stage)
        axes.bar_label(bars, fmt="%.1f", fontsize=7)
    axes.set_xticks(
        [j + width * (len(tables) - 1) / 2 for j in range(len(names))],
        names,
        rotation=45,
        ha="right",
    )
    axes.set_ylabel("F1 (%)")
    axes.set_ylim(0, 105)
    axes.set_title(f"F1 per {what}")
    axes.legend()
    figure.tight_layout()
    save(figure, path)
    return True


def _plot_confusion(confusion: Tensor, labels: Sequence[str], path: Path, stage: str) -> None:
    counts = confusion.double()
    K = len(labels)
    rates = (counts / counts.sum(1, keepdim=True).clamp(min=1)).numpy()
    size = max(5.0, 0.35 * K + 2)
    figure = _figure(size + 1, size)
    axes = figure.subplots()
    image = axes.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(K), labels, rotation=90, fontsize=7 if K > 20 else 9)
    axes.set_yticks(range(K), labels, fontsize=7 if K > 20 else 9)
    axes.set_xlabel("predicted tag")
    axes.set_ylabel("gold tag")
    axes.set_title(f"Confusion matrix ({stage}), rows normalised")
    if K <= 20:
        for g in range(K):
            for p in range(K):
                if counts[g, p] > 0:
                    axes.text(
                        p,
                        g,
                        f"{int(counts[g, p])}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if rates[g, p] > 0.5 else "black",
                    )
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    figure.tight_layout()
    save(figure, path)


def _pct(value: float | None) -> str:
    return (
        "–"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{100 * value:.2f}"
    )


def write_report(
    run_dir: str | Path,
    tagger: Any,
    results: Mapping[str, Mapping[str, float]],
    confusion: Mapping[str, Tensor] | None = None,
    metrics_csv: str | Path | None = None,
    details: Mapping[str, Any] | None = None,
    title: str = "chaincrf training report",
) -> Path:
    """Write ``report.md`` and the PNG plots into ``run_dir``.

    Args:
        run_dir: the run's output directory.
        tagger: the trained :class:`chaincrf.tagger.SequenceTagger` (labels, transitions).
        results: ``{"val": {"val/f1": .., ...}, "test": {...}}`` as the tagger's ``results``.
        confusion: ``{"val": (K, K) long, "test": (K, K) long}`` gold-by-predicted token counts
            over the tagger's ``tags.original_labels`` (the corpus's own labels for spans).
        metrics_csv: the CSV logger's ``metrics.csv`` for the learning curves, if any.
        details: extra lines for the header (command, wall time, data, ...).
        title: the report's heading.

    Returns:
        The path of ``report.md``.

    Raises:
        OSError: ``cannot write <file>: <reason>`` (a full disk, say): every file is written
            atomically, so none is left truncated or empty.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    confusion = dict(confusion or {})
    span_task = tagger.tags.is_span_task
    score_name = "span F1" if span_task else "accuracy"
    lines = [f"# {title}", ""]
    for key, value in (details or {}).items():
        lines.append(f"- **{key}**: {value}")
    hp = getattr(tagger, "hparams", {})
    encoder = hp.get("encoder", {}).get("_target_", "?") if hp else "?"
    lines += [
        f"- **task**: {'spans (' + str(tagger.tags.original) + ', trained as ' + str(tagger.tags.scheme) + ')' if span_task else 'tags'}",
        f"- **model**: {encoder.rsplit('.', 1)[-1]} + {'CRF' if hp.get('use_crf', True) else 'softmax'}"
        f" ({sum(p.numel() for p in tagger.parameters()):,} parameters), {len(tagger.labels)} tags",
        "",
        "## Overall",
        "",
    ]
    stages = [s for s in ("val", "test") if s in results]
    header = ["split", "accuracy"] + (["precision", "recall", "F1"] if span_task else [])
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for stage in stages:
        r = results[stage]
        row = [{"val": "dev", "test": "test"}[stage], _pct(r.get(f"{stage}/acc"))]
        if span_task:
            row += [_pct(r.get(f"{stage}/{m}")) for m in ("precision", "recall", "f1")]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")

    tables: dict[str, dict[str, dict[str, float]]] = {}
    for stage in stages:
        if span_task:
            table = _per_type(results[stage], stage)
        elif stage in confusion:
            table = per_tag_scores(confusion[stage], tagger.labels)
        else:
            table = {}
        if table:
            tables[{"val": "dev", "test": "test"}[stage]] = table
    what = "type" if span_task else "tag"
    if tables:
        lines += [f"## Per {what}", ""]
        names = sorted({n for t in tables.values() for n in t})
        header = [what] + [f"{split} {m}" for split in tables for m in ("P", "R", "F1")]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for name in names:
            row = [name]
            for table in tables.values():
                entry = table.get(name, {})
                row += [_pct(entry.get(m)) for m in ("precision", "recall", "f1")]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")

    lines += ["## Plots", ""]
    series = None
    if metrics_csv is not None and Path(metrics_csv).is_file():
        try:
            series = read_metrics_csv(metrics_csv)
        except (OSError, ValueError) as error:
            log.warning("could not plot learning curves from %s: %s", metrics_csv, error)
    if series is not None and _plot_learning_curves(
        series, run_dir / "learning_curves.png", score_name
    ):
        lines += ["![learning curves](learning_curves.png)", ""]
    crf = getattr(getattr(tagger, "model", None), "crf", None)
    if crf is not None:
        allowed = crf.transitions_allowed if getattr(crf, "has_constraints", False) else None
        _plot_transitions(crf.transitions, allowed, tagger.labels, run_dir / "transitions.png")
        lines += ["![transition matrix](transitions.png)", ""]
    if tables and _plot_per_type(tables, run_dir / "per_type_f1.png", what):
        lines += ["![per-type F1](per_type_f1.png)", ""]
    for stage in ("test", "val"):
        if stage in confusion:
            _plot_confusion(
                confusion[stage],
                tagger.tags.original_labels,
                run_dir / "confusion.png",
                {"val": "dev", "test": "test"}[stage],
            )
            lines += ["![confusion matrix](confusion.png)", ""]
            break
    path = run_dir / "report.md"
    try:
        with atomic_file(path) as stream:
            stream.write("\n".join(lines))
    except OSError as error:
        raise OSError(f"cannot write {path}: {error.strerror or error}") from None
    return path
