"""The export kernel: the log-partition and Viterbi as masked steps, with no host
synchronisation and no custom op, for TorchScript, torch.export and ONNX
(:mod:`chaincrf.crf.kernels.export.ops`)."""

from __future__ import annotations

from types import ModuleType

from chaincrf.crf.kernels.base import Problem
from chaincrf.crf.kernels.export import ops

NAME = "export"
GAPS = "native"
"""A masked step keeps the row's state, so the chain runs over the kept positions as it is."""
OPERATIONS = frozenset({"log_likelihood", "log_partition", "viterbi", "decode", "marginals"})


def available() -> bool:
    return True


def can_run(problem: Problem) -> bool:
    return problem.k == 1


def prepare(forced: bool) -> None:
    """Nothing to start."""


def operations() -> ModuleType:
    return ops
