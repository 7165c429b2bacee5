"""The CRF's kernels, one module each, all with the same functions (see
:mod:`chaincrf.crf.kernels.eager`): ``eager`` (tensor operations, any device), ``fused``
(compiled CPU loops, :mod:`chaincrf.crf.kernels.cpu`; numba is imported on its first call),
``export`` (masked steps for TorchScript, torch.export and ONNX,
:mod:`chaincrf.crf.kernels.export`) and ``triton`` (GPU kernels,
:mod:`chaincrf.crf.kernels.gpu`; Triton is imported on first use).
Which one runs a call is decided by the planner (:mod:`chaincrf.crf.plan`) only."""

from __future__ import annotations

import importlib
from types import ModuleType

from chaincrf.crf.kernels import cpu, eager, export

__all__ = ["MODULES", "kernel_module"]

MODULES: dict[str, ModuleType] = {"eager": eager, "fused": cpu, "export": export}


def kernel_module(name: str) -> ModuleType:
    """The module of kernel ``name`` (a plain lookup: torch.compile traces through it; the
    Triton kernel's module, which imports Triton, is imported on its first use)."""
    module = MODULES.get(name)
    if module is None:
        module = MODULES[name] = importlib.import_module("chaincrf.crf.kernels.gpu")
    return module
