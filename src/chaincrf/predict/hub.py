"""The Hugging Face Hub layout of a tagger: a folder that is a chaincrf bundle and a Hub model
repository at once.

:func:`save_pretrained` writes

- ``config.json``: the bundle's config (format and hyper-parameters, plain JSON);
- ``model.safetensors`` (when the safetensors package is installed; else the bundle's own
  ``weights.pt``): the weights, tensors only;
- ``vocab.json``: the vocabularies and labels;
- ``README.md``: the model card, with the Hub's metadata as YAML front matter (``license``,
  ``language``, ``tags``, ``datasets``, ``library_name``, ``pipeline_tag``).

:func:`from_pretrained` loads such a folder as data (:func:`chaincrf.predict.bundle.load`), or a
Hub repository id (``owner/name``) downloaded with ``huggingface_hub.snapshot_download`` (the
``hub`` extra; ``HF_HUB_OFFLINE=1`` reads the local cache only). Uploading is the Hub's own
``huggingface-cli upload <repo id> <folder>``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from chaincrf.predict.bundle import Tagger  # a SequenceTagger (typed Any: no import circle)

__all__ = ["FILES", "card_text", "from_pretrained", "read_metadata", "save_pretrained"]

FILES = ("config.json", "model.safetensors", "weights.pt", "vocab.json", "README.md")
"""The files of the layout (one of the two weights files), all that a download fetches."""

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
"""A Hub repository id, ``owner/name``."""


def card_text(metadata: Mapping[str, Any], body: str) -> str:
    """A model card: the Hub's metadata as YAML front matter, then the Markdown ``body``.

    Args:
        metadata: the front matter (``license``, ``language``, ``tags``, ``datasets``, ...);
            empty values are left out.
        body: the card's Markdown text.
    """
    import yaml

    front = {key: value for key, value in metadata.items() if value not in (None, "", [], ())}
    header = yaml.safe_dump(front, sort_keys=False, allow_unicode=True) if front else ""
    return f"---\n{header}---\n\n{body.strip()}\n"


def save_pretrained(
    tagger: Tagger,
    folder: str | os.PathLike[str],
    card: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``tagger`` in the Hub layout (see the module docstring) into ``folder``.

    Args:
        tagger: the trained :class:`~chaincrf.tagger.SequenceTagger`.
        folder: the folder to write (created; the layout's files in it are replaced).
        card: the card's Markdown body (default: a short one naming the labels and how to load
            the model).
        metadata: the Hub's front matter; ``library_name: chaincrf``, ``pipeline_tag:
            token-classification`` and the ``chaincrf`` tag are added.

    Returns:
        ``folder`` as a Path.
    """
    import importlib.util

    from chaincrf.atomic import atomic_file
    from chaincrf.predict.bundle import save

    folder = Path(folder)
    save(tagger, folder)  # config.json, weights.pt, vocab.json
    if importlib.util.find_spec("safetensors") is not None:
        from safetensors.torch import save_file

        # contiguous copies: safetensors refuses tensors that share memory
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tagger.state_dict().items()}
        partial = folder / ".model.safetensors.partial"
        try:
            save_file(tensors, str(partial), metadata={"format": "pt"})
            os.replace(partial, folder / "model.safetensors")
        finally:
            partial.unlink(missing_ok=True)
        (folder / "weights.pt").unlink()  # the one this call just wrote
    meta = dict(metadata or {})
    meta.setdefault("library_name", "chaincrf")
    meta.setdefault("pipeline_tag", "token-classification")
    tags = list(meta.get("tags") or [])
    meta["tags"] = ["chaincrf", *[t for t in tags if t != "chaincrf"]]
    labels = sorted(set(tagger.tags.original_labels))
    body = card or (
        f"# chaincrf sequence tagger\n\nA chaincrf tagger ({len(labels)} labels: "
        f"{', '.join(labels)}).\n\n```python\nfrom chaincrf.tagger import SequenceTagger\n\n"
        f'tagger = SequenceTagger.from_pretrained("{folder.name}")\n```\n'
    )
    with atomic_file(folder / "README.md") as stream:
        stream.write(card_text(meta, body))
    return folder


def from_pretrained(
    cls: type[Tagger],
    path_or_repo_id: str | os.PathLike[str],
    revision: str | None = None,
    map_location: str | torch.device = "cpu",
    allow_targets: Sequence[str] = (),
    cache_dir: str | os.PathLike[str] | None = None,
    local_files_only: bool = False,
) -> Tagger:
    """Load a tagger saved by :func:`save_pretrained`: a local folder (or any bundle, checkpoint
    or installed model's name), or a Hub repository id.

    Args:
        cls: the tagger class to build.
        path_or_repo_id: a folder, or ``owner/name`` on the Hub (when no such local folder
            exists; downloaded with ``huggingface_hub``, the ``hub`` extra).
        revision: the Hub revision (branch, tag or commit) of a repository id.
        map_location: where to put the weights.
        allow_targets: as :func:`chaincrf.predict.bundle.load`.
        cache_dir: the Hub cache to use (default: huggingface_hub's, ``$HF_HUB_CACHE``).
        local_files_only: read the Hub cache only, never the network (as ``HF_HUB_OFFLINE=1``).

    Returns:
        The tagger in eval mode.

    Raises:
        MissingExtra: (an ``ImportError``) naming the ``hub`` extra, for a repository id without
            huggingface_hub installed.
        FileNotFoundError, ModelFileError: as :func:`chaincrf.predict.bundle.load`.
    """
    from chaincrf.predict.bundle import load

    text = os.fspath(path_or_repo_id)
    if not os.path.lexists(text) and "://" not in text and REPO_ID.match(text):
        from chaincrf.extras import require

        hub = require("huggingface_hub", "hub", f"SequenceTagger.from_pretrained({text!r})")
        text = hub.snapshot_download(
            repo_id=text,
            revision=revision,
            allow_patterns=list(FILES),
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            library_name="chaincrf",
        )
    return load(cls, text, map_location, allow_targets)


def read_metadata(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The front matter of a saved folder's ``README.md`` (empty when it has none)."""
    import yaml

    path = Path(folder) / "README.md"
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    match = re.match(r"^---\n(.*?\n)---\n", text, re.DOTALL)
    data = yaml.safe_load(match.group(1)) if match else None
    return dict(data) if isinstance(data, dict) else {}
