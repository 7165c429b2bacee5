"""The sequence tagger: token features -> encoder -> linear projection -> CRF.

A few modules, one job each:

- :mod:`~chaincrf.tagger.network`: :class:`TaggerModel`, the plain ``nn.Module`` (embeddings,
  encoder, projection, CRF or softmax) with ``emissions``, ``loss``, ``decode``, ``marginals``;
- :mod:`~chaincrf.tagger.hparams`: the hyper-parameters as plain data (``_target_`` specs, no
  Hydra object, no pickled module) and the network built from them;
- :mod:`~chaincrf.tagger.module`: :class:`SequenceTagger`, the ``LightningModule`` that trains
  and evaluates the network;
- :mod:`~chaincrf.tagger.predictor`: text in, :class:`TaggedSentence` out, with confidences;
- :mod:`~chaincrf.tagger.bundle`: model files read as data, bundles written;
- :mod:`~chaincrf.tagger.outputs`: the output types and :func:`tokenize` (raw text is split on
  whitespace: ``"EU rejects German call ."`` is five tokens; pass token lists to use your own
  tokeniser); :mod:`~chaincrf.tagger.schedule`: :class:`InverseTimeDecay`.

``SequenceTagger`` is imported on first use (it needs Lightning); loading a model file for
prediction (:func:`chaincrf.tagger.bundle.load_predictor`) needs torch only.
"""

from typing import Any

from chaincrf.spec import build_from_spec
from chaincrf.tagger.network import TaggerModel
from chaincrf.tagger.outputs import TaggedSentence, TaggedSpan, tokenize
from chaincrf.tagger.predictor import Predictor
from chaincrf.tagger.schedule import InverseTimeDecay

__all__ = [
    "InverseTimeDecay",
    "Predictor",
    "SequenceTagger",
    "TaggedSentence",
    "TaggedSpan",
    "TaggerModel",
    "build_from_spec",
    "tokenize",
]


def __getattr__(name: str) -> Any:
    if name == "SequenceTagger":
        from chaincrf.tagger.module import SequenceTagger

        return SequenceTagger
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
