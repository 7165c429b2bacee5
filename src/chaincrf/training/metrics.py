"""Span precision / recall / F1 and token accuracy as torchmetrics ``Metric`` objects.

Both keep only counts, in tensor states reduced by sum, so they are exact under DDP (every rank
adds its counts; the F1 is computed once from the totals, never averaged across ranks).

:class:`SpanF1` gives exactly seqeval's figures: spans are read by seqeval's own code, in its
default (conlleval) mode with :func:`seqeval.metrics.sequence_labeling.get_entities`, or in its
strict mode with :class:`seqeval.scheme.Entities` and the scheme's rules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import chain
from typing import Any

import torch
from seqeval.metrics.sequence_labeling import get_entities
from seqeval.scheme import IOB1, IOB2, IOBES, Entities
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassConfusionMatrix

from chaincrf.data.schemes import TagScheme, normalize_scheme, scheme_labels, split_label

__all__ = ["LabelConfusion", "SpanF1", "StageMetrics", "TokenAccuracy", "TokenMean"]

_SEQEVAL_SCHEMES = {"IOB1": IOB1, "BIO": IOB2, "BIOES": IOBES}


def _divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator`` as float, 0 where the denominator is 0 (as seqeval does)."""
    numerator, denominator = numerator.double(), denominator.double()
    positive = denominator > 0
    return torch.where(positive, numerator / torch.where(positive, denominator, 1.0), 0.0)


