"""Optional packages (the extras of ``pyproject.toml``): one import helper whose error names the
extra to install, so that a command without it ends in one line, not a traceback.

A leaf: imports nothing of ours (the CLIs, the data readers and the encoders call it).
"""

from __future__ import annotations

import importlib
import importlib.metadata
from types import ModuleType

from packaging.version import Version  # Lightning's and matplotlib's dependency

__all__ = ["MissingExtra", "require"]


class MissingExtra(ImportError):
    """An optional package is not installed; the message names the feature that needs it and
    the extra that installs it, e.g. ``chaincrf-export format=onnx needs the export extra:
    pip install "chaincrf[export]" (no module named 'onnxscript')``.

    Attributes:
        extra: the extra of ``pyproject.toml`` that installs the package (``"export"``, ...).
        feature: what needs it, as the user asked for it (a command and its option).
    """

    def __init__(self, module: str, extra: str, feature: str, reason: str | None = None) -> None:
        super().__init__(
            f'{feature} needs the {extra} extra: pip install "chaincrf[{extra}]" '
            f"({reason or f'no module named {module!r}'})",
            name=module,
        )
        self.extra = extra
        self.feature = feature
        self.reason = reason

    def __reduce__(self):  # picklable (DataLoader workers, multiprocessing)
        return (type(self), (self.name, self.extra, self.feature, self.reason))


def require(module: str, extra: str, feature: str, minimum: str | None = None) -> ModuleType:
    """Import ``module``, an optional package.

    Args:
        module: the dotted module name (``"onnxscript"``).
        extra: the extra of ``pyproject.toml`` that installs it (``"export"``).
        feature: what needs it, as the user asks for it (``"chaincrf-export format=onnx"``).
        minimum: the lowest release of the distribution named ``module`` that will do, as the
            extra asks for it (``"77"`` for ``setuptools>=77``); None: any.

    Returns:
        The module.

    Raises:
        MissingExtra: (an ``ImportError``) naming the feature and the extra, when the module
            (or a package it needs) cannot be imported, or is older than ``minimum``.
    """
    try:
        imported = importlib.import_module(module)
    except ImportError as error:
        raise MissingExtra(error.name or module, extra, feature) from error
    if minimum is not None:
        found = importlib.metadata.version(module)
        if Version(found) < Version(minimum):
            raise MissingExtra(module, extra, feature, f"{module} {found} is older than {minimum}")
    return imported
