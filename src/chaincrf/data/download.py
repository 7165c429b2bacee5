"""Downloadable corpora (:data:`DATASETS`, UD English-EWT r2.16 today) fetched into a cache, sha256-verified, never leaving a partial file."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from chaincrf.atomic import creation_mode, replaceable

__all__ = [
    "DATASETS",
    "UD_EWT_BASE_URL",
    "UD_EWT_FILES",
    "DownloadError",
    "Downloadable",
    "default_cache_dir",
    "download_file",
    "ensure",
    "ensure_ud_ewt",
    "sha256_of",
]

logger = logging.getLogger(__name__)

UD_EWT_BASE_URL = "https://raw.githubusercontent.com/UniversalDependencies/UD_English-EWT/r2.16/"
"""The official UD_English-EWT repository at tag r2.16."""

UD_EWT_FILES: dict[str, str] = {
    "en_ewt-ud-train.conllu": "3fb78e2b55482c8ee00caa653af436c88c9e5bc9a73ce26e4ae3ddc79d2b7e7b",
    "en_ewt-ud-dev.conllu": "531a54ff90d6ab12201c5a50c3e78e6ddac4de69abc4bce5d275d3cd29efe2b6",
    "en_ewt-ud-test.conllu": "e266e515a0a7547657ed3d90d9ba46487d6bd251f27ad4269d4e8a427c8555cd",
}
"""File name -> sha256 of the r2.16 release."""

_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
_CHUNK = 1 << 16


class DownloadError(OSError):
    """A download that failed or did not match its checksum; nothing was left at the target."""


def default_cache_dir() -> Path:
    """``$CHAINCRF_CACHE``, else ``$XDG_CACHE_HOME/chaincrf``, else ``~/.cache/chaincrf``."""
    if os.environ.get("CHAINCRF_CACHE"):
        return Path(os.environ["CHAINCRF_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "chaincrf"


def sha256_of(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_url(url: str) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOCAL_HOSTS):
        return
    raise ValueError(f"url must use https (plain http only for a local test server); got {url!r}")


def download_file(
    url: str,
    target: str | os.PathLike[str],
    sha256: str,
    timeout: float = 60.0,
    retries: int = 2,
) -> Path:
    """Download ``url`` to ``target`` atomically and verify its sha256.

    The body is streamed into a temporary file beside ``target``, hashed on the way, and renamed
    onto ``target`` only when it is complete and its sha256 matches; on any failure the
    temporary file is removed, so ``target`` is either absent (or as before) or complete.

    Args:
        url: an ``https://`` URL (``http://`` only for 127.0.0.1 / localhost).
        target: where the file goes; parent directories are created.
        sha256: the expected hex digest.
        timeout: socket timeout in seconds.
        retries: further attempts after a failed transfer (not after a checksum mismatch).

    Returns:
        ``target`` as a Path.

    Raises:
        ValueError: for a URL that is not https.
        IsADirectoryError: naming ``target``, when it is a folder.
        DownloadError: when every attempt failed or the checksum does not match, or when
            ``target`` exists and is not a regular file (a device, FIFO or socket).
    """
    _check_url(url)
    given = target
    target = replaceable(given)
    if target is None:
        raise DownloadError(f"{given} is not a regular file; the download is not written over it")
    target.parent.mkdir(parents=True, exist_ok=True)
    last_error: Exception | None = None
    for attempt in range(retries + 1):
        handle, temp_name = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=".part", dir=target.parent
        )
        temp = Path(temp_name)
        try:
            digest = hashlib.sha256()
            with (
                os.fdopen(handle, "wb") as out,
                urllib.request.urlopen(url, timeout=timeout) as response,
            ):
                expected_size = response.headers.get("Content-Length")
                size = 0
                while True:
                    chunk = response.read(_CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                if expected_size is not None and size != int(expected_size):
                    raise DownloadError(
                        f"{url}: connection closed after {size} of {expected_size} bytes"
                    )
            actual = digest.hexdigest()
            if actual != sha256.lower():
                raise _ChecksumMismatch(
                    f"{url}: sha256 mismatch: expected {sha256.lower()}, got {actual}; "
                    "the file was not kept"
                )
            os.chmod(temp, creation_mode())
            os.replace(temp, target)
            return target
        except _ChecksumMismatch as error:
            temp.unlink(missing_ok=True)
            raise DownloadError(str(error)) from None
        except (OSError, http.client.HTTPException, ValueError) as error:
            temp.unlink(missing_ok=True)
            last_error = error
            logger.warning("download of %s failed (attempt %d): %s", url, attempt + 1, error)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
    raise DownloadError(f"{url}: download failed after {retries + 1} attempt(s): {last_error}")


class _ChecksumMismatch(Exception):
    pass


@dataclass(frozen=True)
class Downloadable:
    """A corpus the data module can fetch when its files are missing (``download=<name>``).

    Attributes:
        name: the key in :data:`DATASETS` (the ``download`` value of a data config).
        directory: the folder under the cache root (and under ``data.root``) holding the files.
        base_url: the URL the file names are appended to.
        files: file name -> sha256.
        description: what it is, for messages.
    """

    name: str
    directory: str
    base_url: str
    files: Mapping[str, str]
    description: str


DATASETS: dict[str, Downloadable] = {
    "ud_ewt": Downloadable(
        "ud_ewt", "ud_english_ewt", UD_EWT_BASE_URL, UD_EWT_FILES, "UD English-EWT r2.16"
    ),
}
"""The downloadable corpora. Adding one is an entry here and a config in ``conf/data/``."""


def ensure(
    name: str,
    cache_dir: str | os.PathLike[str] | None = None,
    base_url: str | None = None,
    files: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    retries: int = 2,
) -> Path:
    """Make sure the files of the corpus :data:`DATASETS` ``[name]`` are in
    ``cache_dir/<its directory>``: files already there with the right sha256 are kept, others
    are (re)downloaded.

    Args:
        name: a key of :data:`DATASETS`.
        cache_dir: the cache root (default :func:`default_cache_dir`).
        base_url: the URL the file names are appended to (default: the entry's).
        files: file name -> sha256 (default: the entry's).
        timeout: socket timeout in seconds.
        retries: further attempts per file after a failed transfer.

    Returns:
        The directory holding the files.

    Raises:
        KeyError: for an unknown name.
        DownloadError: when a file cannot be fetched intact.
    """
    entry = DATASETS[name]
    files = entry.files if files is None else files
    base_url = entry.base_url if base_url is None else base_url
    root = Path(cache_dir if cache_dir is not None else default_cache_dir())
    directory = root / entry.directory
    for file_name, digest in files.items():
        target = directory / file_name
        if target.exists() and sha256_of(target) == digest:
            continue
        logger.info("downloading %s (%s) into %s", file_name, entry.description, directory)
        download_file(base_url.rstrip("/") + "/" + file_name, target, digest, timeout, retries)
    return directory


def ensure_ud_ewt(
    cache_dir: str | os.PathLike[str] | None = None,
    base_url: str | None = None,
    files: Mapping[str, str] | None = None,
    timeout: float = 60.0,
    retries: int = 2,
) -> Path:
    """:func:`ensure` of UD English-EWT r2.16 (``cache_dir/ud_english_ewt``)."""
    return ensure("ud_ewt", cache_dir, base_url, files, timeout, retries)
