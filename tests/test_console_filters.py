"""The console's filters (:func:`chaincrf.cli.console.quiet_third_party`) hide what the libraries
say about themselves, at their own loggers and by their own messages, and nothing else; the
progress bar numbers epochs as the epoch lines do. In-process and fast; the commands' whole
consoles are checked in tests/test_console.py."""

from __future__ import annotations

import logging
import warnings

import pytorch_lightning as pl
import torch

from chaincrf.cli.console import quiet_third_party
from chaincrf.training.callbacks import ProgressBar, epoch_label

LIGHTNING_NOTE = "Checkpoint directory /x/checkpoints exists and is not empty."


def _warn(message: str, module: str) -> None:
    warnings.warn_explicit(message, UserWarning, f"{module.replace('.', '/')}.py", 1, module=module)


def _raised(verbose: bool) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_third_party(verbose):
            _warn(LIGHTNING_NOTE, "pytorch_lightning.callbacks.model_checkpoint")
            _warn(LIGHTNING_NOTE, "chaincrf.data.checks")  # the same words, from chaincrf
            _warn("a new warning of Lightning's", "pytorch_lightning.trainer.trainer")
    return [f"{w.filename}: {w.message}" for w in caught]


def test_lightnings_known_notes_are_hidden_and_other_warnings_kept():
    assert _raised(verbose=False) == [
        f"chaincrf/data/checks.py: {LIGHTNING_NOTE}",
        "pytorch_lightning/trainer/trainer.py: a new warning of Lightning's",
    ]
    assert len(_raised(verbose=True)) == 3


def _root_record(path: str, message: str) -> logging.LogRecord:
    return logging.LogRecord("root", logging.WARNING, path, 1, message, None, None)


def _enabled(name: str, level: int) -> bool:
    return logging.getLogger(name).isEnabledFor(level)


def test_cudnns_note_on_the_bilstms_direction_calls_is_hidden_there_only():
    note = (
        "RNN module weights are not part of single contiguous chunk of memory. This means they "
        "need to be compacted at every call, possibly greatly increasing memory usage."
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_third_party(False):
            _warn(note, "chaincrf.network.encoders.bilstm")  # the padded calls: known, hidden
            _warn(note, "chaincrf.network.encoders.other")  # anywhere else: shown
    assert [w.filename for w in caught] == ["chaincrf/network/encoders/other.py"]


def test_the_libraries_loggers_are_quiet_within_the_block_only(caplog):
    caplog.set_level(logging.INFO)
    before = logging.getLogger("onnxscript").level
    with quiet_third_party(False):
        assert not _enabled("lightning_fabric.utilities.seed", logging.INFO)  # "Seed set to 42"
        assert not _enabled(
            "pytorch_lightning.utilities.rank_zero", logging.INFO
        )  # "GPU available"
        assert not _enabled("onnxscript.optimizer._constant_folding", logging.INFO)
        assert not _enabled("torch.onnx._internal.exporter", logging.WARNING)  # torchvision
        assert _enabled("pytorch_lightning.trainer", logging.WARNING)  # a real warning
        assert _enabled("chaincrf.data.checks", logging.WARNING)
        assert _enabled("chaincrf.train", logging.INFO)  # the epoch lines
        # onnxruntime's quantisation logs on the root logger: dropped by where it comes from
        root = logging.getLogger()
        root.handle(_root_record("/x/onnxruntime/quantization/quantize.py", "pre-processing"))
        root.handle(_root_record("/x/mine/script.py", "the user's own root warning"))
    assert [r.getMessage() for r in caplog.records] == ["the user's own root warning"]
    assert logging.getLogger("onnxscript").level == before
    assert _enabled("lightning_fabric.utilities.seed", logging.INFO)
    with quiet_third_party(True):
        assert _enabled("lightning_fabric.utilities.seed", logging.INFO)
        assert _enabled("onnxscript.optimizer._constant_folding", logging.INFO)


def test_the_progress_bar_numbers_epochs_as_the_epoch_lines(tmp_path):
    assert epoch_label(11, 12) == "12/12" and epoch_label(0, -1) == "1"
    bar = ProgressBar()
    trainer = pl.Trainer(max_epochs=12, callbacks=[bar], logger=False, default_root_dir=tmp_path)
    assert trainer.progress_bar_callback is bar
    bar.setup(trainer, pl.LightningModule(), "fit")
    assert bar._get_train_description(11).strip() == "Epoch 12/12"  # Lightning's: "Epoch 11/11"
    assert bar.is_disabled  # stderr is not a terminal here: the epoch lines alone


class _Trainer:
    """What the bar's ``get_metrics`` reads of a trainer."""

    def __init__(self) -> None:
        self.loggers: list = []
        self.state = pl.trainer.states.TrainerState(fn=pl.trainer.states.TrainerFn.FITTING)
        self.progress_bar_metrics = {"val/score": 0.5}


class _Tagger:
    """A module's ``step_loss`` (a tensor on the device): counts the bar's reads, each of which
    copies the loss to the host (a synchronisation on a GPU)."""

    def __init__(self) -> None:
        self.reads = 0

    @property
    def step_loss(self) -> torch.Tensor:
        self.reads += 1
        return torch.tensor(float(self.reads))


def test_the_progress_bar_reads_the_loss_once_per_interval_and_at_each_epochs_end():
    trainer, tagger, bar = _Trainer(), _Tagger(), ProgressBar(metrics_interval=3600.0)
    shown = [bar.get_metrics(trainer, tagger)["loss"] for _ in range(100)]  # 100 batches
    assert tagger.reads == 1 and shown == [1.0] * 100
    assert bar.get_metrics(trainer, tagger)["val/score"] == 0.5  # Lightning's figures too
    bar.disable()  # no terminal: the hooks draw nothing
    bar.on_train_epoch_end(trainer, tagger)
    assert bar.get_metrics(trainer, tagger)["loss"] == 2.0  # the epoch's end reads afresh
    bar.on_validation_end(trainer, tagger)
    assert bar.get_metrics(trainer, tagger)["loss"] == 3.0 and tagger.reads == 3
    each_batch, every = ProgressBar(metrics_interval=0), _Tagger()  # Lightning's: every batch
    for _ in range(5):
        each_batch.get_metrics(trainer, every)
    assert every.reads == 5
