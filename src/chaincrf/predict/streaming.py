"""The engine-independent half of prediction: text in, tagged sentences out.

:class:`StreamPredictor` tokenises raw strings (:mod:`chaincrf.predict.tokenizers`, with
character offsets), reads a stream in chunks, sorts each chunk by length into batches, and
returns the results in input order; a subclass tags one batch of token lists
(:meth:`StreamPredictor.tag_tokens`): :class:`~chaincrf.predict.predictor.Predictor` with the
PyTorch network, :class:`~chaincrf.predict.onnx_predictor.OnnxPredictor` with onnxruntime. No
torch here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from chaincrf.data.schemes import TagScheme
from chaincrf.predict.outputs import TaggedSentence, TaggedSpan
from chaincrf.predict.tokenizers import TokenizedLine, Tokenizer, get_tokenizer

__all__ = ["MAX_BATCH_TOKENS", "MAX_TOP_K", "StreamPredictor", "check_top_k_limit"]

MAX_TOP_K = 1000
"""The largest ``top_k`` accepted: the k best taggings take O(k·T·K) memory per sentence
(scores and back-pointers for each of T tokens, K tags and k ranks: 16 bytes each, 27 MB for
k=1000 and 100 tokens of 17 tags), enough to list every tagging of a short sentence; beyond
that the taggings' probabilities are vanishingly small. A larger ``top_k`` is refused; one
larger than a sentence's number of taggings (K^T) gives them all."""
MAX_BATCH_TOKENS = 100_000
"""The most token positions (sentences x the longest one, padding included, times ``top_k``)
in one forward pass: a batch is cut short of ``batch_size`` sentences when its sentences are
long, so that memory is bounded by this and not by ``batch_size`` times the longest line (a
sentence longer than this is tagged alone). Ordinary sentences never reach it: 128 sentences of
781 tokens."""


