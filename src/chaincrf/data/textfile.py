"""Reading a text data file safely: regular files only, lines split at ``\n`` only, a cap on a
line's length, and every problem as a :class:`DataFormatError` naming the file and line."""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["MAX_LINE_CHARS", "DataFormatError", "check_max_line_chars", "read_text"]

MAX_LINE_CHARS = 1_000_000
"""Default ``max_line_chars`` of the readers. CoNLL token lines are under 1 KB and CoNLL-U
``# text =`` lines a few KB, so a million characters leaves a thousandfold margin; a longer line
is almost always a file of another kind (a JSON dump, a file without line breaks)."""


class DataFormatError(ValueError):
    """A data file that cannot be read as asked, with the place of the problem.

    Attributes:
        path: the file.
        line: the 1-based line of the problem, or None when it concerns the whole file.
        reason: the message without the ``file:line`` prefix.
    """

    def __init__(self, path: str | os.PathLike[str], line: int | None, reason: str) -> None:
        self.path = str(path)
        self.line = line
        self.reason = reason
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}")

    def __reduce__(self):  # keep the error picklable (DataLoader workers, multiprocessing)
        return (type(self), (self.path, self.line, self.reason))


def _binary(
    path: str | os.PathLike[str], data: bytes, offset: int, encoding: str
) -> DataFormatError:
    line = data.count(b"\n", 0, offset) + 1
    return DataFormatError(path, line, f"binary data where {encoding} text was expected")


def _read_bytes(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a regular file (or a symlink to one), refusing devices, FIFOs and sockets.

    The kind of file is checked with ``os.stat`` before opening it: reading ``/dev/zero`` would
    never end, and opening a FIFO without a writer would block forever.
    """
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISREG(mode):
            return Path(path).read_bytes()
    except FileNotFoundError:
        raise DataFormatError(path, None, "file not found") from None
    except OSError as error:
        raise DataFormatError(path, None, f"cannot read the file: {error.strerror}") from None
    if stat.S_ISDIR(mode):
        raise DataFormatError(path, None, "expected a file, found a directory")
    raise DataFormatError(
        path,
        None,
        "not a regular file (a device, FIFO or socket): the readers take regular files only "
        "(write the data to a file first; process substitution such as <(zcat ...) is a FIFO)",
    )


def _decode(path: str | os.PathLike[str], data: bytes, encoding: str) -> str:
    """``data`` as text without a leading BOM, with file:line errors for binary or bad bytes."""
    nul = -1 if encoding.lower().replace("-", "").startswith("utf16") else data.find(b"\x00")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as error:
        if nul >= 0:
            raise _binary(path, data, min(nul, error.start), encoding) from None
        line = data.count(b"\n", 0, error.start) + 1
        bad = data[error.start : error.start + 4]
        raise DataFormatError(
            path,
            line,
            f"bytes {bad!r} cannot be decoded as {encoding} "
            "(set the encoding option to the file's encoding)",
        ) from None
    except LookupError:
        raise DataFormatError(path, None, f"unknown text encoding {encoding!r}") from None
    if nul >= 0:
        raise _binary(path, data, nul, encoding)
    return text[1:] if text.startswith("\ufeff") else text


def _split_lines(path: str | os.PathLike[str], text: str, max_line_chars: int) -> list[str]:
    """Split ``text`` at ``\\n`` only (a ``\\r\\n`` counts as one line end).

    Other characters that ``str.splitlines`` breaks at (``\\x0b``, ``\\x0c``, ``\\x1c``-``\\x1e``,
    ``\\x85``, U+2028, U+2029) stay inside their line. A ``\\r`` not followed by ``\\n`` (old Mac
    line ends, a stray carriage return) is an error rather than a silent merge of lines.
    """
    if "\r" in text:
        text = text.replace("\r\n", "\n")
        at = text.find("\r")
        if at >= 0:
            raise DataFormatError(
                path,
                text.count("\n", 0, at) + 1,
                "carriage return (\\r) without a line feed: lines must end in \\n or \\r\\n "
                "(convert the file, e.g. with `tr '\\r' '\\n'`)",
            )
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if max(map(len, lines), default=0) > max_line_chars:
        number, line = next((i, x) for i, x in enumerate(lines, 1) if len(x) > max_line_chars)
        raise DataFormatError(
            path,
            number,
            f"line is {len(line)} characters long; the limit is {max_line_chars} "
            "(max_line_chars): is this a data file of another kind? "
            "Raise max_line_chars if the line is genuine",
        )
    return lines


def read_text(path: str | os.PathLike[str], encoding: str, max_line_chars: int) -> list[str]:
    """Read a text file into lines (without line ends), with file:line errors."""
    return _split_lines(path, _decode(path, _read_bytes(path), encoding), max_line_chars)


def check_max_line_chars(max_line_chars: int) -> None:
    """Raise a ValueError naming ``max_line_chars`` unless it is a positive integer."""
    if (
        not isinstance(max_line_chars, int)
        or isinstance(max_line_chars, bool)
        or max_line_chars < 1
    ):
        raise ValueError(f"max_line_chars must be a positive integer; got {max_line_chars!r}")
