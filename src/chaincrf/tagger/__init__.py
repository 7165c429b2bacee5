"""The sequence tagger: token features -> encoder -> linear projection -> CRF.

A few modules, one job each:

- :mod:`~chaincrf.tagger.network`: :class:`TaggerModel`, the plain ``nn.Module`` (embeddings,
  encoder, projection, CRF or softmax) with ``emissions``, ``loss``, ``decode``, ``marginals``;
- :mod:`~chaincrf.tagger.hparams`: :class:`TaggerConfig`, what a tagger is as plain data
  (``_target_`` specs, no Hydra object, no pickled module), and the network built from it;
- :mod:`~chaincrf.tagger.module`: :class:`SequenceTagger`, the ``LightningModule`` that trains
  and evaluates the network (build, step, log, optimise); :mod:`~chaincrf.tagger.serving` gives
  it its load / save / predict API, :mod:`~chaincrf.tagger.schedule` its optimiser;
- :mod:`~chaincrf.tagger.streaming`: prediction over streams (tokenising, chunks, length-sorted
  batches, input order), whatever engine tags the batches;
  :mod:`~chaincrf.tagger.predictor`: the PyTorch engine, :class:`TaggedSentence` out with
  confidences and top-k alternatives;
- :mod:`~chaincrf.tagger.tokenizers`: raw text to tokens with character offsets (spaCy's
  rule-based English tokenizer, or whitespace);
- :mod:`~chaincrf.tagger.bundle`: model files read as data, bundles written;
- :mod:`~chaincrf.tagger.outputs`: the output types and :func:`tokenize` (the whitespace rule);
  :mod:`~chaincrf.tagger.schedule`: :class:`InverseTimeDecay`;
- :mod:`~chaincrf.tagger.export`: the whole network as one graph, saved as TorchScript or ONNX;
  :mod:`~chaincrf.tagger.onnx_predictor`: :class:`OnnxPredictor` runs the ONNX one with
  onnxruntime and numpy only.

Each name is imported on first use: ``SequenceTagger`` needs Lightning; loading a model file
for prediction (:func:`chaincrf.tagger.bundle.load_predictor`) needs torch only.
"""

from typing import Any

_HOMES = {
    "InverseTimeDecay": "schedule",
    "OnnxPredictor": "onnx_predictor",
    "Predictor": "predictor",
    "SequenceTagger": "module",
    "TaggerConfig": "hparams",
    "TaggedSentence": "outputs",
    "TaggedSpan": "outputs",
    "TaggerModel": "network",
    "tokenize": "outputs",
}
"""Where each public name lives, imported on first use: ``SequenceTagger`` needs Lightning,
most of the rest torch, :class:`OnnxPredictor` onnxruntime and numpy only."""

__all__ = [
    "InverseTimeDecay",
    "OnnxPredictor",
    "Predictor",
    "SequenceTagger",
    "TaggedSentence",
    "TaggerConfig",
    "TaggedSpan",
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

    return getattr(importlib.import_module(f"chaincrf.tagger.{home}"), name)
