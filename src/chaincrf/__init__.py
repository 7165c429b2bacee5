"""chaincrf: a fast linear-chain CRF for PyTorch and a sequence tagger around it."""

from chaincrf.crf import CRF

__all__ = ["CRF"]
__version__ = "0.1.0"
