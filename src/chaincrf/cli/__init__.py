"""Command-line entry points; the only part of chaincrf that imports Hydra.

- ``chaincrf-train`` (:mod:`chaincrf.cli.train`): train a tagger from ``conf/train.yaml``.
- ``chaincrf-eval`` (:mod:`chaincrf.cli.evaluate`): the training metrics again, from a checkpoint.
- ``chaincrf-predict`` (:mod:`chaincrf.cli.predict`): tag raw text or a CoNLL file.
- ``chaincrf-export`` (:mod:`chaincrf.cli.export`): a checkpoint as a plain weights + JSON bundle.
"""