class StreamPredictor:
    """Prediction over streams of sentences, whatever tags the batches.

    Args:
        tags: the tag set and its schemes (labels in the model's id order).
        vocab: the vocabularies as plain data (``SentenceEncoder.to_dict()``), or None.
        tokenizer: how raw strings are tokenised
            (:func:`chaincrf.predict.tokenizers.get_tokenizer`): ``"spacy"`` (spaCy's rule-based
            English tokenizer: ``call.`` -> ``call`` ``.``) or ``"whitespace"``
            (``str.split()``).

    Attributes:
        tokenizer: the :class:`~chaincrf.predict.tokenizers.Tokenizer` for raw strings (may be
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
            spans: the predicted spans ``(type, start, end)``, exactly
                ``TagScheme.spans(train_tags)`` (:meth:`TagScheme.batch_spans` for a batch): the
                original-scheme tags are written from them.
            span_confidences: each span's probability.
            alternatives: the k best taggings, when asked for.
        """
        return TaggedSentence(
            tokens=list(tokens),
            tags=self.tags.to_original(train_tags, spans),
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
                their probabilities (needs a CRF; at most :data:`MAX_TOP_K`; a sentence with
                fewer taggings gives them all).

        Returns:
            One :class:`TaggedSentence` per input, in input order (empty input -> empty tags).

        Raises:
            TypeError: for a single string; naming the sentence (and token) for a sentence that
                is neither a str nor a sequence of str tokens (bytes, a dict, None, a token that
                is not a str).
            ValueError: if the tagger has no vocabularies (not trained through a data module), if
                it was trained with feature columns and a sentence has none, if ``batch_size``
                or ``top_k`` is not a positive int, if ``top_k`` is over :data:`MAX_TOP_K`, or
                if ``top_k > 1`` without a CRF.
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
            TypeError: for a single string (at the call); while iterating, naming the sentence
                (and token) for one that is neither a str nor a sequence of str tokens.
            ValueError: at the call, if the tagger has no vocabularies, if ``batch_size``,
                ``chunk_size`` or ``top_k`` is not a positive int, if ``top_k`` is over
                :data:`MAX_TOP_K`, or if ``top_k > 1`` without a CRF; while iterating, if a feature-column model gets a sentence without features.
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
        check_top_k_limit(top_k)
        self.check_top_k(top_k)
        stream = iter(sentences)

        def tag_chunks() -> Iterator[TaggedSentence]:
            first = 0
            while chunk := list(islice(stream, chunk_size)):
                yield from self.tag_chunk(chunk, batch_size, top_k, first)
                first += len(chunk)

        return tag_chunks()

    def tag_chunk(
        self, sentences: list[Any], batch_size: int, top_k: int = 1, first: int = 0
    ) -> list[TaggedSentence]:
        """Tag one chunk in eval mode, sorted by length into batches (of at most
        ``batch_size`` sentences and :data:`MAX_BATCH_TOKENS` token positions).

        Args:
            sentences: what :meth:`predict` takes; the raw strings are tokenised together
                (:meth:`Tokenizer.tokenize_lines`).
            batch_size: sentences per forward pass.
            top_k: alternatives per sentence (see :meth:`predict`).
            first: the index of the chunk's first sentence in the whole input (for messages).

        Returns:
            One :class:`TaggedSentence` per sentence, in input order.

        Raises:
            TypeError: naming the sentence (and token), for a sentence that is neither a str
                nor a sequence of str tokens (bytes, a dict, None, a token that is not a str).
        """
        raw = [i for i, s in enumerate(sentences) if isinstance(s, str)]
        tokenized: dict[int, TokenizedLine] = {}
        if raw:
            tokenized = dict(zip(raw, self.tokenizer.tokenize_lines([sentences[i] for i in raw])))
        token_lists = [
            tokenized[i].tokens if i in tokenized else _token_list(s, first + i)
            for i, s in enumerate(sentences)
        ]
        feature_lists = [getattr(s, "features", None) for s in sentences]
        results: list[TaggedSentence | None] = [None] * len(token_lists)
        order = sorted(range(len(token_lists)), key=lambda i: len(token_lists[i]))
        positions = max(MAX_BATCH_TOKENS // top_k, 1)
        with self.tagging():
            for chunk in _batches(order, [len(t) for t in token_lists], batch_size, positions):
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


def _token_list(sentence: Any, index: int) -> list[str]:
    """The tokens of a sentence given as tokens (a sequence of str, or an object with
    ``tokens``), each checked to be a str: bytes, mappings, None and numbers are not stringified
    into tokens (``b"EU"`` would become ``"69"``, ``"85"``).

    Raises:
        TypeError: naming ``index`` (and the token's), what was expected and what arrived.
    """
    tokens = getattr(sentence, "tokens", sentence)
    if (
        tokens is None
        or isinstance(tokens, (bytes, bytearray, memoryview, Mapping))
        or not (isinstance(tokens, Iterable))
    ):
        raise TypeError(
            f"sentence {index} must be a str (raw text) or a sequence of str tokens; got "
            f"{type(tokens).__name__} {_short(tokens)}"
        )
    tokens = list(tokens)
    for j, token in enumerate(tokens):
        if not isinstance(token, str):
            raise TypeError(
                f"sentence {index}, token {j} must be a str; got {type(token).__name__} "
                f"{_short(token)}"
            )
    return tokens


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_top_k_limit(top_k: int) -> None:
    """Raise a ``ValueError`` naming ``top_k`` and :data:`MAX_TOP_K` when it is over it."""
    if top_k > MAX_TOP_K:
        raise ValueError(
            f"top_k must be at most {MAX_TOP_K} (the k best taggings take memory in proportion "
            f"to k x tokens x tags); got {top_k}"
        )


def _batches(
    order: list[int], lengths: list[int], batch_size: int, positions: int
) -> Iterator[list[int]]:
    """``order`` (indices sorted by ascending length) cut into batches of at most
    ``batch_size`` sentences and ``positions`` padded token positions (sentences x the longest),
    each batch holding at least one sentence."""
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) == batch_size or (len(batch) + 1) * lengths[i] > positions):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch
