"""The Triton kernel: the CRF on CUDA tensors, one launch per pass and no host synchronisation
(:mod:`chaincrf.crf.kernels.triton.ops`), and on CPU tensors under Triton's interpreter
(``TRITON_INTERPRET=1``). Triton (the ``gpu`` extra) is imported only when the kernel is
prepared or first runs; without it CUDA tensors take the eager kernel."""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType

import torch

from chaincrf.crf import tuning
from chaincrf.crf.kernels.base import Problem

NAME = "triton"
GAPS = "native"
"""The kernels skip masked positions themselves: no compaction, no host synchronisation."""
HALF_EMISSIONS = True
"""The likelihoods and log-partition read float16/bfloat16 emissions as they are (computing in
float32; the emissions' gradient is written in their dtype): no conversion pass."""
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
"""A reduced loss takes the summed likelihoods in eager calls too: the sum (and the sign) is
the call's own output, so autograd runs no reduction (or negation) node; host time per call."""

_ops: ModuleType | None = None


def available() -> bool:
    return importlib.util.find_spec("triton") is not None


def can_run(problem: Problem) -> bool:
    interpreted = problem.device == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"
    return (
        (problem.device == "cuda" or interpreted)
        and problem.dtype in (torch.float32, torch.float64)
        and problem.k == 1
        and (problem.tags <= tuning.TRITON.max_tags or problem.compiling)
    )


def prepare(forced: bool) -> None:
    """Import the kernels now (not while torch.compile traces) when they may run: forced, or
    a CUDA device present."""
    if forced or torch.cuda.is_available():
        operations()


def operations() -> ModuleType:
    global _ops
    if _ops is None:
        from chaincrf.crf.kernels.triton import ops as module

        _ops = module
    return _ops
