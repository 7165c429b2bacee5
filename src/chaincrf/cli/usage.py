"""What a command says before Hydra parses anything: ``--help`` (that command's own options,
one line each, read from its config file), ``--version`` (chaincrf's), and the optional
packages its command line needs (``hparams_search=optuna``, a submitit launcher,
``CHAINCRF_KERNEL=triton``), each missing one named with its extra in one line, and the config
names of earlier versions, each refused in one line naming its new spelling."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from chaincrf.extras import require

PROGRAMS = {
    "train": "chaincrf-train",
    "eval": "chaincrf-eval",
    "predict": "chaincrf-predict",
    "export": "chaincrf-export",
    "data_stats": "chaincrf-data-stats",
    "package": "chaincrf-package",
}
"""Each command's config name (``conf/<name>.yaml``) -> its program."""

RENAMED_CONFIGS = {"config": "train"}
"""A primary config's earlier name (``--config-name``) -> its name now."""

RENAMED_GROUPS = {
    "train": {
        "model": ("head", "head={value}"),
        "callback": ("callbacks", "callbacks=[default,{value}]"),
    },
}
"""Per command (its config name): a config group's earlier name -> (its name now, the override
to use instead, ``{value}`` standing for the option given). ``model.dropout=...`` (a key, not the
group) is not an old spelling."""

_CONFIG_NAME_FLAGS = ("--config-name", "-cn")
_CONFIG_DIR_FLAGS = ("--config-dir", "-cd")

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


def _flag_values(argv: Sequence[str], flags: Sequence[str]) -> list[tuple[str, str]]:
    """(how the flag was written, its value) for each of ``flags`` on the command line, as
    ``--flag value`` or ``--flag=value``."""
    found = []
    for i, argument in enumerate(argv):
        name, equals, value = argument.partition("=")
        if name in flags and equals:
            found.append((argument, value))
        elif argument in flags and i + 1 < len(argv):
            found.append((f"{argument} {argv[i + 1]}", argv[i + 1]))
    return found


def refuse_old_spellings(config_name: str, argv: Sequence[str]) -> None:
    """Refuse a config name or group of an earlier version (:data:`RENAMED_CONFIGS`,
    :data:`RENAMED_GROUPS`) before Hydra composes anything, naming the spelling to use now.
    A name the user's own config folder (``--config-dir``) still holds is theirs and is left
    alone.

    Raises:
        ValueError: one line, e.g. ``model=softmax: the config group `model` is now `head`;
            use head=softmax``.
    """
    users = [Path(value) for _, value in _flag_values(argv, _CONFIG_DIR_FLAGS)]
    for written, name in _flag_values(argv, _CONFIG_NAME_FLAGS):
        new = RENAMED_CONFIGS.get(name.removesuffix(".yaml"))
        if new and not any((folder / f"{name.removesuffix('.yaml')}.yaml").is_file()
                           for folder in users):  # fmt: skip
            raise ValueError(
                f"{written}: the config `{name}` is now `{new}`; use --config-name {new} "
                f"(or leave it out: {PROGRAMS.get(new, new)} uses it by default)"
            )
    renamed = RENAMED_GROUPS.get(config_name, {})
    for argument in argv:
        if argument.startswith("-"):
            continue
        key, _, value = argument.partition("=")
        sign = key[: len(key) - len(key.lstrip("+~"))]
        group = key[len(sign) :].partition("@")[0].partition("/")[0]
        if "." in group or group not in renamed:  # model.dropout=0.5 is a key
            continue
        if any((folder / group).is_dir() for folder in users):
            continue
        new, override = renamed[group]
        use = override.format(value=value) if value else f"{sign}{new}"
        raise ValueError(f"{argument}: the config group `{group}` is now `{new}`; use {use}")
