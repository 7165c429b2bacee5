"""A kernel from outside chaincrf, in one folder: the eager kernel's operations computed in
float64 and returned in the caller's dtype. ``tests/test_crf_kernel_registry.py`` registers it
(``CHAINCRF_KERNEL_MODULES=toy_kernel``) with the one table row below and runs the kernel suite
with it, as a new kernel's author would."""

from __future__ import annotations

from types import ModuleType

from chaincrf.crf.kernels.base import Problem, Rule

NAME = "toy"
GAPS = "validated"
OPERATIONS = frozenset({"log_likelihood", "log_partition", "viterbi", "decode", "marginals"})
RULES = (
    Rule(
        "toy",
        frozenset({"log_partition", "viterbi", "marginals"}),
        lambda p: p.device == "cpu" and p.tags == 7,
        "a test kernel: seven tags on the CPU (tests/test_crf_kernel_registry.py)",
    ),
)


def available() -> bool:
    return True


def can_run(problem: Problem) -> bool:
    return problem.device == "cpu" and problem.k == 1


def prepare(forced: bool) -> None:
    """Nothing to start."""


def operations() -> ModuleType:
    from toy_kernel import ops

    return ops


__all__ = ["GAPS", "NAME", "OPERATIONS", "RULES", "available", "can_run", "operations", "prepare"]
