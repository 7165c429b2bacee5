"""``chaincrf-train``: train a tagger from the Hydra configs in ``conf/``.

Examples::

    chaincrf-train                                   # BiLSTM-CRF on UD English-EWT UPOS
    chaincrf-train experiment=conll2003_ner          # CoNLL-2003 NER, BIOES, char CNN
    chaincrf-train experiment=conll2003_ner head=softmax seed=2
    chaincrf-train debug=fast_dev_run encoder=cnn

Each run writes into its own directory (``outputs/<task_name>/<date>_<time>/`` by default):
``config.yaml`` (the resolved config), ``.hydra/``, ``encoder.json`` (vocabularies), ``checkpoints/best.ckpt`` and
``last.ckpt``, ``csv/metrics.csv``, ``metrics.json``, ``report.md`` and the PNG plots.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.trainer.states import TrainerStatus

from chaincrf.atomic import atomic_file
from chaincrf.cli.budget import apply_batch_scale, budget_arguments
from chaincrf.cli.common import (
    build,
    hydra_main,
    overrides,
    require,
    run_cli,
    to_plain,
)
from chaincrf.cli.console import data_summary
from chaincrf.cli.launch import launch_rank, shared_run_dir
from chaincrf.cli.run_folder import (
    absolute_data_paths,
    end_of_run_files,
    guarded,
    hydra_record_after_setup,
    naming,
    prepend_metrics,
    resume_command,
    start_folder,
    user_config_dirs,
    write_config,
    write_hydra_record,
)
from chaincrf.files.model_files import check_local_path
from chaincrf.tagger import SequenceTagger
from chaincrf.training.callbacks import (
    AtomicCheckpointIO,
    LossCheck,
    ProgressBar,
    ReplayPlateauStep,
    ReseedEachEpoch,
)

log = logging.getLogger("chaincrf.train")

_REQUIRED_GROUPS = {
    "data": "data",
    "embeddings": "embeddings",
    "encoder": "encoder",
    "model.use_crf": "head",
    "optimizer": "optimizer",
    "trainer": "trainer",
}
"""A key every training config has -> the config group that sets it."""


def build_datamodule(data_cfg: DictConfig) -> Any:
    """Instantiate the data module of a ``data`` config node and set it up for fitting."""
    datamodule = build(data_cfg, "data")
    datamodule.setup("fit")
    return datamodule


def build_tagger(cfg: DictConfig, datamodule: Any) -> SequenceTagger:
    """The tagger of a training config, sized from a set-up data module."""
    # the model node's keys (conf/train.yaml's model, and head/ for the output head) are
    # SequenceTagger's arguments: one source of defaults
    return SequenceTagger.from_datamodule(
        datamodule,
        embeddings=to_plain(cfg.embeddings),
        encoder=to_plain(cfg.encoder),
        optimizer=to_plain(cfg.optimizer),
        scheduler=to_plain(cfg.get("scheduler")),
        monitor=str(cfg.monitor),
        **to_plain(cfg.model),
    )


def _instantiate_all(node: DictConfig | None) -> list[Any]:
    if not node:
        return []
    return [
        build(item, name) for name, item in node.items() if item is not None and "_target_" in item
    ]


def check_config(cfg: DictConfig) -> None:
    """Fail early, naming the key, for a config that cannot train."""
    for key, group in _REQUIRED_GROUPS.items():
        if OmegaConf.select(cfg, key, default=None, throw_on_missing=False) is None:
            raise ValueError(
                f"config group {group!r} is missing: select one, e.g. `{group}=<name>`"
            )
    require(cfg, "run_dir", "the output directory of the run (set by Hydra, or run_dir=<path>)")
    if cfg.get("monitor_mode", "max") not in ("max", "min"):
        raise ValueError(f"monitor_mode must be 'max' or 'min'; got {cfg.monitor_mode!r}")


def train(cfg: DictConfig) -> dict[str, float]:
    """Train (and test) a tagger as ``cfg`` says; a plain function that tests call.

    Args:
        cfg: the composed config (``conf/train.yaml`` plus overrides); ``cfg.run_dir`` is where
            everything is written.

    Until training starts nothing is written into the run directory: a run that fails before
    (a resume with a wrong data root, say) leaves an existing folder exactly as it was, and
    removes a folder it created (:func:`chaincrf.cli.run_folder.guarded`). The data paths are
    made absolute (from the folder the command started in) before ``config.yaml`` is written.

    Returns:
        The final metrics: ``val/*`` of the best checkpoint, ``test/*`` when ``cfg.test``, plus
        ``best_model_path`` is logged.
    """
    check_config(cfg)
    scaled = apply_batch_scale(cfg)
    started = time.perf_counter()
    run_dir = Path(cfg.run_dir).resolve()
    absolute_data_paths(cfg.data, start_folder())
    resume = cfg.get("ckpt_path")
    if resume is not None:
        resume = str(check_local_path(resume, "ckpt_path"))
    # Under torchrun or SLURM every rank runs this function in the one run directory (see
    # chaincrf.cli.launch): rank 0 alone writes its files (Lightning's loggers and checkpoints
    # are rank 0's already).
    writer = launch_rank()[0] == 0
    if not writer:  # one train.log: other ranks log to their console (as chaincrf.cli.launch)
        for handler in logging.getLogger().handlers[:]:
            if isinstance(handler, logging.FileHandler):
                logging.getLogger().removeHandler(handler)
    with guarded(run_dir) if writer else contextlib.nullcontext():
        log.info("run directory: %s", run_dir)
        if scaled:
            log.info("%s", scaled)
        if cfg.get("threads"):
            torch.set_num_threads(int(cfg.threads))
        if cfg.get("seed") is not None:
            pl.seed_everything(int(cfg.seed), workers=True)

        datamodule = build_datamodule(cfg.data)
        log.info("data: %s", data_summary(datamodule))
        tagger = build_tagger(cfg, datamodule)
        if cfg.get("compile"):
            tagger.compile_training(cfg.get("compile_mode"))
        tagger.loss_check = LossCheck(cfg.get("nan_check_every"))
        total = sum(p.numel() for p in tagger.parameters())
        trainable = sum(p.numel() for p in tagger.parameters() if p.requires_grad)
        log.info("model: %s parameters, %s trainable", f"{total:,}", f"{trainable:,}")

        callbacks = _instantiate_all(cfg.get("callbacks"))
        if cfg.trainer.get("enable_progress_bar", True) is False:
            # trainer.enable_progress_bar=false (e.g. logging to a file) wins over callbacks' bar.
            callbacks = [c for c in callbacks if not isinstance(c, pl.callbacks.ProgressBar)]
        elif not any(isinstance(c, pl.callbacks.ProgressBar) for c in callbacks):
            # chaincrf's bar rather than Lightning's default (stdout, epochs from 0)
            callbacks.append(ProgressBar())
        if cfg.get("seed") is not None:
            callbacks.append(ReseedEachEpoch(int(cfg.seed)))
        callbacks.append(ReplayPlateauStep())  # exact resume with a plateau scheduler
        loggers = _instantiate_all(cfg.get("logger"))
        plugins = {} if cfg.trainer.get("plugins") else {"plugins": [AtomicCheckpointIO()]}
        # Lightning's parameter table: only with verbose=true (the "model:" line above says it)
        summary = bool(cfg.trainer.get("enable_model_summary", True) and cfg.get("verbose"))
        trainer: pl.Trainer = build(
            cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False, **plugins,
            enable_model_summary=summary, **budget_arguments(cfg, datamodule),
        )  # fmt: skip
        if writer:  # the set-up has succeeded: the run's own files, each written atomically
            run_dir.mkdir(parents=True, exist_ok=True)
            write_config(run_dir, cfg)
            with naming(run_dir / "encoder.json"):
                datamodule.save_vocabs(run_dir)
            write_hydra_record(run_dir, cfg)

    metrics: dict[str, float] = {"setup_seconds": time.perf_counter() - started}
    fit_started = time.perf_counter()
    if cfg.get("train", True):
        metrics_csv = run_dir / "csv" / "metrics.csv"
        earlier = (
            metrics_csv.read_text(encoding="utf-8") if resume and metrics_csv.is_file() else None
        )
        try:
            with _sigterm_as_interrupt() as received:
                trainer.fit(tagger, datamodule=datamodule, ckpt_path=resume, weights_only=True)
        except SystemExit:
            if trainer.state.status != TrainerStatus.INTERRUPTED:
                raise
            _report_interrupt(cfg, run_dir, received)
        finally:
            if earlier is not None:
                prepend_metrics(metrics_csv, earlier)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1})
    trained_tokens = int(tagger.trained_tokens)  # the one read of the device's count
    if trainer.world_size > 1:  # every rank's tokens (Lightning's reduce over the ranks)
        count = torch.tensor(trained_tokens, device=trainer.strategy.root_device)  # NCCL: on GPU
        trained_tokens = int(trainer.strategy.reduce(count, reduce_op="sum"))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # torchrun/SLURM ranks keep their process group after fit: the final dev/test pass runs
        # in rank 0 alone (exact corpus counts, no shard padding), and its metrics must not
        # wait for ranks that have finished.
        torch.distributed.destroy_process_group()
    best = _best_checkpoint(trainer)
    fit_seconds = time.perf_counter() - fit_started
    metrics["fit_seconds"] = fit_seconds
    if fit_seconds > 0 and trained_tokens > 0 and not cfg.trainer.get("fast_dev_run"):
        # Real training tokens per second of fit, dev evaluation and checkpointing included
        # (all ranks together).
        metrics["train_tokens_per_s"] = trained_tokens / fit_seconds
    if not trainer.is_global_zero:
        return metrics
    if best is not None:
        log.info("best checkpoint: %s", best)
    eval_trainer = _single_device_trainer(cfg) if trainer.world_size > 1 else trainer
    # With weight averaging (averaging=ema) best.ckpt's state_dict holds the averaged weights, the
    # ones dev scored; the callback would load the raw training weights stored beside them
    # (`current_model_state`, for resuming) and test those. Without it, validate/test load
    # exactly what chaincrf-eval and SequenceTagger.load read.
    eval_trainer.callbacks = [
        c for c in eval_trainer.callbacks if not isinstance(c, pl.callbacks.WeightAveraging)
    ]
    if best is not None or not cfg.get("train", True):
        # Dev figures of the best checkpoint: exactly what chaincrf-eval reproduces.
        eval_trainer.validate(
            tagger, datamodule=datamodule, ckpt_path=best, verbose=False, weights_only=True
        )
        metrics.update(tagger.results.get("val", {}))
    run_test = bool(cfg.get("test", True))
    if run_test and not cfg.data.get("test"):
        log.warning("no test file (data.test is null): the test is skipped (test=false to say so)")
        run_test = False
    if run_test:
        test_started = time.perf_counter()
        eval_trainer.test(
            tagger, datamodule=datamodule, ckpt_path=best, verbose=False, weights_only=True
        )
        test_seconds = time.perf_counter() - test_started
        metrics.update(tagger.results.get("test", {}))
        if "test" in datamodule.datasets and not cfg.trainer.get("fast_dev_run"):
            # Test tokens per second of trainer.test (checkpoint loading included).
            metrics["test_tokens_per_s"] = sum(datamodule.datasets["test"].lengths) / test_seconds
    metrics_json = run_dir / "metrics.json"
    with end_of_run_files(metrics_json, best or run_dir), atomic_file(metrics_json) as stream:
        stream.write(json.dumps({"best_model_path": best, **metrics}, indent=2, sort_keys=True))
    if cfg.get("report", True):
        from chaincrf.training.report import write_report

        details = {
            "run directory": str(run_dir),
            "best checkpoint": best,
            "wall time": f"fit {fit_seconds / 60:.1f} min ({fit_seconds:.0f} s), data set-up "
            f"{metrics['setup_seconds']:.0f} s",
            "epochs": trainer.current_epoch,
        }
        for key, label in (("train_tokens_per_s", "training"), ("test_tokens_per_s", "test")):
            if key in metrics:
                details[f"{label} tokens/s"] = f"{metrics[key]:,.0f}"
        from chaincrf.training.provenance import card

        files = {split: datamodule.resolve(split) for split in ("train", "dev", "test")}
        details.update(card(tagger, ["chaincrf-train", *overrides()], files, cfg.get("seed")))
        with end_of_run_files(run_dir / "report.md", best or run_dir):
            path = write_report(
                run_dir,
                tagger,
                results={k: v for k, v in tagger.results.items() if k in ("val", "test")},
                confusion=tagger.confusion,
                metrics_csv=_metrics_csv(run_dir),
                details=details,
            )
        log.info("report: %s", path)
    scores = [f"{k} {metrics[k]:.4f}" for k in ("val/score", "test/score") if k in metrics]
    if scores:
        log.info("done in %.1f min: %s%s", (time.perf_counter() - started) / 60,
                 ", ".join(scores), f"; model {best}" if best else "")  # fmt: skip
    return metrics


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[list[str]]:
    """SIGTERM (a scheduler's or ``kill``'s stop) raises ``KeyboardInterrupt`` like Ctrl-C, so
    that Lightning's interrupt path runs (``InterruptCheckpoint`` saves ``last.ckpt``); yields
    a list that gets the name of the signal received."""
    received: list[str] = []

    def handler(signum: int, frame: Any) -> None:
        received.append(signal.Signals(signum).name)
        raise KeyboardInterrupt(signal.Signals(signum).name)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield received
        return
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


def _report_interrupt(cfg: DictConfig, run_dir: Path, received: list[str]) -> None:
    """Say where the state is and how to resume (a command complete enough for a fresh shell in
    any folder), then exit with 130 (Ctrl-C) or 143 (SIGTERM)."""
    last = run_dir / "checkpoints" / "last.ckpt"
    command = resume_command(cfg.data, overrides(), last, run_dir, user_config_dirs())
    if last.is_file():
        log.warning("interrupted: the training state is in %s; resume with:\n  %s", last, command)
    else:
        log.warning("interrupted before a checkpoint was written (%s)", last)
    raise SystemExit(143 if received else 130)


def _best_checkpoint(trainer: pl.Trainer) -> str | None:
    callback = trainer.checkpoint_callback
    if callback is None:
        return None
    path = getattr(callback, "best_model_path", "") or getattr(callback, "last_model_path", "")
    return path or None


def _single_device_trainer(cfg: DictConfig) -> pl.Trainer:
    """A one-process trainer for the final dev/test pass after multi-process training."""
    return pl.Trainer(
        accelerator=cfg.trainer.get("accelerator", "cpu"),
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=cfg.run_dir,
    )


def _metrics_csv(run_dir: Path) -> Path | None:
    found = sorted(run_dir.glob("csv/**/metrics.csv"))
    return found[-1] if found else None


