"""The CRF's kernels: one package each, listed in one registry.

Every subpackage of this package is a kernel (``eager``, ``export``, ``fused``, ``tree``,
``triton``), found and registered at import; each declares its name, what it can run and its
operations, all with one signature (the contract: :mod:`chaincrf.crf.kernels.base`). A kernel
that lives elsewhere joins with :func:`register` (or ``CHAINCRF_KERNEL_MODULES=pkg.mykernel,...``,
the modules imported and registered here), bringing its rows for the planner's table as
``RULES``. Which kernel runs a call is decided by the planner (:mod:`chaincrf.crf.plan`) only.
Importing this package imports torch and the kernels' light modules; numba and Triton wait
until a kernel runs.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from types import ModuleType

from chaincrf.crf.kernels.base import OPERATIONS, Problem, Rule

__all__ = ["ENV_MODULES", "REGISTRY", "Problem", "Rule", "get", "names", "register"]

ENV_MODULES = "CHAINCRF_KERNEL_MODULES"
"""Comma-separated modules to import and register as kernels (kernels outside chaincrf)."""

REGISTRY: dict[str, ModuleType] = {}
"""Every kernel by name, chaincrf's own first (in the order of their folders' names)."""

_DECLARED = ("NAME", "GAPS", "OPERATIONS", "available", "can_run", "prepare", "operations")
_GAPS = ("native", "detected", "validated")


def register(kernel: ModuleType) -> ModuleType:
    """Add ``kernel`` (a module or package declaring the contract of
    :mod:`chaincrf.crf.kernels.base`) to the registry; returns it.

    Raises:
        TypeError: naming what the kernel lacks or declares wrongly.
        ValueError: when another kernel has its name, or the name is ``"auto"``.
    """
    label = getattr(kernel, "__name__", repr(kernel))
    missing = [name for name in _DECLARED if not hasattr(kernel, name)]
    if missing:
        raise TypeError(f"kernel {label} lacks {missing} (see chaincrf.crf.kernels.base)")
    unknown = sorted(set(kernel.OPERATIONS) - set(OPERATIONS))
    if unknown:
        raise TypeError(
            f"kernel {label} declares unknown operations {unknown}; known: {OPERATIONS}"
        )
    if kernel.GAPS not in _GAPS:
        raise TypeError(f"kernel {label}: GAPS must be one of {_GAPS}; got {kernel.GAPS!r}")
    name = kernel.NAME
    if name == "auto" or REGISTRY.get(name, kernel) is not kernel:
        raise ValueError(f"kernel {label}: the name {name!r} is taken")
    REGISTRY[name] = kernel
    return kernel


def get(name: str) -> ModuleType:
    """The kernel called ``name`` (KeyError for an unknown one; the planner checks names)."""
    return REGISTRY[name]


def names() -> tuple[str, ...]:
    """The registered kernels' names."""
    return tuple(REGISTRY)


def _discover() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
        if info.ispkg:
            register(importlib.import_module(f"{__name__}.{info.name}"))
    for module in os.environ.get(ENV_MODULES, "").split(","):
        if module.strip():
            register(importlib.import_module(module.strip()))


_discover()
