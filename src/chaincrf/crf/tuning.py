"""The kernels' thresholds: every number by which a kernel picks among its own paths, in one
place, each with the command that re-measures it (the figures are in ``benchmarks/``).

A leaf: imports torch only. The kernels read :data:`EAGER` and :data:`FUSED` at call time, so
:func:`eager_tuning` / :func:`fused_tuning` change them for a block (to tune for another
machine, or to reach a path in a test).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "EAGER",
    "FUSED",
    "TREE",
    "TRITON",
    "EagerTuning",
    "FusedTuning",
    "TreeTuning",
    "TritonTuning",
    "eager_tuning",
    "fused_tuning",
    "tree_tuning",
    "triton_tuning",
]


@dataclass(frozen=True)
class EagerTuning:
    """The thresholds by which the eager kernel picks among its own paths: one line each, why
    and the command that re-measures it (``python3 scripts/bench_crf.py --kernels eager``
    unless said); the figures are in ``benchmarks/crf_kernels.md`` ("Thresholds").

    Attributes:
        span_limit_float32, span_limit_float64: widest spread of finite transition scores the
            scaled exp-space log-partition takes without losing a term to underflow (exactness,
            not speed: ``tests/test_crf_reference.py``); wider goes to the log-space path.
        tiny_float32, tiny_float64: smallest per-step normaliser the scaled path accepts (the
            same reason); below it the row is recomputed in log space.
        floor_float32, floor_float64: smallest weight (a normalised forward probability, or
            the product feeding it) a reachable tag with a finite emission may have on the
            scaled path; a tag under it may carry the only paths later (a forced path), so
            the row is recomputed in log space (the same reason).
        tree_max_bkk, tree_min_t, tree_span_limit: when the log-depth tree of matrix products
            beats the sequential scan (the spread bound keeps its products from underflowing).
        broadcast_max, broadcast_min_threads: when broadcasting beats a BLAS product on a
            handful of rows (the BLAS thread hand-off dominates there).
        batched_backpointers_max: when one argmax over every step's back-pointers beats
            following the chosen tag only.
        slice_min_saved: when slicing to the rows still running saves more than the views cost.
        tree_viterbi_min_t, tree_viterbi_max_bkkk, tree_viterbi_long_t,
        tree_viterbi_long_max_bkkk: when the max-plus tree beats the sequential Viterbi scan.
    """

    span_limit_float32: float = 60.0
    span_limit_float64: float = 600.0
    tiny_float32: float = 1e-20
    tiny_float64: float = 1e-200
    floor_float32: float = 1e-30
    floor_float64: float = 1e-280
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

    def floor(self, dtype: torch.dtype) -> float:
        return self.floor_float64 if dtype == torch.float64 else self.floor_float32


@dataclass(frozen=True)
class FusedTuning:
    """The fused kernels' own thresholds: one line each, why and the command that re-measures
    it (``python3 scripts/bench_fused.py --tuning``); the figures are in
    ``benchmarks/crf_kernels.md`` ("Thresholds").

    Attributes:
        split_min_btkk: from this B * T * K^2 on a log-partition, likelihood, gradient or
            marginals call splits its rows over torch's OpenMP threads (a fixed part each, so
            results do not depend on the split); below it a parallel region costs more than it
            saves.
        split_min_btkk_viterbi: the same for Viterbi.
        numba_exp_max_btk: up to this many emissions the exp-space kernels' exp(em - max) is one
            compiled loop, above it torch's vectorised exp is faster.
    """

    split_min_btkk: int = 250_000
    split_min_btkk_viterbi: int = 1_000_000
    numba_exp_max_btk: int = 3000


@dataclass(frozen=True)
class TritonTuning:
    """The Triton kernels' own choices (``python3 scripts/bench_crf_gpu.py --sections grid
    --steps log dot`` re-measures them on a GPU; figures in ``benchmarks/crf_gpu.md``).

    Attributes:
        dot_min_tags: from this many tags (float32 emissions) the likelihood's forward and
            backward passes run the scaled exp-space recursion whose step is a matrix product
            on the tensor cores (``tl.dot``; 16 rows per program); below it, and in float64,
            the log-space step (a (K, K) tile per row, one exp per entry). The issue's choice
            (K >= 32), not yet a GPU measurement.
        dot_precision: ``tl.dot``'s ``input_precision``: ``"tf32x3"`` (three TF32 products:
            float32's accuracy on the tensor cores), ``"tf32"`` (one: about 1e-3 relative per
            step) or ``"ieee"`` (no tensor cores).
        span_limit: widest spread of finite transition scores the exp-space step takes (its
            products must not underflow: exp(-60) is far above float32's smallest normal);
            a wider one is recomputed in log space inside the same launch.
        floor: the smallest weight (relative to its step's largest, about 69 nats below it)
            that a reachable tag, or a product feeding one, may have in the exp-space
            recursions: a tag below it might carry the only paths later (a forced path), so
            its row is recomputed in log space (the forward's whole row, the backward's from
            that position down). 0 turns the check off (then a lost tag goes unnoticed, and
            the backward's pairwise sums are capped at e^80 per term).
        max_tags: the most tags the planner gives the Triton kernels outside a traced call.
            Their (K, K) tiles live in registers: at 200 tags (``BLOCK_K`` 256) every kernel
            spills 4.7-15 KB per thread and ptxas takes up to 29 s per kernel for sm_90, at 512
            tags over 5 minutes (``scripts/check_triton_compile.py``, Triton 3.6), so beyond
            128 the eager kernel runs (per-step torch operations over the whole (B, K, K)
            tile). A traced call keeps Triton (the eager kernel's host reads would break the
            graph) and pays the compilation once.
    """

    dot_min_tags: int = 32
    dot_precision: str = "tf32x3"
    span_limit: float = 60.0
    floor: float = 1e-30
    max_tags: int = 128


TRITON = TritonTuning()
"""The Triton kernels' choices in force (see :func:`triton_tuning`)."""


@dataclass(frozen=True)
class TreeTuning:
    """When the planner sends a CUDA call to the tree kernel (:mod:`chaincrf.crf.kernels.tree`:
    a log-depth tree of log-space matrix products over time, every SM busy on one sequence)
    instead of the Triton kernels (one program per few rows, T serial steps). Not yet a GPU
    measurement: the crossover is re-measured by ``python3 scripts/bench_crf_gpu.py --sections
    scan`` (``benchmarks/crf_gpu.md``); the CPU never picks it (the fused kernel's serial steps
    are cheaper there: ``benchmarks/crf_kernels.md``, "The tree kernel").

    Attributes:
        max_rows: at most this many rows (more rows fill the GPU's SMs with the serial kernels).
        min_length: from this padded length (shorter: the tree's log2(T) levels of launches
            cost more than the serial steps they save).
        max_elements: at most this many entries, batch * T * K**3, in the tree's widest
            level (its transient (pairs, K, K, K) tensor, float64: 8 bytes each; Viterbi's
            tree, padded to a power of two, up to twice that).
    """

    max_rows: int = 4
    min_length: int = 2048
    max_elements: int = 1 << 25

    def fits(self, batch: int, length: int, tags: int) -> bool:
        """Whether the tree may take a call of these sizes (on CUDA)."""
        return (
            0 < batch <= self.max_rows
            and length >= self.min_length
            and batch * length * tags**3 <= self.max_elements
        )


TREE = TreeTuning()
"""The tree kernel's thresholds in force (see :func:`tree_tuning`)."""

FUSED = FusedTuning()
"""The fused kernels' threshold in force (see :func:`fused_tuning`)."""

EAGER = EagerTuning()
"""The eager kernel's thresholds in force (see :func:`eager_tuning` to change them)."""


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
def triton_tuning(**changes: Any) -> Iterator[TritonTuning]:
    """Run a block with the Triton kernels' choices changed, e.g.
    ``with triton_tuning(dot_min_tags=10**9):`` (the log-space step for every K).

    Raises:
        TypeError: naming an unknown setting.
    """
    with _replaced("TRITON", changes) as tuning:
        yield tuning


@contextlib.contextmanager
def tree_tuning(**changes: int) -> Iterator[TreeTuning]:
    """Run a block with the tree kernel's thresholds changed, e.g.
    ``with tree_tuning(max_rows=0):`` (the planner never picks the tree).

    Raises:
        TypeError: naming an unknown threshold.
    """
    with _replaced("TREE", changes) as tuning:
        yield tuning


@contextlib.contextmanager
def _replaced(name: str, changes: dict[str, Any]) -> Iterator[Any]:
    """The module's tuning ``name`` (EAGER, FUSED) with ``changes`` for a block."""
    names = globals()
    before = names[name]
    names[name] = dataclasses.replace(before, **changes)
    try:
        yield names[name]
    finally:
        names[name] = before
