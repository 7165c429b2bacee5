"""Where a run came from, for its report (the model card): versions, source commit, hardware,
threads, and each data file with its size and sha256."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["card", "data_files", "environment"]


def _git_commit() -> str | None:
    """The commit of the chaincrf checkout this code runs from (``+ changes`` when the tree has
    uncommitted ones), or None for an installed wheel."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit} + changes" if dirty else commit


def environment() -> dict[str, str]:
    """Versions (chaincrf and its commit, Python, torch, Lightning), the hardware and the
    threads, as report lines."""
    import pytorch_lightning as pl
    import torch

    import chaincrf

    commit = _git_commit()
    device = "CPU"
    if torch.cuda.is_available():
        device = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    return {
        "chaincrf": chaincrf.__version__ + (f" (git {commit})" if commit else ""),
        "versions": f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"Lightning {pl.__version__}",
        "hardware": f"{platform.machine()} {platform.processor() or platform.platform()}, "
        f"{os.cpu_count()} CPUs; accelerator: {device}",
        "threads": f"{torch.get_num_threads()} intra-op",
    }


def data_files(paths: Mapping[str, Path | None]) -> dict[str, str]:
    """Each split's file with its size and sha256 (``"missing"`` when it does not exist)."""
    from chaincrf.data.download import sha256_of

    out = {}
    for split, path in paths.items():
        if path is None:
            continue
        if not Path(path).is_file():
            out[f"{split} data"] = f"{path} (missing)"
            continue
        size = Path(path).stat().st_size
        out[f"{split} data"] = f"`{path}` ({size:,} bytes, sha256 {sha256_of(path)})"
    return out


def card(
    tagger: Any, command: Sequence[str], files: Mapping[str, Path | None], seed: Any = None
) -> dict[str, str]:
    """The model card's lines beyond the figures: how to reproduce (the command, seed, versions,
    commit, hardware, threads, data files with their sha256), the label set and the intended
    use.

    Args:
        tagger: the :class:`~chaincrf.tagger.SequenceTagger`.
        command: the command line (program and arguments).
        files: each split's data file.
        seed: the run's seed, if any.
    """
    labels = tagger.tags.original_labels
    kinds = tagger.tags.entity_types if tagger.tags.is_span_task else sorted(set(labels))
    task = "spans" if tagger.tags.is_span_task else "tokens"
    lines = {"command": "`" + shlex.join(command) + "`"}
    if seed is not None:
        lines["seed"] = str(seed)
    return {
        **lines,
        **environment(),
        **data_files(files),
        "label set": ", ".join(sorted(set(labels))),
        "intended use": f"tagging {task} ({', '.join(kinds)}) in text like the training data's "
        "(language, domain, tokenisation, era); measure it on your own text before relying on "
        "it elsewhere",
    }
