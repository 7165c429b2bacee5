"""The fused CPU kernel: numba-compiled loops as ``torch.library`` custom ops, one call per
operation, large calls split over torch's own OpenMP threads
(:mod:`chaincrf.crf.kernels.fused.ops`; thresholds :data:`chaincrf.crf.tuning.FUSED`). numba is
imported on first use; without it this kernel is unavailable and the eager kernel runs."""

from __future__ import annotations

import warnings
from types import ModuleType

import torch

from chaincrf.crf.kernels.base import Problem
from chaincrf.crf.kernels.fused import custom_ops, ops

NAME = "fused"
GAPS = "detected"
"""The pass that counts each row's length finds gaps, with or without ``validate``, and raises
``MaskGapError``."""
OPERATIONS = frozenset(
    {
        "log_likelihood",
        "negative_log_likelihood",
        "log_likelihood_sum",
        "negative_log_likelihood_sum",
        "log_partition",
        "viterbi",
        "decode",
        "marginals",
    }
)
EAGER_SUMS = True
"""A reduced loss takes the summed likelihoods in eager calls too: sum and sign are the
autograd Function's own output (no reduction or negation node; a summed NLL's gradient is the
pass's own, unscaled)."""


def available() -> bool:
    """Whether numba imports (a warning says so, once per call, when it does not: the planner
    asks once per process)."""
    if custom_ops.available():
        return True
    warnings.warn(
        "numba cannot be imported: the CRF runs its eager kernels (slower on the CPU); "
        "`pip install numba` gives the fused ones",
        RuntimeWarning,
        stacklevel=4,
    )
    return False


def can_run(problem: Problem) -> bool:
    return (
        problem.device == "cpu"
        and problem.dtype in (torch.float32, torch.float64)
        and problem.k == 1
    )


def prepare(forced: bool) -> None:
    """Load the float32 loops now (compiled, or read from numba's disk cache), before any
    training step runs."""
    custom_ops.warm_up()


def operations() -> ModuleType:
    return ops
