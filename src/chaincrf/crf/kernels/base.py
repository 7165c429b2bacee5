"""What every CRF kernel is: the contract the registry (:mod:`chaincrf.crf.kernels`) checks and
the planner (:mod:`chaincrf.crf.plan`) relies on. A leaf: imports torch only.

A kernel is one package, ``chaincrf/crf/kernels/<name>/`` (or any importable package given to
:func:`chaincrf.crf.kernels.register`), whose ``__init__`` declares:

- ``NAME``: the name ``CRF(kernel=...)`` and ``CHAINCRF_KERNEL`` use;
- ``GAPS``: how it meets a mask with gaps (:mod:`chaincrf.crf.gaps`): ``"native"`` (it runs
  them), ``"detected"`` (it raises ``MaskGapError`` whenever it meets one) or ``"validated"``
  (it raises ``MaskGapError`` under ``validate`` only);
- ``OPERATIONS``: the operations it computes (a subset of :data:`OPERATIONS`);
- ``available() -> bool``: whether it can run in this process (its packages importable);
- ``can_run(problem: Problem) -> bool``: whether it can compute ``problem`` at all (a forced
  kernel runs every problem it can, the eager kernel the rest);
- ``prepare(forced: bool) -> None``: called when a CRF is built (``forced``: the user asked for
  this kernel): start a runtime, import modules that must not be imported while torch.compile
  traces;
- ``operations() -> module``: the module holding the operations (imported on first use, so a
  kernel's heavy imports wait until it runs);
- optionally ``HALF_EMISSIONS = True``: its likelihoods and log-partition take float16 and
  bfloat16 emissions as they are (computing in float32, the emissions' gradient in their
  dtype); other kernels get them upcast to float32 by the layer;
- optionally ``EAGER_SUMS = True``: the layer asks for ``log_likelihood_sum`` /
  ``negative_log_likelihood_sum`` for a reduced loss in eager calls too (by default only under
  torch.compile), because summing in the kernel's call saves autograd a node;
- optionally ``RULES``: rows for the planner's table (:class:`Rule`), for a kernel that lives
  outside chaincrf; chaincrf's own rows are in :data:`chaincrf.crf.plan.TABLE`.

Every operation has ONE signature::

    operation(em, mask, start, trans, end, tags=None, k=1, constrained=False, validate=True)

``em``: float (B, T, K) batch-first emissions; ``mask``: bool (B, T), left-aligned unless the
kernel's ``GAPS`` is ``"native"``; ``start``, ``end``: (K,) and ``trans``: (K, K) ``[from, to]``
effective scores, ``-inf`` where forbidden; ``tags``: long (B, T) gold tags (the likelihoods);
``k``: paths asked for (Viterbi); ``constrained``: the scores hold constraints, so a gold path
through a forbidden move is an error (with ``validate``); ``validate``: check the values first,
raising the eager kernel's errors in its order (mask gaps, scores, emissions, tags). Each
operation uses the arguments it needs:

- ``log_likelihood`` -> float (B,), gold-path score minus log Z (``negative_log_likelihood``,
  optional, its negative in one pass; ``log_likelihood_sum``, optional, their sum (0-d), which
  the layer asks for a reduced loss under torch.compile (and with ``EAGER_SUMS``, eagerly): a
  kernel may compute it with its gradient in one pass, since every row weighs the same;
  ``negative_log_likelihood_sum``, optional, its negative, preferred for a reduced NLL);
- ``log_partition`` -> float (B,), 0 for an empty row;
- ``viterbi`` -> long paths (B, k, T), -1 past each length, and float scores (B, k);
- ``decode`` -> a list of B lists of tags;
- ``marginals`` -> float (B, T, K), 0 where the mask is off.

Likelihoods and log-partitions are differentiable w.r.t. ``em`` and the scores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["OPERATIONS", "Problem", "Rule"]

OPERATIONS = (
    "log_likelihood",
    "negative_log_likelihood",
    "log_likelihood_sum",
    "negative_log_likelihood_sum",
    "log_partition",
    "viterbi",
    "decode",
    "marginals",
)
"""Every operation a kernel may offer (``negative_log_likelihood``, ``log_likelihood_sum`` and
``negative_log_likelihood_sum`` are optional)."""


@dataclass(frozen=True)
class Problem:
    """What the planner knows of one call.

    Attributes:
        operation: ``"log_partition"`` (with its gradient when ``requires_grad``), ``"viterbi"``
            or ``"marginals"``.
        batch, length, tags: the sizes B, T, K.
        dtype: the emissions' dtype after the layer's upcast (float32 or float64 usually).
        device: the device type (``"cpu"``, ``"cuda"``, ...).
        k: paths asked for (Viterbi).
        requires_grad: whether autograd will need a backward pass.
        compiling: whether torch.compile / torch.export is tracing the call (the eager
            kernels' host synchronisations would break the graph).
        exporting: whether torch.export (or the ONNX exporter, which runs it) is tracing:
            the graph must hold standard operations only, no custom ops.
    """

    operation: str
    batch: int
    length: int
    tags: int
    dtype: torch.dtype
    device: str
    k: int = 1
    requires_grad: bool = False
    compiling: bool = False
    exporting: bool = False


@dataclass(frozen=True)
class Rule:
    """One row of the planner's table: ``kernel`` computes ``operations`` when
    ``when(problem)`` holds. ``why``: one line, the reason and the command that re-measures it
    (the figures are in ``benchmarks/``)."""

    kernel: str
    operations: frozenset[str]
    when: Callable[[Problem], bool]
    why: str