class SpanF1(Metric):
    """Span precision, recall and F1, micro-averaged and per entity type, as seqeval computes them.

    Args:
        entity_types: the span types (``["LOC", "MISC", "ORG", "PER"]``); labels of any other
            type are an error.
        scheme: the tag scheme of the labels: ``"IOB1"``, ``"BIO"`` (alias ``"IOB2"``) or
            ``"BIOES"`` (alias ``"IOBES"``). It fixes which prefixes are valid, and in strict mode
            how spans are read.
        strict: ``False``: seqeval's default mode, the semantics of conlleval (ill-formed spans
            such as ``O I-PER`` still count); ``True``: seqeval's strict mode
            (``mode="strict", scheme=...``), where only spans well-formed under ``scheme`` count.
        **kwargs: passed to :class:`torchmetrics.Metric` (e.g. ``dist_sync_on_step``).

    States (all long tensors of shape ``(len(entity_types),)``, reduced by sum):
        ``true_positives``, ``predicted`` (spans predicted), ``actual`` (gold spans).

    Raises:
        ValueError: at construction, for an empty or duplicated ``entity_types`` or an unknown
            scheme.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    true_positives: Tensor
    predicted: Tensor
    actual: Tensor

    def __init__(
        self, entity_types: Sequence[str], scheme: str = "BIO", strict: bool = False, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        entity_types = list(entity_types)
        if not entity_types or not all(isinstance(t, str) and t for t in entity_types):
            raise ValueError(
                f"entity_types must be a non-empty list of non-empty strings; got {entity_types!r}"
            )
        if len(set(entity_types)) != len(entity_types):
            raise ValueError(f"entity_types must not repeat a type; got {entity_types!r}")
        self.entity_types = entity_types
        self.scheme = normalize_scheme(scheme)
        self.strict = strict
        self._type_index = {name: i for i, name in enumerate(entity_types)}
        self._valid_labels = frozenset(scheme_labels(entity_types, self.scheme))
        size = len(entity_types)
        for name in ("true_positives", "predicted", "actual"):
            self.add_state(name, default=torch.zeros(size, dtype=torch.long), dist_reduce_fx="sum")

    @classmethod
    def from_labels(
        cls, labels: Sequence[str], scheme: str = "BIO", strict: bool = False, **kwargs
    ) -> SpanF1:
        """Build the metric for a tag set such as ``["O", "B-PER", "I-PER", "B-LOC", ...]``.

        The entity types are the types of ``labels`` (``"O"`` has none), sorted.

        Raises:
            ValueError: for a label that does not fit ``scheme`` (see
                :func:`chaincrf.data.schemes.split_label`), or a tag set without a span type.
        """
        types = sorted({split_label(label, scheme)[1] for label in labels} - {""})
        return cls(types, scheme=scheme, strict=strict, **kwargs)

    def _check(self, argument: str, sequences: list[list[str]]) -> None:
        invalid = set(chain.from_iterable(sequences)) - self._valid_labels
        if invalid:
            label = sorted(invalid, key=str)[0]
            one_type = scheme_labels(self.entity_types[:1], self.scheme)[1:]
            prefixes = "/".join(label[0] for label in one_type)
            raise ValueError(
                f"{argument} holds the label {label!r}, which is not 'O' or "
                f"'<{prefixes}>-<type>' with a type in entity_types={self.entity_types} "
                f"({self.scheme} scheme)"
            )

    def _spans(self, sequences: list[list[str]]) -> list[set[tuple[int, int, int]]]:
        """Return, for each entity type, the set of spans as ``(sentence, start, end)``."""
        spans: list[set[tuple[int, int, int]]] = [set() for _ in self.entity_types]
        if self.strict:
            entities = Entities(sequences, _SEQEVAL_SCHEMES[self.scheme])
            for entity in chain.from_iterable(entities.entities):
                spans[self._type_index[entity.tag]].add((entity.sent_id, entity.start, entity.end))
        else:
            # seqeval's default mode joins the sentences with "O" in between: the offsets are
            # global, so each (start, end) is unique.
            for type_name, start, end in get_entities([list(s) for s in sequences]):
                spans[self._type_index[type_name]].add((0, start, end))
        return spans

    def update(self, preds: list[list[str]], target: list[list[str]]) -> None:
        """Count the spans of a batch.

        Args:
            preds: the predicted labels of each sentence, e.g. ``[["B-PER", "I-PER", "O"]]``.
            target: the gold labels, one list per sentence, each as long as its prediction.

        Raises:
            ValueError: if the numbers of sentences or of labels differ, or for a label that is
                not ``"O"`` or ``<prefix>-<type>`` with a prefix of the scheme and a type in
                ``entity_types``.
        """
        if len(preds) != len(target):
            raise ValueError(
                f"preds and target must hold the same number of sentences; got {len(preds)} "
                f"and {len(target)}"
            )
        for i, (pred, gold) in enumerate(zip(preds, target)):
            if len(pred) != len(gold):
                raise ValueError(
                    f"preds[{i}] and target[{i}] must have the same length; got {len(pred)} "
                    f"and {len(gold)}"
                )
        self._check("preds", preds)
        self._check("target", target)
        predicted, actual = self._spans(preds), self._spans(target)
        counts = torch.tensor(
            [[len(p & a), len(p), len(a)] for p, a in zip(predicted, actual)], dtype=torch.long
        ).to(self.true_positives.device)  # (num_types, 3)
        self.true_positives += counts[:, 0]
        self.predicted += counts[:, 1]
        self.actual += counts[:, 2]

    def compute(self) -> dict[str, Tensor]:
        """Return the scores, as 0-d tensors (float64 for scores, int64 for supports).

        Keys: ``precision``, ``recall``, ``f1``, ``support`` (micro-averaged over all types);
        and for each type ``T``: ``precision/T``, ``recall/T``, ``f1/T``, ``support/T`` (the
        number of gold spans). A ratio whose denominator is 0 is 0, as in seqeval.
        """
        scores: dict[str, Tensor] = {}
        tp, predicted, actual = self.true_positives, self.predicted, self.actual
        precision = _divide(tp.sum(), predicted.sum())
        recall = _divide(tp.sum(), actual.sum())
        scores["precision"] = precision
        scores["recall"] = recall
        scores["f1"] = _divide(2 * precision * recall, precision + recall)
        scores["support"] = actual.sum()
        type_precision = _divide(tp, predicted)
        type_recall = _divide(tp, actual)
        type_f1 = _divide(2 * type_precision * type_recall, type_precision + type_recall)
        for i, name in enumerate(self.entity_types):
            scores[f"precision/{name}"] = type_precision[i]
            scores[f"recall/{name}"] = type_recall[i]
            scores[f"f1/{name}"] = type_f1[i]
            scores[f"support/{name}"] = actual[i]
        return scores


class TokenAccuracy(Metric):
    """Fraction of real (unmasked) tokens whose predicted tag id equals the gold one.

    States (long scalars, reduced by sum): ``correct`` and ``total``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    correct: Tensor
    total: Tensor

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor, mask: Tensor) -> None:
        """Count a batch.

        Args:
            preds: long tensor (batch, seq_len), predicted tag ids.
            target: long tensor (batch, seq_len), gold tag ids.
            mask: bool tensor (batch, seq_len), True at real tokens.

        Raises:
            ValueError: if the three shapes differ or ``mask`` is not boolean.
        """
        if preds.shape != target.shape or mask.shape != target.shape:
            raise ValueError(
                f"preds, target and mask must have the same shape; got {tuple(preds.shape)}, "
                f"{tuple(target.shape)} and {tuple(mask.shape)}"
            )
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor; got dtype {mask.dtype}")
        self.correct += ((preds == target) & mask).sum()
        self.total += mask.sum()

    def compute(self) -> Tensor:
        """Return the accuracy, a float64 0-d tensor (0 before any token was counted)."""
        return _divide(self.correct, self.total)