def resume_in_place(argv: list[str]) -> list[str]:
    """``ckpt_path=<run>/checkpoints/<name>.ckpt`` of a run folder (one with its ``config.yaml``
    or Hydra's ``.hydra/``) resumes in that folder: ``hydra.run.dir=<run>`` is added, unless the
    command line sets the folder or is a multirun. Its logs are appended to, its metrics
    continued, its config and report written anew — once the set-up has succeeded: Hydra is told
    not to rewrite ``.hydra/`` (``hydra.output_subdir=null``; :func:`train` writes it then)."""
    if any(a.startswith(("hydra.run.dir=", "-m", "--multirun")) for a in argv):
        return argv
    for argument in argv:
        if argument.startswith(("ckpt_path=", "+ckpt_path=")):
            path = Path(argument.split("=", 1)[1]).expanduser()
            run = path.parent.parent
            if path.parent.name == "checkpoints" and (
                (run / "config.yaml").is_file() or (run / ".hydra").is_dir()
            ):
                extra = [f"hydra.run.dir={run.resolve()}"]
                if not any(a.startswith("hydra.output_subdir=") for a in argv):
                    extra.append("hydra.output_subdir=null")
                return [*argv, *extra]
    return argv


def _argv_hook(argv: list[str]) -> list[str]:
    """Resume in the checkpoint's run folder; one run folder for all ranks of a launch; Hydra's
    record written once the set-up has succeeded."""
    return hydra_record_after_setup(shared_run_dir(resume_in_place(argv)))


@hydra_main("train", argv_hook=_argv_hook)
def main(cfg: DictConfig) -> float | None:
    """Entry point of ``chaincrf-train``; returns the monitored score (for Hydra sweepers)."""
    metrics = run_cli(train, cfg)
    score = metrics.get(str(cfg.get("monitor", "val/score")))
    if score is not None:
        log.info("%s = %.4f", cfg.monitor, score)
    return score


if __name__ == "__main__":
    main()
