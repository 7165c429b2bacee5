"""Contextual encoders: ``forward(features, mask, tokens=None) -> (B, T, output_dim)``.

One module per encoder, each with one class; a Hydra config in ``conf/encoder/`` names it by its
full path (``_target_: chaincrf.network.encoders.bilstm.BiLSTMEncoder``), so adding an encoder is one file
here plus one config, and nothing else changes:

- :mod:`~chaincrf.network.encoders.bilstm`: a (multi-layer) bidirectional LSTM over packed sequences.
- :mod:`~chaincrf.network.encoders.cnn`: stacked, dilated 1-D convolutions.
- :mod:`~chaincrf.network.encoders.transformer`: a Transformer encoder trained from scratch.
- :mod:`~chaincrf.network.encoders.pretrained`: a Hugging Face encoder from a local path, subwords
  pooled back to words (needs the ``transformers`` extra).
- :mod:`~chaincrf.network.encoders.identity`: the features unchanged.

The contract every encoder follows is :class:`~chaincrf.network.encoders.base.Encoder`.
"""

from chaincrf.network.encoders.base import Encoder, check_inputs

__all__ = ["Encoder", "check_inputs"]
