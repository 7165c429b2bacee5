"""Lightning callbacks that make training runs reliable: exact resume, no silent NaN.

- :class:`ReseedEachEpoch` seeds every random generator at the first batch of each training epoch
  from ``(seed, epoch)`` alone, so the randomness of an epoch (shuffling, dropout, word dropout) does not
  depend on what ran before it. A run killed mid-epoch and resumed from the last epoch-end
  checkpoint therefore replays exactly what the uninterrupted run does.
- :class:`LossCheck` (the tagger's ``on_before_backward``) stops training at the first non-finite
  loss, naming the epoch, step and batch: on the CPU before its backward pass and optimiser step
  (:func:`check_loss`); on an accelerator, without a host synchronisation per step, its verdicts
  read every few steps and before any checkpoint is written. Checkpoints written before it are
  left as they are, and none holds its update.
- :class:`EpochSummary` and :class:`ProgressBar` say what happens, epochs numbered from 1
  (:func:`epoch_label`) as in ``learning_curves.png``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import OnExceptionCheckpoint, RichProgressBar
from pytorch_lightning.plugins.io import TorchCheckpointIO
from torch import Tensor

from chaincrf.atomic import atomic_file
from chaincrf.files.model_files import CHECKPOINT_KEY

__all__ = [
    "AtomicCheckpointIO",
    "EpochSummary",
    "LossCheck",
    "NonFiniteLossError",
    "ProgressBar",
    "ReseedEachEpoch",
    "check_loss",
    "epoch_label",
    "epoch_seed",
]

_SEED_MODULUS = 2**32


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of training epoch ``epoch`` of a run seeded ``seed`` (a fixed mix of the two)."""
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + 1) % _SEED_MODULUS


class ReseedEachEpoch(pl.Callback):
    """Seed Python, NumPy and torch (CPU and CUDA) at each training epoch's first batch.

    Data loader workers are seeded when the epoch's iterator is created, before this; the
    project's batches hold no randomness of their own (word dropout is in the model).

    Args:
        seed: the run's seed (``cfg.seed``).
    """

    def __init__(self, seed: int) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int; got {type(seed).__name__}: {seed!r}")
        self.seed = seed

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # At the epoch's first batch, after its data iterator exists: a resumed Lightning run
        # creates that iterator at a different moment (drawing from the generators), so seeding
        # any earlier would not give the same state. Each rank adds its rank: different dropout
        # masks per rank, as with seed_everything(workers=True).
        if batch_idx == 0:
            pl.seed_everything(
                epoch_seed(self.seed, trainer.current_epoch) + trainer.global_rank,
                workers=True,
                verbose=False,
            )


class ReplayPlateauStep(pl.Callback):
    """Exact resume with a plateau scheduler: Lightning writes an epoch-end checkpoint before it
    steps a ``ReduceLROnPlateau`` scheduler and, on resume, skips that step (it has no metric).
    This callback stores the monitored value in the checkpoint (``checkpoint["chaincrf"]
    ["monitor_value"]``) and, when training resumes, steps each epoch-interval plateau
    scheduler that missed it, with the value it would have seen: a resumed run then equals an
    uninterrupted one. ``chaincrf-train`` always adds it.
    """

    def __init__(self) -> None:
        self._value: float | None = None

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        monitor = getattr(pl_module, "hparams", {}).get("monitor", "val/score")
        value = trainer.callback_metrics.get(monitor)
        if value is not None:
            checkpoint.setdefault(CHECKPOINT_KEY, {})["monitor_value"] = float(value)

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._value = (checkpoint.get(CHECKPOINT_KEY) or {}).get("monitor_value")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value, self._value = self._value, None
        if value is None:
            return
        for config in trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if (
                config.reduce_on_plateau
                and config.interval == "epoch"
                and scheduler.last_epoch < trainer.current_epoch
            ):
                scheduler.step(value)


def epoch_label(current_epoch: int, max_epochs: int | None) -> str:
    """``"3/12"``: Lightning's 0-based ``current_epoch`` numbered from 1, out of ``max_epochs``
    (``"3"`` without a limit: ``None`` or ``-1``, a budget in steps). The one numbering of the
    epoch lines, the progress bar and the learning curves."""
    number = current_epoch + 1
    return f"{number}/{max_epochs}" if max_epochs is not None and max_epochs > 0 else f"{number}"


