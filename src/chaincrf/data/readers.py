"""Readers for CoNLL-style column files and CoNLL-U treebanks.

Every problem in a file is reported as a :class:`DataFormatError` carrying the file and line, never
as a bare ``IndexError``, ``KeyError`` or ``UnicodeDecodeError``.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from chaincrf.data.textfile import (
    MAX_LINE_CHARS,
    DataFormatError,
    check_max_line_chars,
    read_text,
)

__all__ = [
    "CONLLU_COLUMNS",
    "MAX_LINE_CHARS",
    "DataFormatError",
    "Sentence",
    "read_columns",
    "read_conllu",
]

logger = logging.getLogger(__name__)

CONLLU_COLUMNS: tuple[str, ...] = (
    "id",
    "form",
    "lemma",
    "upos",
    "xpos",
    "feats",
    "head",
    "deprel",
    "deps",
    "misc",
)
"""The ten CoNLL-U column names, in file order."""

_DOCSTART = "-DOCSTART-"
_COLUMN_SPLIT = re.compile(r"[ \t]+")
_CONLLU_RANGE_OR_EMPTY = re.compile(r"^\d+[-.]\d+$")


@dataclass
class Sentence:
    """One sentence of a corpus.

    Attributes:
        tokens: the words, as written in the file.
        labels: one label per token; empty when the labels are unknown (raw text to tag).
        doc: the document the sentence belongs to (the ordinal of its ``-DOCSTART-`` block as a
            string, or the CoNLL-U ``newdoc id``), or None.
        line: 1-based line of the sentence's first token in its file, or None.
        features: the values of the reader's feature columns (e.g. the POS column of
            CoNLL-2000), one list of ``len(tokens)`` strings per feature column; empty when the
            reader was given no feature columns.
    """

    tokens: list[str]
    labels: list[str] = field(default_factory=list)
    doc: str | None = None
    line: int | None = None
    features: list[list[str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tokens)


def read_columns(
    path: str | os.PathLike[str],
    token_column: int = 0,
    label_column: int | None = -1,
    encoding: str = "utf-8",
    *,
    feature_columns: Sequence[int] = (),
    skip_bad_sentences: bool = False,
    max_line_chars: int = MAX_LINE_CHARS,
) -> list[Sentence]:
    """Read a whitespace-separated column file (CoNLL-2000/2002/2003, WNUT style).

    One token per line, columns separated by spaces or tabs; a sentence ends at a blank or
    whitespace-only line. ``-DOCSTART-`` lines are dropped, and each sentence keeps the ordinal of
    its document (``"1"``, ``"2"``, ...) in ``doc``. A line starting with ``#`` at the start of a
    sentence is a comment unless it has as many columns as the token lines (CoNLL-2000 has the
    token ``#``, written ``# # O``). Every token line must have the same number of columns as the
    first one.

    Args:
        path: the file.
        token_column: the column of the token (negative counts from the end).
        label_column: the column of the label (negative counts from the end), or None for files
            without labels.
        encoding: the text encoding.
        feature_columns: columns read into ``Sentence.features`` as extra input features (for
            example ``[1]``, the POS column of CoNLL-2000; negative counts from the end).
        skip_bad_sentences: drop sentences with a malformed line (logging a warning with their
            count) instead of raising.
        max_line_chars: the longest line accepted, in characters without the line end
            (default :data:`MAX_LINE_CHARS`).

    Returns:
        The sentences in file order.

    Raises:
        ValueError: for a ``max_line_chars`` that is not a positive integer.
        DataFormatError: for a missing, non-regular (device, FIFO) or undecodable file, binary
            data, a ``\\r`` line end without ``\\n``, a line over ``max_line_chars``, a line with
            another number of columns, a column index out of range or an empty token; the message
            names ``file:line``.
    """
    feature_columns = _column_list(feature_columns)
    check_max_line_chars(max_line_chars)
    lines = read_text(path, encoding, max_line_chars)
    sentences: list[Sentence] = []
    errors: list[DataFormatError] = []
    n_columns: int | None = None
    n_columns_line = 0
    tokens: list[str] = []
    labels: list[str] = []
    features: list[list[str]] = [[] for _ in feature_columns]
    first_line = 0
    bad: DataFormatError | None = None
    doc: str | None = None
    n_docs = 0
    split = _COLUMN_SPLIT.split

    def flush() -> None:
        nonlocal tokens, labels, features, bad
        if bad is not None:
            errors.append(bad)
        elif tokens:
            sentences.append(Sentence(tokens, labels, doc, first_line, features))
        tokens, labels, bad = [], [], None
        features = [[] for _ in feature_columns]

    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            flush()
            continue
        fields = line.split() if line.isascii() else split(line)
        if fields[0] == _DOCSTART:
            flush()
            n_docs += 1
            doc = str(n_docs)
            continue
        if line[0] == "#" and not tokens and bad is None and len(fields) != n_columns:
            continue
        if n_columns is None:
            n_columns, n_columns_line = len(fields), number
            named = [("token_column", token_column), ("label_column", label_column)]
            named += [(f"feature_columns[{i}]", c) for i, c in enumerate(feature_columns)]
            for name, column in named:
                if column is not None and not -n_columns <= column < n_columns:
                    raise DataFormatError(
                        path,
                        number,
                        f"{name}={column} is out of range for a line with {n_columns} columns",
                    )
        if bad is not None:
            continue
        if not tokens:
            first_line = number
        if len(fields) != n_columns:
            hint = ""
            if raw[:1] in (" ", "\t") or "\t\t" in raw:
                hint = " (an empty column: tokens and labels must not be empty)"
            bad = DataFormatError(
                path,
                number,
                f"expected {n_columns} columns (as on line {n_columns_line}); "
                f"got {len(fields)}{hint}",
            )
            continue
        tokens.append(fields[token_column])
        if label_column is not None:
            labels.append(fields[label_column])
        for values, column in zip(features, feature_columns):
            values.append(fields[column])
    flush()
    _raise_or_warn(path, errors, skip_bad_sentences)
    return sentences


def _column_list(columns: Sequence[int | str] | None) -> list:
    """``feature_columns`` as a list (None -> []), rejecting a single string or number."""
    if columns is None:
        return []
    if isinstance(columns, (str, int)):
        raise ValueError(f"feature_columns must be a list of columns (e.g. [1]); got {columns!r}")
    return list(columns)


def _raise_or_warn(
    path: str | os.PathLike[str], errors: list[DataFormatError], skip_bad_sentences: bool
) -> None:
    if not errors:
        return
    if not skip_bad_sentences:
        raise errors[0]
    logger.warning("skipped %d bad sentence(s) in %s; the first: %s", len(errors), path, errors[0])


def _conllu_column(column: int | str, name: str = "label_column") -> int:
    if isinstance(column, int) and not isinstance(column, bool):
        if not -len(CONLLU_COLUMNS) <= column < len(CONLLU_COLUMNS):
            raise ValueError(
                f"{name} must be a CoNLL-U column index in [-10, 9] or a name in "
                f"{CONLLU_COLUMNS}; got {column}"
            )
        return column % len(CONLLU_COLUMNS)
    if isinstance(column, str) and column.lower() in CONLLU_COLUMNS:
        return CONLLU_COLUMNS.index(column.lower())
    raise ValueError(
        f"{name} must be a CoNLL-U column name in {CONLLU_COLUMNS} or an index; got {column!r}"
    )


def read_conllu(
    path: str | os.PathLike[str],
    label_column: int | str | None = "upos",
    encoding: str = "utf-8",
    *,
    feature_columns: Sequence[int | str] = (),
    skip_bad_sentences: bool = False,
    max_line_chars: int = MAX_LINE_CHARS,
) -> list[Sentence]:
    """Read a CoNLL-U file: the token from FORM, the label from any column.

    Multiword-token ranges (``3-4``) and empty nodes (``8.1``) are skipped, so the tokens are the
    syntactic words. ``# newdoc id = ...`` comments set ``doc`` on the following sentences.

    Args:
        path: the file.
        label_column: a column name (``"upos"``, ``"xpos"``, ``"deprel"``, ...; case-insensitive),
            a column index, or None to read no labels.
        encoding: the text encoding.
        feature_columns: columns (names or indices, as ``label_column``) read into
            ``Sentence.features`` as extra input features, e.g. ``["xpos"]``.
        skip_bad_sentences: drop sentences with a malformed line (logging a warning with their
            count) instead of raising.
        max_line_chars: the longest line accepted, in characters without the line end
            (default :data:`MAX_LINE_CHARS`).

    Returns:
        The sentences in file order.

    Raises:
        ValueError: for an unknown ``label_column`` or feature column, or a ``max_line_chars``
            that is not a positive integer.
        DataFormatError: for a missing, non-regular (device, FIFO) or undecodable file, binary
            data, a ``\\r`` line end without ``\\n``, a line over ``max_line_chars``, a line without
            10 tab-separated columns, a bad ID or an empty FORM or label; the message names
            ``file:line``.
    """
    column = None if label_column is None else _conllu_column(label_column)
    column_name = None if column is None else CONLLU_COLUMNS[column].upper()
    feature_ids = [
        _conllu_column(c, f"feature_columns[{i}]")
        for i, c in enumerate(_column_list(feature_columns))
    ]
    check_max_line_chars(max_line_chars)
    lines = read_text(path, encoding, max_line_chars)
    sentences: list[Sentence] = []
    errors: list[DataFormatError] = []
    tokens: list[str] = []
    labels: list[str] = []
    features: list[list[str]] = [[] for _ in feature_ids]
    first_line = 0
    bad: DataFormatError | None = None
    doc: str | None = None

    def flush() -> None:
        nonlocal tokens, labels, features, bad
        if bad is not None:
            errors.append(bad)
        elif tokens:
            sentences.append(Sentence(tokens, labels, doc, first_line, features))
        tokens, labels, bad = [], [], None
        features = [[] for _ in feature_ids]

    def fail(number: int, reason: str) -> None:
        nonlocal bad
        if bad is None:
            bad = DataFormatError(path, number, reason)

    for number, line in enumerate(lines, start=1):
        if not line.strip():
            flush()
            continue
        if line.startswith("#"):
            if line.startswith("# newdoc"):
                _, _, value = line.partition("=")
                doc = value.strip() or None
            continue
        fields = line.split("\t")
        if len(fields) != 10:
            fail(number, f"expected 10 tab-separated CoNLL-U columns; got {len(fields)}")
            continue
        token_id = fields[0]
        if not token_id.isdigit():
            if _CONLLU_RANGE_OR_EMPTY.match(token_id):
                continue
            fail(
                number,
                f"expected an integer ID, a range (3-4) or an empty node (8.1); got {token_id!r}",
            )
            continue
        form = fields[1]
        if not form or form.isspace():
            fail(number, "empty FORM (column 2)")
            continue
        if not tokens:
            first_line = number
        tokens.append(form)
        if column is not None:
            label = fields[column]
            if not label or label.isspace():
                fail(number, f"empty {column_name} (column {column + 1})")
                continue
            labels.append(label)
        for values, feature_id in zip(features, feature_ids):
            values.append(fields[feature_id])
    flush()
    _raise_or_warn(path, errors, skip_bad_sentences)
    return sentences


def reader_for(
    format: str,
    token_column: int = 0,
    label_column: int | str | None = None,
    encoding: str = "utf-8",
    skip_bad_sentences: bool = False,
    feature_columns: Sequence[int | str] | None = (),
    *,
    max_line_chars: int = MAX_LINE_CHARS,
) -> Callable[[str | os.PathLike[str]], list[Sentence]]:
    """Return a one-argument reader for ``format`` (``"columns"`` or ``"conllu"``).

    ``label_column=None`` means the format's default: the last column, or UPOS.
    ``feature_columns`` are read into ``Sentence.features`` (integers for ``"columns"``; names or
    integers for ``"conllu"``). ``max_line_chars`` is passed on to the reader.

    Raises:
        ValueError: for an unknown format, a column of the wrong kind or a ``max_line_chars``
            that is not a positive integer.
    """
    feature_columns = _column_list(feature_columns)
    check_max_line_chars(max_line_chars)
    if format == "columns":
        for i, column in enumerate(feature_columns):
            if not isinstance(column, int) or isinstance(column, bool):
                raise ValueError(
                    f"feature_columns[{i}] must be an integer column index for format 'columns'; "
                    f"got {column!r}"
                )
        if label_column is None:
            label_column = -1
        if not isinstance(label_column, int) or isinstance(label_column, bool):
            raise ValueError(
                f"label_column must be an integer column index for format 'columns'; "
                f"got {label_column!r}"
            )
        return functools.partial(
            read_columns,
            token_column=token_column,
            label_column=label_column,
            encoding=encoding,
            feature_columns=feature_columns,
            skip_bad_sentences=skip_bad_sentences,
            max_line_chars=max_line_chars,
        )
    if format == "conllu":
        column = "upos" if label_column is None else label_column
        _conllu_column(column)
        for i, feature_column in enumerate(feature_columns):
            _conllu_column(feature_column, f"feature_columns[{i}]")
        return functools.partial(
            read_conllu,
            label_column=column,
            encoding=encoding,
            feature_columns=feature_columns,
            skip_bad_sentences=skip_bad_sentences,
            max_line_chars=max_line_chars,
        )
    raise ValueError(f"format must be 'columns' or 'conllu'; got {format!r}")
