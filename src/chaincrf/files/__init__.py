"""Model files read as data, never as code: a checkpoint or a bundle read without unpickling
(:mod:`~chaincrf.files.model_files`), every field typed and the sizes checked against the
weights (:mod:`~chaincrf.files.model_checks`), and installed model packages found by name
(:mod:`~chaincrf.files.models`). Imports no network, training or prediction module: loading a
tagger from these files is :mod:`chaincrf.predict.bundle`'s.
"""
