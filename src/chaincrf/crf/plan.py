"""Which kernel computes a CRF operation: one table and :func:`choose`.

The kernels are units in one registry (:mod:`chaincrf.crf.kernels`: ``eager``, ``export``,
``fused``, ``tree``, ``triton``, and any registered from outside); each declares what it can run.
:func:`choose` walks :data:`TABLE` (after the rows registered kernels bring as ``RULES``) and
takes the first row whose operation and condition match and whose kernel can run (with
``auto``, among :data:`AUTO_KERNELS`). ``CHAINCRF_KERNEL=<name>`` or the ``kernel`` argument of
:class:`chaincrf.CRF` forces a kernel: it runs every problem it can (its ``can_run``; the
table's speed conditions are for ``auto``), the eager kernel the rest. Each row says why, and
the command that re-measures it; the figures are in ``benchmarks/crf_kernels.md``.

The kernels' thresholds are in :mod:`chaincrf.crf.tuning`, the tracing checks and recorders in
:mod:`chaincrf.crf.tracing`; their public names are also reachable here, as before. Importing
this module imports only torch.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import torch

from chaincrf.crf import kernels, tracing, tuning
from chaincrf.crf.kernels.base import Problem, Rule
from chaincrf.crf.tracing import (
    export_tracing,
    exporting,
    is_compiling,
    is_exporting,
    path_taken,
    record,
    record_paths,
)
from chaincrf.crf.tuning import EagerTuning, FusedTuning, eager_tuning, fused_tuning

__all__ = [
    "AUTO_KERNELS",
    "ENV",
    "TABLE",
    "EagerTuning",
    "FusedTuning",
    "Problem",
    "Rule",
    "choose",
    "eager_tuning",
    "export_tracing",
    "exporting",
    "fused_tuning",
    "is_compiling",
    "is_exporting",
    "path_taken",
    "prepare",
    "record",
    "record_paths",
    "rules",
]

ENV = "CHAINCRF_KERNEL"


def _cpu_float(problem: Problem) -> bool:
    return problem.device == "cpu" and problem.dtype in (torch.float32, torch.float64)


TABLE: tuple[Rule, ...] = (
    Rule(
        "export",
        frozenset({"log_partition", "viterbi", "marginals"}),
        lambda p: p.exporting,
        "not speed: an exported graph needs standard operations and a scan; "
        "tests/test_crf_export.py",
    ),
    Rule(
        "tree",
        frozenset({"log_partition", "viterbi", "marginals"}),
        lambda p: p.device == "cuda" and tuning.TREE.fits(p.batch, p.length, p.tags),
        "few long rows: log2(T) levels over every SM instead of T serial steps on a few "
        "(crossover not yet measured on a GPU); python3 scripts/bench_crf_gpu.py --sections scan",
    ),
    Rule(
        "triton",
        frozenset({"log_partition", "viterbi", "marginals"}),
        lambda p: p.device == "cuda",
        "the only kernel written for the GPU; python3 scripts/bench_crf_gpu.py",
    ),
    Rule(
        "fused",
        frozenset({"log_partition", "marginals"}),
        _cpu_float,
        "NLL + backward: fused ahead of eager in every cell of the CPU grid; "
        "python3 scripts/bench_fused.py --budget 1.5",
    ),
    Rule(
        "fused",
        frozenset({"viterbi"}),
        lambda p: _cpu_float(p) and p.k == 1,
        "decode: fused ahead of eager in every cell (k-best is eager only); "
        "python3 scripts/bench_fused.py --budget 1.5",
    ),
    Rule(
        "eager",
        frozenset({"log_partition", "viterbi", "marginals"}),
        lambda p: True,
        "the portable fallback: every device and dtype, k-best Viterbi",
    ),
)
"""chaincrf's rows, first match wins (registered kernels' ``RULES`` come before them)."""

AUTO_KERNELS: tuple[str, ...] | None = None
"""The kernels ``auto`` may pick (None: every registered kernel)."""


def __getattr__(name: str) -> Any:
    """The names that moved, read through: ``EAGER``/``FUSED`` (the thresholds in force,
    :mod:`chaincrf.crf.tuning`) and ``KERNELS`` (the registered kernels' names)."""
    if name in ("EAGER", "FUSED"):
        return getattr(tuning, name)
    if name == "KERNELS":
        return kernels.names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_availability: dict[str, bool] = {}


def _available(name: str) -> bool:
    """Whether kernel ``name`` can run here; asked once per process (a CRF's constructor asks
    first, so that a compiled model only reads this dictionary)."""
    known = _availability.get(name)
    if known is None:
        known = _availability[name] = bool(kernels.get(name).available())
    return known


def _forced(kernel: str | None) -> str:
    value = kernel if kernel not in (None, "auto") else os.environ.get(ENV, "auto") or "auto"
    if value != "auto" and value not in kernels.REGISTRY:
        source = "kernel" if kernel not in (None, "auto") else ENV
        raise ValueError(f"{source} must be one of {('auto', *kernels.names())}; got {value!r}")
    return value


def _auto_kernels() -> tuple[str, ...]:
    return kernels.names() if AUTO_KERNELS is None else AUTO_KERNELS


def prepare(kernel: str | None = None) -> None:
    """Called when a CRF is built: each kernel that may run its calls (the forced one, or
    every available kernel ``auto`` may pick) prepares (a runtime started, modules imported
    before torch.compile traces)."""
    forced = _forced(kernel)
    candidates = _auto_kernels() if forced == "auto" else (forced,)
    for name in candidates:
        if _available(name):
            kernels.get(name).prepare(forced != "auto")


def choose(problem: Problem, kernel: str | None = None) -> str:
    """The name of the kernel to run ``problem`` with.

    Args:
        problem: the operation and its sizes.
        kernel: ``"auto"``/None (the table, or ``$CHAINCRF_KERNEL``) or a registered name.

    Raises:
        ValueError: naming ``kernel`` or ``CHAINCRF_KERNEL`` for an unknown value.
    """
    forced = _forced(kernel)
    chosen = "eager"
    if forced != "auto":  # forced: the speed conditions do not apply, only what it can run
        if kernels.get(forced).can_run(problem) and _available(forced):
            chosen = forced
    else:
        # traced: the plain function (torch.compile warns about lru_cache wrappers)
        table = _table_choice.__wrapped__ if problem.compiling else _table_choice
        chosen = table(problem, _auto_kernels(), len(kernels.REGISTRY), tuning.TREE, tuning.TRITON)
    tracing.note_choice(problem.operation, chosen)
    return chosen


def rules() -> tuple[Rule, ...]:
    """The table in force: registered kernels' ``RULES``, then :data:`TABLE`."""
    brought = tuple(
        rule for kernel in kernels.REGISTRY.values() for rule in getattr(kernel, "RULES", ())
    )
    return brought + TABLE


@functools.lru_cache(maxsize=4096)
def _table_choice(
    problem: Problem,
    auto_kernels: tuple[str, ...],
    registered: int,
    tree: tuning.TreeTuning,
    triton: tuning.TritonTuning,
) -> str:
    """The first row for ``problem`` whose kernel ``auto`` may pick and can run (cached: a
    call's choice costs a dictionary lookup; ``registered`` keys the registry's size, ``tree``
    and ``triton`` the thresholds in force)."""
    for rule in rules():
        if problem.operation not in rule.operations or not rule.when(problem):
            continue
        name = rule.kernel
        if name in auto_kernels and kernels.get(name).can_run(problem) and _available(name):
            return name
    return "eager"
