"""What the commands print: chaincrf's own lines, and third-party chatter only with ``verbose=true``.

Every command logs to stderr (Hydra's ``job_logging`` in ``conf/*.yaml``), as Lightning, the
progress bar and Python's warnings do: one stream for everything that is said about a run, and
stdout free for what a command produces (``chaincrf-predict``'s records, ``--help``,
``--cfg job``). :func:`quiet_third_party` hides, for the duration of a command, what the
libraries underneath say about themselves rather than about the user's run: each at its own
logger or by its own message, never all warnings at once, so that chaincrf's own warnings (the
data checks, a skipped test) and any warning not listed here still show. :func:`data_summary`
is the training console's line about the data.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

QUIET_LOGGERS = {
    # "Seed set to 42", "GPU available", "TPU available", "Restoring states ...", "Loaded model
    # weights ...", "`Trainer.fit` stopped", the tips: information, not warnings (kept)
    "pytorch_lightning": logging.WARNING,
    "lightning_fabric": logging.WARNING,
    "lightning": logging.WARNING,
    # the ONNX exporter's optimiser passes: one INFO line per folded constant or merged initializer
    "onnxscript": logging.WARNING,
    "onnx_ir": logging.WARNING,
    # "torchvision is not installed. Skipping torchvision::nms" (a WARNING per operator)
    "torch.onnx": logging.ERROR,
    # torch 2.11's exporter tracing the LSTM's while loop: "ChromiumEventLogger: Start event not
    # in stack, ignoring" (its own profiler's bookkeeping)
    "torch._dynamo.utils": logging.ERROR,
}
"""Logger -> the lowest level shown unless ``verbose=true`` (a logger's children follow it)."""

LIGHTNING_WARNINGS = (
    # Lightning turns `fit(ckpt_path=None)` into "last" when an OnExceptionCheckpoint is present
    # (chaincrf's InterruptCheckpoint); a resume is chaincrf's ckpt_path=, said on the console
    r"`\.fit\(ckpt_path=None\)` was called without a model",
    r'\.fit\(ckpt_path="last"\) is set, but there is no last checkpoint',
    # the epoch's loss is logged per epoch: no step-level curve is missing
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    # a resume continues in its run's folder on purpose: the CSV rows before it are put back
    # (chaincrf.cli.train), the checkpoints are the run's own
    r"Experiment logs directory .* exists and is not empty",
    r"Checkpoint directory .* exists and is not empty",
    # the resume is exact (ReseedEachEpoch reseeds each epoch's sampling; tests/test_interrupt_
    # resume.py, tests/test_training_reliability.py)
    r"You're resuming from a checkpoint that ended before the epoch ended and your dataloader",
    # worker processes do not pay off for these in-memory, pre-encoded batches
    r"The '\w+' does not have many workers",
    # torch 2.13 deprecations raised inside Lightning's own code: nothing the user can change
    r".*isinstance\(treespec, LeafSpec\)",
    r"torch\.distributed\.nn\.functional\.all_gather",
)
"""Messages (regular expressions, matched from the start) of warnings that Lightning raises about
its own machinery; hidden unless ``verbose=true``."""

LIGHTNING_MODULES = r"(pytorch_lightning|lightning_fabric|lightning|torch)(\.|$)"
"""The modules those warnings are attributed to (Lightning's, and torch's for the deprecations)."""

TORCH_WARNINGS = (
    # The BiLSTM on a GPU runs each direction of each layer as its own cuDNN call (padded and
    # exact, with no packing and so no host synchronisation: chaincrf.network.encoders.bilstm).
    # cuDNN reads a call's weights in place only when they start the storage they live in.
    # Only the first layer's forward direction does: nn.LSTM keeps every weight in one flat
    # buffer. cuDNN therefore gathers the other directions' weights on each call, about a megabyte
    # each. ATen's code says so, once; the warning has not been seen yet (no GPU run since).
    (r"RNN module weights are not part of single contiguous chunk of memory",
     r"chaincrf\.network\.encoders\.bilstm$"),
)  # fmt: skip
"""(message, module) of warnings torch raises in chaincrf's own calls about a cost chaincrf
chose and documents; hidden unless ``verbose=true``."""

QUIET_PACKAGES = ("onnxruntime/quantization",)
"""Packages that log on the root logger (``logging.warning(...)``): their records are dropped
unless ``verbose=true`` ("Please consider to run pre-processing before quantization")."""


class _FromPackages(logging.Filter):
    """Drops root-logger records written by the code of :data:`QUIET_PACKAGES`."""

    def filter(self, record: logging.LogRecord) -> bool:
        path = Path(record.pathname).as_posix()
        return not any(f"/{package}/" in path for package in QUIET_PACKAGES)


@contextlib.contextmanager
def quiet_third_party(verbose: bool = False) -> Iterator[None]:
    """Within the block, hide the libraries' messages about themselves (see the module's note);
    with ``verbose`` change nothing. Everything is as before when the block ends: the loggers'
    levels, the root logger's filters and the warning filters.

    Args:
        verbose: show everything (the config key ``verbose``).
    """
    if verbose:
        yield
        return
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    root_filter = _FromPackages()
    with warnings.catch_warnings():
        for message in LIGHTNING_WARNINGS:
            warnings.filterwarnings("ignore", message=message, module=LIGHTNING_MODULES)
        for message, module in TORCH_WARNINGS:
            warnings.filterwarnings("ignore", message=message, module=module)
        for name, level in QUIET_LOGGERS.items():
            logger = logging.getLogger(name)
            logger.setLevel(max(level, logger.getEffectiveLevel()))
        logging.getLogger().addFilter(root_filter)
        try:
            yield
        finally:
            logging.getLogger().removeFilter(root_filter)
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


def data_summary(datamodule: Any) -> str:
    """The console's data line: each split's sentences and tokens, the tags and their scheme,
    e.g. ``train 40 sentences (322 tokens), dev 12 (98 tokens); 17 tags, IOB1 trained as BIOES``.
    """
    parts: list[str] = []
    for split in ("train", "dev", "test"):
        if split in datamodule.datasets:
            lengths = datamodule.datasets[split].lengths
            unit = " sentences" if not parts else ""
            parts.append(f"{split} {len(lengths):,}{unit} ({sum(lengths):,} tokens)")
    text = f"{', '.join(parts)}; {datamodule.num_tags} tags"
    source, scheme = datamodule.original_scheme, datamodule.scheme
    if source and scheme:
        text += f", {source}" + (f" trained as {scheme}" if scheme != source else "")
    return text
