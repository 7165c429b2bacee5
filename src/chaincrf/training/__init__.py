"""The training system: :class:`~chaincrf.training.module.SequenceTagger` (the
``LightningModule``: build, step, log, optimise), its callbacks
(:mod:`~chaincrf.training.callbacks`: exact resume, no silent NaN, the console), metrics
(:mod:`~chaincrf.training.metrics`), optimiser (:mod:`~chaincrf.training.schedule`), the run's
report (:mod:`~chaincrf.training.report`) and model card (:mod:`~chaincrf.training.provenance`).

The names of the former module ``chaincrf.training`` (the callbacks) are still read here.
"""

from typing import Any

_CALLBACKS = frozenset(
    {
        "AtomicCheckpointIO",
        "EpochSummary",
        "InterruptCheckpoint",
        "NonFiniteLossError",
        "ProgressBar",
        "ReplayPlateauStep",
        "ReseedEachEpoch",
        "check_loss",
        "epoch_label",
        "epoch_seed",
    }
)


def __getattr__(name: str) -> Any:
    if name in _CALLBACKS:
        from chaincrf.training import callbacks

        return getattr(callbacks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
