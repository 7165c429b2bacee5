"""Faults to inject into training runs, as Lightning callbacks a config can add
(``+callbacks.kill._target_=fault_injection.KillAtStep +callbacks.kill.step=14``; the tests put
this folder on ``PYTHONPATH`` for subprocesses). Used by the reliability tests and
``scripts/reliability.py``; not part of the package."""

from __future__ import annotations

import os
import signal

import pytorch_lightning as pl
import torch


class KillAtStep(pl.Callback):
    """SIGKILL the process when training reaches global step ``step`` (mid-epoch)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class PoisonAtEpoch(pl.Callback):
    """Set the output projection's weights to NaN when epoch ``epoch`` starts."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            with torch.no_grad():
                pl_module.model.projection.weight.fill_(float("nan"))


class InterruptAtStep(pl.Callback):
    """Ctrl-C (SIGINT to this process) when training reaches global step ``step`` (mid-epoch), in
    a run that is not itself a resume (so that the resumed run goes on past that step)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step and trainer.ckpt_path is None:
            os.kill(os.getpid(), signal.SIGINT)


class FullDiskAfterFit(pl.Callback):
    """A full disk once training has ended (the checkpoints are written): every file the process
    writes afterwards fails past ``limit`` bytes with ``OSError: [Errno 27] File too large``
    (``RLIMIT_FSIZE``, with ``SIGXFSZ`` ignored; no root needed)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def on_fit_end(self, trainer, pl_module) -> None:
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, resource.RLIM_INFINITY))


class NoHostSync(pl.Callback):
    """Not a fault, a probe (issue 30): the training batches from global step ``after`` on run
    under ``torch.cuda.set_sync_debug_mode("error")``, so that any host synchronisation in a
    step (an ``.item()``, a blocking copy, a read of a flag) raises there. ``checked`` counts
    the steps it watched (a class attribute: Hydra builds the instance)."""

    checked = 0

    def __init__(self, after: int = 2) -> None:
        self.after = after

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step >= self.after:  # after the first steps' compilation
            torch.cuda.set_sync_debug_mode("error")
            type(self).checked += 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        torch.cuda.set_sync_debug_mode("default")
