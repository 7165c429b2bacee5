"""chaincrf: a fast linear-chain CRF for PyTorch and a sequence tagger around it.

``from chaincrf import CRF`` imports the layer (and torch) on first use: the package itself
imports nothing, so that torch-free parts (the ONNX Runtime predictor, the vocabularies, the
tag schemes) load without torch.
"""

from typing import Any

__all__ = ["CRF"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "CRF":
        from chaincrf.crf import CRF

        return CRF
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
