"""What a command says before Hydra parses anything: ``--help`` (that command's own options,
one line each, read from its config file), ``--version`` (chaincrf's), and the optional
packages its command line needs (``hparams_search=optuna``, a submitit launcher,
``CHAINCRF_KERNEL=triton``), each missing one named with its extra in one line."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from chaincrf.extras import require

PROGRAMS = {
    "config": "chaincrf-train",
    "eval": "chaincrf-eval",
    "predict": "chaincrf-predict",
    "export": "chaincrf-export",
    "data_stats": "chaincrf-data-stats",
    "package": "chaincrf-package",
}
"""Each command's config name (``conf/<name>.yaml``) -> its program."""

HELP_FLAGS = ("--help", "-h")
VERSION_FLAG = "--version"

_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w]*):(?P<value>[^#]*)(?:#\s?(?P<note>.*))?$")
_GROUP = re.compile(r"^\s+-\s+(?P<group>[a-z_]+):\s*(?P<value>[^#\s]*)\s*(?:#\s?(?P<note>.*))?$")


def version() -> str:
    """chaincrf's installed version (the package metadata; ``chaincrf.__version__`` when the
    package runs from a source tree without metadata)."""
    from importlib import metadata

    try:
        return metadata.version("chaincrf")
    except metadata.PackageNotFoundError:
        import chaincrf

        return chaincrf.__version__


def _sentence(text: str, limit: int = 100) -> str:
    """The first sentence of ``text``, at most ``limit`` characters."""
    text = " ".join(text.split())
    match = re.search(r"(?<!e\.g\.)(?<!i\.e\.)(?<=\.)\s", text)
    first = text[: match.start()] if match else text
    return first if len(first) <= limit else first[: limit - 1].rstrip() + "…"


def help_text(config_name: str, config_dir: str | os.PathLike[str]) -> str:
    """The ``--help`` of the command whose config is ``<config_dir>/<config_name>.yaml``: its
    usage line, its config groups with their options, and its own keys with their defaults,
    one line each (the first sentence of the comment above each key in the file).

    Nested keys one level down (``budget.steps``) are listed under their parent; Hydra's own
    settings (``hydra:``) and ``defaults`` are not options.
    """
    folder = Path(config_dir)
    lines = (folder / f"{config_name}.yaml").read_text(encoding="utf-8").splitlines()
    program = PROGRAMS.get(config_name, config_name)
    usage: list[str] = []
    groups: list[tuple[str, str]] = []
    keys: list[tuple[str, str]] = []
    comment: list[str] = []
    section = ""  # the top-level key being read
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            if not groups and not keys and section == "" and line.startswith("#"):
                usage.append(stripped.lstrip("#").strip())
            comment.append(stripped.lstrip("#").strip())
            continue
        if not stripped:
            comment = []
            continue
        if section == "defaults" and (group := _GROUP.match(line)):
            name = group["group"]
            if name != "override" and (folder / name).is_dir():
                options = sorted(p.stem for p in (folder / name).glob("*.yaml"))
                note = f"; {_sentence(group['note'])}" if group["note"] else ""
                groups.append((f"{name}={group['value']}", f"one of: {', '.join(options)}{note}"))
            comment = []
            continue
        match = _KEY.match(line)
        if match is None:
            comment = []
            continue
        indent, key = len(match["indent"]), match["key"]
        if indent == 0:
            section = key
        if section in ("defaults", "hydra") or indent > 2:
            comment = []
            continue
        name = key if indent == 0 else f"{section}.{key}"
        value = match["value"].strip()
        about = _sentence(" ".join(comment)) if comment else _sentence(match["note"] or "")
        if indent == 0 and not value:  # a mapping: its keys follow
            if about:
                keys.append((f"{name}.*", about))
        else:
            keys.append((f"{name}={value}", about))
        comment = []
    width = max((len(left) for left, _ in [*groups, *keys]), default=0) + 2
    out = [f"{program} {version()}"]
    out += [f"  {line}" for line in usage if line]
    if groups:
        out += ["", "config groups (group=option):"]
        out += [f"  {left.ljust(width)}{right}" for left, right in groups]
    out += ["", "options (key=default):"]
    out += [f"  {left.ljust(width)}{right}".rstrip() for left, right in keys]
    out += [
        "",
        "Pass options as key=value. Also: --version; Hydra's --cfg job (the composed config), "
        "--config-dir <folder>, --hydra-help.",
    ]
    return "\n".join(out) + "\n"


def require_cli_extras(program: str, argv: Sequence[str]) -> None:
    """Import the optional packages the command line asks for, before Hydra does.

    Raises:
        MissingExtra: naming the option and the extra (``cluster``, ``gpu``) to install.
    """
    for argument in argv:
        key, _, value = argument.lstrip("+").partition("=")
        if key == "hparams_search" and value == "optuna":
            require("hydra_plugins.hydra_optuna_sweeper", "cluster", f"{program} {argument}")
        if key == "hydra/launcher" and value in ("slurm", "submitit_local", "submitit_slurm"):
            require("hydra_plugins.hydra_submitit_launcher", "cluster", f"{program} {argument}")
    if os.environ.get("CHAINCRF_KERNEL") == "triton":
        require("triton", "gpu", "CHAINCRF_KERNEL=triton")
