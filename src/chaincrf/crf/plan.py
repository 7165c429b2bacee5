"""Which kernel computes a CRF operation: one table, each row with the measurement behind it.

Kernels (:mod:`chaincrf.crf.kernels`):

- ``eager``: tensor operations (any device and float dtype, k-best Viterbi), the reference the
  others are tested against; its own thresholds are :data:`EAGER` (:func:`eager_tuning`).
- ``fused``: numba-compiled CPU loops as ``torch.library`` custom ops; large calls split their
  rows over torch's own OpenMP threads (:data:`FUSED`, :func:`fused_tuning`).
- ``export``: masked steps with no host synchronisation, for torch.export / ONNX / TorchScript.
- ``triton``: GPU kernels (CUDA tensors; CPU tensors under ``TRITON_INTERPRET=1``).

The choice is made here only: :func:`choose` walks :data:`TABLE` and takes the first row whose
operation and condition match and whose kernel can run (with ``auto``, among
:data:`AUTO_KERNELS`). ``CHAINCRF_KERNEL=eager|fused|export|triton`` or the ``kernel``
argument of :class:`chaincrf.CRF` forces a kernel: it runs every problem it can
(:data:`CAN_RUN`; the table's speed conditions are for ``auto``), the eager kernel the rest.
:func:`record` lists the choices made inside a ``with`` block, :func:`record_paths` the paths
the kernels took. Importing this module imports only torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

__all__ = [
    "AUTO_KERNELS",
    "CAN_RUN",
    "EAGER",
    "ENV",
    "FUSED",
    "KERNELS",
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
    "prepare",
    "record",
]

ENV = "CHAINCRF_KERNEL"
KERNELS = ("eager", "fused", "export", "triton")
_CHOICES = ("auto", *KERNELS)


@dataclass(frozen=True)
class Problem:
    """What the planner knows of one call.

    Attributes:
        operation: ``"log_partition"`` (with its gradient when ``requires_grad``), ``"viterbi"``
            or ``"marginals"``.
        batch, length, tags: the sizes B, T, K.
        dtype: the emissions' dtype after the layer's upcast (float32 or float64 usually).
        device: the device type (``"cpu"``, ``"cuda"``, ...).
        k: paths asked for (Viterbi).
        requires_grad: whether autograd will need a backward pass.
        compiling: whether torch.compile / torch.export is tracing the call (the eager
            kernels' host synchronisations would break the graph).
        exporting: whether torch.export (or the ONNX exporter, which runs it) is tracing:
            the graph must hold standard operations only, no custom ops.
    """

    operation: str
    batch: int
    length: int
    tags: int
    dtype: torch.dtype
    device: str
    k: int = 1
    requires_grad: bool = False
    compiling: bool = False
    exporting: bool = False


@dataclass(frozen=True)
class Rule:
    """One row of the table: ``kernel`` computes ``operations`` when ``when(problem)`` holds."""

    kernel: str
    operations: frozenset[str]
    when: Callable[[Problem], bool]
    measured: str


def _cpu_float(problem: Problem) -> bool:
    return problem.device == "cpu" and problem.dtype in (torch.float32, torch.float64)


def _triton_device(problem: Problem) -> bool:
    """CUDA tensors; CPU tensors too under Triton's interpreter (``TRITON_INTERPRET=1``)."""
    interpreted = problem.device == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"
    return problem.device == "cuda" or interpreted


CAN_RUN: dict[str, Callable[[Problem], bool]] = {
    "eager": lambda p: True,
    "fused": lambda p: _cpu_float(p) and p.k == 1,
    "export": lambda p: p.k == 1,
    "triton": lambda p: (
        _triton_device(p) and p.dtype in (torch.float32, torch.float64) and p.k == 1
    ),
}
"""What each kernel can compute at all (a forced kernel runs every problem it can; the table's
speed conditions apply to ``auto`` only)."""

TABLE: tuple[Rule, ...] = (
    Rule(
        "export",
        frozenset({"log_partition", "viterbi", "marginals"}),
        lambda p: p.exporting,
        "not a speed rule: torch.export and the ONNX exporter need standard operations and "
        "a loop the graph can hold (the scan); tests/test_crf_export.py",
    ),
    Rule(
        "triton",
        frozenset({"log_partition", "viterbi", "marginals"}),
        lambda p: p.device == "cuda",
        "one program per row, transitions held on chip: the only kernel written for the GPU "
        "(scripts/bench_crf.py --device cuda; benchmarks/crf_gpu.md)",
    ),
    Rule(
        "fused",
        frozenset({"log_partition", "marginals"}),
        _cpu_float,
        "NLL + backward, float32, 2 threads, B{1,32,128} x T{32,128} x K{5,9,50}: fused faster "
        "than eager in every cell since it splits large calls over torch's threads (K=50: "
        "B=32 T=32 2.3 vs 4.8 ms, B=32 T=128 5.9 vs 13.6 ms, B=128 T=32 5.3 vs 7.6 ms, B=128 "
        "T=128 16.7 vs 22.4 ms; one thread, eager won the last three by 1.0-1.2x); elsewhere "
        "3.1-6.6x; `python3 scripts/bench_fused.py --budget 1.5`, this 2-core CPU, 2026-11-30 "
        "(benchmarks/crf_kernels.md)",
    ),
    Rule(
        "fused",
        frozenset({"viterbi"}),
        lambda p: _cpu_float(p) and p.k == 1,
        "decode, same grid and command: fused faster than eager in all 18 cells (4.4-15x; "
        "B=128 T=32 K=50 1.5 vs 6.6 ms); k-best paths are eager only",
    ),
    Rule(
        "eager",
        frozenset({"log_partition", "viterbi", "marginals"}),
        lambda p: True,
        "the portable fallback: every device and dtype, k-best Viterbi",
    ),
)

AUTO_KERNELS: tuple[str, ...] = KERNELS
"""The kernels ``auto`` may pick (all of them; a kernel listed here joins the table's choice)."""


is_compiling = getattr(torch.compiler, "is_compiling", None) or torch._dynamo.is_compiling
"""Whether torch.compile / torch.export is tracing (torch >= 2.3 names it torch.compiler)."""

is_exporting: Callable[[], bool] = getattr(torch.compiler, "is_exporting", lambda: False)
"""Whether torch.export (also under the ONNX exporter) is tracing (torch >= 2.5). Not
trusted alone: torch 2.11 answers True inside a plain torch.compile on CUDA (see
:func:`export_tracing`)."""

_export_blocks: list[bool] = []


@contextlib.contextmanager
def exporting() -> Iterator[None]:
    """Mark a block as an export for another runtime (ONNX, TorchScript, an ExportedProgram
    run without chaincrf): every CRF call traced inside takes the export kernel, on any
    device. chaincrf's own exporters (:mod:`chaincrf.tagger.export`) use it."""
    _export_blocks.append(True)
    try:
        yield
    finally:
        _export_blocks.pop()


def export_tracing(device: str) -> bool:
    """Whether a call being traced on ``device`` is an export that needs standard operations
    only: inside :func:`exporting`, or when torch says it exports (:func:`is_exporting`) and
    the tensors are not on CUDA. On CUDA torch's word alone is not taken (torch 2.11 says
    True under a plain torch.compile, whose Inductor cannot lower the export kernel's scan):
    there the Triton custom ops are traced, which torch.export keeps as custom ops."""
    return bool(_export_blocks) or (device != "cuda" and is_exporting())


_recorders: list[list[tuple[str, str]]] = []


_availability: dict[str, bool] = {"eager": True, "export": True}


def _available(kernel: str) -> bool:
    """Whether ``kernel`` can run here; found once (a CRF's constructor asks first, so that
    a compiled model only reads this dictionary)."""
    known = _availability.get(kernel)
    if known is not None:
        return known
    if kernel == "triton":  # optional (the `gpu` extra): without it CUDA runs the eager kernel
        import importlib.util

        _availability[kernel] = importlib.util.find_spec("triton") is not None
        return _availability[kernel]
    from chaincrf.crf.kernels import cpu_ops as crf_fused

    _availability[kernel] = crf_fused.available()
    if not _availability[kernel]:
        warnings.warn(
            "numba cannot be imported: the CRF runs its eager kernels (slower on the CPU); "
            "`pip install numba` gives the fused ones",
            RuntimeWarning,
            stacklevel=3,
        )
    return _availability[kernel]


def _forced(kernel: str | None) -> str:
    value = kernel if kernel not in (None, "auto") else os.environ.get(ENV, "auto") or "auto"
    if value not in _CHOICES:
        source = "kernel" if kernel not in (None, "auto") else ENV
        raise ValueError(f"{source} must be one of {_CHOICES}; got {value!r}")
    return value


def prepare(kernel: str | None = None) -> None:
    """Called when a CRF is built: when the fused kernels may run, start their runtime now
    (:func:`chaincrf.crf.kernels.cpu_ops.warm_up`), before any training step runs; when the
    Triton kernels may (forced, or CUDA with Triton installed), import them."""
    forced = _forced(kernel)
    if (forced == "fused" or (forced == "auto" and "fused" in AUTO_KERNELS)) and _available(
        "fused"
    ):
        from chaincrf.crf.kernels import cpu_ops as crf_fused

        crf_fused.warm_up()
    may_triton = forced == "triton" or (forced == "auto" and torch.cuda.is_available())
    if may_triton and _available("triton"):  # imported now, not while torch.compile traces
        from chaincrf.crf.kernels import kernel_module

        kernel_module("triton")


def choose(problem: Problem, kernel: str | None = None) -> str:
    """The kernel to run ``problem`` with.

    Args:
        problem: the operation and its sizes.
        kernel: ``"auto"``/None (the table, or ``$CHAINCRF_KERNEL``), ``"eager"`` or ``"fused"``.

    Returns:
        ``"eager"`` or ``"fused"``.

    Raises:
        ValueError: naming ``kernel`` or ``CHAINCRF_KERNEL`` for an unknown value.
    """
    forced = _forced(kernel)
    chosen = "eager"
    if forced != "auto":  # forced: the speed conditions do not apply, only what it can run
        if CAN_RUN[forced](problem) and _available(forced):
            chosen = forced
    else:
        # traced: the plain function (torch.compile warns about lru_cache wrappers)
        table = _table_choice.__wrapped__ if problem.compiling else _table_choice
        chosen = table(problem, AUTO_KERNELS)
    for recorder in _recorders:
        recorder.append((problem.operation, chosen))
    return chosen


@functools.lru_cache(maxsize=4096)
def _table_choice(problem: Problem, auto_kernels: tuple[str, ...]) -> str:
    """The first table row for ``problem`` whose kernel ``auto`` may pick and can run (cached:
    a call's choice costs a dictionary lookup; the table and the kernels' availability do not
    change while a process runs)."""
    for rule in TABLE:
        if problem.operation not in rule.operations or not rule.when(problem):
            continue
        kernel = rule.kernel
        if kernel in auto_kernels and CAN_RUN[kernel](problem) and _available(kernel):
            return kernel
    return "eager"


@contextlib.contextmanager
def record() -> Iterator[list[tuple[str, str]]]:
    """Collect ``(operation, kernel)`` for every choice made inside the block.

    Example::

        with chaincrf.crf.plan.record() as ran:
            crf.viterbi(emissions, mask)
        assert ran == [("viterbi", "fused")]
    """
    with _collecting(_recorders) as ran:
        yield ran


@contextlib.contextmanager
def _collecting(registry: list[list]) -> Iterator[list]:
    """A new list appended to ``registry`` for a block (what is recorded meanwhile)."""
    collected: list = []
    registry.append(collected)
    try:
        yield collected
    finally:
        registry.remove(collected)


# ------------------------------------------------------------------------------ eager paths


@dataclass(frozen=True)
class EagerTuning:
    """The thresholds by which the eager kernel picks among its own paths, each with the
    measurement it came from (this 2-core CPU, 2 threads unless said).

    Attributes:
        span_limit_float32, span_limit_float64: largest spread of finite transition scores
            for which the scaled exp-space log-partition cannot lose a significant term to
            underflow (exp(60) and exp(600) leave float32 / float64 headroom); wider: the
            exact log-space path.
        tiny_float32, tiny_float64: smallest per-step normaliser the scaled path accepts;
            below it the row is recomputed in log space.
        tree_max_bkk, tree_min_t, tree_span_limit: the log-depth tree of matrix products for
            the log-partition when batch * tags^2 <= 512, T >= 8 and the transition spread
            <= 25 (its products must not underflow); measured faster than the sequential scan
            there (`scripts/bench_crf.py`, issue 3).
        broadcast_max, broadcast_min_threads: the recursion's (B, K) @ (K, K) products by
            broadcasting, not BLAS, when B * K^2 <= 4096, K <= 16 and torch runs at least 2
            threads (a BLAS product on a
            handful of rows cost a 30-80 us thread hand-off; 2 us against 40 us at B=32, K=9
            single-threaded, where BLAS stays).
        batched_backpointers_max: Viterbi back-pointers of all steps in one argmax when
            B * K^2 <= 3000; above it the back-trace takes the argmax of the chosen tag only.
        slice_min_saved: the Viterbi step slices to the rows still running only when that
            skips at least 8192 candidate scores (the views cost about as much).
        tree_viterbi_min_t, tree_viterbi_max_bkkk, tree_viterbi_long_t,
        tree_viterbi_long_max_bkkk: the max-plus tree when T >= 64 and B * K^3 <= 512, or
            T >= 256 and B * K^3 <= 1024 (0.3-0.8x the sequential time there, 1.1-10x
            elsewhere).
    """

    span_limit_float32: float = 60.0
    span_limit_float64: float = 600.0
    tiny_float32: float = 1e-20
    tiny_float64: float = 1e-200
    tree_max_bkk: int = 512
    tree_min_t: int = 8
    tree_span_limit: float = 25.0
    broadcast_max: int = 4096
    broadcast_min_threads: int = 2
    batched_backpointers_max: int = 3000
    slice_min_saved: int = 8192
    tree_viterbi_min_t: int = 64
    tree_viterbi_max_bkkk: int = 512
    tree_viterbi_long_t: int = 256
    tree_viterbi_long_max_bkkk: int = 1024

    def span_limit(self, dtype: torch.dtype) -> float | None:
        """The spread limit of the scaled path in ``dtype`` (None: no scaled path)."""
        return {torch.float32: self.span_limit_float32, torch.float64: self.span_limit_float64}.get(
            dtype
        )

    def tiny(self, dtype: torch.dtype) -> float:
        return self.tiny_float64 if dtype == torch.float64 else self.tiny_float32


@dataclass(frozen=True)
class FusedTuning:
    """The fused kernels' own thresholds, with the measurement they came from.

    Attributes:
        split_min_btkk: a log-partition, likelihood, gradient or marginals call splits its
            rows over torch's threads (``torch.get_num_threads()`` of them, on torch's own
            OpenMP runtime; each a fixed part of the rows, so the results do not depend on the
            split) from this B * T * K^2 on; below it the calling thread runs them all (a
            parallel region costs ~45 us). NLL + backward, 1 thread / 2 threads: 1.11-1.22 at
            332k, 1.3-1.6 from 1.3M, 0.77-1.13 at 102k and below.
        split_min_btkk_viterbi: the same for Viterbi: 1.25 at 1.3M, 1.27-1.56 from 10M; at
            2.6M (B=32 T=32 K=50) 0.69 in this run, 1.34 in an earlier one (noisy).
        numba_exp_max_btk: up to this many emissions (B * T * K) the exp-space kernels'
            exp(em - max) is one compiled loop, above it torch's vectorised exp (four tensor
            operations): loop / torch 21 / 43 us at 160 emissions, 43 / 53 us at 2,304, 87 /
            74 us at 6,400.

    Measured by ``python3 scripts/bench_fused.py --tuning`` (the layer with the fused kernels
    forced, both settings of each size alternated), this 2-core CPU, 2026-11-30, load ~1.
    """

    split_min_btkk: int = 250_000
    split_min_btkk_viterbi: int = 1_000_000
    numba_exp_max_btk: int = 3000


FUSED = FusedTuning()
"""The fused kernels' threshold in force (see :func:`fused_tuning`)."""

EAGER = EagerTuning()
"""The eager kernel's thresholds in force (see :func:`eager_tuning` to change them)."""

_path_recorders: list[list[tuple[str, int]]] = []


@contextlib.contextmanager
def eager_tuning(**changes: float) -> Iterator[EagerTuning]:
    """Run a block with some eager thresholds changed (to tune for another machine, or to
    reach a path in a test), e.g. ``with eager_tuning(tree_max_bkk=0):`` (never the tree).

    Raises:
        TypeError: naming an unknown threshold.
    """
    with _replaced("EAGER", changes) as tuning:
        yield tuning


@contextlib.contextmanager
def fused_tuning(**changes: int) -> Iterator[FusedTuning]:
    """Run a block with the fused kernels' threshold changed, e.g.
    ``with fused_tuning(split_min_btkk=0, split_min_btkk_viterbi=0):`` (split every call
    over torch's threads).

    Raises:
        TypeError: naming an unknown threshold.
    """
    with _replaced("FUSED", changes) as tuning:
        yield tuning


@contextlib.contextmanager
def _replaced(name: str, changes: dict) -> Iterator:
    """The module's tuning ``name`` (EAGER, FUSED) with ``changes`` for a block."""
    names = globals()
    before = names[name]
    names[name] = dataclasses.replace(before, **changes)
    try:
        yield names[name]
    finally:
        names[name] = before


def path_taken(path: str, rows: int) -> None:
    """Called by a kernel when it takes ``path`` for ``rows`` batch rows (threads, for
    ``"fused_threads"``)."""
    for recorder in _path_recorders:
        recorder.append((path, rows))


@contextlib.contextmanager
def record_paths() -> Iterator[list[tuple[str, int]]]:
    """Collect ``(path, rows)`` for every eager path taken inside the block: ``"scaled"``,
    ``"exact"`` (log space), ``"tree"`` (log-partition); ``"tree_viterbi"``, ``"scan_viterbi"``;
    and ``("fused_threads", n)`` for a fused call split over n threads.

    Example::

        with chaincrf.crf.plan.record_paths() as paths:
            crf.log_partition(emissions, mask)
        assert ("exact", 5) in paths
    """
    with _collecting(_path_recorders) as paths:
        yield paths
