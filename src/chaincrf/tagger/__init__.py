"""The tagger's public names, in one place: ``from chaincrf.tagger import SequenceTagger``.

The tagger itself lives by role: the network in :mod:`chaincrf.network` (:class:`TaggerConfig`,
:class:`TaggerModel`, embeddings, encoders), the training system in :mod:`chaincrf.training`
(:class:`SequenceTagger`, callbacks, metrics, report), prediction in :mod:`chaincrf.predict`
(:class:`Predictor`, :class:`OnnxPredictor`, streaming, tokenizers, export, loading) and model
files read as data in :mod:`chaincrf.files`. The old module paths (``chaincrf.tagger.bundle``, ...) still import:
:mod:`chaincrf` aliases them.

Each name is imported on first use: ``SequenceTagger`` needs Lightning; loading a model file
for prediction (:func:`chaincrf.predict.bundle.load_predictor`) needs torch only, and
:class:`OnnxPredictor` onnxruntime and numpy only.
"""

from typing import Any

_HOMES = {
    "InverseTimeDecay": "chaincrf.training.schedule",
    "OnnxPredictor": "chaincrf.predict.onnx_predictor",
    "Predictor": "chaincrf.predict.predictor",
    "SequenceTagger": "chaincrf.training.module",
    "TaggerConfig": "chaincrf.network.config",
    "TaggedSentence": "chaincrf.predict.outputs",
    "TaggedSpan": "chaincrf.predict.outputs",
    "TaggerModel": "chaincrf.network.model",
    "tokenize": "chaincrf.predict.outputs",
}
"""Where each public name lives, imported on first use: ``SequenceTagger`` needs Lightning,
most of the rest torch, :class:`OnnxPredictor` onnxruntime and numpy only."""

__all__ = [
    "InverseTimeDecay",
    "OnnxPredictor",
    "Predictor",
    "SequenceTagger",
    "TaggedSentence",
    "TaggedSpan",
    "TaggerConfig",
    "TaggerModel",
    "tokenize",
]


def __getattr__(name: str) -> Any:
    if name == "build_from_spec":  # kept for old imports; chaincrf.spec is its home
        from chaincrf.spec import build_from_spec

        return build_from_spec
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(home), name)
