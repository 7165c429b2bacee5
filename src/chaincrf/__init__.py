"""chaincrf: a fast linear-chain CRF for PyTorch and a sequence tagger around it.

The package by role: :mod:`chaincrf.crf` (the CRF layer, torch only), :mod:`chaincrf.data`
(readers, tag schemes, vocabularies, batching; knows no model), :mod:`chaincrf.network`
(embeddings, encoders, the tagger's network), :mod:`chaincrf.training` (the LightningModule and
its callbacks, metrics, report), :mod:`chaincrf.predict` (predictors, streaming, export),
:mod:`chaincrf.files` (model files read as data), :mod:`chaincrf.cli` (the commands, the only
Hydra code, and model packaging);
:mod:`chaincrf.tagger` gathers the tagger's public names.

``from chaincrf import CRF`` imports the layer (and torch) on first use: the package itself
imports nothing, so that torch-free parts (the ONNX Runtime predictor, the vocabularies, the
tag schemes) load without torch. Modules moved when the package was regrouped (2026-12-05)
still import under their old paths (:data:`MOVED`): the same module object, so that model
files naming an old ``_target_`` and code importing an old path work as before.
"""

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType
from typing import Any

__all__ = ["CRF", "MOVED"]
__version__ = "0.1.0"

MOVED = {
    "chaincrf.confidence": "chaincrf.crf.confidence",
    "chaincrf.constraints": "chaincrf.data.schemes",
    "chaincrf.embeddings": "chaincrf.network.embeddings",
    "chaincrf.encoders": "chaincrf.network.encoders",
    "chaincrf.metrics": "chaincrf.training.metrics",
    "chaincrf.model_checks": "chaincrf.files.model_checks",
    "chaincrf.model_files": "chaincrf.files.model_files",
    "chaincrf.models": "chaincrf.files.models",
    "chaincrf.packaging": "chaincrf.cli.packaging",
    "chaincrf.precision": "chaincrf.network.precision",
    "chaincrf.provenance": "chaincrf.training.provenance",
    "chaincrf.report": "chaincrf.training.report",
    "chaincrf.tagger.bundle": "chaincrf.predict.bundle",
    "chaincrf.tagger.export": "chaincrf.predict.export",
    "chaincrf.tagger.hparams": "chaincrf.network.config",
    "chaincrf.tagger.hub": "chaincrf.predict.hub",
    "chaincrf.tagger.module": "chaincrf.training.module",
    "chaincrf.tagger.network": "chaincrf.network.model",
    "chaincrf.tagger.onnx_model": "chaincrf.predict.onnx_model",
    "chaincrf.tagger.onnx_predictor": "chaincrf.predict.onnx_predictor",
    "chaincrf.tagger.outputs": "chaincrf.predict.outputs",
    "chaincrf.tagger.predictor": "chaincrf.predict.predictor",
    "chaincrf.tagger.schedule": "chaincrf.training.schedule",
    "chaincrf.tagger.serving": "chaincrf.predict.serving",
    "chaincrf.tagger.streaming": "chaincrf.predict.streaming",
    "chaincrf.tagger.tokenizers": "chaincrf.predict.tokenizers",
}
"""Old module path -> its home since the regrouping (a package's submodules follow it:
``chaincrf.encoders.bilstm`` is ``chaincrf.network.encoders.bilstm``). The former module
``chaincrf.training`` is now a package that still offers its names."""


def _new_name(name: str) -> str | None:
    for old, new in MOVED.items():
        if name == old or name.startswith(old + "."):
            return new + name[len(old) :]
    return None


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module path as the module at its new home (the same object)."""

    def find_spec(
        self, fullname: str, path: Any = None, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith("chaincrf.") or _new_name(fullname) is None:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def __init__(self) -> None:
        self._specs: dict[str, Any] = {}

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(str(_new_name(spec.name)))
        self._specs[spec.name] = module.__spec__  # the import system sets the alias's next
        return module

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run (the module at the new home ran when it was imported): only its own
        spec is put back, so that it keeps its name, search path and reload."""
        spec = module.__spec__
        if spec is not None and spec.name in self._specs:
            module.__spec__ = self._specs.pop(spec.name)


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.insert(0, _MovedModules())  # before the path finder: no second copy


def __getattr__(name: str) -> Any:
    if name == "CRF":
        from chaincrf.crf import CRF

        return CRF
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
