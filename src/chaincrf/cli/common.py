"""Helpers shared by the command-line entry points (Hydra stays inside ``chaincrf.cli``)."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from chaincrf.atomic import atomic_file
from chaincrf.extras import MissingExtra
from chaincrf.extras import require as require_extra

log = logging.getLogger("chaincrf")

T = TypeVar("T")

USER_ERRORS = (ValueError, OSError, ArithmeticError)
"""What a command reports as one clear line (bad input, a file that cannot be read or written,
a non-finite loss) instead of a traceback. Set CHAINCRF_TRACEBACK=1 to see the traceback."""


def run_cli(function: Callable[[DictConfig], T], cfg: DictConfig) -> T:
    """Run a command's function; a user error is logged as one line (its notes, such as the
    config node being built, appended) and exits with status 1.

    A missing optional package (:class:`~chaincrf.extras.MissingExtra`) is that one line alone:
    the feature, and the extra that installs it.

    Programming errors (anything else) keep their traceback. ``CHAINCRF_TRACEBACK=1`` re-raises
    user errors too. The libraries' chatter is hidden while the function runs unless
    ``cfg.verbose`` (:func:`chaincrf.cli.console.quiet_third_party`).
    """
    from chaincrf.cli.console import quiet_third_party

    try:
        with quiet_third_party(bool(cfg.get("verbose", False))):
            return function(cfg)
    except MissingExtra as error:  # the message is the whole story: one line, no note
        if os.environ.get("CHAINCRF_TRACEBACK") == "1":
            raise
        log.error("%s", error)
        raise SystemExit(1) from None
    except USER_ERRORS as error:
        if os.environ.get("CHAINCRF_TRACEBACK") == "1":
            raise
        notes = "".join(f" {note}" for note in getattr(error, "__notes__", ()))
        log.error("%s: %s%s", type(error).__name__, error, notes)  # one line, notes and all
        raise SystemExit(1) from None


def config_dir() -> str:
    """Directory of the built-in Hydra configs: ``chaincrf/conf`` inside the installed package.

    In the repository ``src/chaincrf/conf`` is a link to the top-level ``conf/`` (their one
    source); a wheel holds a copy. A user's own configs are added with ``$CHAINCRF_CONFIG_DIR``
    or Hydra's ``--config-dir`` (see :func:`hydra_main`), not by replacing these.
    """
    return str(Path(__file__).resolve().parents[1] / "conf")


CONFIG_DIR = config_dir()

USER_CONFIG_ENV = "CHAINCRF_CONFIG_DIR"
"""Environment variable naming a folder of the user's own configs, searched before the built-in
ones (as Hydra's ``--config-dir``, which takes precedence over it when both are given)."""


def user_config_args(argv: Sequence[str]) -> list[str]:
    """``["--config-dir", <folder>]`` for ``$CHAINCRF_CONFIG_DIR``, or ``[]`` when it is unset or
    the command line already has ``--config-dir``/``-cd``.

    Raises:
        NotADirectoryError: naming the variable, when it does not name a folder.
    """
    folder = os.environ.get(USER_CONFIG_ENV)
    if not folder:
        return []
    if any(a in ("--config-dir", "-cd") or a.startswith("--config-dir=") for a in argv):
        return []
    if not Path(folder).is_dir():
        raise NotADirectoryError(f"{USER_CONFIG_ENV}={folder}: not a folder of configs")
    return ["--config-dir", str(Path(folder).resolve())]


def hydra_main(
    config_name: str, argv_hook: Callable[[list[str]], list[str]] | None = None
) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """``hydra.main`` over the built-in configs, with the user's folder from
    ``$CHAINCRF_CONFIG_DIR`` added in front of them (Hydra's ``--config-dir``): the entry point
    of each command. ``argv_hook`` may add overrides to the command line first (the training
    command's: resume in the run's own folder). SIGTERM stops the command as ``SystemExit(143)``
    (:func:`sigterm_as_exit`), so that its temporary files are removed.

    Before Hydra parses anything: ``--help``/``-h`` prints the command's own options
    (:func:`chaincrf.cli.usage.help_text`), ``--version`` chaincrf's version, and an option
    that needs a missing optional package ends in one line naming its extra, and a config name
    or group of an earlier version (``--config-name config``, ``model=softmax``) in one line
    naming its new spelling (:func:`chaincrf.cli.usage.refuse_old_spellings`)."""
    import functools

    import hydra

    def wrap(function: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        decorated = hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name=config_name)(
            function
        )

        @functools.wraps(function)
        def entry() -> Any:
            from chaincrf.cli import usage

            program = usage.PROGRAMS.get(config_name, config_name)
            if usage.VERSION_FLAG in sys.argv[1:]:
                sys.stdout.write(f"{program} {usage.version()}\n")
                return None
            if any(flag in sys.argv[1:] for flag in usage.HELP_FLAGS):
                sys.stdout.write(usage.help_text(config_name, CONFIG_DIR))
                return None
            try:
                usage.require_cli_extras(program, sys.argv[1:])
            except MissingExtra as error:
                log.error("%s", error)
                raise SystemExit(1) from None
            try:
                sys.argv[1:1] = user_config_args(sys.argv[1:])
                usage.refuse_old_spellings(config_name, sys.argv[1:])
                if argv_hook is not None:
                    sys.argv[1:] = argv_hook(sys.argv[1:])
            except USER_ERRORS as error:
                log.error("%s", error)
                raise SystemExit(1) from None
            try:
                with sigterm_as_exit():
                    return decorated()
            except SystemExit as stop:
                if stop.code not in (0, None, STOPPED):  # Hydra's error or ours: add hints
                    for hint in config_hints(config_name, sys.argv[1:]):
                        sys.stderr.write(hint + "\n")
                raise

        return entry

    return wrap


STOPPED = 128 + signal.SIGTERM
"""The exit status of a command stopped by SIGTERM (143, as the shell reports a kill)."""


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Within the block, SIGTERM (``kill``, a scheduler's stop) raises ``SystemExit(143)``
    instead of ending the process at once, so that cleanup runs as for Ctrl-C: temporary files
    are removed, no half-written output is left. Outside the main thread signals are left alone.
    """

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(STOPPED)

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def config_hints(config_name: str, argv: Sequence[str]) -> list[str]:
    """Did-you-mean lines for the command line's overrides that name no config option or key.

    ``experiment=conll2003`` (no such option in the group) gets the closest options and the
    list; ``trainer.max_epoch=1`` (no such key) gets the closest keys at that level, e.g.
    ``trainer.max_epochs``. Overrides with ``+``/``~``/``++`` (adding or deleting keys on
    purpose) and Hydra's own are left alone.

    Returns:
        One line per override that is not found (none when all are).
    """
    import difflib

    from omegaconf import DictConfig

    folder = Path(CONFIG_DIR)
    folders = [folder]  # and the user's (--config-dir), whose options are as valid
    for flag, value in itertools.pairwise(argv):
        if flag in ("--config-dir", "-cd") and Path(value).is_dir():
            folders.append(Path(value))
    groups = {p.name for f in folders for p in f.iterdir() if p.is_dir()}
    hints: list[str] = []
    keys: list[tuple[str, str]] = []
    choices: list[str] = []
    for argument in argv:
        if "=" not in argument or argument.startswith(("-", "+", "~", "hydra")):
            continue
        key, _, value = argument.partition("=")
        if key in groups:
            options = sorted({p.stem for f in folders for p in (f / key).glob("*.yaml")})
            wanted = [v for v in value.split(",") if v and v not in options and v != "null"]
            for option in wanted:
                close = difflib.get_close_matches(option, options, n=2, cutoff=0.5)
                guess = f"did you mean {key}={close[0]}? " if close else ""
                hints.append(
                    f"{key}={option}: no such option; {guess}(options: {', '.join(options)})"
                )
            if not wanted:
                choices.append(argument)
        else:
            keys.append((key, argument))
    if not keys:
        return hints
    try:
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(folder), version_base="1.3"):
            extra = [f"hydra.searchpath=[file://{f}]" for f in folders[1:2]]
            cfg = compose(config_name=config_name, overrides=[*choices, *extra])
    except Exception:  # the choices themselves do not compose: Hydra's message says why
        return hints
    for key, argument in keys:
        node: Any = cfg
        parts = key.split(".")
        for depth, part in enumerate(parts):
            if not isinstance(node, DictConfig):
                break
            if part not in node.keys():  # noqa: SIM118 - ``in`` is False for a missing "???"
                prefix = ".".join(parts[:depth])
                close = difflib.get_close_matches(part, [str(k) for k in node], n=1, cutoff=0.6)
                where = f" in `{prefix}`" if prefix else ""
                guess = f"did you mean {'.'.join([*parts[:depth], close[0]])}? " if close else ""
                hints.append(
                    f"{argument}: no key `{part}`{where}; {guess}(to add a key: +{argument})"
                )
                break
            if OmegaConf.is_missing(node, part):
                break
            node = node[part]
    return hints


def overrides() -> list[str]:
    """The command line's overrides (Hydra's record of them; ``sys.argv`` outside Hydra)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except (ImportError, ValueError):  # not under Hydra (a test calling the function)
        return sys.argv[1:]


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


OPTIONAL_TARGETS = {
    "pytorch_lightning.loggers.TensorBoardLogger": (
        "tensorboard",
        "tensorboard",
        "logger=tensorboard",
    ),
    "pytorch_lightning.loggers.MLFlowLogger": ("mlflow", "mlflow", "logger=mlflow"),
}
"""``_target_`` -> (the optional module it needs, its extra, the option that asks for it)."""


def build(node: Any, what: str, **kwargs: Any) -> Any:
    """A config node built by the project's one builder (:func:`chaincrf.spec.instantiate`:
    Hydra's semantics on the resolved, plain node); a configuration mistake surfaces as the
    library's own error (``ValueError``, ``TypeError``, ...) with the config key added."""
    from chaincrf.spec import instantiate

    plain = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    if isinstance(plain, dict) and plain.get("_target_") in OPTIONAL_TARGETS:
        require_extra(*OPTIONAL_TARGETS[plain["_target_"]])
    try:
        return instantiate(plain, what, **kwargs)
    except (ValueError, TypeError, OSError, ImportError) as error:
        if hasattr(error, "add_note"):
            error.add_note(f"(while building the config node `{what}`)")
        raise
