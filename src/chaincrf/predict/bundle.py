"""Model files of the tagger: a training checkpoint or a bundle directory in, a tagger out —
read as data, never as code (:mod:`chaincrf.files.model_files`) — and the bundle written.

A bundle is ``weights.pt`` (the state dict), ``config.json`` (format and hyper-parameters) and
``vocab.json`` (the vocabularies); ``chaincrf-export`` writes one from a checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from chaincrf.network.config import TaggerConfig

if TYPE_CHECKING:
    from chaincrf.predict.predictor import Predictor

# The tagger class and its instances are typed Any here: chaincrf.training.module imports this
# module, and a model file's reader does not import the training system (no import circle).
Tagger = Any
Built = TypeVar("Built", bound=Any)

__all__ = ["load", "load_predictor", "save"]


def load(
    cls: type[Tagger],
    path: str | Path,
    map_location: str | torch.device = "cpu",
    allow_targets: Sequence[str] = (),
) -> Tagger:
    """Rebuild a trained tagger (model, labels, vocabularies) from a model file, as data.

    The file is read without unpickling objects, and every ``_target_`` in its
    hyper-parameters must name one of chaincrf's own classes or a ``torch.optim``
    optimiser/scheduler (:mod:`chaincrf.spec`); anything else is refused before it is
    imported. A bundle's files must lie inside its folder (links included), every field has its
    type checked, and the sizes the hyper-parameters and vocabularies state are compared with
    the weights' shapes (memory-mapped) before the network is built
    (:mod:`chaincrf.files.model_checks`): a file cannot make it allocate more than its weights hold.

    Args:
        cls: the tagger class to build (``SequenceTagger`` or a subclass), called as
            ``cls(config, vocab=vocab)``.
        path: a ``.ckpt`` written during training (e.g. ``<run>/checkpoints/best.ckpt``),
            a bundle directory written by :func:`save` / ``chaincrf-export`` (or in the Hub
            layout, :mod:`chaincrf.predict.hub`), or the name of an installed model package
            (:mod:`chaincrf.files.models`).
        map_location: where to put the weights.
        allow_targets: dotted names of further classes to trust, e.g. your own encoder
            (``["mypkg.MyEncoder"]``). Only for files you trust: these are imported and
            called with arguments taken from the file.

    Returns:
        The tagger in eval mode.

    Raises:
        FileNotFoundError: if ``path`` does not exist (or a bundle lacks a file); for a bare
            name that is no installed model, one line listing the installed ones.
        chaincrf.files.model_files.ModelFileError: (a ``ValueError``) naming the file, for a file
            that is unreadable, holds pickled objects, names an untrusted ``_target_`` or
            does not fit the model it describes.
    """
    tagger, precision = _restore(
        path, map_location, allow_targets, lambda config, vocab: cls(config, vocab=vocab)
    )
    tagger.trained_precision = precision
    return tagger.to(map_location).eval()


def load_predictor(
    path: str | Path, map_location: str | torch.device = "cpu", allow_targets: Sequence[str] = ()
) -> Predictor:
    """A trained model file as a :class:`~chaincrf.predict.predictor.Predictor`, importing torch
    only (no Lightning, torchmetrics, seqeval or Hydra): the network, its tag scheme and its
    vocabularies, read as data exactly as :func:`load` reads them, in eval mode.

    Args and Raises: as :func:`load`.
    """
    from chaincrf.predict.predictor import Predictor

    predictor, precision = _restore(
        path,
        map_location,
        allow_targets,
        lambda config, vocab: Predictor(config.build_model(), config.tag_scheme(), vocab),
    )
    predictor.precision = precision  # the training precision's autocast, as chaincrf-eval
    predictor.model.to(map_location).eval()
    return predictor


def _restore(
    path: str | Path,
    map_location: str | torch.device,
    allow_targets: Sequence[str],
    build: Callable[[TaggerConfig, dict[str, Any] | None], Built],
) -> tuple[Built, str | None]:
    """The one reader behind :func:`load` and :func:`load_predictor`: the model file read as
    data, ``build(config, vocab)`` (anything with ``.model`` and ``.sentence_encoder``), the
    vocabularies checked, the network's weights loaded; every error one
    :class:`~chaincrf.files.model_files.ModelFileError` naming the file. Returns what ``build``
    built and the precision the model was trained in (None when the file does not say)."""
    from chaincrf.files.model_files import ModelFileError, read_model

    stored = read_model(path, TaggerConfig.field_names(), map_location, allow_targets)
    try:
        built = build(TaggerConfig(**stored.hparams), stored.vocab)
        if stored.vocab is not None:
            built.sentence_encoder  # noqa: B018 - checks the vocabularies now, not at predict
    except (ValueError, TypeError, KeyError) as error:
        raise ModelFileError(
            f"{stored.source}: does not describe a valid tagger: {error}"
        ) from None
    prefix = "model."
    weights = {k[len(prefix) :]: v for k, v in stored.state_dict.items() if k.startswith(prefix)}
    try:
        built.model.load_state_dict(weights)
    except RuntimeError as error:
        raise ModelFileError(f"{stored.source}: weights do not fit the model: {error}") from None
    return built, stored.precision


def save(tagger: Tagger, directory: str | Path) -> Path:
    """Write ``weights.pt`` (state dict), ``config.json`` (hyper-parameters) and ``vocab.json``
    into ``directory``; :func:`load` reads them back."""
    from chaincrf.files.model_files import BUNDLE_FORMAT

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(tagger.state_dict(), directory / "weights.pt")
    config: dict[str, Any] = {"format": BUNDLE_FORMAT, "hparams": dict(tagger.hparams)}
    if getattr(tagger, "trained_precision", None) is not None:
        config["precision"] = tagger.trained_precision
    (directory / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    tagger.sentence_encoder.save(directory / "vocab.json")  # the data's one writer
    return directory
