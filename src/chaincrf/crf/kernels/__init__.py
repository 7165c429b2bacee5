"""The CRF's kernels, one module each, all with the same functions (see
:mod:`chaincrf.crf.kernels.eager`): ``eager`` (tensor operations, any device) and ``fused``
(compiled CPU loops, :mod:`chaincrf.crf.kernels.cpu`). Which one runs a call is decided by the
planner (:mod:`chaincrf.crf.plan`) only."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MODULES", "kernel_module"]

MODULES = {"eager": "chaincrf.crf.kernels.eager", "fused": "chaincrf.crf.kernels.cpu"}


def kernel_module(name: str) -> ModuleType:
    """The module of kernel ``name`` (imported on first use: the fused one loads numba lazily)."""
    return importlib.import_module(MODULES[name])
