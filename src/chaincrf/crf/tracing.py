"""What is tracing a call, and what ran: the checks the kernels and the planner share.

- :func:`is_compiling`, :func:`is_exporting`, :func:`exporting`, :func:`export_tracing`: whether
  torch.compile / torch.export / an exporter for another runtime is tracing;
- :func:`record` lists the kernel chosen for each call inside a block, :func:`record_paths` the
  paths the kernels took (:func:`note_choice`, :func:`path_taken` report them).

A leaf: imports torch only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

__all__ = [
    "export_tracing",
    "exporting",
    "is_compiling",
    "is_exporting",
    "note_choice",
    "path_taken",
    "record",
    "record_paths",
]

is_compiling = getattr(torch.compiler, "is_compiling", None) or torch._dynamo.is_compiling
"""Whether torch.compile / torch.export is tracing (torch >= 2.3 names it torch.compiler)."""

_public_is_exporting: Callable[[], bool] = getattr(torch.compiler, "is_exporting", lambda: False)


def is_exporting() -> bool:
    """Whether torch.export (also under the ONNX exporter) is tracing (torch >= 2.5).

    Reads the flag torch.export sets rather than calling ``torch.compiler.is_exporting``,
    which torch 2.11's Dynamo folds to True in every trace, a plain torch.compile included
    (so that every compiled CRF call took the export kernel). Where a torch has no such
    flag, the public function answers.
    """
    flag = getattr(torch.compiler, "_is_exporting_flag", None)
    return _public_is_exporting() if flag is None else bool(flag)


_export_blocks: list[bool] = []


@contextlib.contextmanager
def exporting() -> Iterator[None]:
    """Mark a block as an export for another runtime (ONNX, TorchScript, an ExportedProgram
    run without chaincrf): every CRF call traced inside takes the export kernel, on any
    device. chaincrf's own exporters (:mod:`chaincrf.predict.export`) use it."""
    _export_blocks.append(True)
    try:
        yield
    finally:
        _export_blocks.pop()


def export_tracing(device: str) -> bool:
    """Whether a call being traced on ``device`` is an export that needs standard operations
    only: inside :func:`exporting`, or when torch says it exports (:func:`is_exporting`) and
    the tensors are not on CUDA. On CUDA the Triton ops are traced even under torch.export,
    which keeps them as custom ops (an AOTInductor build runs them). Such a program is for
    inference: the ops have no autograd kernel of their own
    (:mod:`chaincrf.crf.kernels.library`), so running it with a gradient enabled for the
    emissions or the scores raises instead of giving none."""
    return bool(_export_blocks) or (device != "cuda" and is_exporting())


_recorders: list[list[tuple[str, str]]] = []


def note_choice(operation: str, kernel: str) -> None:
    """Called by the planner for every choice it makes (see :func:`record`)."""
    for recorder in _recorders:
        recorder.append((operation, kernel))


@contextlib.contextmanager
def record() -> Iterator[list[tuple[str, str]]]:
    """Collect ``(operation, kernel)`` for every choice made inside the block.

    Example::

        with chaincrf.crf.tracing.record() as ran:
            crf.viterbi(emissions, mask)
        assert ran == [("viterbi", "fused")]
    """
    with _collecting(_recorders) as ran:
        yield ran


@contextlib.contextmanager
def _collecting(registry: list[list[Any]]) -> Iterator[list[Any]]:
    """A new list appended to ``registry`` for a block (what is recorded meanwhile)."""
    collected: list[Any] = []
    registry.append(collected)
    try:
        yield collected
    finally:
        registry.remove(collected)


_path_recorders: list[list[tuple[str, int]]] = []


def path_taken(path: str, rows: int) -> None:
    """Called by a kernel when it takes ``path`` for ``rows`` batch rows (threads, for
    ``"fused_threads"``)."""
    for recorder in _path_recorders:
        recorder.append((path, rows))


@contextlib.contextmanager
def record_paths() -> Iterator[list[tuple[str, int]]]:
    """Collect ``(path, rows)`` for every eager path taken inside the block: ``"scaled"``,
    ``"exact"`` (log space), ``"tree"`` (log-partition); ``"tree_viterbi"``, ``"scan_viterbi"``;
    ``"triton_dot"`` / ``"triton_log"`` (the Triton likelihood's exp-space kernel on the tensor
    cores, or its log-space one); and ``("fused_threads", n)`` for a fused call split over n
    threads.

    Example::

        with chaincrf.crf.tracing.record_paths() as paths:
            crf.log_partition(emissions, mask)
        assert ("exact", 5) in paths
    """
    with _collecting(_path_recorders) as paths:
        yield paths
