"""The predictor: text in, tagged sentences with confidences out.

:class:`Predictor` turns raw strings (tokenised by :mod:`chaincrf.predict.tokenizers`, with
character offsets), token lists or :class:`chaincrf.data.Sentence` objects into
:class:`TaggedSentence` results: it encodes them with the stored vocabularies exactly as in
training, batches them by length, decodes (Viterbi, or the k best paths with their
probabilities), and adds each token's marginal and each span's exact probability
(:mod:`chaincrf.crf.confidence`). It needs the network, the tag scheme and the vocabularies only
(torch, no Lightning; spaCy on first use of its tokenizer); ``SequenceTagger.predict`` and
``predict_iter`` call it.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from chaincrf.crf.inputs import HALF
from chaincrf.data.schemes import TagScheme
from chaincrf.network.model import TaggerModel
from chaincrf.network.precision import autocast_for
from chaincrf.predict.outputs import TaggedSentence
from chaincrf.predict.streaming import StreamPredictor

__all__ = ["Predictor"]


class Predictor(StreamPredictor):
    """Tagging with a trained network: what :meth:`SequenceTagger.predict` runs, and what
    :func:`chaincrf.predict.bundle.load_predictor` gives without Lightning.

    Args:
        model: the network (embeddings, encoder, projection, CRF).
        tags: the tag set and its schemes (labels in the network's id order).
        vocab: the vocabularies as plain data (``SentenceEncoder.to_dict()``), or None (then
            only :meth:`tag_batch` on ready batches works).
        tokenizer: for raw strings, as :class:`~chaincrf.predict.streaming.StreamPredictor`'s.
        precision: the precision the model was trained in (Lightning's name, as its model
            file stores it; None: float32). The network runs under the autocast it means
            (:func:`chaincrf.network.precision.autocast_for`: bfloat16 for ``bf16-mixed``,
            float16 for ``16-mixed`` on a GPU), as ``chaincrf-eval`` evaluates it, so that the
            tags are the ones behind the run's figures; the CRF computes in float32 either way.
    """

    def __init__(
        self,
        model: TaggerModel,
        tags: TagScheme,
        vocab: Mapping[str, Any] | None,
        tokenizer: str = "spacy",
        precision: str | None = None,
    ) -> None:
        super().__init__(tags, vocab, tokenizer)
        self.model = model
        self.precision = precision

    @property
    def device(self) -> torch.device:
        """Where the network's weights are (batches are moved there)."""
        return next(self.model.parameters()).device

    def tag_tokens(
        self, token_lists: list[list[str]], feature_lists: list[Any], top_k: int
    ) -> list[TaggedSentence]:
        """Tag one batch of non-empty token lists: :meth:`encode`, then :meth:`tag_batch`."""
        return self.tag_batch(self.encode(token_lists, feature_lists), top_k)

    @contextlib.contextmanager
    def tagging(self) -> Iterator[None]:
        """Eval mode while a chunk is tagged (the model's mode is restored after)."""
        was_training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was_training)

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
        from chaincrf.data.batching import collate, to_device

        items = [
            {**encoded, "tokens": list(tokens), "index": i}
            for i, (tokens, encoded) in enumerate(
                zip(token_lists, self.encode_ids(token_lists, feature_lists))
            )
        ]
        return to_device(collate(items), self.device)

    @torch.no_grad()
    def tag_batch(self, batch: Mapping[str, Any], top_k: int = 1) -> list[TaggedSentence]:
        """Tag one encoded batch (:meth:`encode`, or a training batch).

        Args:
            batch: the batch dict; ``mask`` bool (batch, seq_len), left-aligned, and ``tokens``
                (optional: without it the results' tokens are empty strings).
            top_k: alternatives per sentence (see :meth:`predict`; > 1 needs a CRF).

        Returns:
            One :class:`TaggedSentence` per row, without offsets.

        Raises:
            ValueError: if ``top_k > 1`` without a CRF.
        """
        mask = batch["mask"]
        with autocast_for(self.precision, mask.device):  # the training precision's autocast
            emissions = self.model.emissions(batch)  # (B, T, K)
        # the CRF computes in float32 from half-precision emissions (exactly: their upcast), and
        # the marginals, the confidences, stay float32
        emissions = emissions.float() if emissions.dtype in HALF else emissions
        alternatives: list[list[dict[str, Any]]] = [[] for _ in range(mask.shape[0])]
        if top_k > 1:
            paths, alternatives = self.best_paths(emissions, mask, top_k)  # (B, T)
        else:
            paths = self.model.decode(emissions, mask)  # (B, T)
        marginals = self.model.marginals(emissions, mask)  # (B, T, K)
        chosen = marginals.gather(-1, paths.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T)
        train_tags = self.tags.decode_batch(paths, mask)
        lengths = mask.sum(-1).tolist()
        tokens = batch.get("tokens")
        if tokens is None:
            tokens = [[""] * n for n in lengths]
        spans_per_row = self.tags.batch_spans(paths, mask)  # by tensor operations
        confidences = self.span_confidences(emissions, mask, paths, chosen, spans_per_row)
        chosen_rows = chosen.tolist()  # one copy to the host per batch, not one per row
        return [
            self.tagged(
                tokens[row][: lengths[row]],
                tags,
                chosen_rows[row][: lengths[row]],
                spans_per_row[row],
                confidences[row],
                alternatives[row],
            )
            for row, tags in enumerate(train_tags)
        ]

    def best_paths(
        self, emissions: Tensor, mask: Tensor, top_k: int
    ) -> tuple[Tensor, list[list[dict[str, Any]]]]:
        """The ``top_k`` best taggings of each row and their probabilities, from the CRF.

        A tagging's probability is ``exp(score - log_partition)``; both are computed in float64,
        and the best path returned is the first alternative (so ``tags`` equals it).

        Args:
            emissions: float (batch, seq_len, num_tags).
            mask: bool (batch, seq_len), left-aligned; every row non-empty.
            top_k: paths per row (>= 1).

        Returns:
            ``paths`` long (batch, seq_len), the best path (-1 off the mask), and per row up to
            ``top_k`` dicts ``{"tags": [...original scheme...], "probability": p}``, best first
            (fewer where the row has fewer possible taggings).

        Raises:
            ValueError: without a CRF.
        """
        self.check_top_k(top_k)
        crf = self.model.crf
        assert crf is not None  # check_top_k
        em = emissions.double()
        longest, num_tags = mask.shape[1], emissions.shape[-1]
        # no more ranks than taggings (num_tags ** longest): memory is O(k·T·K)
        k = min(top_k, num_tags ** min(longest, top_k.bit_length()))
        k_paths, scores = crf.viterbi(em, mask, k=k)  # (B, k, T), (B, k)
        probabilities = (scores - crf.log_partition(em, mask).unsqueeze(-1)).exp()  # (B, k)
        lengths = mask.sum(-1).tolist()
        alternatives: list[list[dict[str, Any]]] = []
        for row, (row_paths, row_probs) in enumerate(zip(k_paths.tolist(), probabilities.tolist())):
            n = lengths[row]
            alternatives.append(
                [
                    {"tags": self.tags.decode(path[:n], original=True), "probability": p}
                    for path, p in zip(row_paths, row_probs)
                    if path[0] >= 0 and p > 0.0  # -1: fewer paths than top_k
                ]
            )
        return k_paths[:, 0], alternatives

    def check_top_k(self, top_k: int) -> None:
        if top_k > 1 and self.model.crf is None:
            raise ValueError(
                f"top_k > 1 needs a CRF output layer; this model tags with a per-token softmax "
                f"(use_crf=False); got top_k={top_k!r}"
            )

    def span_confidences(
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
        (:func:`chaincrf.crf.confidence.span_log_probabilities`: O(B·T·K) memory whatever the number
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
        from chaincrf.crf.confidence import crf_scores, span_log_probabilities

        flat = [
            (row, start, end) for row, spans in enumerate(spans_per_row) for _, start, end in spans
        ]
        result: list[list[float]] = [[] for _ in spans_per_row]
        if not flat:
            return result
        crf = self.model.crf
        if crf is None:
            rows = chosen.double().tolist()  # one copy to the host
            for row, start, end in flat:
                result[row].append(round(math.prod(rows[row][start:end]), 6))
            return result
        spans = torch.tensor(flat, dtype=torch.long, device=emissions.device)  # (N, 3)
        log_p = span_log_probabilities(
            emissions, mask, paths, spans, crf_scores(crf), self.continuation_tables
        )  # (N,)
        for (row, _, _), value in zip(flat, log_p.exp().tolist()):
            result[row].append(round(float(value), 6))
        return result

    @functools.cached_property
    def continuation_tables(self) -> tuple[Tensor, Tensor, Tensor]:
        """Per first tag of a span, the tags that would extend it (built once: the labels are
        fixed at construction).

        Returns:
            ``after`` bool (K, K): row ``f`` marks the tags that, right after a span starting
            with tag ``f``, would continue it (``I-``/``E-`` of its type); ``before`` bool (K, K):
            the tags that, right before it, would make it start earlier (``B-``/``I-`` of its
            type; used only when ``f`` is an ``I-`` tag, in IOB1); ``first_is_inside`` bool
            (K,): whether tag ``f`` is an ``I-`` tag.
        """
        from chaincrf.crf.confidence import continuation_tables

        return continuation_tables(list(self.tags.labels))
