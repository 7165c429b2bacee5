"""Helpers shared by the command-line entry points (Hydra stays inside ``chaincrf.cli``)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from chaincrf.data.download import atomic_file

log = logging.getLogger("chaincrf")

T = TypeVar("T")

USER_ERRORS = (ValueError, OSError, ArithmeticError)
"""What a command reports as one clear line (bad input, a file that cannot be read or written,
a non-finite loss) instead of a traceback. Set CHAINCRF_TRACEBACK=1 to see the traceback."""


def run_cli(function: Callable[[DictConfig], T], cfg: DictConfig) -> T:
    """Run a command's function; a user error is logged as one line and exits with status 1.

    Programming errors (anything else) keep their traceback. ``CHAINCRF_TRACEBACK=1`` re-raises
    user errors too.
    """
    try:
        return function(cfg)
    except USER_ERRORS as error:
        if os.environ.get("CHAINCRF_TRACEBACK") == "1":
            raise
        log.error("%s: %s", type(error).__name__, error)
        for note in getattr(error, "__notes__", ()):
            log.error("%s", note)
        raise SystemExit(1) from None


def config_dir() -> str:
    """Directory of the Hydra configs: ``$CHAINCRF_CONFIG_DIR``, else ``conf/`` of the checkout."""
    env = os.environ.get("CHAINCRF_CONFIG_DIR")
    if env:
        return str(Path(env).resolve())
    return str(Path(__file__).resolve().parents[3] / "conf")


CONFIG_DIR = config_dir()


def to_plain(node: Any) -> Any:
    """A config node as plain Python data (dicts, lists, scalars), interpolations resolved."""
    if isinstance(node, DictConfig) or OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def allow_targets(cfg: DictConfig) -> list[str]:
    """``cfg.allow_targets``: the extra ``_target_`` names the user trusts in model files."""
    value = to_plain(cfg.get("allow_targets")) or []
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"allow_targets must be a list of dotted names; got {value!r}")
    return list(value)


def require(cfg: DictConfig, key: str, hint: str) -> Any:
    """``cfg[key]``, or a clear error naming the key and what to pass."""
    value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
    if value is None or value == "???":
        raise ValueError(f"config value {key!r} is required: {hint}")
    return value


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str] | None) -> Iterator[IO[str]]:
    """Write a text file atomically: a temporary file in the same folder, renamed when complete.

    With ``path`` None or ``"-"`` the text is collected and written to stdout at the end, so
    neither a file nor the terminal ever receives half an output after an error.
    """
    if path is None or str(path) == "-":
        import io

        buffer = io.StringIO()
        yield buffer
        sys.stdout.write(buffer.getvalue())
        sys.stdout.flush()
        return
    with atomic_file(path) as stream:
        yield stream


def run_config_for(checkpoint: str | os.PathLike[str]) -> tuple[Path, DictConfig] | None:
    """The resolved training config of a checkpoint's run (``<run>/config.yaml``) and its path,
    if there is one.

    Raises:
        ValueError: naming the file, when it is not a YAML mapping.
    """
    path = Path(checkpoint).resolve()
    for folder in (path.parent, path.parent.parent):
        candidate = folder / "config.yaml"
        if candidate.is_file():
            try:
                loaded = OmegaConf.load(candidate)
            except Exception as error:  # yaml's and OmegaConf's own error types
                raise ValueError(f"{candidate}: not a readable YAML config: {error}") from None
            if not isinstance(loaded, DictConfig):
                raise ValueError(f"{candidate}: expected a YAML mapping (the run's config)")
            return candidate, loaded
    return None


def build(node: Any, what: str, **kwargs: Any) -> Any:
    """A config node built by the project's one builder (:func:`chaincrf.spec.instantiate`:
    Hydra's semantics on the resolved, plain node); a configuration mistake surfaces as the
    library's own error (``ValueError``, ``TypeError``, ...) with the config key added."""
    from chaincrf.spec import instantiate

    plain = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    try:
        return instantiate(plain, what, **kwargs)
    except (ValueError, TypeError, OSError, ImportError) as error:
        if hasattr(error, "add_note"):
            error.add_note(f"(while building the config node `{what}`)")
        raise
