"""Models by name: model packages installed with pip (``chaincrf-package`` builds them) are found
through their entry point in the group :data:`ENTRY_POINT_GROUP`, as spaCy finds its pipelines.

A model package ``en_ewt_upos`` declares ``[project.entry-points."chaincrf.models"]
en_ewt_upos = "en_ewt_upos"``: the entry point names the Python package whose ``model/``
folder holds the model files. The folder is found with :func:`importlib.util.find_spec`, so
looking a model up runs none of the package's code; its files are then read as data, as any
bundle (:mod:`chaincrf.files.model_files`).

A leaf: imports nothing of ours.
"""

from __future__ import annotations

import importlib.util
import os
import re
from importlib import metadata
from pathlib import Path

__all__ = ["ENTRY_POINT_GROUP", "MODEL_FOLDER", "NAME", "installed_models", "resolve"]

ENTRY_POINT_GROUP = "chaincrf.models"
"""The entry-point group of installed model packages (name: the model's name)."""
MODEL_FOLDER = "model"
"""The folder inside a model package that holds the model files."""
NAME = re.compile(r"^[a-z][a-z0-9_]*$")
"""A model's name: a Python package name in lower case (``en_ewt_upos``)."""


def installed_models() -> dict[str, str]:
    """The installed model packages: model name -> the Python package that holds it (the entry
    points of :data:`ENTRY_POINT_GROUP`; the first one of a name wins, as on ``sys.path``)."""
    found: dict[str, str] = {}
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry.name, entry.value.split(":", 1)[0].strip())
    return found


def _model_folder(name: str, module: str) -> Path:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise FileNotFoundError(
            f"model {name!r}: its entry point names the package {module!r}, which is not "
            "installed as a package folder; reinstall the model package"
        )
    return Path(locations[0]) / MODEL_FOLDER


def resolve(value: str | os.PathLike[str]) -> Path:
    """The model folder or file that ``value`` names: a path that exists, or the name of an
    installed model package.

    A value that does not exist and is not a bare name (it holds a path separator or a file
    suffix) is returned as a path, for the model loader's own "not found" message.

    Args:
        value: a checkpoint, a model folder, or an installed model's name (``"en_ewt_upos"``).

    Returns:
        The path to load.

    Raises:
        FileNotFoundError: one line listing the installed models, for a bare name that is
            neither a file or folder here nor an installed model.
    """
    path = Path(os.fspath(value))
    text = os.fspath(value)
    if os.path.lexists(path) or not NAME.match(str(text)):
        return path
    models = installed_models()
    if text in models:
        return _model_folder(text, models[text])
    listed = ", ".join(sorted(models)) if models else "none"
    raise FileNotFoundError(
        f"{text!r} is neither a file or folder nor an installed model (installed models: "
        f"{listed}); pass a checkpoint or bundle path, or pip install a model package built by "
        "chaincrf-package"
    )
