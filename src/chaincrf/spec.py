"""One way to build objects from plain specifications, and the allowlist that keeps model files data.

A specification is a mapping ``{"_target_": "pkg.module.Class", **kwargs}`` — the shape of a Hydra
node, as plain data. :func:`instantiate` builds it with Hydra's semantics (``_partial_``,
nesting); :func:`build_from_spec` calls it as a factory with sizes only the caller knows. A specification that
comes from a *model file* (a checkpoint's hyper-parameters, a bundle's ``config.json``, the
``config.yaml`` beside a checkpoint) is checked first with :func:`check_targets`: every
``_target_`` in it must name one of the classes this project ships configs for
(:data:`SHIPPED_TARGETS`, plus the optimiser and scheduler classes of ``torch.optim``), or one the
user explicitly trusts (``allow_targets``). Nothing else is imported or called, so a crafted file
such as ``{"_target_": "subprocess.getoutput", "cmd": "..."}`` is refused before any code runs.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

__all__ = [
    "SHIPPED_TARGETS",
    "UntrustedTargetError",
    "build_from_spec",
    "check_targets",
    "instantiate",
]

SPEC_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")

SHIPPED_TARGETS: frozenset[str] = frozenset(
    {
        "chaincrf.network.embeddings.TokenEmbedder",
        "chaincrf.network.encoders.bilstm.BiLSTMEncoder",
        "chaincrf.network.encoders.cnn.CNNEncoder",
        "chaincrf.network.encoders.identity.IdentityEncoder",
        "chaincrf.network.encoders.pretrained.PretrainedEncoder",
        "chaincrf.network.encoders.stacked.StackedEncoder",
        "chaincrf.network.encoders.transformer.TransformerEncoder",
        "chaincrf.training.schedule.InverseTimeDecay",
        # the same classes under the paths model files named before the regrouping (2026-12-05)
        "chaincrf.embeddings.TokenEmbedder",
        "chaincrf.encoders.bilstm.BiLSTMEncoder",
        "chaincrf.encoders.cnn.CNNEncoder",
        "chaincrf.encoders.identity.IdentityEncoder",
        "chaincrf.encoders.pretrained.PretrainedEncoder",
        "chaincrf.encoders.stacked.StackedEncoder",
        "chaincrf.encoders.transformer.TransformerEncoder",
        "chaincrf.tagger.InverseTimeDecay",
        "chaincrf.data.TaggingDataModule",
        "chaincrf.data.datamodule.TaggingDataModule",
    }
)
"""The targets a model file may name: the project's own modules that ``conf/`` builds. The
optimisers and learning-rate schedulers of ``torch.optim`` are allowed as well (classes only)."""


class UntrustedTargetError(ValueError):
    """A model file names a ``_target_`` outside the allowlist; nothing was imported or called."""


def _torch_optim_class(path: str) -> bool:
    """True when ``path`` names an optimiser or scheduler class of ``torch.optim`` (looked up on
    the already imported modules, never imported)."""
    module_name, _, name = path.rpartition(".")
    module = {
        "torch.optim": torch.optim,
        "torch.optim.lr_scheduler": torch.optim.lr_scheduler,
    }.get(module_name)
    if module is None or name.startswith("_"):
        return False
    value = getattr(module, name, None)
    bases = (
        torch.optim.Optimizer,
        torch.optim.lr_scheduler.LRScheduler,
        torch.optim.lr_scheduler.ReduceLROnPlateau,
    )
    return inspect.isclass(value) and issubclass(value, bases)


def check_targets(spec: Any, what: str, source: str, allow_targets: Iterable[str] = ()) -> None:
    """Refuse a specification read from a model file unless every ``_target_`` is trusted.

    Args:
        spec: plain data (mappings, lists, scalars) possibly holding ``_target_`` nodes.
        what: the name of the entry, for the message (e.g. ``"hyper_parameters['encoder']"``).
        source: the file it was read from, for the message.
        allow_targets: dotted names the user trusts beyond :data:`SHIPPED_TARGETS` (they will be
            imported and called with arguments from the file).

    Raises:
        UntrustedTargetError: naming the file, the entry and the refused target.
    """
    extra = frozenset(allow_targets)
    if isinstance(spec, Mapping):
        if "_target_" in spec:
            target = spec["_target_"]
            if not isinstance(target, str) or not (
                target in SHIPPED_TARGETS or target in extra or _torch_optim_class(target)
            ):
                raise UntrustedTargetError(
                    f"{source}: {what}['_target_'] names {target!r}, which is not one of "
                    "chaincrf's own classes or a torch.optim optimiser/scheduler; refused "
                    "(nothing was imported or run). If you trust this file, allow it explicitly: "
                    f"allow_targets=[{target!r}] (on the command line: allow_targets=[{target}])"
                )
        for key, value in spec.items():
            check_targets(value, f"{what}[{key!r}]", source, extra)
    elif isinstance(spec, (list, tuple)):
        for i, value in enumerate(spec):
            check_targets(value, f"{what}[{i}]", source, extra)


def locate(path: str, what: str) -> Any:
    """Import the object a dotted path names (``"torch.optim.SGD"``)."""
    module_name, _, attribute = path.rpartition(".")
    if not module_name:
        raise ValueError(
            f"{what}['_target_'] must be a dotted path such as 'torch.optim.SGD'; got {path!r}"
        )
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(
            f"{what}['_target_'] names {path!r}, which cannot be imported: {error}"
        ) from error


def _accepts(target: Callable[..., Any], name: str) -> bool:
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return True
    return name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def instantiate(spec: Any, what: str = "spec", **kwargs: Any) -> Any:
    """Build what a plain specification describes, with ``hydra.utils.instantiate``'s semantics
    for what this project uses: ``_target_`` (the dotted path called), ``_partial_`` (a
    ``functools.partial`` instead of a call), ``_args_`` (positional arguments), nesting (inner
    ``_target_`` nodes are built first, lists and mappings recursed into). ``kwargs`` are merged
    into the top node (as Hydra's), ``_partial_=True`` included. The one builder of the
    project: the CLIs build their config nodes with it, the tagger its sub-modules
    (``tests/test_spec.py`` checks it against Hydra's over every file in ``conf/``).

    Args:
        spec: a mapping with ``_target_`` (or any plain data holding such mappings).
        what: the entry's name, for error messages.
        **kwargs: arguments for the top node's target (override the spec's).

    Returns:
        The built object (a ``functools.partial`` for a ``_partial_`` node); plain data is
        returned with its nodes built.

    Raises:
        ValueError: if a target cannot be imported.
    """
    if isinstance(spec, Mapping) and "_target_" in spec:
        node = {**spec, **kwargs}
        target = locate(str(node["_target_"]), what)
        args = [_instantiate_value(v, f"{what}['_args_'][{i}]") for i, v in
                enumerate(node.get("_args_", ()))]  # fmt: skip
        call_kwargs = {
            key: _instantiate_value(value, f"{what}[{key!r}]")
            for key, value in node.items()
            if key not in SPEC_KEYS
        }
        if node.get("_partial_", False):
            return functools.partial(target, *args, **call_kwargs)
        return target(*args, **call_kwargs)
    return _instantiate_value(spec, what)


def _instantiate_value(value: Any, what: str) -> Any:
    if isinstance(value, Mapping) and "_target_" in value:
        return instantiate(value, what)
    if isinstance(value, Mapping):
        return {k: _instantiate_value(v, f"{what}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_instantiate_value(v, f"{what}[{i}]") for i, v in enumerate(value)]
    return value


def build_from_spec(spec: Mapping[str, Any], what: str, *args: Any, **runtime: Any) -> Any:
    """Build a sub-module (embeddings, encoder, optimiser, scheduler) from its specification,
    filling in what only the caller knows: the spec is a factory (:func:`instantiate` with
    ``_partial_=True``, whether the spec says ``_partial_: true`` as ``conf/`` does or not, as
    older checkpoints and hand-written specs may), called with ``args`` (e.g. the parameters of
    an optimiser) and the ``runtime`` keyword arguments (sizes only the data knows) that the
    target accepts and the spec does not set. A spec read from a model file must pass
    :func:`check_targets` first.

    Args:
        spec: the specification, e.g. ``{"_target_": "torch.optim.SGD", "lr": 0.015}``.
        what: the argument's name, used in error messages.
        *args: positional arguments for the target.
        **runtime: keyword arguments filled in at run time.

    Returns:
        What calling the target returns.

    Raises:
        TypeError: if ``spec`` is not a mapping with a ``_target_`` key.
        ValueError: if the target cannot be imported.
    """
    if not isinstance(spec, Mapping) or "_target_" not in spec:
        raise TypeError(
            f"{what} must be a mapping with a '_target_' key (e.g. a Hydra node converted to a "
            f"dict); got {type(spec).__name__}: {spec!r}"
        )
    factory = instantiate(spec, what, _partial_=True)
    fill = {
        key: value
        for key, value in runtime.items()
        if factory.keywords.get(key) is None and _accepts(factory.func, key)
    }
    return factory(*args, **fill)
