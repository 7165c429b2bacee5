"""The training system: :class:`SequenceTagger`, the ``LightningModule`` around the network.

It builds the network from plain hyper-parameters (:mod:`chaincrf.tagger.hparams`), computes the
loss, runs the metrics of each stage, configures the optimiser and scheduler and turns decoded
ids back into labels. Prediction is :mod:`chaincrf.tagger.predictor`'s, model files are
:mod:`chaincrf.tagger.bundle`'s; the methods here only call them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from chaincrf.constraints import TagScheme
from chaincrf.crf import NonFiniteInputError
from chaincrf.model_files import CHECKPOINT_KEY
from chaincrf.spec import build_from_spec
from chaincrf.tagger import bundle, hparams
from chaincrf.tagger.outputs import TaggedSentence
from chaincrf.tagger.predictor import Predictor
from chaincrf.training import check_loss

__all__ = ["SequenceTagger"]


class SequenceTagger(pl.LightningModule):
    """The training system around :class:`TaggerModel`.

    Span tasks (a tag scheme is given: NER, chunking) report span precision/recall/F1 computed on
    the corpus's ORIGINAL scheme with seqeval's semantics, plus token accuracy; tag tasks (POS)
    report token accuracy. ``val/score`` is the dev F1 for span tasks and the dev accuracy
    otherwise: the metric checkpoints and early stopping watch.

    Args:
        labels: tag names in id order, in the training scheme (length K).
        num_words: size of the word vocabulary.
        num_chars: size of the character vocabulary.
        embeddings: spec of the token embedder, ``{"_target_": ..., **kwargs}``; ``num_words``,
            ``num_chars``, ``pretrained`` (and ``feature_sizes``) are filled in.
        encoder: spec of the encoder; ``input_dim`` is filled in.
        scheme: the training tag scheme (``"IOB1"``, ``"BIO"``, ``"BIOES"``), or None for tags
            without spans (POS).
        original_scheme: the scheme of the corpus files, used for span metrics and output;
            defaults to ``scheme``.
        use_crf: CRF output layer (True) or the softmax baseline (False).
        constrain: apply the scheme's transition constraints in the CRF (training and decoding).
        dropout: dropout on the encoder output, before the projection (the BiLSTM applies
            none of its own there; the cnn and transformer encoders drop out inside their layers).
        optimizer: spec of the optimiser, called with the parameters; default Adam, lr 1e-3.
        word_lr_scale: learning-rate multiplier of the word-embedding table (its own parameter
            group): 1.0 trains it like the rest, 0.0 keeps it fixed while every other weight
            trains.
        scheduler: spec of a learning-rate scheduler or None. ``ReduceLROnPlateau`` watches
            ``monitor``.
        scheduler_interval: ``"epoch"`` or ``"step"``.
        monitor: the metric a plateau scheduler watches.
        pretrained: float (num_words, word_dim) initial word vectors; not stored in the
            hyper-parameters (the trained weights are in the state dict).
        vocab: the vocabularies as JSON-able data (``SentenceEncoder.to_dict()``); stored in the
            checkpoint, not in the hyper-parameters. Needed by :meth:`predict`.
        feature_sizes: vocabulary size of each feature column the data reads beside the token
            (``TaggingDataModule.feature_sizes``); empty for token-only models.

    Raises:
        ValueError/TypeError: for any inconsistent argument, at construction.
    """

    def __init__(
        self,
        labels: Sequence[str],
        num_words: int,
        num_chars: int,
        embeddings: Mapping[str, Any],
        encoder: Mapping[str, Any],
        scheme: str | None = None,
        original_scheme: str | None = None,
        use_crf: bool = True,
        constrain: bool = True,
        dropout: float = 0.0,
        optimizer: Mapping[str, Any] | None = None,
        word_lr_scale: float = 1.0,
        scheduler: Mapping[str, Any] | None = None,
        scheduler_interval: str = "epoch",
        monitor: str = "val/score",
        pretrained: Tensor | None = None,
        vocab: Mapping[str, Any] | None = None,
        feature_sizes: Sequence[int] = (),
    ) -> None:
        super().__init__()
        checked = hparams.checked(
            labels, num_words, num_chars, embeddings, encoder, scheme, original_scheme,
            use_crf, constrain, dropout, optimizer, word_lr_scale, scheduler,
            scheduler_interval, monitor, pretrained, feature_sizes,
        )  # fmt: skip
        self.save_hyperparameters(checked)
        self.labels: list[str] = checked["labels"]
        self.scheme = checked["scheme"]
        self.original_scheme = checked["original_scheme"]
        self.tags = TagScheme(self.labels, self.scheme, self.original_scheme)
        self.vocab: dict[str, Any] | None = (
            hparams.as_plain(vocab, "vocab") if vocab is not None else None
        )
        self.model = hparams.build_model(checked, pretrained)

        from chaincrf.metrics import LabelConfusion, SpanF1, TokenAccuracy

        self.span_metrics = nn.ModuleDict()
        self.acc_metrics = nn.ModuleDict()
        self.confusion_metrics = nn.ModuleDict()
        for stage in ("val", "test"):
            self.acc_metrics[stage] = TokenAccuracy()
            self.confusion_metrics[stage] = LabelConfusion(self.confusion_labels)
            if self.is_span_task:
                self.span_metrics[stage] = SpanF1(
                    self.entity_types,
                    scheme=self.original_scheme,
                    strict=self.original_scheme == "BIOES",
                )
        self.confusion: dict[str, Tensor] = {}  # stage -> (K, K) counts [gold, predicted]
        self.results: dict[str, dict[str, float]] = {}
        self.trained_tokens = 0  # real tokens seen by training_step in this process (throughput)

    # ------------------------------------------------------------------ construction helpers
    @property
    def is_span_task(self) -> bool:
        """True when the tags have a span scheme (NER, chunking), False for POS-like tags."""
        return self.tags.is_span_task

    @property
    def entity_types(self) -> list[str]:
        """Sorted span types, e.g. ``["LOC", "MISC", "ORG", "PER"]`` (empty for POS)."""
        return self.tags.entity_types

    @property
    def confusion_labels(self) -> list[str]:
        """The labels of :attr:`confusion`'s rows and columns: the corpus's own labels for span
        tasks (as scored), the tags otherwise."""
        return self.original_labels if self.is_span_task else list(self.labels)

    @property
    def original_labels(self) -> list[str]:
        """The label set as the corpus writes it (original scheme), for tables and plots."""
        return self.tags.original_labels

    def ids_to_labels(self, ids: Tensor, mask: Tensor) -> list[list[str]]:
        """Tag ids (batch, seq_len) -> lists of training-scheme labels, cut at each length."""
        return self.tags.decode_batch(ids, mask)

    def to_original(self, tags: list[str]) -> list[str]:
        """One sentence's training-scheme tags in the corpus's original scheme."""
        return self.tags.to_original(tags)

    # ------------------------------------------------------------------ Lightning hooks
    def forward(self, batch: Mapping[str, Any]) -> Tensor:
        """Emissions, float (batch, seq_len, num_tags)."""
        return self.model.emissions(batch)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        mask = batch["mask"]
        emissions = self.model.emissions(batch)
        try:
            loss = self.model.loss(emissions, batch["tags"], mask)
        except NonFiniteInputError:
            # NaN/inf scores make a non-finite loss: on_before_backward stops the run, naming
            # the step, on every rank at once.
            loss = emissions.sum() * float("nan")
        tokens = int(mask.sum())
        self.trained_tokens += tokens
        self.log(
            "train/loss",
            loss,
            on_step=False,
            on_epoch=True,
            sync_dist=True,
            batch_size=max(tokens, 1),
        )
        self.log(
            "loss", loss, on_step=True, on_epoch=False, prog_bar=True, logger=False, batch_size=1
        )
        return loss

    def on_before_backward(self, loss: Tensor) -> None:
        """Stop at the first NaN or infinite training loss, before it changes any weight."""
        if self._trainer is not None:
            check_loss(self._trainer, loss)

    def _eval_step(self, batch: Mapping[str, Any], stage: str) -> None:
        mask = batch["mask"]
        gold = batch["tags"]
        emissions = self.model.emissions(batch)
        loss = self.model.loss(emissions, gold, mask)
        self.log(
            f"{stage}/loss",
            loss,
            on_step=False,
            on_epoch=True,
            sync_dist=True,
            batch_size=max(int(mask.sum()), 1),
        )
        predicted = self.model.decode(emissions, mask)  # (B, T), -1 off the mask
        self.acc_metrics[stage].update(predicted, gold, mask)
        if self.is_span_task:
            pred_labels = [self.to_original(t) for t in self.ids_to_labels(predicted, mask)]
            gold_labels = [self.to_original(t) for t in self.ids_to_labels(gold, mask)]
            self.span_metrics[stage].update(pred_labels, gold_labels)
            # the confusion over the labels as scored (the corpus's scheme), not the training's
            self.confusion_metrics[stage].update_labels(gold_labels, pred_labels)
        else:
            self.confusion_metrics[stage].update(predicted[mask], gold[mask])

    def _eval_epoch_end(self, stage: str) -> None:
        results: dict[str, float] = {}
        accuracy = float(self.acc_metrics[stage].compute())
        self.acc_metrics[stage].reset()
        results[f"{stage}/acc"] = accuracy
        if self.is_span_task:
            span = self.span_metrics[stage].compute()
            self.span_metrics[stage].reset()
            for key, value in _flatten_span_results(span).items():
                results[f"{stage}/{key}"] = value
            results[f"{stage}/score"] = results[f"{stage}/f1"]
        else:
            results[f"{stage}/score"] = accuracy
        # The metric states are synced across ranks by torchmetrics, so every rank holds the
        # same figures: sync_dist's mean over ranks leaves them as they are (and is what tells
        # Lightning that they are reduced).
        self.log_dict({k: v for k, v in results.items() if k != f"{stage}/score"}, sync_dist=True)
        self.log(f"{stage}/score", results[f"{stage}/score"], prog_bar=True, sync_dist=True)
        self.results[stage] = results
        confusion = self.confusion_metrics[stage]
        if confusion.update_count:  # synced across ranks by torchmetrics, as the other metrics
            self.confusion[stage] = confusion.compute().cpu()
        confusion.reset()

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(
        self, batch: Mapping[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> list[TaggedSentence]:
        """Tag a batch: labels (original scheme), token marginals and span confidences.

        Returns:
            One :class:`TaggedSentence` per batch row; its ``index`` order is the batch's, use
            ``batch["index"]`` to restore the corpus order.
        """
        return self.predictor.tag_batch(batch)

    def configure_optimizers(self) -> Any:
        scale = self.hparams.get("word_lr_scale", 1.0)
        spec = self.hparams.optimizer
        trainer = self._trainer
        if (
            trainer is not None
            and str(trainer.precision).endswith("-mixed")
            and trainer.gradient_clip_val
            and isinstance(spec, Mapping)
            and spec.get("fused")
        ):
            # A fused optimizer unscales gradients itself, so Lightning's mixed-precision plugin
            # refuses to clip them: the plain (for-each) implementation, same updates.
            spec = {**spec, "fused": False}
        # the trainable word table: the per-word correction with word_adapter, else the table
        word = getattr(self.model.embedder, "word_residual", None) or getattr(
            self.model.embedder, "word_embedding", None
        )
        if scale == 1.0 or word is None:
            optimizer = build_from_spec(spec, "optimizer", self.parameters())
        else:
            rest = [p for p in self.parameters() if p is not word.weight]
            groups = [{"params": rest}, {"params": [word.weight]}]
            optimizer = build_from_spec(spec, "optimizer", groups)
            optimizer.param_groups[1]["lr"] *= scale  # before any scheduler reads initial_lr
        spec = self.hparams.scheduler
        if spec is None:
            return optimizer
        scheduler = build_from_spec(spec, "scheduler", optimizer)
        config = {"scheduler": scheduler, "interval": self.hparams.scheduler_interval}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = self.hparams.monitor
            config["strict"] = False  # epochs without validation (overfit, val every n) just skip
            if trainer is not None and trainer.check_val_every_n_epoch is None:
                # dev evaluated every N steps (budget.eval_every): step the plateau after each
                config.update(interval="step", frequency=int(trainer.val_check_interval))
        return {"optimizer": optimizer, "lr_scheduler": config}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # the plateau scheduler's resume value is ReplayPlateauStep's (chaincrf.training)
        checkpoint.setdefault(CHECKPOINT_KEY, {}).update(format=1, vocab=self.vocab)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        stored = checkpoint.get(CHECKPOINT_KEY)
        if stored is not None and stored.get("vocab") is not None:
            self.vocab = stored["vocab"]

    # ------------------------------------------------------------------ inference API
    @classmethod
    def load(
        cls,
        path: str | Path,
        map_location: str | torch.device = "cpu",
        allow_targets: Sequence[str] = (),
    ) -> SequenceTagger:
        """Rebuild a trained tagger from a checkpoint, a bundle, or the name of an installed
        model package (``SequenceTagger.load("en_ewt_upos")``; :mod:`chaincrf.models`), as data
        (:func:`chaincrf.tagger.bundle.load`: arguments, errors)."""
        return bundle.load(cls, path, map_location, allow_targets)

    def save_bundle(self, directory: str | Path) -> Path:
        """Write the tagger as a bundle directory (:func:`chaincrf.tagger.bundle.save`)."""
        return bundle.save(self, directory)

    def save_pretrained(
        self, folder: str | Path, card: str | None = None, metadata: Mapping[str, Any] | None = None
    ) -> Path:
        """Write the tagger in the Hugging Face Hub layout, a bundle with a model card
        (:func:`chaincrf.tagger.hub.save_pretrained`: arguments)."""
        from chaincrf.tagger import hub

        return hub.save_pretrained(self, folder, card, metadata)

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | Path,
        revision: str | None = None,
        map_location: str | torch.device = "cpu",
        allow_targets: Sequence[str] = (),
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
    ) -> SequenceTagger:
        """Load a folder written by :meth:`save_pretrained`, or a Hugging Face Hub repository
        id (the ``hub`` extra) (:func:`chaincrf.tagger.hub.from_pretrained`: arguments,
        errors)."""
        from chaincrf.tagger import hub

        return hub.from_pretrained(
            cls, path_or_repo_id, revision, map_location, allow_targets, cache_dir, local_files_only
        )

    @property
    def predictor(self) -> Predictor:
        """The :class:`~chaincrf.tagger.predictor.Predictor` over this tagger's network, tags
        and vocabularies (a new one when the vocabularies were replaced)."""
        cached = self.__dict__.get("_predictor")
        if cached is None or cached.vocab is not self.vocab:
            cached = self.__dict__["_predictor"] = Predictor(self.model, self.tags, self.vocab)
        return cached

    def predict(
        self,
        sentences: Sequence[str] | Sequence[Sequence[str]] | Sequence[Any],
        batch_size: int = 128,
        top_k: int = 1,
    ) -> list[TaggedSentence]:
        """Tag sentences, results in input order (:meth:`Predictor.predict`; ``top_k`` > 1
        adds the k best taggings with their probabilities)."""
        return self.predictor.predict(sentences, batch_size, top_k=top_k)

    def predict_iter(
        self,
        sentences: Iterable[str] | Iterable[Sequence[str]] | Iterable[Any],
        batch_size: int = 128,
        chunk_size: int = 2048,
        top_k: int = 1,
    ) -> Iterator[TaggedSentence]:
        """Tag a stream lazily, in bounded memory (:meth:`Predictor.predict_iter`)."""
        return self.predictor.predict_iter(sentences, batch_size, chunk_size, top_k=top_k)

    def encode(
        self,
        token_lists: Sequence[Sequence[str]],
        feature_lists: Sequence[Sequence[Sequence[str]] | None] | None = None,
    ) -> dict[str, Any]:
        """A batch of token lists, as in training (:meth:`Predictor.encode`)."""
        return self.predictor.encode(token_lists, feature_lists)

    @property
    def sentence_encoder(self) -> Any:
        """The :class:`chaincrf.data.vocab.SentenceEncoder` of the stored vocabularies."""
        return self.predictor.sentence_encoder

    @classmethod
    def from_datamodule(
        cls,
        datamodule: Any,
        embeddings: Mapping[str, Any],
        encoder: Mapping[str, Any],
        **kwargs: Any,
    ) -> SequenceTagger:
        """Build a tagger sized for a set-up :class:`chaincrf.data.TaggingDataModule`.

        Labels, vocabulary sizes, schemes, pretrained vectors and the vocabularies come from the
        data module; ``kwargs`` are the remaining :class:`SequenceTagger` arguments.
        """
        vocabs = datamodule.vocabs
        return cls(
            labels=list(datamodule.tag_names),
            num_words=len(vocabs["words"]),
            num_chars=len(vocabs["chars"]),
            feature_sizes=datamodule.feature_sizes,
            embeddings=embeddings,
            encoder=encoder,
            scheme=datamodule.scheme,
            original_scheme=datamodule.original_scheme,
            pretrained=datamodule.pretrained_vectors,
            vocab=datamodule.encoder.to_dict(),
            **kwargs,
        )


def _flatten_span_results(span: Mapping[str, Any]) -> dict[str, float]:
    """``SpanF1.compute()`` -> flat floats: ``{"f1": .., "precision": .., "f1_PER": .., ...}``."""
    flat: dict[str, float] = {}
    for key, value in span.items():
        metric, _, type_ = key.partition("/")
        name = f"{metric}_{type_}" if type_ else metric
        flat[name] = float(value.item()) if isinstance(value, Tensor) else float(value)
    return flat
