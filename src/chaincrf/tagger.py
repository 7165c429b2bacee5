"""The sequence tagger: token features -> encoder -> linear projection -> CRF.

Two layers, as the Lightning style guide asks:

- :class:`TaggerModel` is a plain ``nn.Module`` (embeddings, encoder, projection, CRF or softmax)
  with ``emissions``, ``loss``, ``decode`` and ``marginals``; it knows nothing about training.
- :class:`SequenceTagger` is the ``LightningModule`` (the *system*): it builds the model from
  plain, JSON-able specifications, computes the loss, runs the metrics of each stage, configures
  the optimiser and scheduler and turns decoded ids back into labels.

Sub-modules are described by plain ``dict`` specifications with a ``_target_`` key (the dotted path
of a class) and its keyword arguments — the same shape as a Hydra node, but no Hydra object ever
reaches this module. The tagger fills in the sizes only the data knows (``num_words``,
``num_chars``, ``input_dim``). Because the hyper-parameters are plain data, a checkpoint holds no
pickled module and :meth:`SequenceTagger.load` rebuilds everything from it, including the
vocabularies (stored in the checkpoint as JSON-able data).

Tokenisation rule for raw text: a string is split on whitespace (``str.split()``), nothing else —
``"EU rejects German call ."`` is five tokens. Pass lists of tokens to use your own tokeniser.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from chaincrf.constraints import allowed_transitions, convert_tags, get_spans, normalize_scheme
from chaincrf.crf import CRF, NonFiniteInputError
from chaincrf.model_files import CHECKPOINT_KEY
from chaincrf.spec import build_from_spec, locate
from chaincrf.training import check_loss

__all__ = [
    "InverseTimeDecay",
    "SequenceTagger",
    "TaggedSentence",
    "TaggedSpan",
    "TaggerModel",
    "build_from_spec",
    "tokenize",
]


def tokenize(text: str) -> list[str]:
    """The documented tokenisation rule for raw text: split on whitespace.

    Args:
        text: one sentence, e.g. ``"EU rejects German call ."``.

    Returns:
        The tokens, e.g. ``["EU", "rejects", "German", "call", "."]``.
    """
    return text.split()


class InverseTimeDecay(torch.optim.lr_scheduler.LRScheduler):
    """``lr = base_lr / (1 + decay * step)``, the schedule of Ma & Hovy 2016 (decay 0.05 per epoch).

    Args:
        optimizer: the wrapped optimiser.
        decay: the decay rate ``rho`` (>= 0).
        last_epoch: index of the last step, -1 to start afresh.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, decay: float = 0.05, last_epoch: int = -1):
        if not decay >= 0:
            raise ValueError(f"decay must be >= 0; got {decay!r}")
        self.decay = float(decay)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        return [base / (1.0 + self.decay * self.last_epoch) for base in self.base_lrs]


