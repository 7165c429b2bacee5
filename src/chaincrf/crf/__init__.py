"""The linear-chain CRF layer, torch only at import.

- :mod:`chaincrf.crf.layer`: :class:`CRF`, the ``nn.Module`` (API, shape checks, scores,
  reductions);
- :mod:`chaincrf.crf.plan`: the one table that picks the kernel of each call;
- :mod:`chaincrf.crf.kernels`: the kernels behind one interface (``eager``, ``fused``);
- :mod:`chaincrf.crf.ragged`: the eager kernels' sorted, time-major ragged batch.
"""

from chaincrf.crf.errors import NonFiniteInputError
from chaincrf.crf.layer import CRF

__all__ = ["CRF", "NonFiniteInputError"]
