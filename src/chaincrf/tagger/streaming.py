"""The engine-independent half of prediction: text in, tagged sentences out.

:class:`StreamPredictor` tokenises raw strings (:mod:`chaincrf.tagger.tokenizers`, with
character offsets), reads a stream in chunks, sorts each chunk by length into batches, and
returns the results in input order; a subclass tags one batch of token lists
(:meth:`StreamPredictor.tag_tokens`): :class:`~chaincrf.tagger.predictor.Predictor` with the
PyTorch network, :class:`~chaincrf.tagger.onnx_predictor.OnnxPredictor` with onnxruntime. No
torch here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from chaincrf.constraints import TagScheme
from chaincrf.tagger.outputs import TaggedSentence, TaggedSpan
from chaincrf.tagger.tokenizers import TokenizedLine, Tokenizer, get_tokenizer

__all__ = ["StreamPredictor"]


class StreamPredictor:
    """Prediction over streams of sentences, whatever tags the batches.

    Args:
        tags: the tag set and its schemes (labels in the model's id order).
        vocab: the vocabularies as plain data (``SentenceEncoder.to_dict()``), or None.
        tokenizer: how raw strings are tokenised
            (:func:`chaincrf.tagger.tokenizers.get_tokenizer`): ``"spacy"`` (spaCy's rule-based
            English tokenizer: ``call.`` -> ``call`` ``.``) or ``"whitespace"``
            (``str.split()``).

    Attributes:
        tokenizer: the :class:`~chaincrf.tagger.tokenizers.Tokenizer` for raw strings (may be
            replaced, e.g. ``predictor.tokenizer = get_tokenizer("whitespace")``).

    Raises:
        ValueError: for an unknown ``tokenizer`` name.
    """

    def __init__(
        self, tags: TagScheme, vocab: Mapping[str, Any] | None, tokenizer: str = "spacy"
    ) -> None:
        self.tags = tags
        self.vocab = vocab
        self.tokenizer: Tokenizer = get_tokenizer(tokenizer)
        self._sentence_encoder: Any = None

    def tag_tokens(
        self,
        token_lists: list[list[str]],
        feature_lists: list[Any],
        top_k: int,
    ) -> list[TaggedSentence]:
        """Tag one batch of non-empty token lists (the engine's part).

        Args:
            token_lists: the sentences' tokens, each non-empty.
            feature_lists: per sentence, its feature-column values or None.
            top_k: alternatives per sentence.

        Returns:
            One :class:`TaggedSentence` per sentence, without offsets.
        """
        raise NotImplementedError

    def encode_ids(
        self,
        token_lists: Sequence[Sequence[str]],
        feature_lists: Sequence[Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Each sentence's ids (:meth:`SentenceEncoder.encode`: ``words``, ``chars``,
        ``casing`` and, for feature-column models, ``features``), as in training.

        Raises:
            ValueError: naming the sentence, when a feature-column model gets no features.
        """
        encoder = self.sentence_encoder
        if feature_lists is None:
            feature_lists = [None] * len(token_lists)
        items = []
        for i, (tokens, features) in enumerate(zip(token_lists, feature_lists)):
            try:
                items.append(encoder.encode(list(tokens), features=features))
            except ValueError as error:
                raise ValueError(f"sentence {i} ({' '.join(tokens)[:60]!r}): {error}") from None
        return items

    def tagging(self) -> contextlib.AbstractContextManager[None]:
        """The context a chunk is tagged in (the PyTorch predictor's: eval mode)."""
        return contextlib.nullcontext()

    def check_top_k(self, top_k: int) -> None:
        """Raise ``ValueError`` when this model cannot give ``top_k`` alternatives."""

    def tagged(
        self,
        tokens: Sequence[str],
        train_tags: Sequence[str],
        confidences: Sequence[float],
        spans: Sequence[tuple[str, int, int]],
        span_confidences: Sequence[float],
        alternatives: list[dict[str, Any]] | None = None,
    ) -> TaggedSentence:
        """One result, whatever engine tagged it.

        Args:
            tokens: the sentence's tokens (n).
            train_tags: its tags in the training scheme (n).
            confidences: each chosen tag's marginal probability (n).
            spans: the predicted spans ``(type, start, end)`` (:meth:`TagScheme.spans`).
            span_confidences: each span's probability.
            alternatives: the k best taggings, when asked for.
        """
        return TaggedSentence(
            tokens=list(tokens),
            tags=self.tags.to_original(train_tags),
            confidences=[round(float(p), 6) for p in confidences],
            spans=[
                TaggedSpan(type_, start, end, " ".join(tokens[start:end]), confidence)
                for (type_, start, end), confidence in zip(spans, span_confidences)
            ],
            alternatives=alternatives or [],
        )

    def predict(
        self,
        sentences: Sequence[str] | Sequence[Sequence[str]] | Sequence[Any],
        batch_size: int = 128,
        top_k: int = 1,
    ) -> list[TaggedSentence]:
        """Tag sentences.

        Args:
            sentences: raw strings (tokenised by :attr:`tokenizer`; their results carry
                character offsets), lists of tokens, or :class:`chaincrf.data.Sentence` objects
                (their ``tokens`` and, for a model trained with feature columns, their
                ``features``).
            batch_size: sentences per forward pass.
            top_k: with k > 1, each result's ``alternatives`` holds the k best taggings and
                their probabilities (needs a CRF).

        Returns:
            One :class:`TaggedSentence` per input, in input order (empty input -> empty tags).

        Raises:
            TypeError: for a single string.
            ValueError: if the tagger has no vocabularies (not trained through a data module), if
                it was trained with feature columns and a sentence has none, if ``batch_size``
                or ``top_k`` is not a positive int, or if ``top_k > 1`` without a CRF.
        """
        if isinstance(sentences, str):
            raise TypeError(
                "sentences must be a list of sentences; got a single string (wrap it in a list)"
            )
        sentences = list(sentences)
        # one chunk: the whole list is sorted by length, as it always was
        chunk_size = max(len(sentences), 1)
        return list(self.predict_iter(sentences, batch_size, chunk_size, top_k=top_k))

    def predict_iter(
        self,
        sentences: Iterable[str] | Iterable[Sequence[str]] | Iterable[Any],
        batch_size: int = 128,
        chunk_size: int = 2048,
        top_k: int = 1,
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
            top_k: alternatives per sentence (>= 1; see :meth:`predict`).

        Returns:
            A generator of one :class:`TaggedSentence` per input, in input order.

        Raises:
            TypeError: for a single string (at the call).
            ValueError: at the call, if the tagger has no vocabularies, if ``batch_size``,
                ``chunk_size`` or ``top_k`` is not a positive int, or if ``top_k > 1`` without a
                CRF; while iterating, if a feature-column model gets a sentence without features.
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
        sizes = (("batch_size", batch_size), ("chunk_size", chunk_size), ("top_k", top_k))
        for name, value in sizes:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}")
        self.check_top_k(top_k)
        stream = iter(sentences)

        def tag_chunks() -> Iterator[TaggedSentence]:
            while chunk := list(islice(stream, chunk_size)):
                yield from self.tag_chunk(chunk, batch_size, top_k)

        return tag_chunks()

    def tag_chunk(
        self, sentences: list[Any], batch_size: int, top_k: int = 1
    ) -> list[TaggedSentence]:
        """Tag one chunk in eval mode, sorted by length into batches.

        Args:
            sentences: what :meth:`predict` takes; the raw strings are tokenised together
                (:meth:`Tokenizer.tokenize_lines`).
            batch_size: sentences per forward pass.
            top_k: alternatives per sentence (see :meth:`predict`).

        Returns:
            One :class:`TaggedSentence` per sentence, in input order.
        """
        raw = [i for i, s in enumerate(sentences) if isinstance(s, str)]
        tokenized: dict[int, TokenizedLine] = {}
        if raw:
            tokenized = dict(zip(raw, self.tokenizer.tokenize_lines([sentences[i] for i in raw])))
        token_lists = [
            tokenized[i].tokens
            if i in tokenized
            else [str(t) for t in (s.tokens if hasattr(s, "tokens") else s)]
            for i, s in enumerate(sentences)
        ]
        feature_lists = [getattr(s, "features", None) for s in sentences]
        results: list[TaggedSentence | None] = [None] * len(token_lists)
        order = sorted(range(len(token_lists)), key=lambda i: len(token_lists[i]))
        with self.tagging():
            for lo in range(0, len(order), batch_size):
                chunk = order[lo : lo + batch_size]
                nonempty = [i for i in chunk if token_lists[i]]
                for i in chunk:
                    if not token_lists[i]:
                        # one tagging of an empty sentence: the empty one
                        alternatives = [{"tags": [], "probability": 1.0}] if top_k > 1 else []
                        results[i] = TaggedSentence([], [], [], [], alternatives=alternatives)
                if not nonempty:
                    continue
                tagged = self.tag_tokens(
                    [token_lists[i] for i in nonempty], [feature_lists[i] for i in nonempty], top_k
                )
                for i, result in zip(nonempty, tagged):
                    results[i] = result
        for i, line in tokenized.items():
            tagged = results[i]
            assert tagged is not None  # every sentence was tagged above
            tagged.attach_offsets(sentences[i], line.offsets)
        return [r for r in results if r is not None]

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