class TaggerModel(nn.Module):
    """Embeddings -> encoder -> dropout -> Linear -> CRF (or an independent softmax per token).

    Args:
        embedder: maps a batch dict to features, float (batch, seq_len, embedder.output_dim).
        encoder: ``forward(features, mask, tokens=None)`` -> (batch, seq_len, encoder.output_dim);
            its class attribute ``needs_tokens`` says whether it wants the token strings.
        num_tags: number of tags K.
        use_crf: a CRF output layer (True) or per-token softmax (False).
        constraints: ``(start_allowed (K,), end_allowed (K,), transitions_allowed (K, K))`` bool
            tensors for the CRF, or None. Ignored without a CRF.
        dropout: dropout on the encoder output.

    Raises:
        ValueError: if the encoder's ``input_dim`` differs from the embedder's ``output_dim``,
            ``num_tags < 1`` or ``dropout`` is outside [0, 1).
    """

    def __init__(
        self,
        embedder: nn.Module,
        encoder: nn.Module,
        num_tags: int,
        use_crf: bool = True,
        constraints: tuple[Tensor, Tensor, Tensor] | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        embed_dim = getattr(embedder, "output_dim", None)
        encoder_in = getattr(encoder, "input_dim", embed_dim)
        encoder_out = getattr(encoder, "output_dim", None)
        if not isinstance(embed_dim, int) or not isinstance(encoder_out, int):
            raise ValueError(
                "embedder and encoder must expose an integer output_dim; got "
                f"{type(embedder).__name__}.output_dim={embed_dim!r}, "
                f"{type(encoder).__name__}.output_dim={encoder_out!r}"
            )
        if encoder_in != embed_dim:
            raise ValueError(
                f"encoder input_dim must equal the embedder's output_dim {embed_dim}; got {encoder_in}"
            )
        if not isinstance(num_tags, int) or num_tags < 1:
            raise ValueError(f"num_tags must be a positive int; got {num_tags!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {dropout!r}")
        self.embedder = embedder
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.projection = nn.Linear(encoder_out, num_tags)
        self.crf = CRF(num_tags, batch_first=True, constraints=constraints) if use_crf else None
        self.num_tags = num_tags

    @property
    def use_crf(self) -> bool:
        return self.crf is not None

    def emissions(self, batch: Mapping[str, Any]) -> Tensor:
        """Per-token tag scores.

        Args:
            batch: the collated batch; uses ``mask`` (bool (B, T)), the embedder's inputs and,
                for encoders with ``needs_tokens``, ``tokens`` (list of token lists).

        Returns:
            float tensor (batch, seq_len, num_tags), unnormalised scores.
        """
        mask = batch["mask"]
        features = self.embedder(batch)  # (B, T, D)
        tokens = batch.get("tokens") if getattr(self.encoder, "needs_tokens", False) else None
        encoded = self.encoder(features, mask, tokens=tokens)  # (B, T, H)
        return self.projection(self.dropout(encoded))  # (B, T, K)

    def loss(self, emissions: Tensor, tags: Tensor, mask: Tensor) -> Tensor:
        """Mean negative log-likelihood per real token (CRF), or token-mean cross-entropy.

        Args:
            emissions: float (batch, seq_len, num_tags).
            tags: long (batch, seq_len), gold tag ids; padded positions are ignored.
            mask: bool (batch, seq_len), left-aligned.

        Returns:
            Scalar loss.
        """
        if self.crf is not None:
            return self.crf.nll(emissions, tags, mask, reduction="token_mean")
        log_probs = F.log_softmax(emissions.float(), dim=-1)  # (B, T, K)
        picked = log_probs.gather(-1, tags.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T)
        return -(picked * mask).sum() / mask.sum().clamp(min=1)

    def decode(self, emissions: Tensor, mask: Tensor) -> Tensor:
        """Best tag ids: Viterbi with a CRF, per-token argmax without.

        Args:
            emissions: float (batch, seq_len, num_tags).
            mask: bool (batch, seq_len), left-aligned.

        Returns:
            long (batch, seq_len); -1 where the mask is off.
        """
        if self.crf is not None:
            paths, _ = self.crf.viterbi(emissions, mask)
            return paths
        return emissions.argmax(-1).masked_fill(~mask, -1)

    def marginals(self, emissions: Tensor, mask: Tensor) -> Tensor:
        """Posterior probability of each tag at each position.

        Args:
            emissions: float (batch, seq_len, num_tags).
            mask: bool (batch, seq_len), left-aligned.

        Returns:
            float (batch, seq_len, num_tags); rows sum to 1 where the mask is on, 0 where off.
        """
        if self.crf is not None:
            return self.crf.marginals(emissions, mask)
        return F.softmax(emissions.float(), dim=-1) * mask.unsqueeze(-1)


@dataclass
class TaggedSpan:
    """A predicted span: tokens ``start .. end - 1`` have type ``type``.

    ``confidence`` is the model's probability of exactly this labelling of the span (with a CRF:
    the posterior probability of every path that labels these tokens so, computed exactly; with
    the softmax baseline: the product of the tokens' probabilities).
    """

    type: str
    start: int
    end: int
    text: str
    confidence: float


@dataclass
class TaggedSentence:
    """One tagged sentence. ``tags`` are in the corpus's original scheme; ``confidences[i]`` is
    the marginal probability of ``tags[i]`` (in the training scheme) at token ``i``."""

    tokens: list[str]
    tags: list[str]
    confidences: list[float]
    spans: list[TaggedSpan] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (the JSON-lines output of ``chaincrf-predict``)."""
        return asdict(self)


def _as_plain(value: Any, what: str) -> Any:
    """Check that a specification is plain data (no modules, callables or tensors)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _as_plain(v, f"{what}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_plain(v, f"{what}[{i}]") for i, v in enumerate(value)]
    raise TypeError(
        f"{what} must be plain data (dict/list/str/number/bool/None) so that checkpoints hold no "
        f"pickled objects; got {type(value).__name__}"
    )


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
        if isinstance(labels, str) or not labels or not all(isinstance(x, str) for x in labels):
            raise ValueError(f"labels must be a non-empty list of tag strings; got {labels!r}")
        if len(set(labels)) != len(labels):
            raise ValueError(f"labels must be unique; got {list(labels)!r}")
        for name, value in (("num_words", num_words), ("num_chars", num_chars)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}")
        if isinstance(feature_sizes, (str, int)) or not all(
            isinstance(size, int) and not isinstance(size, bool) and size > 0
            for size in feature_sizes
        ):
            raise ValueError(
                f"feature_sizes must be a list of positive ints (one per feature column); "
                f"got {feature_sizes!r}"
            )
        feature_sizes = [int(size) for size in feature_sizes]
        if scheme is not None:
            scheme = normalize_scheme(scheme)
        if original_scheme is not None:
            if scheme is None:
                raise ValueError(
                    f"original_scheme={original_scheme!r} needs a training scheme; got scheme=None"
                )
            original_scheme = normalize_scheme(original_scheme)
        elif scheme is not None:
            original_scheme = scheme
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(
                f"scheduler_interval must be 'epoch' or 'step'; got {scheduler_interval!r}"
            )
        if optimizer is None:
            optimizer = {"_target_": "torch.optim.Adam", "lr": 1e-3}
        if (
            isinstance(word_lr_scale, bool)
            or not isinstance(word_lr_scale, (int, float))
            or not 0.0 <= word_lr_scale < float("inf")
        ):
            raise ValueError(f"word_lr_scale must be a number >= 0; got {word_lr_scale!r}")
        if pretrained is not None and (
            not isinstance(pretrained, Tensor)
            or pretrained.dim() != 2
            or pretrained.shape[0] != num_words
        ):
            shape = (
                tuple(pretrained.shape)
                if isinstance(pretrained, Tensor)
                else type(pretrained).__name__
            )
            raise ValueError(
                f"pretrained must be a float tensor of shape ({num_words}, word_dim); got {shape}"
            )
        embeddings = _as_plain(embeddings, "embeddings")
        encoder = _as_plain(encoder, "encoder")
        optimizer = _as_plain(optimizer, "optimizer")
        scheduler = _as_plain(scheduler, "scheduler")
        for name, spec in (("optimizer", optimizer), ("scheduler", scheduler)):
            if spec is not None and (not isinstance(spec, Mapping) or "_target_" not in spec):
                raise TypeError(
                    f"{name} must be a mapping with a '_target_' key or None; got {spec!r}"
                )
            if spec is not None:
                locate(str(spec["_target_"]), name)
        self.save_hyperparameters(
            {
                "labels": list(labels),
                "num_words": num_words,
                "num_chars": num_chars,
                "feature_sizes": feature_sizes,
                "embeddings": embeddings,
                "encoder": encoder,
                "scheme": scheme,
                "original_scheme": original_scheme,
                "use_crf": bool(use_crf),
                "constrain": bool(constrain),
                "dropout": float(dropout),
                "optimizer": optimizer,
                "word_lr_scale": float(word_lr_scale),
                "scheduler": scheduler,
                "scheduler_interval": scheduler_interval,
                "monitor": monitor,
            }
        )
        self.labels: list[str] = list(labels)
        self.scheme = scheme
        self.original_scheme = original_scheme
        self.vocab: dict[str, Any] | None = _as_plain(vocab, "vocab") if vocab is not None else None

        embedder = build_from_spec(
            embeddings,
            "embeddings",
            num_words=num_words,
            num_chars=num_chars,
            pretrained=pretrained,
            **({"feature_sizes": feature_sizes} if feature_sizes else {}),
        )
        if feature_sizes and len(getattr(embedder, "feature_embeddings", ())) != len(feature_sizes):
            raise ValueError(
                f"the data reads {len(feature_sizes)} feature column(s), but the embeddings "
                f"target {embeddings['_target_']!r} does not take feature_sizes"
            )
        embed_dim = getattr(embedder, "output_dim", None)
        if not isinstance(embed_dim, int):
            raise ValueError(
                f"embeddings must build a module with an int output_dim; got {embed_dim!r}"
            )
        encoder_module = build_from_spec(encoder, "encoder", input_dim=embed_dim)
        constraints = None
        if use_crf and constrain and scheme is not None:
            constraints = allowed_transitions(scheme, self.labels)
        self.model = TaggerModel(
            embedder,
            encoder_module,
            len(self.labels),
            use_crf=use_crf,
            constraints=constraints,
            dropout=dropout,
        )

        from chaincrf.metrics import SpanF1, TokenAccuracy

        self.span_metrics = nn.ModuleDict()
        self.acc_metrics = nn.ModuleDict()
        for stage in ("val", "test"):
            self.acc_metrics[stage] = TokenAccuracy()
            if self.is_span_task:
                self.span_metrics[stage] = SpanF1(
                    self.entity_types,
                    scheme=self.original_scheme,
                    strict=self.original_scheme == "BIOES",
                )
        self.confusion: dict[str, Tensor] = {}
        self._confusion_acc: dict[str, Tensor] = {}
        self.results: dict[str, dict[str, float]] = {}
        self.trained_tokens = 0  # real tokens seen by training_step in this process (throughput)

    # ------------------------------------------------------------------ construction helpers
    @property
    def is_span_task(self) -> bool:
        """True when the tags have a span scheme (NER, chunking), False for POS-like tags."""
        return self.scheme is not None

    @property
    def entity_types(self) -> list[str]:
        """Sorted span types, e.g. ``["LOC", "MISC", "ORG", "PER"]`` (empty for POS)."""
        if not self.is_span_task:
            return []
        return sorted({label[2:] for label in self.labels if label != "O"})

    @property
    def original_labels(self) -> list[str]:
        """The label set as the corpus writes it (original scheme), for tables and plots."""
        if not self.is_span_task or self.original_scheme == self.scheme:
            return list(self.labels)
        labels = ["O"]
        prefixes = {"IOB1": "IB", "BIO": "BI", "BIOES": "BIES"}[self.original_scheme]
        labels += [f"{p}-{t}" for t in self.entity_types for p in prefixes]
        return labels

    # ------------------------------------------------------------------ label helpers
    def ids_to_labels(self, ids: Tensor, mask: Tensor) -> list[list[str]]:
        """Tag ids (batch, seq_len) -> lists of training-scheme labels, cut at each length."""
        lengths = mask.sum(-1).tolist()
        rows = ids.tolist()
        return [[self.labels[i] for i in row[:n]] for row, n in zip(rows, lengths)]

    def to_original(self, tags: list[str]) -> list[str]:
        """One sentence's training-scheme tags in the corpus's original scheme."""
        if not self.is_span_task or self.original_scheme == self.scheme:
            return tags
        return convert_tags(tags, self.scheme, self.original_scheme)

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
        K = len(self.labels)
        flat_pred = predicted[mask]
        flat_gold = gold[mask]
        counts = torch.bincount(flat_gold * K + flat_pred, minlength=K * K).reshape(K, K)
        self._confusion_acc[stage] = self._confusion_acc.get(stage, 0) + counts.cpu()
        if self.is_span_task:
            pred_labels = [self.to_original(t) for t in self.ids_to_labels(predicted, mask)]
            gold_labels = [self.to_original(t) for t in self.ids_to_labels(gold, mask)]
            self.span_metrics[stage].update(pred_labels, gold_labels)

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
        # Metric states are already synced across ranks by torchmetrics: no sync_dist here.
        self.log_dict({k: v for k, v in results.items() if k != f"{stage}/score"})
        self.log(f"{stage}/score", results[f"{stage}/score"], prog_bar=True)
        self.results[stage] = results
        confusion = self._confusion_acc.pop(stage, None)
        if confusion is not None:
            confusion = confusion.to(self.device)
            if self.trainer is not None and self.trainer.world_size > 1:
                confusion = self.all_gather(confusion).sum(0)
            self.confusion[stage] = confusion.cpu()

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
        return self._tag_batch(batch)

    @torch.no_grad()
    def _tag_batch(self, batch: Mapping[str, Any]) -> list[TaggedSentence]:
        mask = batch["mask"]
        emissions = self.model.emissions(batch)  # (B, T, K)
        paths = self.model.decode(emissions, mask)  # (B, T)
        marginals = self.model.marginals(emissions, mask)  # (B, T, K)
        chosen = marginals.gather(-1, paths.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T)
        train_tags = self.ids_to_labels(paths, mask)
        lengths = mask.sum(-1).tolist()
        tokens = batch.get("tokens")
        if tokens is None:
            tokens = [[""] * n for n in lengths]
        spans_per_row = [
            get_spans(tags, self.scheme) if self.is_span_task else [] for tags in train_tags
        ]
        confidences = self._span_confidences(emissions, mask, paths, chosen, spans_per_row)
        out = []
        for row, tags in enumerate(train_tags):
            n = lengths[row]
            spans = [
                TaggedSpan(type_, start, end, " ".join(tokens[row][start:end]), conf)
                for (type_, start, end), conf in zip(spans_per_row[row], confidences[row])
            ]
            out.append(
                TaggedSentence(
                    tokens=list(tokens[row][:n]),
                    tags=self.to_original(tags),
                    confidences=[round(float(p), 6) for p in chosen[row, :n].tolist()],
                    spans=spans,
                )
            )
        return out

    def _span_confidences(
        self,
        emissions: Tensor,
        mask: Tensor,
        paths: Tensor,
        chosen: Tensor,
        spans_per_row: list[list[tuple[str, int, int]]],
    ) -> list[list[float]]:
        """Probability of each predicted span's labelling.

        With a CRF this is exact: the probability mass of all paths that tag the span's tokens as
        predicted and do not extend it, from one forward-backward pass per sentence
        (:func:`chaincrf.confidence.span_log_probabilities`: O(B·T·K) memory whatever the number
        of spans). Without a CRF it is the product of the span's token probabilities.

        Args:
            emissions: float (batch, seq_len, num_tags).
            mask: bool (batch, seq_len), left-aligned.
            paths: long (batch, seq_len), the predicted tag ids (-1 off the mask).
            chosen: float (batch, seq_len), each predicted tag's marginal (used without a CRF).
            spans_per_row: per row, its predicted spans ``(type, start, end)``.

        Returns:
            Per row, one probability per span, rounded to 6 decimals.
        """
        from chaincrf.confidence import crf_scores, span_log_probabilities

        flat = [
            (row, start, end) for row, spans in enumerate(spans_per_row) for _, start, end in spans
        ]
        result: list[list[float]] = [[] for _ in spans_per_row]
        if not flat:
            return result
        crf = self.model.crf
        if crf is None:
            for row, start, end in flat:
                result[row].append(round(float(chosen[row, start:end].prod()), 6))
            return result
        spans = torch.tensor(flat, dtype=torch.long, device=emissions.device)  # (N, 3)
        log_p = span_log_probabilities(
            emissions, mask, paths, spans, crf_scores(crf), self._continuation_tables
        )  # (N,)
        for (row, _, _), value in zip(flat, log_p.exp().tolist()):
            result[row].append(round(float(value), 6))
        return result

    @functools.cached_property
    def _continuation_tables(self) -> tuple[Tensor, Tensor, Tensor]:
        """Per first tag of a span, the tags that would extend it (built once: the labels are
        fixed at construction).

        Returns:
            ``after`` bool (K, K): row ``f`` marks the tags that, right after a span starting
            with tag ``f``, would continue it (``I-``/``E-`` of its type); ``before`` bool (K, K):
            the tags that, right before it, would make it start earlier (``B-``/``I-`` of its
            type; used only when ``f`` is an ``I-`` tag, in IOB1); ``first_is_inside`` bool
            (K,): whether tag ``f`` is an ``I-`` tag.
        """
        from chaincrf.confidence import continuation_tables

        return continuation_tables(self.labels)

    def configure_optimizers(self) -> Any:
        scale = self.hparams.get("word_lr_scale", 1.0)
        # the trainable word table: the per-word correction with word_adapter, else the table
        word = getattr(self.model.embedder, "word_residual", None) or getattr(
            self.model.embedder, "word_embedding", None
        )
        if scale == 1.0 or word is None:
            optimizer = build_from_spec(self.hparams.optimizer, "optimizer", self.parameters())
        else:
            rest = [p for p in self.parameters() if p is not word.weight]
            groups = [{"params": rest}, {"params": [word.weight]}]
            optimizer = build_from_spec(self.hparams.optimizer, "optimizer", groups)
            optimizer.param_groups[1]["lr"] *= scale  # before any scheduler reads initial_lr
        spec = self.hparams.scheduler
        if spec is None:
            return optimizer
        scheduler = build_from_spec(spec, "scheduler", optimizer)
        config = {"scheduler": scheduler, "interval": self.hparams.scheduler_interval}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = self.hparams.monitor
            config["strict"] = False  # epochs without validation (overfit, val every n) just skip
        return {"optimizer": optimizer, "lr_scheduler": config}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {"format": 1, "vocab": self.vocab}
        trainer = self._trainer
        value = trainer.callback_metrics.get(self.hparams.monitor) if trainer is not None else None
        if value is not None:
            # Lightning writes epoch-end checkpoints before it steps a plateau scheduler and, on
            # resume, skips that step (it has no metric): kept here to replay it (on_train_start).
            checkpoint[CHECKPOINT_KEY]["monitor_value"] = float(value)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        stored = checkpoint.get(CHECKPOINT_KEY)
        if stored is not None and stored.get("vocab") is not None:
            self.vocab = stored["vocab"]
        self._resumed_monitor_value = stored.get("monitor_value") if stored else None

    def on_train_start(self) -> None:
        """On resume, step each epoch-interval plateau scheduler that missed the last epoch's
        step, with the score it would have seen, so a resumed run equals an uninterrupted one."""
        value = getattr(self, "_resumed_monitor_value", None)
        self._resumed_monitor_value = None
        if value is None:
            return
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if (
                config.reduce_on_plateau
                and config.interval == "epoch"
                and scheduler.last_epoch < self.current_epoch
            ):
                scheduler.step(value)

    # ------------------------------------------------------------------ inference API
    @classmethod
    def load(
        cls,
        path: str | Path,
        map_location: str | torch.device = "cpu",
        allow_targets: Sequence[str] = (),
    ) -> SequenceTagger:
        """Rebuild a trained tagger (model, labels, vocabularies) from a model file, as data.

        The file is read without unpickling objects, and every ``_target_`` in its
        hyper-parameters must name one of chaincrf's own classes or a ``torch.optim``
        optimiser/scheduler (:mod:`chaincrf.spec`); anything else is refused before it is
        imported.

        Args:
            path: a ``.ckpt`` written during training (e.g. ``<run>/checkpoints/best.ckpt``), or
                a bundle directory written by :meth:`save_bundle` / ``chaincrf-export``.
            map_location: where to put the weights.
            allow_targets: dotted names of further classes to trust, e.g. your own encoder
                (``["mypkg.MyEncoder"]``). Only for files you trust: these are imported and
                called with arguments taken from the file.

        Returns:
            The tagger in eval mode.

        Raises:
            FileNotFoundError: if ``path`` does not exist (or a bundle lacks a file).
            chaincrf.model_files.ModelFileError: (a ``ValueError``) naming the file, for a file
                that is unreadable, holds pickled objects, names an untrusted ``_target_`` or
                does not fit the model it describes.
        """
        from chaincrf.model_files import ModelFileError, read_model

        allowed_keys = [
            name
            for name in inspect.signature(cls.__init__).parameters
            if name not in ("self", "pretrained", "vocab")
        ]
        stored = read_model(path, allowed_keys, map_location, allow_targets)
        try:
            tagger = cls(**stored.hparams, vocab=stored.vocab)
            if stored.vocab is not None:
                tagger.sentence_encoder  # noqa: B018 - checks the vocabularies now, not at predict
        except (ValueError, TypeError, KeyError) as error:
            raise ModelFileError(
                f"{stored.source}: does not describe a valid tagger: {error}"
            ) from None
        try:
            tagger.load_state_dict(stored.state_dict)
        except RuntimeError as error:
            raise ModelFileError(
                f"{stored.source}: weights do not fit the model: {error}"
            ) from None
        tagger.to(map_location)
        tagger.eval()
        return tagger

    def save_bundle(self, directory: str | Path) -> Path:
        """Write ``weights.pt`` (state dict), ``config.json`` (hyper-parameters) and
        ``vocab.json`` into ``directory``; :meth:`load` reads them back."""
        from chaincrf.model_files import BUNDLE_FORMAT

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), directory / "weights.pt")
        config = {"format": BUNDLE_FORMAT, "hparams": dict(self.hparams)}
        (directory / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        (directory / "vocab.json").write_text(
            json.dumps(self.vocab, ensure_ascii=False), encoding="utf-8"
        )
        return directory

    def predict(
        self,
        sentences: Sequence[str] | Sequence[Sequence[str]] | Sequence[Any],
        batch_size: int = 128,
    ) -> list[TaggedSentence]:
        """Tag sentences.

        Args:
            sentences: raw strings (tokenised by :func:`tokenize`: whitespace split), lists of
                tokens, or :class:`chaincrf.data.Sentence` objects (their ``tokens`` and, for a
                model trained with feature columns, their ``features``).
            batch_size: sentences per forward pass.

        Returns:
            One :class:`TaggedSentence` per input, in input order (empty input -> empty tags).

        Raises:
            ValueError: if the tagger has no vocabularies (not trained through a data module), if
                it was trained with feature columns and a sentence has none, or if
                ``batch_size`` is not a positive int.
        """
        if isinstance(sentences, str):
            raise TypeError(
                "sentences must be a list of sentences; got a single string (wrap it in a list)"
            )
        sentences = list(sentences)
        # one chunk: the whole list is sorted by length, as it always was
        return list(self.predict_iter(sentences, batch_size, chunk_size=max(len(sentences), 1)))

    def predict_iter(
        self,
        sentences: Iterable[str] | Iterable[Sequence[str]] | Iterable[Any],
        batch_size: int = 128,
        chunk_size: int = 2048,
    ) -> Iterator[TaggedSentence]:
        """Tag a stream of sentences lazily, in bounded memory.

        Reads ``chunk_size`` sentences, tags them (sorted by length within the chunk,
        ``batch_size`` per forward pass), yields their results in input order, and only then
        reads the next chunk. Memory is bounded by one chunk (its sentences and results) plus
        one batch's tensors, whatever the length of the stream.

        Args:
            sentences: any iterable of what :meth:`predict` takes (raw strings, token lists or
                :class:`chaincrf.data.Sentence` objects), e.g. the lines of an open file.
            batch_size: sentences per forward pass (>= 1).
            chunk_size: sentences read, sorted and tagged together (>= 1).

        Returns:
            A generator of one :class:`TaggedSentence` per input, in input order.

        Raises:
            TypeError: for a single string (at the call).
            ValueError: at the call, if the tagger has no vocabularies or ``batch_size`` or
                ``chunk_size`` is not a positive int; while iterating, if a feature-column model
                gets a sentence without features.
        """
        from itertools import islice

        if self.vocab is None:
            raise ValueError(
                "this tagger has no vocab; build it with vocab=... or load a trained checkpoint"
            )
        if isinstance(sentences, str):
            raise TypeError(
                "sentences must be a list of sentences; got a single string (wrap it in a list)"
            )
        for name, value in (("batch_size", batch_size), ("chunk_size", chunk_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}")
        stream = iter(sentences)

        def tag_chunks() -> Iterator[TaggedSentence]:
            while chunk := list(islice(stream, chunk_size)):
                yield from self._tag_chunk(chunk, batch_size)

        return tag_chunks()

    def _tag_chunk(self, sentences: list[Any], batch_size: int) -> list[TaggedSentence]:
        """Tag one chunk in eval mode, sorted by length into batches; results in input order."""
        token_lists = [
            tokenize(s)
            if isinstance(s, str)
            else [str(t) for t in (s.tokens if hasattr(s, "tokens") else s)]
            for s in sentences
        ]
        feature_lists = [getattr(s, "features", None) for s in sentences]
        was_training = self.training
        self.eval()
        results: list[TaggedSentence | None] = [None] * len(token_lists)
        order = sorted(range(len(token_lists)), key=lambda i: len(token_lists[i]))
        try:
            for lo in range(0, len(order), batch_size):
                chunk = order[lo : lo + batch_size]
                nonempty = [i for i in chunk if token_lists[i]]
                for i in chunk:
                    if not token_lists[i]:
                        results[i] = TaggedSentence([], [], [], [])
                if not nonempty:
                    continue
                batch = self.encode(
                    [token_lists[i] for i in nonempty], [feature_lists[i] for i in nonempty]
                )
                for i, tagged in zip(nonempty, self._tag_batch(batch)):
                    results[i] = tagged
        finally:
            self.train(was_training)
        return [r for r in results if r is not None]

    def encode(
        self,
        token_lists: Sequence[Sequence[str]],
        feature_lists: Sequence[Sequence[Sequence[str]] | None] | None = None,
    ) -> dict[str, Any]:
        """Collate token lists into a batch with the stored vocabularies, exactly as in training.

        Args:
            token_lists: one list of tokens per sentence (each non-empty).
            feature_lists: per sentence, its feature-column values (one list per column, see
                :meth:`SentenceEncoder.encode`); needed only by models trained with feature
                columns.

        Returns:
            The batch dict (``words``, ``chars``, ``casing``, ``mask``, ``tokens``, ``index``,
            and ``features`` for feature-column models) on the tagger's device.

        Raises:
            ValueError: naming the sentence, when a feature-column model gets no features.
        """
        from chaincrf.data.batching import collate

        encoder = self.sentence_encoder
        if feature_lists is None:
            feature_lists = [None] * len(token_lists)
        items = []
        for i, (tokens, features) in enumerate(zip(token_lists, feature_lists)):
            try:
                encoded = encoder.encode(list(tokens), features=features)
            except ValueError as error:
                raise ValueError(f"sentence {i} ({' '.join(tokens)[:60]!r}): {error}") from None
            items.append({**encoded, "tokens": list(tokens), "index": i})
        batch = collate(items)
        return {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in batch.items()}

    @property
    def sentence_encoder(self) -> Any:
        """The :class:`chaincrf.data.vocab.SentenceEncoder` rebuilt from the stored vocab."""
        if self.vocab is None:
            raise ValueError(
                "this tagger has no vocab; build it with vocab=... or load a trained checkpoint"
            )
        cached = getattr(self, "_sentence_encoder", None)
        if cached is None or cached[0] is not self.vocab:
            from chaincrf.data.vocab import SentenceEncoder

            cached = (self.vocab, SentenceEncoder.from_dict(self.vocab))
            self._sentence_encoder = cached
        return cached[1]

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
