"""The CRF under autocast (mixed-precision training: ``bf16-mixed``, ``16-mixed``).

:func:`float32` wraps the layer's computations: with autocast on for the emissions' device it
runs them with autocast off, so the CRF takes half-precision emissions and computes in float32
(its recursions' products and sums lose the scores in half precision); without autocast it
costs one check.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor

_F = TypeVar("_F", bound=Callable[..., Any])
_C = TypeVar("_C", bound=type)

COMPUTATIONS = ("forward", "nll", "loss", "log_partition", "decode", "viterbi", "marginals",
                "pairwise_marginals", "entropy", "sample", "partial_log_likelihood")  # fmt: skip
"""The layer's methods that compute from emissions (wrapped by :func:`float32_computations`)."""


def autocast_enabled(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (``"cpu"`` or ``"cuda"``)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no device argument (CUDA), a CPU function apart
        return (
            torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()
        )


def float32(method: _F) -> _F:
    """A CRF method (``self, emissions, ...``) run with autocast off for its device."""

    @functools.wraps(method)
    def run(self: Any, emissions: Tensor, *args: Any, **kwargs: Any) -> Any:
        kind = emissions.device.type if isinstance(emissions, Tensor) else "cpu"
        if kind in ("cpu", "cuda") and autocast_enabled(kind):
            with torch.autocast(kind, enabled=False):
                return method(self, emissions, *args, **kwargs)
        return method(self, emissions, *args, **kwargs)

    return run  # type: ignore[return-value]


def float32_computations(cls: _C) -> _C:
    """Class decorator: each of :data:`COMPUTATIONS` wrapped by :func:`float32`."""
    for name in COMPUTATIONS:
        setattr(cls, name, float32(getattr(cls, name)))
    return cls