class TokenMean(Metric):
    """The token-weighted mean of per-batch values (a loss per token): ``sum(value * tokens) /
    sum(tokens)``, the epoch's loss per token whatever the batches' sizes.

    States (float64 scalars on the device, reduced by sum): ``total`` and ``tokens``. No value
    is read on the host and none is checked for NaN (the training loop's loss check does that).
    (torchmetrics' ``MeanMetric(nan_strategy="disable")``, the one without a host read, drops
    the weights in torchmetrics 1.9: it gave the batches' plain mean.)
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    total: Tensor
    tokens: Tensor

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        zero = torch.tensor(0.0, dtype=torch.float64)
        self.add_state("total", default=zero, dist_reduce_fx="sum")
        self.add_state("tokens", default=zero.clone(), dist_reduce_fx="sum")

    def update(self, value: Tensor, tokens: Tensor | int) -> None:
        """Add a batch's ``value`` (0-d, per token) weighted by its ``tokens``."""
        weight = torch.as_tensor(tokens, device=self.total.device).to(torch.float64)
        self.total += value.detach().to(torch.float64) * weight
        self.tokens += weight

    def compute(self) -> Tensor:
        """The weighted mean, float64 0-d (0 before any token was counted)."""
        return _divide(self.total, self.tokens)


class LabelConfusion(MulticlassConfusionMatrix):
    """Token confusion counts over a fixed label list, ``[gold, predicted]``: torchmetrics'
    multiclass confusion matrix (synced across DDP ranks by torchmetrics), fed with label ids
    or with label strings (the corpus's own scheme, as span tasks are scored).

    Args:
        labels: the rows' and columns' labels, in order.
    """

    def __init__(self, labels: Sequence[str], **kwargs) -> None:
        # the ids come from :attr:`index` (in range by construction): torchmetrics' argument
        # checks (``torch.unique`` of the batch: a host read per update on a GPU) are skipped
        kwargs.setdefault("validate_args", False)
        super().__init__(num_classes=len(labels), **kwargs)
        self.index = {label: i for i, label in enumerate(labels)}

    def update_labels(
        self, gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]
    ) -> None:
        """Count the tokens of sentences given as label strings (one list per sentence)."""
        pairs = [
            (self.index[g], self.index[p])
            for golds, preds in zip(gold, predicted)
            for g, p in zip(golds, preds)
        ]
        if pairs:
            target, preds = torch.tensor(pairs, dtype=torch.long, device=self.device).t()
            self.update(preds, target)


class StageMetrics(nn.Module):
    """Everything one evaluation stage (dev or test) measures: token accuracy, span precision /
    recall / F1 in the corpus's own scheme (span tasks), and the label confusion, each a
    torchmetrics object synced across DDP ranks.

    Args:
        tags: the tag set and its schemes; span tasks are scored in ``tags.original``, strictly
            for BIOES (seqeval's strict mode), as conlleval otherwise.
    """

    def __init__(self, tags: TagScheme) -> None:
        super().__init__()
        self.tags = tags
        self.loss = TokenMean()  # the loss per token, on the device
        self.accuracy = TokenAccuracy()
        # the confusion over the labels as scored (the corpus's scheme), not the training's
        self.confusion = LabelConfusion(tags.original_labels)
        self.spans = (
            SpanF1(tags.entity_types, scheme=str(tags.original), strict=tags.original == "BIOES")
            if tags.is_span_task
            else None
        )

    def update(self, predicted: Tensor, gold: Tensor, mask: Tensor) -> None:
        """Count one batch: ``predicted``/``gold`` long (batch, seq_len) tag ids, ``mask`` bool."""
        self.accuracy.update(predicted, gold, mask)
        if self.spans is not None:
            pred_labels = self.tags.decode_batch(predicted, mask, original=True)
            gold_labels = self.tags.decode_batch(gold, mask, original=True)
            self.spans.update(pred_labels, gold_labels)
            self.confusion.update_labels(gold_labels, pred_labels)
        else:
            self.confusion.update(predicted[mask], gold[mask])

    def compute(self, stage: str) -> tuple[dict[str, float], Tensor | None]:
        """The figures counted since the last call, then reset: ``{"<stage>/acc": ..,
        "<stage>/f1": .., "<stage>/f1_PER": .., "<stage>/score": ..}`` (``score``: the F1 for
        span tasks, the accuracy otherwise) and the (L, L) confusion counts ``[gold,
        predicted]`` (None when nothing was counted)."""
        accuracy = float(self.accuracy.compute())
        results = {f"{stage}/acc": accuracy}
        if self.spans is not None:
            results.update(
                {f"{stage}/{k}": v for k, v in _flatten_span_results(self.spans.compute()).items()}
            )
            results[f"{stage}/score"] = results[f"{stage}/f1"]
        else:
            results[f"{stage}/score"] = accuracy
        confusion = self.confusion.compute().cpu() if self.confusion.update_count else None
        for metric in (self.accuracy, self.spans, self.confusion):
            if metric is not None:
                metric.reset()
        return results, confusion


def _flatten_span_results(span: Mapping[str, Any]) -> dict[str, float]:
    """``SpanF1.compute()`` -> flat floats: ``{"f1": .., "precision": .., "f1_PER": .., ...}``."""
    flat: dict[str, float] = {}
    for key, value in span.items():
        metric, _, type_ = key.partition("/")
        name = f"{metric}_{type_}" if type_ else metric
        flat[name] = float(value.item()) if isinstance(value, Tensor) else float(value)
    return flat
