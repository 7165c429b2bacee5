"""Ops without a Python autograd layer, for the calls that torch.compile runs (a leaf: imports
torch only).

A ``torch.library.custom_op`` passes every call through its Python autograd wrapper and a
redispatch, even inside a compiled graph where no autograd is needed: about 25 us a call on a
2-core Xeon, a sixth of a whole eager NLL + backward at B=1 (benchmarks/crf_compile.md).
:func:`direct_op` defines an op with the low-level ``torch.library`` API instead: the
dispatcher calls its kernel from C++, and its Autograd key falls through. Such an op has no
gradient of its own: the kernel that calls it carries the gradient in a
``torch.autograd.Function`` that torch.compile traces, and a direct call on tensors that need
a gradient raises instead of silently giving none.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch._ops import OpOverload

__all__ = ["direct_op"]

NAMESPACE = "chaincrf"

# chaincrf's namespace, shared with its custom ops (a fragment: several may define ops in it);
# kept alive for the process, as the registrations last only as long as their Library
_LIBRARY = torch.library.Library(NAMESPACE, "FRAGMENT")  # type: ignore[no-untyped-call]  # untyped in torch


def direct_op(
    schema: str,
    kernel: Callable[..., Any],
    fake: Callable[..., Any],
    differentiable: Sequence[int],
    devices: Sequence[str] = ("CPU",),
) -> OpOverload:
    """Define ``chaincrf::<schema>`` running ``kernel`` on ``devices`` (dispatch keys) and
    ``fake`` on fake tensors (tracing), with no autograd kernel; returns the op. A call with
    a gradient enabled for a tensor argument at a position in ``differentiable`` raises
    ``RuntimeError`` naming the op."""
    name = schema.split("(", 1)[0]

    def checked(*args: Any) -> Any:
        if torch.is_grad_enabled() and any(
            args[i] is not None and args[i].requires_grad for i in differentiable
        ):
            raise RuntimeError(
                f"chaincrf::{name} has no autograd formula: call it through chaincrf.CRF, or "
                "on tensors that do not require a gradient"
            )
        return kernel(*args)

    _LIBRARY.define(schema)  # type: ignore[no-untyped-call]  # untyped in torch
    for key in devices:
        _LIBRARY.impl(name, checked, key)  # type: ignore[no-untyped-call]
    _LIBRARY.impl(name, torch.library.fallthrough_kernel, "Autograd")  # type: ignore[no-untyped-call]
    torch.library.register_fake(f"{NAMESPACE}::{name}", fake, lib=_LIBRARY)
    op: OpOverload = getattr(getattr(torch.ops, NAMESPACE), name).default
    return op
