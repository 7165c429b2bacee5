"""``chaincrf-eval``: a checkpoint's metrics on a split — the same figures training reported.

Examples::

    chaincrf-eval ckpt_path=outputs/train/2025-01-01_12-00-00/checkpoints/best.ckpt split=test
    chaincrf-eval ckpt_path=model.ckpt split=val data=conll2003 output=metrics.json

The data config is the one saved in the checkpoint's run directory (``config.yaml``) unless
``data=<name>`` selects another; the vocabularies always come from the checkpoint, so ids map
exactly as in training. Prints the overall figures and a per-type (per-tag for POS) table.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from chaincrf.cli.common import (
    allow_targets,
    atomic_output,
    build,
    hydra_main,
    overrides,
    require,
    run_cli,
    run_config_for,
    to_plain,
)
from chaincrf.files.model_files import check_local_path
from chaincrf.spec import check_targets
from chaincrf.tagger import SequenceTagger

log = logging.getLogger("chaincrf.eval")

_SPLITS = {"val": "val", "dev": "val", "validation": "val", "test": "test"}


def data_config_for(cfg: DictConfig) -> DictConfig:
    """The ``data`` node to evaluate on: ``cfg.data`` if given, else the run's saved one."""
    if cfg.get("data") is not None:
        return cfg.data
    found = run_config_for(cfg.ckpt_path)
    if found is None or found[1].get("data") is None:
        raise ValueError(
            f"no data config: {cfg.ckpt_path} has no run directory with config.yaml beside it; "
            "select one with data=<name> (and its paths)"
        )
    path, run_cfg = found
    # A file beside a model file is data too: only the project's data module may be built from it.
    check_targets(to_plain(run_cfg.data), "data", str(path), allow_targets=allow_targets(cfg))
    return run_cfg.data


def eval_precision(chosen: str | None, trained: str | None, accelerator: str) -> Any:
    """The precision to evaluate in: ``chosen`` (``precision=``) if given, else the one the
    model was trained in, so that the figures are the run's own; float32 for model files that do
    not say. float16 autocast, which the CPU does not run, becomes float32 there, with a warning
    (the figures may then differ from the run's in the last digits)."""
    precision = str(chosen or trained or "32-true")
    precision = {"16": "16-mixed", "bf16": "bf16-mixed", "32": "32-true", "64": "64-true"}.get(
        precision, precision
    )  # Lightning's short names, as it resolves them
    import torch

    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if on_cpu and precision == "16-mixed":
        log.warning(
            "the model was trained in 16-mixed, which the CPU does not run: evaluating in "
            "32-true (pass accelerator=gpu to reproduce the run's figures)"
        )
        return "32-true"
    return precision


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Evaluate ``cfg.ckpt_path`` on ``cfg.split``; a plain function that tests call.

    Returns:
        ``{"<stage>/f1": .., "<stage>/acc": .., "<stage>/f1_PER": .., ...}`` with stage ``val``
        or ``test``.
    """
    ckpt = check_local_path(
        require(cfg, "ckpt_path", "pass ckpt_path=<path to a .ckpt>"), "ckpt_path"
    )
    split = str(cfg.get("split", "test"))
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {sorted(_SPLITS)}; got {split!r}")
    stage = _SPLITS[split]
    tagger = SequenceTagger.load(ckpt, allow_targets=allow_targets(cfg))
    data_cfg = data_config_for(cfg)
    overrides = to_plain(cfg.get("data_overrides")) or {}
    # The checkpoint's vocabularies, not ones rebuilt from the data: ids map as in training.
    node = OmegaConf.merge(data_cfg, overrides)
    datamodule = build(node, "data", sentence_encoder=tagger.sentence_encoder)
    datamodule.setup(stage)
    accelerator = str(cfg.get("accelerator", "cpu"))
    trainer = pl.Trainer(
        accelerator=accelerator,
        precision=eval_precision(cfg.get("precision"), tagger.trained_precision, accelerator),
        devices=1,
        logger=False,
        enable_progress_bar=bool(cfg.get("progress_bar", False)),
        enable_model_summary=False,
    )
    if stage == "val":
        trainer.validate(tagger, datamodule=datamodule, verbose=False)
    else:
        trainer.test(tagger, datamodule=datamodule, verbose=False)
    results = dict(tagger.results[stage])
    if cfg.get("output"):
        with atomic_output(cfg.output) as stream:
            json.dump(
                {"checkpoint": str(ckpt), "split": split, **results},
                stream,
                indent=2,
                sort_keys=True,
            )
    if cfg.get("report"):
        _write_card(cfg, ckpt, tagger, datamodule, split, stage, results)
    print_table(tagger, results, stage)
    return results


def _write_card(
    cfg: DictConfig,
    ckpt: Any,
    tagger: SequenceTagger,
    datamodule: Any,
    split: str,
    stage: str,
    results: dict[str, Any],
) -> None:
    """``cfg.report``: the evaluation's model card (``report.md``, as training writes one, for
    this split) and its plots, in that folder."""
    from chaincrf.data.download import sha256_of
    from chaincrf.training.provenance import card
    from chaincrf.training.report import write_report

    command = ["chaincrf-eval", *overrides()]
    details = {
        "checkpoint": f"`{ckpt}` (sha256 {sha256_of(ckpt)})"
        if Path(ckpt).is_file()
        else f"`{ckpt}`"
    }
    details.update(card(tagger, command, {split: datamodule.resolve(split)}))
    path = write_report(
        cfg.report,
        tagger,
        results={stage: results},
        confusion={stage: tagger.confusion[stage]} if stage in tagger.confusion else None,
        details=details,
        title=f"chaincrf evaluation report: {split}",
    )
    log.info("report: %s", path)


def print_table(tagger: SequenceTagger, results: dict[str, Any], stage: str) -> None:
    """Print the overall figures and a per-type table with rich."""
    from rich.console import Console
    from rich.table import Table

    from chaincrf.training.report import per_tag_scores

    console = Console()
    overall = Table(title=f"chaincrf-eval: {stage}")
    for column in ("metric", "value"):
        overall.add_column(column)
    for key in ("acc", "precision", "recall", "f1", "support"):
        value = results.get(f"{stage}/{key}")
        if value is not None:
            overall.add_row(key, f"{value:.0f}" if key == "support" else f"{100 * value:.2f}")
    console.print(overall)
    if tagger.tags.is_span_task:
        rows = {
            t: {
                m: results.get(f"{stage}/{m}_{t}") for m in ("precision", "recall", "f1", "support")
            }
            for t in tagger.tags.entity_types
        }
        what = "type"
    else:
        confusion = tagger.confusion.get(stage)
        rows = per_tag_scores(confusion, tagger.labels) if confusion is not None else {}
        what = "tag"
    if not rows:
        return
    table = Table(title=f"per {what}")
    for column in (what, "precision", "recall", "F1", "support"):
        table.add_column(column, justify="left" if column == what else "right")
    for name, row in rows.items():
        cells = [
            f"{100 * row[m]:.2f}" if row.get(m) is not None else "–"
            for m in ("precision", "recall", "f1")
        ]
        support = row.get("support")
        table.add_row(name, *cells, "–" if support is None else f"{support:.0f}")
    console.print(table)


@hydra_main("eval")
def main(cfg: DictConfig) -> None:
    """Entry point of ``chaincrf-eval``."""
    run_cli(evaluate, cfg)


if __name__ == "__main__":
    main()
