"""The tree kernel: the CRF as a log-depth tree of log-space matrix products over time
(:mod:`chaincrf.crf.kernels.tree.ops`), tensor operations on any device.

The serial kernels walk a sequence one position after another, so one long sequence keeps one
GPU program busy while the other SMs wait. Here every position is a (K, K) matrix and adjacent
products are combined level by level: log2(T) levels of batched operations, each spread over
the whole device, O(B T K^3) arithmetic. The planner sends it few long rows on CUDA
(:data:`chaincrf.crf.tuning.TREE`); anywhere else it runs when asked for
(``CRF(kernel="tree")``). Exact for any scores (``-inf`` included), no host synchronisation
unless ``validate`` (one read-back), masks with gaps taken natively; Viterbi computes the best
path only (k = 1).
"""

from __future__ import annotations

from types import ModuleType

import torch

from chaincrf.crf import tuning
from chaincrf.crf.kernels.base import Problem

NAME = "tree"
GAPS = "native"
"""A masked position is the identity matrix: the chain runs over the kept positions."""
OPERATIONS = frozenset({"log_likelihood", "log_partition", "viterbi", "decode", "marginals"})


def available() -> bool:
    return True


def can_run(problem: Problem) -> bool:
    """Float emissions, the best path only, a widest level within
    ``tuning.TREE.max_elements`` (its memory grows as B T K^3), and no marginals under
    torch.compile (they are a ``torch.autograd.grad``, which breaks a graph)."""
    size = problem.batch * problem.length * problem.tags**3
    return (
        problem.dtype in (torch.float32, torch.float64)
        and problem.k == 1
        and size <= tuning.TREE.max_elements
        and not (problem.compiling and problem.operation == "marginals")
    )


def prepare(forced: bool) -> None:
    """Nothing to start."""


def operations() -> ModuleType:
    from chaincrf.crf.kernels.tree import ops

    return ops
