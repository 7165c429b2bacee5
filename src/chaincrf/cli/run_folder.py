"""A training run's folder, kept safe across failures and resumes (used by ``chaincrf-train``).

- :func:`absolute_data_paths`: the data paths of a run's config made absolute, so that the saved
  ``config.yaml`` (and ``chaincrf-eval`` of its checkpoints) works from any folder.
- :func:`resume_command`: the complete command that resumes an interrupted run from any folder,
  in a fresh shell (the data root and the environment's settings as overrides).
- :func:`guarded`: a run that fails before training starts changes nothing in a folder that held
  anything before it (its log lines are held back until the set-up succeeds); a folder the run
  created itself is removed, with the files this process wrote into it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from chaincrf.atomic import atomic_file

SPLIT_PATHS = ("train", "dev", "test", "predict")
"""Data keys whose relative paths start from ``data.root`` (from the working folder when it is
null)."""

FOLDER_PATHS = ("cache_dir", "encoder_path", "train_subset")
"""Data keys whose relative paths start from the working folder."""

PATH_KEYS = ("root", *SPLIT_PATHS, *FOLDER_PATHS, "pretrained")
"""Every data key that holds a path (``pretrained`` may also name a package)."""

CACHE_ENV = "CHAINCRF_CACHE"
"""The download cache's environment variable (``data.cache_dir`` when that is null)."""

HYDRA_FILES = (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml")
"""What Hydra writes into a new run folder before the training function starts."""


def start_folder() -> Path:
    """The folder the command was started in: Hydra's ``runtime.cwd`` (the same whether or not
    ``hydra.job.chdir`` moves the job), else the working folder."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.cwd)
    except (ImportError, ValueError):  # not under Hydra (a test calling the function)
        return Path.cwd()


def _absolute(value: str, start: Path) -> str:
    path = Path(value).expanduser()
    return str((path if path.is_absolute() else start / path).resolve())


def absolute_data_paths(data: DictConfig, start: Path) -> None:
    """Make the path keys of a ``data`` config node absolute, in place.

    ``data.root`` and the keys relative to the working folder (:data:`FOLDER_PATHS`) are resolved
    against ``start``; the split files too when the root is null (with a root they stay relative
    to it: the root alone moves a corpus). ``pretrained`` is made absolute when it names a file
    found from ``start``. ``$CHAINCRF_CACHE`` becomes ``data.cache_dir`` when that is null.
    """
    present = [k for k in PATH_KEYS if k in data and not OmegaConf.is_missing(data, k)]
    root = data.get("root") if "root" in present else None
    if "cache_dir" in data and data.get("cache_dir") is None and os.environ.get(CACHE_ENV):
        data.cache_dir = os.environ[CACHE_ENV]
    keys = [*FOLDER_PATHS, "root"] if root is not None else [*FOLDER_PATHS, "root", *SPLIT_PATHS]
    for key in present:
        value = data.get(key)
        if value is None:
            continue
        found = key == "pretrained" and (start / Path(str(value)).expanduser()).exists()
        if key in keys or found:
            data[key] = _absolute(str(value), start)


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def resume_command(
    data: DictConfig,
    given: Sequence[str],
    checkpoint: Path,
    run_dir: Path,
    config_dirs: Sequence[str] = (),
) -> str:
    """The ``chaincrf-train`` command that resumes a run from ``checkpoint``, complete: it works
    pasted into a fresh shell, from any folder.

    Args:
        data: the run's ``data`` node, its paths made absolute (:func:`absolute_data_paths`).
        given: the command line's overrides.
        checkpoint: the training state to resume from.
        run_dir: the run's folder (given as ``run_dir=`` when the command line set it).
        config_dirs: the user's config folders (``--config-dir``, ``$CHAINCRF_CONFIG_DIR``).

    Returns:
        One shell line: the given overrides, the data paths as absolute ``data.<key>=`` overrides
        (``data.root`` whether it came from the command line or ``$CHAINCRF_DATA``) and
        ``ckpt_path=<checkpoint>``.
    """
    paths = {f"data.{k}" for k in PATH_KEYS}
    overridden = {_key(o) for o in given}
    kept = [
        o for o in given if _key(o) not in paths and _key(o) not in ("ckpt_path", "run_dir")
    ]  # fmt: skip
    for key in PATH_KEYS:
        if key not in data or OmegaConf.is_missing(data, key):
            continue
        value = data.get(key)
        absolute = value is not None and Path(str(value)).is_absolute()
        if f"data.{key}" in overridden or absolute:
            kept.append(f"data.{key}={'null' if value is None else value}")
    if "run_dir" in overridden:
        kept.append(f"run_dir={run_dir}")
    folders = [a for folder in config_dirs for a in ("--config-dir", folder)]
    return shlex.join(["chaincrf-train", *folders, *kept, f"ckpt_path={checkpoint}"])


def user_config_dirs() -> list[str]:
    """The user's config folders of this command (``--config-dir``, or ``$CHAINCRF_CONFIG_DIR``
    which ``chaincrf-train`` turns into one), absolute."""
    try:
        from hydra.core.hydra_config import HydraConfig

        sources = HydraConfig.get().runtime.config_sources
    except (ImportError, ValueError):
        return []
    return [str(s.path) for s in sources if s.provider == "command-line" and s.schema == "file"]


_NOTED: dict[str, Any] = {"existing": set(), "record": False}
"""What :func:`hydra_record_after_setup` noted from the command line before Hydra started: the
run folders it named that existed then, and whether this process writes Hydra's record."""


