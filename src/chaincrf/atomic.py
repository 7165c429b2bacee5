"""Files written whole: an output is the old file or the new one, never half of one, and no
temporary file outlives an interrupt. Used by every layer that writes (data caches, checkpoints,
reports, exports, the CLIs); imports nothing of chaincrf.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["INTERRUPTS", "atomic_file", "creation_mode", "deferred_signals", "replaceable"]


def creation_mode(directory: bool = False) -> int:
    """The permission bits a new file (or folder) gets under the current umask (0o644 / 0o755
    with the usual 022). ``tempfile`` creates its files 0o600 and folders 0o700: outputs written
    through one and renamed into place get these bits instead."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], binary: bool = False) -> Iterator[IO[Any]]:
    """Write a file atomically: a temporary file in the same folder, flushed and synced to disk,
    renamed over ``path`` when the block ends without an error (and removed when it fails or is
    interrupted, ``KeyboardInterrupt`` and ``SystemExit`` included), with the permissions of
    :func:`creation_mode`. A reader, or a process killed meanwhile, sees the old file or the new
    one, never half of one.

    A ``path`` that exists and is not a regular file (``/dev/null``, a terminal, a FIFO, a
    socket) is opened and written in place, never replaced; a symbolic link is followed, so the
    file it points to is replaced and the link is kept.

    Args:
        path: the file to write (its folder is created).
        binary: a binary stream (``"wb"``) instead of UTF-8 text with ``"\n"`` line ends.

    Yields:
        The open stream.

    Raises:
        IsADirectoryError: naming ``path``, when it is a folder.
    """
    mode: dict[str, Any] = (
        {"mode": "wb"} if binary else {"mode": "w", "encoding": "utf-8", "newline": "\n"}
    )
    target = replaceable(path)
    if target is None:
        with open(path, **mode) as stream:  # a device, FIFO or socket: written in place
            yield stream
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_name = None
    try:
        with deferred_signals():  # an interrupt cannot fall between creating and naming it
            handle, tmp_name = tempfile.mkstemp(
                prefix=f".{target.name}.", suffix=".tmp", dir=target.parent
            )
        with os.fdopen(handle, **mode) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(tmp_name, creation_mode())
        os.replace(tmp_name, target)
    except BaseException:
        with deferred_signals(), contextlib.suppress(FileNotFoundError):
            if tmp_name is not None:  # a second interrupt waits for the removal
                os.unlink(tmp_name)
        raise


INTERRUPTS = (signal.SIGINT, signal.SIGTERM)
"""The signals that stop a command with cleanup (Ctrl-C, ``kill``): :func:`deferred_signals`
holds them back while a temporary file is created or removed."""


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM are held back and delivered when it ends, so that an
    interrupt cannot leave a temporary file created but not yet known, or half removed. Outside
    the main thread (where Python runs no signal handler) the block runs as is."""
    received: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        received.append(signum)

    try:
        previous = {number: signal.signal(number, hold) for number in INTERRUPTS}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)
        for signum in dict.fromkeys(received):
            signal.raise_signal(signum)


def replaceable(path: str | os.PathLike[str]) -> Path | None:
    """The file that a temporary file may be renamed over to write ``path``: ``path`` itself,
    the file a symbolic link points to, or None when ``path`` is a device, FIFO or socket (to be
    written in place).

    Raises:
        IsADirectoryError: naming ``path``, when it is a folder.
    """
    try:
        status = os.stat(path)  # follows links (``/dev/stdout`` -> the terminal or a pipe)
    except FileNotFoundError:
        return Path(os.path.realpath(path))
    if stat.S_ISDIR(status.st_mode):
        raise IsADirectoryError(f"{path} is a folder; expected the path of a file to write")
    return Path(os.path.realpath(path)) if stat.S_ISREG(status.st_mode) else None