class ProgressBar(RichProgressBar):
    """Lightning's rich progress bar, on stderr (the console's one stream, as the log lines),
    its epochs numbered as the epoch lines (:func:`epoch_label`: ``Epoch 12/12``, not Lightning's
    ``11/11``). Off when stderr is not a terminal: a console captured into a file keeps the
    epoch lines, not the bar's last frames.

    The last step's loss it shows (the module's ``step_loss``, a tensor on the device) is read
    at most once per ``metrics_interval`` seconds while an epoch trains, and afresh at each
    epoch's and validation's end: a read copies it to the host, which on a GPU waits for the
    step to finish. (Logged with ``prog_bar=True``, Lightning would read it after every step.)

    Args:
        refresh_rate: updates per second (0: no bar).
        leave: keep each finished epoch's bar on the terminal.
        console_kwargs: ``rich.console.Console`` arguments (``stderr=True`` unless given).
        metrics_interval: seconds between two reads of the metrics during an epoch (0: after
            every batch, as Lightning's bar).
    """

    def __init__(
        self,
        refresh_rate: int = 1,
        leave: bool = False,
        console_kwargs: dict | None = None,
        metrics_interval: float = 1.0,
    ) -> None:
        console_kwargs = {"stderr": True, **(console_kwargs or {})}
        super().__init__(refresh_rate, leave, console_kwargs=console_kwargs)
        self._console_arguments = dict(console_kwargs)
        self.metrics_interval = metrics_interval
        self._metrics: dict[str, int | str | float | dict[str, float]] | None = None
        self._metrics_read = -float("inf")

    def get_metrics(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> dict[str, int | str | float | dict[str, float]]:
        """Lightning's metrics for the bar and the last step's ``loss``, as last read while that
        read is under ``metrics_interval`` seconds old."""
        now = time.monotonic()
        if self._metrics is None or now - self._metrics_read >= self.metrics_interval:
            metrics = super().get_metrics(trainer, pl_module)
            step_loss = getattr(pl_module, "step_loss", None)
            if isinstance(step_loss, Tensor):
                metrics["loss"] = float(step_loss)  # the one copy to the host
            self._metrics, self._metrics_read = metrics, now
        return self._metrics

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._metrics = None  # nothing from the sanity check or an earlier run
        super().on_train_start(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._metrics = None  # the epoch's last figures, not a second-old read
        super().on_train_epoch_end(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._metrics = None  # the new dev score
        super().on_validation_end(trainer, pl_module)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        import rich

        # rich's one console, which Lightning's parameter table (verbose=true) prints to as well
        rich.reconfigure(**self._console_arguments)
        if not (sys.stderr if self._console_arguments["stderr"] else sys.stdout).isatty():
            self.disable()

    def _get_train_description(self, current_epoch: int) -> str:  # Lightning's hook for the label
        label = f"Epoch {epoch_label(current_epoch, self.trainer.max_epochs)}"
        return f"{label:{len(self.validation_description)}}"


class EpochSummary(pl.Callback):
    """One log line per epoch, kept on the terminal and in the run's ``train.log`` (the progress
    bar is redrawn): training loss, the monitored dev score and the best so far, seconds per
    epoch, the time left for ``max_epochs`` at that pace, the epoch's training tokens per second
    (all devices) and, on a GPU, its peak memory.

    Args:
        monitor: the dev metric (``val/score``).
        mode: ``"max"`` or ``"min"``: which direction is better.
    """

    def __init__(self, monitor: str = "val/score", mode: str = "max") -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min'; got {mode!r}")
        self.monitor = monitor
        self.mode = mode
        self.best: float | None = None
        self._started: float | None = None
        self._epochs = 0
        self._epoch_start: tuple[float, int] | None = None  # (time, tokens so far)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # here, not at an epoch's start: a run resumed mid-epoch skips that epoch's start hook,
        # and the interrupted epoch still gets its line
        if self._started is None:
            self._started = time.perf_counter()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # one read of the device's token count per epoch
        self._epoch_start = (time.perf_counter(), int(getattr(pl_module, "trained_tokens", 0)))
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.fast_dev_run or self._started is None:
            return
        self._epochs += 1
        metrics = trainer.callback_metrics
        parts = [f"epoch {epoch_label(trainer.current_epoch, trainer.max_epochs)}"]
        if trainer.max_steps > 0:  # a budget in steps (budget.steps)
            parts[0] = (
                f"epoch {trainer.current_epoch + 1}, step {trainer.global_step}/{trainer.max_steps}"
            )
        if "train/loss" in metrics:
            parts.append(f"train loss {float(metrics['train/loss']):.4f}")
        if self.monitor in metrics:
            score = float(metrics[self.monitor])
            better = self.best is None or (
                score > self.best if self.mode == "max" else score < self.best
            )
            self.best = score if better else self.best
            parts.append(f"{self.monitor} {score:.4f} (best {self.best:.4f})")
        per_epoch = (time.perf_counter() - self._started) / self._epochs
        parts.append(f"{per_epoch:.0f} s/epoch")
        if trainer.max_steps > 0:
            per_step = (time.perf_counter() - self._started) / max(trainer.global_step, 1)
            left = per_step * (trainer.max_steps - trainer.global_step)
            parts.append(f"at most {left / 60:.1f} min left")
        elif trainer.max_epochs and trainer.max_epochs > 0:
            left = per_epoch * (trainer.max_epochs - trainer.current_epoch - 1)
            parts.append(f"at most {left / 60:.1f} min left")
        if self._epoch_start is not None:  # (a run resumed mid-epoch has no start: no figure)
            started, tokens = self._epoch_start
            seconds = time.perf_counter() - started  # dev evaluation included
            tokens = int(getattr(pl_module, "trained_tokens", 0)) - tokens
            if seconds > 0 and tokens > 0:  # this rank's tokens, times the ranks
                parts.append(f"{tokens * trainer.world_size / seconds:,.0f} tokens/s")
        if pl_module.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(pl_module.device) / 2**30
            parts.append(f"GPU memory {peak:.1f} GiB")
        logging.getLogger("chaincrf.train").info("  ".join(parts))


class InterruptCheckpoint(OnExceptionCheckpoint):
    """Lightning's :class:`~pytorch_lightning.callbacks.OnExceptionCheckpoint` for interrupts
    only: Ctrl-C (and SIGTERM, which ``chaincrf-train`` turns into the same interrupt) saves
    the whole training state as ``last.ckpt`` (atomically, through the trainer's checkpoint
    I/O), ready for ``ckpt_path=`` to resume; other failures leave the last saved one alone.

    Args:
        dirpath: the run's checkpoint folder.
        filename: the file's name without ``.ckpt``.
    """

    def __init__(self, dirpath: str, filename: str = "last") -> None:
        super().__init__(dirpath, filename)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, KeyboardInterrupt):
            super().on_exception(trainer, pl_module, exception)

    def teardown(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        """Keep the file (Lightning's callback deletes it at the end of a run without an
        exception; here it is the ``last.ckpt`` that ``ModelCheckpoint`` writes each epoch)."""


class NonFiniteLossError(FloatingPointError):
    """Training met a NaN or infinite loss; nothing was updated from it."""


_INTACT = (
    "Checkpoints written before it are intact (check the data, the pretrained vectors and the "
    "learning rate)"
)


def check_loss(trainer: pl.Trainer, loss: Tensor) -> None:
    """Raise :class:`NonFiniteLossError` when the training loss is NaN or infinite.

    Called before the backward pass (``SequenceTagger.on_before_backward``), so the weights
    never take a NaN step; under DDP the decision is shared by all ranks (one all-reduce of a
    flag), so no rank waits for the others. The checkpoints already written (``last.ckpt`` of
    the previous epoch, ``best.ckpt``) are left intact: resume from them with a lower learning
    rate or fixed data.
    """
    bad = not bool(torch.isfinite(loss.detach()).all())
    if trainer.world_size > 1:
        bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
    if bad:
        raise NonFiniteLossError(
            f"non-finite training loss ({_describe(loss)}) at epoch {trainer.current_epoch}, "
            f"global step {trainer.global_step} (batch {_batch_index(trainer)} of the epoch); "
            f"training stopped before this step changed any weight. {_INTACT}"
        )


class LossCheck:
    """Stops training at the first NaN or infinite training loss (the tagger's
    ``on_before_backward`` calls :meth:`step`).

    Reading a loss on the host costs nothing on the CPU, but on a GPU it waits for the step to
    finish: a synchronisation per step, which leaves the device idle while the host prepares
    the next one. So the check either reads each step's loss before its backward pass (``every``
    = 1: :func:`check_loss`, the run stops before that step changes any weight), or keeps each
    step's loss on the device and reads them together (one copy to the host) every ``every``
    steps, at each epoch's end, before each validation and before each checkpoint is written.
    Deferred, the bad step's update (and those of the steps until the read) reach the weights
    in memory but never a checkpoint, and the error still names the first bad step.

    Args:
        every: steps between reads of the losses; None (the default): 1 on the CPU,
            :attr:`DEFERRED` on an accelerator.

    Raises:
        ValueError: ``every`` is not a positive integer or None.
    """

    DEFERRED = 50  # steps between reads on an accelerator: one wait per 50 steps

    def __init__(self, every: int | None = None) -> None:
        if every is not None and (
            isinstance(every, bool) or not isinstance(every, int) or every < 1
        ):
            raise ValueError(f"nan_check_every must be a positive integer or null; got {every!r}")
        self.every = every
        self._pending: list[tuple[Tensor, tuple[int, int, Any]]] = []

    def steps_between_reads(self, device: torch.device) -> int:
        """``every``, or its default for ``device``."""
        if self.every is not None:
            return self.every
        return 1 if device.type == "cpu" else self.DEFERRED

    def step(self, trainer: pl.Trainer, loss: Tensor) -> None:
        """Check (or keep, for the next read) one training step's loss."""
        every = self.steps_between_reads(loss.device)
        if every == 1 and not self._pending:
            check_loss(trainer, loss)
            return
        where = (trainer.current_epoch, trainer.global_step, _batch_index(trainer))
        # a copy: under CUDA graphs the loss's memory is overwritten by the next replay
        self._pending.append((loss.detach().reshape(()).clone(), where))
        if len(self._pending) >= every:
            self.flush(trainer)

    def flush(self, trainer: pl.Trainer) -> None:
        """Read the kept losses (one copy to the host; under DDP one all-reduce of a flag, at
        the same step on every rank) and raise :class:`NonFiniteLossError` at a bad one."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        finite = torch.isfinite(torch.stack([loss for loss, _ in pending]).float())
        bad = here = not bool(finite.all())  # the one wait
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            return
        if not here:  # another rank's loss
            raise NonFiniteLossError(
                f"non-finite training loss on another rank within global steps "
                f"{pending[0][1][1]}-{pending[-1][1][1]}; training stopped before any checkpoint "
                f"held its update. {_INTACT}"
            )
        first = finite.tolist().index(False)
        loss, (epoch, step, batch) = pending[first]
        raise NonFiniteLossError(
            f"non-finite training loss ({_describe(loss)}) at epoch {epoch}, global step {step} "
            f"(batch {batch} of the epoch), read {len(pending) - 1 - first} step(s) later "
            f"(nan_check_every={self.steps_between_reads(loss.device)}); training stopped "
            f"before any checkpoint held its update. {_INTACT}"
        )


def _describe(loss: Tensor) -> str:
    value = loss.detach().float()
    return "nan" if bool(torch.isnan(value).any()) else str(float(value.reshape(-1)[0]))


def _batch_index(trainer: pl.Trainer) -> Any:
    loop = getattr(trainer, "fit_loop", None)
    epoch_loop = getattr(loop, "epoch_loop", None)
    progress = getattr(getattr(epoch_loop, "batch_progress", None), "current", None)
    return getattr(progress, "ready", "?")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O that never leaves a truncated checkpoint behind.

    The checkpoint is written to a temporary file in the target folder, flushed and synced to
    disk, then renamed over the target (``os.replace`` is atomic on POSIX and Windows): a process
    killed while saving leaves the previous file intact and, at most, a ``.<name>.*.tmp`` file,
    and after a power loss the renamed file holds its data (Lightning's own writer also renames
    a temporary file, through an fsspec transaction, but does not sync it first).
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike[str], storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__}.save_checkpoint takes no storage_options; got {storage_options!r}"
            )
        if "://" in str(path):  # a remote filesystem: Lightning's own writer
            super().save_checkpoint(checkpoint, path)
            return
        with atomic_file(path, binary=True) as stream:
            torch.save(checkpoint, stream)
