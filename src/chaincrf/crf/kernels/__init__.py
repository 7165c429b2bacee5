"""The CRF's kernels, one module each, all with the same functions (see
:mod:`chaincrf.crf.kernels.eager`): ``eager`` (tensor operations, any device) and ``fused``
(compiled CPU loops, :mod:`chaincrf.crf.kernels.cpu`; numba is imported on its first call).
Which one runs a call is decided by the planner (:mod:`chaincrf.crf.plan`) only."""

from __future__ import annotations

from types import ModuleType

from chaincrf.crf.kernels import cpu, eager

__all__ = ["MODULES", "kernel_module"]

MODULES: dict[str, ModuleType] = {"eager": eager, "fused": cpu}


def kernel_module(name: str) -> ModuleType:
    """The module of kernel ``name`` (a plain lookup: torch.compile traces through it)."""
    return MODULES[name]
