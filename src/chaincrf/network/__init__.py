"""The network: what turns tokens into tag scores and decodes them, as plain ``nn.Module`` s.

- :mod:`~chaincrf.network.config`: :class:`TaggerConfig`, what a tagger is as plain data, and
  the network built from it;
- :mod:`~chaincrf.network.model`: :class:`TaggerModel` (embeddings -> encoder -> projection ->
  CRF or softmax);
- :mod:`~chaincrf.network.embeddings`: the token embedder (words, characters, casing, feature
  columns); :mod:`~chaincrf.network.encoders`: the contextual encoders;
- :mod:`~chaincrf.network.precision`: the recurrent layers' precision under autocast.

Nothing here knows about training, labels on disk, or files.
"""
