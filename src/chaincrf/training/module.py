"""The training system: :class:`SequenceTagger`, the ``LightningModule`` around the network.

It builds the network from a :class:`~chaincrf.network.config.TaggerConfig`, computes the loss,
logs each stage's metrics (:class:`~chaincrf.training.metrics.StageMetrics`) and configures the
optimiser (:func:`~chaincrf.training.schedule.configure_optimizers`). Loading, saving and tagging
are :class:`~chaincrf.predict.serving.ServingMixin`'s.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, cast

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from chaincrf.crf import NonFiniteInputError
from chaincrf.files.model_files import CHECKPOINT_KEY
from chaincrf.network.config import TaggerConfig, as_plain
from chaincrf.predict.outputs import TaggedSentence
from chaincrf.predict.serving import ServingMixin
from chaincrf.training import schedule
from chaincrf.training.callbacks import LossCheck
from chaincrf.training.metrics import StageMetrics, TokenMean

__all__ = ["SequenceTagger"]


class SequenceTagger(ServingMixin, pl.LightningModule):
    """The training system around :class:`~chaincrf.network.model.TaggerModel`.

    Span tasks (a tag scheme is given: NER, chunking) report span precision/recall/F1 computed on
    the corpus's ORIGINAL scheme with seqeval's semantics, plus token accuracy; tag tasks (POS)
    report token accuracy. ``val/score`` is the dev F1 for span tasks and the dev accuracy
    otherwise: the metric checkpoints and early stopping watch.

    Build it from a :class:`~chaincrf.network.config.TaggerConfig`, or from that config's
    fields as arguments (``SequenceTagger(labels=..., num_words=..., ...)``, as Lightning's
    ``load_from_checkpoint`` does), or sized by a data module (:meth:`from_datamodule`).

    Args:
        *args: a :class:`~chaincrf.network.config.TaggerConfig` (what the tagger is: labels,
            sizes, module specs, optimisation), or its fields in order.
        pretrained: float (num_words, word_dim) initial word vectors; not stored in the
            hyper-parameters (the trained weights are in the state dict).
        vocab: the vocabularies as JSON-able data (``SentenceEncoder.to_dict()``); stored in the
            checkpoint, not in the hyper-parameters. Needed by :meth:`predict`.
        **fields: the config's fields by name, instead of a config.

    Attributes:
        config: the :class:`~chaincrf.network.config.TaggerConfig`.
        model: the network (:class:`~chaincrf.network.model.TaggerModel`).
        tags: the :class:`~chaincrf.data.schemes.TagScheme`.
        results: each stage's last figures (``results["val"]["val/f1"]``).
        confusion: each stage's last (L, L) confusion counts ``[gold, predicted]``.
        trained_tokens: the real tokens training saw in this process (a tensor on the device,
            read once at the end of a run).
        step_loss: the last training step's loss (a tensor on the device; the progress bar
            reads it at most once a second; None before training).
        loss_check: the :class:`~chaincrf.training.callbacks.LossCheck` that stops training at
            the first non-finite loss (``LossCheck(every)`` to read the losses every ``every``
            steps; by default each step's on the CPU, every 50 steps' on an accelerator).
        trained_precision: the precision it was trained in (Lightning's name, stored in its
            checkpoints; None for a model file that predates it): ``chaincrf-eval`` evaluates
            in it, so that it reproduces the figures the run reported.

    Raises:
        ValueError/TypeError: for any inconsistent argument, at construction.
    """

    def __init__(
        self,
        *args: Any,
        pretrained: Tensor | None = None,
        vocab: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> None:
        super().__init__()
        if len(args) == 1 and isinstance(args[0], TaggerConfig) and not fields:
            config = args[0]
        else:
            config = TaggerConfig(*args, **fields)
        self.config = config
        self.save_hyperparameters(config.to_dict())
        self.labels: list[str] = config.labels
        self.tags = config.tag_scheme()
        self.vocab: dict[str, Any] | None = as_plain(vocab, "vocab") if vocab is not None else None
        self.model = config.build_model(pretrained)
        self.metrics = nn.ModuleDict({stage: StageMetrics(self.tags) for stage in ("val", "test")})
        self.train_loss = TokenMean()  # the epoch's loss per token; loss_check stops at a NaN
        self.results: dict[str, dict[str, float]] = {}
        self.confusion: dict[str, Tensor] = {}
        self.trained_tokens: Tensor | int = 0  # a device tensor once training has stepped
        self.step_loss: Tensor | None = None
        self.loss_check = LossCheck()
        self.trained_precision: str | None = None
        self._compile: tuple[str | None] | None = None  # (mode,) after compile_training()
        self._compiled_loss: Any = None  # built at the first step (not pickled: ddp_spawn)

    def compile_training(self, mode: str | None = None) -> None:
        """Run each training step's network (embedding, encoder, projection, CRF loss, and
        their backward) through ``torch.compile`` (``mode``: e.g. ``"reduce-overhead"`` for
        CUDA graphs where the shapes repeat: ``data.length_buckets``). Logging stays eager.
        The graphs break only around the LSTMs, which run eagerly in their native kernels, and
        on the CPU around the paths that read the host
        (:func:`chaincrf.network.encoders.base.eagerly`).
        Compiled, the CRF's input checks are off (inside a graph they would be device
        asserts): a non-finite score makes a non-finite loss, which stops the run before the
        backward (:meth:`on_before_backward`)."""
        if getattr(self.model.encoder, "needs_tokens", False):
            raise ValueError(
                "compile needs an encoder that reads token ids only; "
                f"{type(self.model.encoder).__name__} reads the token strings"
            )
        self._compile = (mode,)
        self._compiled_loss = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())
        state["_compiled_loss"] = None  # rebuilt where it runs
        return state

    def _step_loss(self, tensors: dict[str, Tensor], validate: bool) -> Tensor:
        if self._compile is None:
            return self._network_loss(tensors, validate)
        if self._compiled_loss is None:
            unchecked = functools.partial(self._network_loss, validate=False)
            self._compiled_loss = torch.compile(unchecked, mode=self._compile[0])
        loss: Tensor = self._compiled_loss(tensors)
        return loss

    def _network_loss(self, tensors: dict[str, Tensor], validate: bool = True) -> Tensor:
        emissions = self.model.emissions(tensors)
        return self.model.loss(emissions, tensors["tags"], tensors["mask"], validate=validate)

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
        data module; ``kwargs`` are the remaining :class:`TaggerConfig` fields.
        """
        vocabs = datamodule.vocabs
        config = TaggerConfig(
            labels=list(datamodule.tag_names),
            num_words=len(vocabs["words"]),
            num_chars=len(vocabs["chars"]),
            feature_sizes=datamodule.feature_sizes,
            embeddings=dict(embeddings),
            encoder=dict(encoder),
            scheme=datamodule.scheme,
            original_scheme=datamodule.original_scheme,
            **kwargs,
        )
        return cls(
            config, pretrained=datamodule.pretrained_vectors, vocab=datamodule.encoder.to_dict()
        )

    # ------------------------------------------------------------------ steps
    def forward(self, batch: Mapping[str, Any]) -> Tensor:
        """Emissions, float (batch, seq_len, num_tags)."""
        return self.model.emissions(batch)

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        mask = batch["mask"]
        tensors = {k: v for k, v in batch.items() if isinstance(v, Tensor) and k != "index"}
        if getattr(self.model.encoder, "needs_tokens", False):
            tensors["tokens"] = batch["tokens"]
        # The CRF's input checks read a flag on the host (a synchronisation on a GPU): off where
        # the loss check reads the losses only every few steps, which then catches a NaN score
        # (it makes a NaN loss). The tags come from the vocabularies, in range.
        validate = self.loss_check.steps_between_reads(mask.device) == 1
        try:
            loss = self._step_loss(tensors, validate)
        except NonFiniteInputError:
            # NaN/inf scores make a non-finite loss: on_before_backward stops the run, naming
            # the step, on every rank at once.
            loss = self.model.emissions(batch).sum() * float("nan")
        tokens = mask.sum()  # stays on the device: no host synchronisation here
        self.trained_tokens = self.trained_tokens + tokens.detach()
        self.train_loss.update(loss.detach(), tokens)  # the epoch's token-weighted mean
        self.log("train/loss", self.train_loss, on_step=False, on_epoch=True)
        # the bar's figure, kept on the device: logged with prog_bar=True, Lightning would copy
        # it to the host after every step (a synchronisation per step on a GPU). A copy: under
        # compile_mode=reduce-overhead the loss lives in a CUDA graph's memory, which the next
        # step's replay overwrites.
        self.step_loss = loss.detach().clone()
        return loss

    def on_before_backward(self, loss: Tensor) -> None:
        """Stop at the first NaN or infinite training loss (:attr:`loss_check`)."""
        if self._trainer is not None:
            self.loss_check.step(self._trainer, loss)

    def _read_losses(self) -> None:
        if self._trainer is not None:
            self.loss_check.flush(self._trainer)

    def on_train_epoch_end(self) -> None:
        self._read_losses()

    def on_validation_start(self) -> None:
        self._read_losses()  # a NaN step's weights are not evaluated

    def on_train_end(self) -> None:
        self._read_losses()

    def _eval_step(self, batch: Mapping[str, Any], stage: str) -> None:
        mask, gold = batch["mask"], batch["tags"]
        emissions = self.model.emissions(batch)
        loss = self.model.loss(emissions, gold, mask)
        metrics = cast(StageMetrics, self.metrics[stage])
        metrics.loss.update(loss.detach(), mask.sum())
        self.log(f"{stage}/loss", metrics.loss, on_step=False, on_epoch=True)
        predicted = self.model.decode(emissions, mask)  # (B, T), -1 off the mask
        metrics.update(predicted, gold, mask)

    def _eval_epoch_end(self, stage: str) -> None:
        results, confusion = self.metrics[stage].compute(stage)
        # The metric states are synced across ranks by torchmetrics, so every rank holds the
        # same figures: sync_dist's mean over ranks leaves them as they are (and is what tells
        # Lightning that they are reduced).
        score = f"{stage}/score"
        self.log_dict({k: v for k, v in results.items() if k != score}, sync_dist=True)
        self.log(score, results[score], prog_bar=True, sync_dist=True)
        self.results[stage] = results
        if confusion is not None:
            self.confusion[stage] = confusion

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

    # ------------------------------------------------------------------ optimisation, files
    def configure_optimizers(self) -> Any:
        return schedule.configure_optimizers(self.model, self.config, self._trainer)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._read_losses()  # no checkpoint holds a NaN step's update
        # the plateau scheduler's resume value is ReplayPlateauStep's (chaincrf.training.callbacks)
        if self._trainer is not None:
            self.trained_precision = str(self._trainer.precision)
        stored = checkpoint.setdefault(CHECKPOINT_KEY, {})
        stored.update(format=1, vocab=self.vocab, precision=self.trained_precision)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        stored = checkpoint.get(CHECKPOINT_KEY)
        if stored is not None and stored.get("vocab") is not None:
            self.vocab = stored["vocab"]
        if stored is not None:
            self.trained_precision = stored.get("precision")