def hydra_record_after_setup(argv: list[str]) -> list[str]:
    """``argv`` with ``hydra.output_subdir=null`` added (unless the command line sets it, or is
    a multirun): Hydra then writes no ``.hydra/`` record before the training function starts,
    and :func:`write_hydra_record` writes it atomically once the set-up has succeeded, so that
    a full disk can neither leave a truncated ``hydra.yaml`` nor fail outside the command's
    one-line errors. Run folders that the command line names and that exist already are
    noted: a failed set-up never removes them (:func:`guarded`)."""
    for argument in argv:
        key, _, value = argument.partition("=")
        if key.lstrip("+") in ("hydra.run.dir", "run_dir") and value and Path(value).exists():
            _NOTED["existing"].add(Path(value).resolve())
    # a multirun (-m, or a sweep: hparams_search / a sweeper / hydra.mode turn it on) keeps
    # Hydra's own record: each run's .hydra/overrides.yaml is what the sweep's summary reads
    multirun = ("-m", "--multirun", "hydra.mode=", "hparams_search=", "hydra/sweeper=")
    if any(a.startswith((*multirun, "hydra.output_subdir=")) for a in argv):
        return argv
    _NOTED["record"] = True
    return [*argv, "hydra.output_subdir=null"]


def _hydra_made(run_dir: Path) -> bool:
    """Whether ``run_dir`` is the folder Hydra created for this process (its output folder,
    which the command line did not name as an existing one)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        output = Path(HydraConfig.get().runtime.output_dir).resolve()
    except (ImportError, ValueError):
        return False
    return output == run_dir.resolve() and output not in _NOTED["existing"]


def naming(path: Path) -> contextlib.AbstractContextManager[None]:
    """A block writing ``path``: an ``OSError`` (a full disk) becomes one naming the file."""
    return _naming(path)


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    try:
        yield
    except OSError as error:
        if str(path) in str(error):
            raise
        raise OSError(f"cannot write {path}: {error.strerror or error}") from None


def _is_new(run_dir: Path) -> bool:
    """Whether ``run_dir`` is missing, or holds only what Hydra has just written for this
    process (``.hydra/`` and an empty log file)."""
    if not run_dir.exists():
        return True
    for path in run_dir.rglob("*"):
        name = path.relative_to(run_dir).as_posix()
        if path.is_dir():
            if name != ".hydra":
                return False
        elif name not in HYDRA_FILES and not (
            path.parent == run_dir and path.suffix == ".log" and path.stat().st_size == 0
        ):
            return False
    return True


@contextlib.contextmanager
def guarded(run_dir: Path) -> Iterator[None]:
    """A run's set-up (everything before training starts) that changes nothing when it fails.

    A folder that held anything before (an interrupted run being resumed, a reused ``run_dir``)
    is left exactly as it was: the log lines written meanwhile are held back, written to the
    run's log files when the block succeeds and dropped (with the log files closed) when it
    fails. A new folder (missing, or holding only what Hydra wrote for this process) is removed
    when the block fails, with the files this process wrote into it.
    """
    if _is_new(run_dir):
        # the folder itself is this process's when it creates it or Hydra just did
        own = not run_dir.exists() or (run_dir / ".hydra").is_dir() or _hydra_made(run_dir)
        try:
            yield
        except BaseException:
            _remove_new(run_dir, own)
            raise
        return
    root = logging.getLogger()
    files = [h for h in root.handlers if isinstance(h, logging.FileHandler)]
    held = _Held()
    for handler in files:
        root.removeHandler(handler)
    root.addHandler(held)
    try:
        yield
    except BaseException:
        root.removeHandler(held)
        for handler in files:  # the error goes to the console only
            handler.close()
        raise
    root.removeHandler(held)
    for handler in files:
        root.addHandler(handler)
        for record in held.records:
            if record.levelno >= handler.level:
                handler.handle(record)


class _Held(logging.Handler):
    """Keeps the records it gets."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _remove_new(run_dir: Path, own: bool) -> None:
    """Remove a new run folder's files (Hydra's and this process's), and the folder when it is
    this process's own and nothing else is left in it."""
    if not run_dir.is_dir():
        return
    for path in sorted(run_dir.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            else:
                path.unlink()
    if own:
        with contextlib.suppress(OSError):
            run_dir.rmdir()


def write_config(run_dir: Path, cfg: DictConfig) -> None:
    """``config.yaml``: the resolved config, written atomically.

    Raises:
        OSError: ``cannot write <file>: <reason>``.
    """
    with naming(run_dir / "config.yaml"), atomic_file(run_dir / "config.yaml") as stream:
        stream.write(OmegaConf.to_yaml(cfg, resolve=True))


def write_hydra_record(run_dir: Path, cfg: DictConfig) -> None:
    """Hydra's record of the command (``.hydra/``), written atomically, for a resume in place:
    its command line sets ``hydra.output_subdir=null`` (:func:`chaincrf.cli.train.resume_in_place`)
    so that Hydra does not rewrite the record before the set-up has succeeded; and for a new run
    (:func:`hydra_record_after_setup`). Nothing happens outside Hydra, or in a folder without
    ``.hydra/`` when Hydra was told not to write one by the user.

    Raises:
        OSError: ``cannot write <file>: <reason>``.
    """
    try:
        from hydra.core.hydra_config import HydraConfig

        hydra = HydraConfig.get()
    except (ImportError, ValueError):
        return
    folder = run_dir / ".hydra"
    if hydra.output_subdir is not None or not (folder.is_dir() or _NOTED["record"]):
        return
    record = OmegaConf.create({"hydra": OmegaConf.to_container(hydra, resolve=False)})
    record.hydra.output_subdir = ".hydra"
    for name, node in (
        ("config.yaml", cfg),
        ("hydra.yaml", record),
        ("overrides.yaml", OmegaConf.create(list(hydra.overrides.task))),
    ):
        with naming(folder / name), atomic_file(folder / name) as stream:
            stream.write(OmegaConf.to_yaml(node))


@contextlib.contextmanager
def end_of_run_files(path: Path, model: str | Path) -> Iterator[None]:
    """Writing a file after training (``metrics.json``, the report, each atomically): a failure
    (a full disk) is one line naming the file that also says the trained model is complete."""
    try:
        yield
    except OSError as error:
        message = (
            str(error)
            if str(error).startswith("cannot write")
            else (f"cannot write {path}: {error.strerror or error}")
        )
        raise OSError(f"{message}; the training itself is complete: {model}") from None


def prepend_metrics(path: Path, earlier: str) -> None:
    """Put the metrics of the run before a resume back in front of the resumed ones (Lightning's
    CSV logger starts its file afresh): rows of steps the resumed run logged again are dropped."""
    import csv
    import io

    old_rows = list(csv.DictReader(io.StringIO(earlier)))
    new_rows = (
        list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
        if path.is_file()
        else []
    )
    steps = [int(r["step"]) for r in new_rows if r.get("step")]
    first = min(steps) if steps else None
    kept = [r for r in old_rows if first is None or not r.get("step") or int(r["step"]) < first]
    # every row's columns (a later row may have one the first lacks: train/loss after a resume)
    fields = list(dict.fromkeys(key for row in [*old_rows, *new_rows] for key in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields)
    writer.writeheader()
    writer.writerows([*kept, *new_rows])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(out.getvalue(), encoding="utf-8")
