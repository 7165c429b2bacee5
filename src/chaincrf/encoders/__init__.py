"""Contextual encoders: ``forward(features, mask, tokens=None) -> (B, T, output_dim)``.

One module per encoder, each with one class; a Hydra config in ``conf/encoder/`` names it by its
full path (``_target_: chaincrf.encoders.bilstm.BiLSTMEncoder``), so adding an encoder is one file
here plus one config, and nothing else changes:

- :mod:`~chaincrf.encoders.bilstm`: a (multi-layer) bidirectional LSTM over packed sequences.
- :mod:`~chaincrf.encoders.cnn`: stacked, dilated 1-D convolutions.
- :mod:`~chaincrf.encoders.transformer`: a Transformer encoder trained from scratch.
- :mod:`~chaincrf.encoders.pretrained`: a Hugging Face encoder from a local path, subwords
  pooled back to words (needs the ``transformers`` extra).
- :mod:`~chaincrf.encoders.identity`: the features unchanged.

The contract every encoder follows is :class:`~chaincrf.encoders.base.Encoder`.
"""

from chaincrf.encoders.base import Encoder, check_inputs

__all__ = ["Encoder", "check_inputs"]
