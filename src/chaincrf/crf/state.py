"""A CRF layer's constraints in its ``state_dict``: saved with a constrained layer, restored by
``load_state_dict``; a state without them (pytorch-crf's, or an unconstrained layer's) keeps the
constraints the layer was built with, and constraints loaded into a layer built without any are
an error, not a silent drop; and the constructor's check of them. Importing this module
imports only torch."""

from __future__ import annotations

import torch
from torch import Tensor, nn

KEYS = ("start_allowed", "end_allowed", "transitions_allowed")


def check_constraints(
    K: int, constraints: tuple[Tensor, Tensor, Tensor] | None
) -> tuple[Tensor, Tensor, Tensor]:
    """The constructor's ``constraints`` checked (bool, shapes (K,), (K,), (K, K)) and copied;
    all allowed for None."""
    if constraints is None:
        return (
            torch.ones(K, dtype=torch.bool),
            torch.ones(K, dtype=torch.bool),
            torch.ones(K, K, dtype=torch.bool),
        )
    if not isinstance(constraints, (tuple, list)) or len(constraints) != 3:
        raise ValueError(
            "constraints must be a tuple (start_allowed (K,), end_allowed (K,), "
            f"transitions_allowed (K, K)); got {type(constraints).__name__}"
        )
    expected = ((K,), (K,), (K, K))
    names = ("start_allowed", "end_allowed", "transitions_allowed")
    out = []
    for name, shape, value in zip(names, expected, constraints):
        value = torch.as_tensor(value)
        if value.dtype != torch.bool:
            raise ValueError(f"constraints {name} must be a bool tensor; got dtype {value.dtype}")
        if tuple(value.shape) != shape:
            raise ValueError(
                f"constraints {name} must have shape {shape}; got {tuple(value.shape)}"
            )
        out.append(value.clone())
    return out[0], out[1], out[2]


def save_constraints(
    layer: nn.Module, destination: dict[str, Tensor], prefix: str, keep_vars: bool
) -> None:
    """Adds a constrained layer's constraint buffers to ``destination`` (none otherwise: an
    unconstrained layer's keys stay exactly pytorch-crf's)."""
    if layer.has_constraints:
        for name in KEYS:
            value = getattr(layer, name)
            destination[prefix + name] = value if keep_vars else value.detach()


def load_constraints(
    layer: nn.Module,
    state_dict: dict[str, Tensor],
    prefix: str,
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    """Restores saved constraints into ``layer`` (called after nn.Module's own loading, whose
    strict mode counts the constraint keys as unexpected: they are taken off that list)."""
    keys = [prefix + name for name in KEYS]
    unexpected_keys[:] = [key for key in unexpected_keys if key not in keys]
    saved = {key: state_dict[key] for key in keys if key in state_dict}
    if not saved:
        return
    if not layer.has_constraints:
        error_msgs.append(
            f"the state holds constraints ({', '.join(saved)}) but this CRF was built without "
            "any: build it with constraints=... (they are then replaced by the saved ones)"
        )
        return
    for key, name in zip(keys, KEYS):
        own, value = getattr(layer, name), saved.get(key)
        if value is None:
            error_msgs.append(f"the state holds some constraints but not {key}")
        elif value.dtype != torch.bool or value.shape != own.shape:
            error_msgs.append(
                f"{key} must be a bool tensor of shape {tuple(own.shape)}; got "
                f"{value.dtype} {tuple(value.shape)}"
            )
        else:
            own.copy_(value)
