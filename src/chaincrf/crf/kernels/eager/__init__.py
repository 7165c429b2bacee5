"""The eager kernel: the CRF's operations as tensor operations, on any device and float dtype,
k-best Viterbi included. The portable fallback, and the reference every other kernel is tested
against (:mod:`chaincrf.crf.kernels.eager.ops`; its thresholds are
:data:`chaincrf.crf.tuning.EAGER`)."""

from __future__ import annotations

from types import ModuleType

from chaincrf.crf.kernels.base import Problem
from chaincrf.crf.kernels.eager import ops

NAME = "eager"
GAPS = "validated"
"""A mask with gaps raises ``MaskGapError`` under ``validate`` only."""
OPERATIONS = frozenset({"log_likelihood", "log_partition", "viterbi", "decode", "marginals"})


def available() -> bool:
    return True


def can_run(problem: Problem) -> bool:
    return True


def prepare(forced: bool) -> None:
    """Nothing to start."""


def operations() -> ModuleType:
    return ops
