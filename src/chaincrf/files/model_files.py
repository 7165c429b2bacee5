"""Reading and writing model files as data: checkpoints, bundles, atomic checkpoint writes.

Every model file is read without unpickling objects (``torch.load(..., weights_only=True)``), its
hyper-parameters are checked against the allowlist of :mod:`chaincrf.spec` and, with the
vocabularies, against the weights' shapes (:mod:`chaincrf.files.model_checks`) before anything is
built, and every problem surfaces as a :class:`ModelFileError` naming the file. The weights are
memory-mapped, so reading their shapes allocates nothing. Checkpoints are
written through :class:`AtomicCheckpointIO`: a temporary file in the same folder, flushed to disk,
then renamed, so a process killed while saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from chaincrf.files.model_checks import (
    ModelFileError,
    check_hparams_fit,
    check_vocab,
    check_vocab_fits,
    confined,
    read_json,
)
from chaincrf.spec import check_targets

__all__ = [
    "BUNDLE_FILES",
    "ModelFileError",
    "StoredModel",
    "check_local_path",
    "read_model",
]

BUNDLE_FILES = ("weights.pt", "config.json", "vocab.json")
SAFETENSORS_WEIGHTS = "model.safetensors"
"""The weights of a Hugging Face Hub layout (:mod:`chaincrf.predict.hub`), read in place of
``weights.pt`` when a bundle folder has it (safetensors holds tensors only, by design)."""
CHECKPOINT_KEY = "chaincrf"
"""Key of the checkpoint entry holding the vocabularies (plain JSON-able data)."""
BUNDLE_FORMAT = 1

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_SPEC_ENTRIES = ("embeddings", "encoder", "optimizer", "scheduler")


@dataclass
class StoredModel:
    """What a model file holds, checked: hyper-parameters, vocabularies and weights."""

    hparams: dict[str, Any]
    vocab: dict[str, Any] | None
    state_dict: dict[str, torch.Tensor]
    source: str
    precision: str | None = None
    """The precision the model was trained in (Lightning's name, e.g. ``"bf16-mixed"``), for
    checkpoints written since 2026-12-05; None otherwise."""


PRECISIONS = ("64-true", "32-true", "16-true", "bf16-true", "16-mixed", "bf16-mixed")
"""Lightning's usual training precisions (a model file may name another, e.g. a newer one's)."""


def _check_precision(value: Any, what: str) -> str | None:
    """A stored precision: a short string (Lightning's name: :data:`PRECISIONS`, or one a newer
    Lightning adds) or None; only ``chaincrf-eval`` acts on it."""
    if value is not None and (not isinstance(value, str) or not 0 < len(value) <= 64):
        raise ModelFileError(
            f"{what} must be a precision's name such as {PRECISIONS[1]!r}; got {value!r}"
        )
    return value


def check_local_path(value: str | os.PathLike[str], what: str) -> Path:
    """A model path given by the user, refused when it is a URL.

    A remote checkpoint would be fetched and unpickled by Lightning; download it and check it
    yourself instead.

    Raises:
        ValueError: naming the argument, when ``value`` is a URL (``scheme://...``).
    """
    text = os.fspath(value)
    if "://" in str(text):
        raise ValueError(
            f"{what} must be a local file; got the URL {text!r}. Remote checkpoints are refused "
            "(loading one can run code); download it, check where it comes from, and pass the "
            "local path"
        )
    return Path(text)


def _torch_load(path: Path, map_location: Any) -> Any:
    try:
        with path.open("rb") as handle:
            head = handle.read(64)
    except OSError as error:
        raise ModelFileError(f"{path}: cannot be read: {error.strerror or error}") from None
    if not head.startswith((b"PK", b"\x80")):  # a zip archive (torch.save) or a legacy pickle
        shown = head[:24].decode("utf-8", "replace").replace("\n", " ")
        raise ModelFileError(
            f"{path}: not a checkpoint or bundle (a model file is a .ckpt written by training, "
            f"or a bundle folder from chaincrf-export); the file starts with {shown!r}"
        )
    try:
        # a zip archive is memory-mapped: its shapes are checked before anything is copied
        mmap = head.startswith(b"PK")
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        detail = next((line for line in lines if "Unsupported" in line), lines[0] if lines else "")
        raise ModelFileError(
            f"{path}: holds pickled objects other than tensors and plain data; refused "
            f"(weights_only loading): {_ANSI.sub('', detail)}"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError) as error:
        raise ModelFileError(f"{path}: cannot be read as a torch file: {error!r}") from None


def _safetensors_load(path: Path, map_location: Any) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file (no code, no pickle: the format holds tensors)."""
    from chaincrf.extras import require

    safetensors_torch = require("safetensors.torch", "hub", f"reading {path}")
    device = str(map_location) if map_location is not None else "cpu"
    try:
        return dict(safetensors_torch.load_file(path, device=device))
    except Exception as error:  # safetensors' own error types (SafetensorError, ...)
        raise ModelFileError(f"{path}: cannot be read as a safetensors file: {error}") from None


def _check_hparams(
    hparams: Any, source: str, allowed_keys: Iterable[str], allow_targets: Iterable[str]
) -> dict[str, Any]:
    if not isinstance(hparams, Mapping):
        raise ModelFileError(
            f"{source}: the hyper-parameters must be a mapping; got {type(hparams).__name__}"
        )
    allowed = set(allowed_keys)
    unknown = sorted(str(k) for k in hparams if k not in allowed)
    if unknown:
        raise ModelFileError(
            f"{source}: unknown hyper-parameter(s) {unknown}; expected only {sorted(allowed)}"
        )
    missing = [
        k for k in ("labels", "num_words", "num_chars", "embeddings", "encoder") if k not in hparams
    ]
    if missing:
        raise ModelFileError(f"{source}: the hyper-parameters lack {missing}")
    for key in _SPEC_ENTRIES:
        check_targets(hparams.get(key), f"hyper_parameters[{key!r}]", source, allow_targets)
    return dict(hparams)


def read_model(
    path: str | os.PathLike[str],
    allowed_keys: Iterable[str],
    map_location: Any = "cpu",
    allow_targets: Iterable[str] = (),
) -> StoredModel:
    """Read a ``.ckpt`` or a bundle directory as data, checked; nothing is built or run.

    Args:
        path: a checkpoint file written by training, a bundle directory (``weights.pt`` or
            ``model.safetensors``, ``config.json``, ``vocab.json``), or the name of an installed
            model package (:func:`chaincrf.files.models.resolve`).
        allowed_keys: the hyper-parameter names the model class accepts.
        map_location: where to put the tensors.
        allow_targets: dotted ``_target_`` names trusted beyond the shipped ones.

    Returns:
        The checked :class:`StoredModel`.

    Raises:
        FileNotFoundError: if ``path`` does not exist or a bundle lacks a file.
        ModelFileError: naming the file, for anything unreadable, pickled or untrusted.
    """
    from chaincrf.files.models import resolve

    path = resolve(check_local_path(path, "path"))  # an installed model's name: its folder
    allow_targets = list(allow_targets)
    allowed_keys = list(allowed_keys)
    if path.is_dir():
        weights = "weights.pt"
        if (path / SAFETENSORS_WEIGHTS).is_file() and not (path / weights).is_file():
            weights = SAFETENSORS_WEIGHTS
        files = (weights, "config.json", "vocab.json")
        missing = [n for n in files if not (path / n).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{path} is not a chaincrf bundle: missing {', '.join(missing)}; for a training run's folder, pass {path / 'checkpoints' / 'best.ckpt'}"
            )
        for name in files:
            confined(path, name, str(path / name), "the file")
        config_path = path / "config.json"
        config = read_json(config_path)
        if not isinstance(config, Mapping) or "hparams" not in config:
            raise ModelFileError(
                f"{config_path}: has no 'hparams' entry; a chaincrf bundle's config.json is "
                '{"format": 1, "hparams": {...}} (write one with chaincrf-export)'
            )
        if config.get("format", BUNDLE_FORMAT) != BUNDLE_FORMAT:
            raise ModelFileError(
                f"{config_path}: bundle format {config.get('format')!r}; this chaincrf reads "
                f"format {BUNDLE_FORMAT}"
            )
        hparams = _check_hparams(config["hparams"], str(config_path), allowed_keys, allow_targets)
        vocab = read_json(path / "vocab.json")
        if weights == SAFETENSORS_WEIGHTS:
            state = _safetensors_load(path / weights, map_location)
        else:
            state = _torch_load(path / weights, map_location)
        source = str(path)
        vocab_source, hparams_source = str(path / "vocab.json"), str(config_path)
        precision = _check_precision(config.get("precision"), f"{config_path}: precision")
    elif path.is_file():
        checkpoint = _torch_load(path, map_location)
        if not isinstance(checkpoint, Mapping) or "state_dict" not in checkpoint:
            raise ModelFileError(f"{path}: not a training checkpoint (no 'state_dict' entry)")
        hparams = _check_hparams(
            checkpoint.get("hyper_parameters"), str(path), allowed_keys, allow_targets
        )
        stored = checkpoint.get(CHECKPOINT_KEY) or {}
        vocab = stored.get("vocab") if isinstance(stored, Mapping) else None
        precision = _check_precision(
            stored.get("precision") if isinstance(stored, Mapping) else None,
            f"{path}: {CHECKPOINT_KEY}['precision']",
        )
        state = checkpoint["state_dict"]
        source = vocab_source = hparams_source = str(path)
    else:
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if vocab is not None:
        vocab = check_vocab(vocab, vocab_source)
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise ModelFileError(f"{source}: the weights must be a mapping of names to tensors")
    shapes = {str(name): tuple(tensor.shape) for name, tensor in state.items()}
    rows = check_hparams_fit(hparams, shapes, hparams_source)
    if vocab is not None:
        check_vocab_fits(vocab, vocab_source, hparams["labels"], rows, hparams_source)
    return StoredModel(
        hparams, dict(vocab) if vocab is not None else None, dict(state), source, precision
    )
