"""Raw text to tokens with character offsets: the ``"spacy"`` and ``"whitespace"`` tokenizers.

A tokenizer turns one line into :class:`TokenizedLine`: its tokens and, per token, the
``(start, end)`` character offsets into that line, so that ``line[start:end] == token``.

- ``"spacy"``: spaCy's rule-based English tokenizer (``spacy.blank("en").tokenizer``: no model
  download). It splits ``call.`` into ``call`` ``.`` and ``don't`` into ``do`` ``n't``, and keeps
  ``U.S.`` and ``Mr.`` whole. Like ``str.split()`` it first splits on runs of whitespace
  (``str.isspace()``: also "\\t", "\\x0b", "\\x85", U+2028, ...), then splits each piece on its
  prefixes, suffixes, infixes and special cases; the whitespace tokens spaCy emits for runs of
  spaces are dropped. spaCy is imported on first use, once per process. Its affix rules take
  time quadratic in the length of a run of non-whitespace characters (8 s for 10,000 ``)``), so a
  run longer than :data:`MAX_RUN_CHARS` characters (never a word of running text) is split by
  :data:`LONG_RUN` instead: runs of word characters, and each other character alone. The time
  per line is then linear in its length.
- ``"whitespace"``: ``str.split()``, the former rule (:func:`chaincrf.predict.outputs.tokenize`).

Neither imports torch, Lightning, Hydra, torchmetrics or seqeval.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

__all__ = [
    "LONG_RUN",
    "MAX_RUN_CHARS",
    "TOKENIZERS",
    "SpacyTokenizer",
    "TokenizedLine",
    "Tokenizer",
    "WhitespaceTokenizer",
    "get_tokenizer",
]

TOKENIZERS = ("spacy", "whitespace")
"""The tokenizer names :func:`get_tokenizer` accepts."""

_NON_SPACE = re.compile(r"\S+")  # \s is exactly str.isspace() for str patterns
_SPACE = re.compile(r"\s")

MAX_RUN_CHARS = 256
"""The longest run of non-whitespace characters the ``"spacy"`` tokenizer gives spaCy: long
enough for any word, number or usual URL; a run of 256 ``)`` takes spaCy ~12 ms, so a
100,000-character line costs at most ~5 s (measured: ``python3 scripts/reliability.py --only
bounded_work``)."""
LONG_RUN = re.compile(r"\w+|[^\w\s]")
"""How a longer run is split: runs of word characters, and every other character alone (what
spaCy gives for runs of brackets, quotes and other punctuation)."""


class TokenizedLine(NamedTuple):
    """One tokenised line.

    Attributes:
        tokens: the tokens, e.g. ``["call", "."]`` for ``"call."``.
        offsets: per token, ``(start, end)`` character offsets into the line (end exclusive):
            ``line[start:end] == tokens[i]``.
    """

    tokens: list[str]
    offsets: list[tuple[int, int]]


class Tokenizer:
    """The interface: :meth:`tokenize` one line, :meth:`tokenize_lines` a chunk of lines.

    Attributes:
        name: the name :func:`get_tokenizer` knows it by.
    """

    name = ""

    def tokenize(self, line: str) -> TokenizedLine:
        """Tokenise one line.

        Args:
            line: one sentence, e.g. ``"EU rejects German call."``.

        Returns:
            Its tokens and their character offsets into ``line``.
        """
        raise NotImplementedError

    def prepare(self) -> None:
        """Load now what the tokenizer needs (spaCy's pipeline), not at the first line."""

    def tokenize_lines(self, lines: Iterable[str]) -> list[TokenizedLine]:
        """Tokenise a chunk of lines (what the predictor calls, once per chunk).

        Args:
            lines: the lines.

        Returns:
            One :class:`TokenizedLine` per line, in order.
        """
        return [self.tokenize(line) for line in lines]

    def __call__(self, line: str) -> TokenizedLine:
        """Same as :meth:`tokenize`."""
        return self.tokenize(line)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class WhitespaceTokenizer(Tokenizer):
    """``str.split()`` with offsets: a token is a maximal run of non-whitespace characters."""

    name = "whitespace"

    def tokenize(self, line: str) -> TokenizedLine:
        """Tokenise one line on whitespace (as :meth:`Tokenizer.tokenize`)."""
        matches = list(_NON_SPACE.finditer(line))
        return TokenizedLine([m.group() for m in matches], [m.span() for m in matches])


@functools.lru_cache(maxsize=1)
def _spacy_english() -> Any:
    """``spacy.blank("en")``, built once per process.

    Its lexical attribute getters are switched off: the tokenizer's splits do not read them
    (only its rules and prefix, suffix and infix patterns), and computing them for every new
    word halves the throughput.

    spaCy's numerical library (thinc) imports torch when it can, which costs ~2 s and is not
    needed by the tokenizer: when torch is not loaded yet (the ONNX Runtime predictor), spaCy
    is imported with torch hidden (thinc then runs without it; measured: 3.4 s -> 1.0 s).

    Raises:
        ImportError: naming the package and the other tokenizer, when spaCy is not installed.
    """
    hide_torch = "torch" not in sys.modules
    if hide_torch:
        sys.modules["torch"] = None  # type: ignore[assignment]  # "import torch" fails
    try:
        import spacy
    except ImportError as error:
        raise ImportError(
            "the 'spacy' tokenizer needs spaCy (pip install spacy); or use "
            f"tokenizer='whitespace' ({error})"
        ) from None
    finally:
        if hide_torch and sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    nlp = spacy.blank("en")
    nlp.vocab.lex_attr_getters = {}
    return nlp


class SpacyTokenizer(Tokenizer):
    """spaCy's rule-based English tokenizer (``spacy.blank("en").tokenizer``), whitespace
    tokens dropped.

    Memory stays bounded over a stream: :meth:`tokenize_lines` runs in a spaCy memory zone (the
    strings and lexemes spaCy creates for a chunk are freed after it), and a line longer than
    ``piece_chars`` is tokenised in pieces cut at whitespace (spaCy tokenises the text between
    whitespace runs independently, so the tokens are the same). Time is bounded too: a run of
    more than ``max_run_chars`` non-whitespace characters is split by :data:`LONG_RUN`, not by
    spaCy (whose affix rules are quadratic in a run's length). Not thread-safe (one spaCy
    pipeline per process).

    Args:
        piece_chars: the longest piece of a line given to spaCy at once (>= 1).
        max_run_chars: the longest run of non-whitespace characters given to spaCy (>= 1).

    Raises:
        ValueError: if ``piece_chars`` or ``max_run_chars`` is not a positive int.
    """

    name = "spacy"

    def __init__(self, piece_chars: int = 100_000, max_run_chars: int = MAX_RUN_CHARS) -> None:
        for field, value in (("piece_chars", piece_chars), ("max_run_chars", max_run_chars)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{field} must be a positive int; got {value!r}")
        self.piece_chars = piece_chars
        self.max_run_chars = max_run_chars

    def prepare(self) -> None:
        """Import spaCy and build its English pipeline (once per process)."""
        _spacy_english()

    def tokenize(self, line: str) -> TokenizedLine:
        """Tokenise one line with spaCy (as :meth:`Tokenizer.tokenize`)."""
        return self.tokenize_lines([line])[0]

    def tokenize_lines(self, lines: Iterable[str]) -> list[TokenizedLine]:
        """Tokenise a chunk of lines in one spaCy memory zone (as
        :meth:`Tokenizer.tokenize_lines`)."""
        lines = list(lines)
        if not lines:  # spaCy is not loaded for nothing
            return []
        nlp = _spacy_english()
        out = []
        with nlp.memory_zone():  # the Docs must not outlive it: copy out strings and ints
            for line in lines:
                tokens: list[str] = []
                offsets: list[tuple[int, int]] = []
                for shift, text, long in self._segments(line):
                    if long:  # one long run of non-whitespace characters
                        for match in LONG_RUN.finditer(text):
                            tokens.append(match.group())
                            offsets.append((shift + match.start(), shift + match.end()))
                        continue
                    for at, piece in self._pieces(text):
                        for token in nlp.tokenizer(piece):
                            word = token.text
                            if not word.isspace():
                                start = token.idx + at + shift
                                tokens.append(word)
                                offsets.append((start, start + len(word)))
                out.append(TokenizedLine(tokens, offsets))
        return out

    def _segments(self, line: str) -> Iterator[tuple[int, str, bool]]:
        """``(offset, text, long)``: the line cut around its runs of more than
        ``max_run_chars`` non-whitespace characters (``long`` True), in order."""
        if len(line) <= self.max_run_chars:  # no long run: the whole line, as is
            yield 0, line, False
            return
        start = 0
        for match in _NON_SPACE.finditer(line):
            if match.end() - match.start() > self.max_run_chars:
                if match.start() > start:
                    yield start, line[start : match.start()], False
                yield match.start(), match.group(), True
                start = match.end()
        if start < len(line):
            yield start, line[start:], False

    def _pieces(self, line: str) -> Iterator[tuple[int, str]]:
        """``(offset, piece)``: the line cut after a whitespace character once a piece has
        ``piece_chars`` characters (a longer run without whitespace stays whole)."""
        start = 0
        while len(line) - start > self.piece_chars:
            space = _SPACE.search(line, start + self.piece_chars - 1)
            if space is None:
                break
            yield start, line[start : space.end()]
            start = space.end()
        yield start, line[start:]

    def __repr__(self) -> str:
        return f"SpacyTokenizer(piece_chars={self.piece_chars}, max_run_chars={self.max_run_chars})"


def get_tokenizer(name: str) -> Tokenizer:
    """The tokenizer called ``name`` (spaCy is not imported until it tokenises).

    Args:
        name: one of :data:`TOKENIZERS`: ``"spacy"`` or ``"whitespace"``.

    Returns:
        A new :class:`Tokenizer`.

    Raises:
        ValueError: naming the argument and the choices, for any other name.
    """
    if name == "spacy":
        return SpacyTokenizer()
    if name == "whitespace":
        return WhitespaceTokenizer()
    raise ValueError(f"tokenizer must be one of {TOKENIZERS}; got {name!r}")
