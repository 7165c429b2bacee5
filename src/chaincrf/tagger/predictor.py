"""The predictor: text in, tagged sentences with confidences out.

:class:`Predictor` turns raw strings (:func:`~chaincrf.tagger.outputs.tokenize`), token lists
or :class:`chaincrf.data.Sentence` objects into :class:`TaggedSentence` results: it encodes
them with the stored vocabularies exactly as in training, batches them by length, decodes
(Viterbi), and adds each token's marginal and each span's exact probability
(:mod:`chaincrf.confidence`). It needs the network, the tag scheme and the vocabularies only
(torch, no Lightning); ``SequenceTagger.predict`` and ``predict_iter`` call it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from chaincrf.constraints import TagScheme
from chaincrf.tagger.network import TaggerModel
from chaincrf.tagger.outputs import TaggedSentence, TaggedSpan, tokenize

__all__ = ["Predictor"]


class Predictor:
    """Tagging with a trained network: what :meth:`SequenceTagger.predict` runs, and what
    :func:`chaincrf.tagger.bundle.load_predictor` gives without Lightning.

    Args:
        model: the network (embeddings, encoder, projection, CRF).
        tags: the tag set and its schemes (labels in the network's id order).
        vocab: the vocabularies as plain data (``SentenceEncoder.to_dict()``), or None (then
            only :meth:`tag_batch` on ready batches works).
    """

    def __init__(
        self, model: TaggerModel, tags: TagScheme, vocab: Mapping[str, Any] | None
    ) -> None:
        self.model = model
        self.tags = tags
        self.vocab = vocab
        self._sentence_encoder: Any = None

    @property
    def device(self) -> torch.device:
        """Where the network's weights are (batches are moved there)."""
        return next(self.model.parameters()).device

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
                yield from self.tag_chunk(chunk, batch_size)

        return tag_chunks()

    def tag_chunk(self, sentences: list[Any], batch_size: int) -> list[TaggedSentence]:
        """Tag one chunk in eval mode, sorted by length into batches; results in input order."""
        token_lists = [
            tokenize(s)
            if isinstance(s, str)
            else [str(t) for t in (s.tokens if hasattr(s, "tokens") else s)]
            for s in sentences
        ]
        feature_lists = [getattr(s, "features", None) for s in sentences]
        was_training = self.model.training
        self.model.eval()
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
                for i, tagged in zip(nonempty, self.tag_batch(batch)):
                    results[i] = tagged
        finally:
            self.model.train(was_training)
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
        if self._sentence_encoder is None:  # the vocab is fixed for a predictor's life
            from chaincrf.data.vocab import SentenceEncoder

            self._sentence_encoder = SentenceEncoder.from_dict(self.vocab)
        return self._sentence_encoder

    @torch.no_grad()
    def tag_batch(self, batch: Mapping[str, Any]) -> list[TaggedSentence]:
        mask = batch["mask"]
        emissions = self.model.emissions(batch)  # (B, T, K)
        paths = self.model.decode(emissions, mask)  # (B, T)
        marginals = self.model.marginals(emissions, mask)  # (B, T, K)
        chosen = marginals.gather(-1, paths.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T)
        train_tags = self.tags.decode_batch(paths, mask)
        lengths = mask.sum(-1).tolist()
        tokens = batch.get("tokens")
        if tokens is None:
            tokens = [[""] * n for n in lengths]
        spans_per_row = [self.tags.spans(tags) for tags in train_tags]
        confidences = self.span_confidences(emissions, mask, paths, chosen, spans_per_row)
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
                    tags=self.tags.to_original(tags),
                    confidences=[round(float(p), 6) for p in chosen[row, :n].tolist()],
                    spans=spans,
                )
            )
        return out

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
        from chaincrf.confidence import continuation_tables

        return continuation_tables(list(self.tags.labels))
