"""The Triton kernel: the kernel interface of :mod:`chaincrf.crf.kernels.eager` on the GPU
kernels of :mod:`chaincrf.crf.kernels.triton.programs`, called through the custom ops of
:mod:`chaincrf.crf.kernels.triton.custom_ops` (CUDA tensors, or CPU tensors under Triton's
interpreter, ``TRITON_INTERPRET=1``).

No call reads a value back to the host unless it must return one (``decode``'s lists) or
``validate`` asks for the checks: then every check of the call (scores, emissions, tags and,
with constraints, the gold path) is one reduction read back once, and only when it finds
something are the eager kernel's checks run to name it (same errors, same order). The
likelihoods and log-partition check the values in their forward launch (per-row flags); the
other operations with tensor operations before it. Under
``torch.compile`` the checks are an asynchronous device assertion instead. Without
``validate``, a gold path that the constraints forbid gives a log-likelihood of ``-inf``
(no error: raising would need the host). The gold-path score is computed in the forward
kernel, the mask's gaps are handled in the kernels (``GAPS = "native"``), and Viterbi
computes the best path only (k = 1). Where a row has no allowed path, log Z and the Viterbi
score are ``-inf`` and the path all -1, as the eager kernel's; its gradients and marginals
are 0 (the eager kernel's are NaN there). Importing this module imports Triton.
"""

from __future__ import annotations

from torch import Tensor

from chaincrf.crf.kernels.eager import ops as eager
from chaincrf.crf.kernels.triton import custom_ops as ops

__all__ = [
    "decode",
    "log_likelihood",
    "log_likelihood_sum",
    "log_partition",
    "marginals",
    "negative_log_likelihood",
    "negative_log_likelihood_sum",
    "viterbi",
]


def _likelihood(
    em: Tensor,
    tags: Tensor | None,
    mask: Tensor,
    start: Tensor,
    trans: Tensor,
    end: Tensor,
    constrained: bool,
    validate: bool,
    scale: float,
    total: bool = False,
) -> Tensor:
    if tags is None:
        raise ValueError("log_likelihood needs tags")
    # the values are checked in the forward launch (flags read once); the gold scores are
    # read by the check of a constrained layer only
    check = validate and em.size(0) > 0  # (an empty batch: no launch; its scores checked below)
    args = (em, tags, mask, start, trans, end, scale, total, validate and constrained, check)
    out, gold, flags = ops.forward(*args)
    if validate:
        scores = (start, trans, end)
        eager.check_once(em, mask, scores, tags, gold if constrained else None, flags)
    return out


def log_likelihood(
    em: Tensor,
    mask: Tensor,
    start: Tensor,
    trans: Tensor,
    end: Tensor,
    tags: Tensor | None = None,
    k: int = 1,
    constrained: bool = False,
    validate: bool = True,
) -> Tensor:
    """Gold-path score minus log Z (B,); with ``constrained`` and ``validate``, a forbidden
    gold path is an error.

    Args:
        em: float (B, T, K) emissions; tags: long (B, T) gold tags, ignored where the mask is
            off; mask: bool (B, T), gaps allowed; start, end: (K,) and trans: (K, K)
            ``[from, to]`` effective scores, ``-inf`` where forbidden.
        constrained: the scores hold constraints: check the gold path against them (with
            ``validate``).
        validate: check the values (scores, emissions, tags) with one read-back.

    Returns:
        float (B,), differentiable w.r.t. ``em`` and the three scores.
    """
    return _likelihood(em, tags, mask, start, trans, end, constrained, validate, 1.0)


def negative_log_likelihood(
    em: Tensor,
    mask: Tensor,
    start: Tensor,
    trans: Tensor,
    end: Tensor,
    tags: Tensor | None = None,
    k: int = 1,
    constrained: bool = False,
    validate: bool = True,
) -> Tensor:
    """``-log_likelihood(...)`` in the same launch (no negation kernel, forward or backward)."""
    return _likelihood(em, tags, mask, start, trans, end, constrained, validate, -1.0)


def log_likelihood_sum(
    em: Tensor,
    mask: Tensor,
    start: Tensor,
    trans: Tensor,
    end: Tensor,
    tags: Tensor | None = None,
    k: int = 1,
    constrained: bool = False,
    validate: bool = True,
) -> Tensor:
    """``log_likelihood(...).sum()`` (0-d) as the call's own output: an eager backward runs no
    reduction node (``EAGER_SUMS``)."""
    return _likelihood(em, tags, mask, start, trans, end, constrained, validate, 1.0, True)


def negative_log_likelihood_sum(
    em: Tensor,
    mask: Tensor,
    start: Tensor,
    trans: Tensor,
    end: Tensor,
    tags: Tensor | None = None,
    k: int = 1,
    constrained: bool = False,
    validate: bool = True,
) -> Tensor:
    """``-log_likelihood(...).sum()`` (0-d): sign and sum in the call, no node of their own."""
    return _likelihood(em, tags, mask, start, trans, end, constrained, validate, -1.0, True)


def log_partition(
    em: Tensor,
    mask: Tensor,
    start: Tensor,
    trans: Tensor,
    end: Tensor,
    tags: Tensor | None = None,
    k: int = 1,
    constrained: bool = False,
    validate: bool = True,
) -> Tensor:
    """Log Z of each row (B,), 0 for an empty row, ``-inf`` for a row with no allowed path;
    differentiable w.r.t. ``em`` and the three scores (arguments as in :func:`log_likelihood`)."""
    check = validate and em.size(0) > 0
    log_z, _, flags = ops.forward(em, None, mask, start, trans, end, check=check)
    if validate:
        eager.check_once(em, mask, (start, trans, end), found=flags)
    return log_z


def viterbi(
    em: Tensor,
    mask: Tensor,
    start: Tensor,
    trans: Tensor,
    end: Tensor,
    tags: Tensor | None = None,
    k: int = 1,
    constrained: bool = False,
    validate: bool = True,
) -> tuple[Tensor, Tensor]:
    """The best path (k = 1 only) (B, 1, T), -1 where the mask is off and where no path is
    allowed, and its score (B, 1): 0 for an empty row, ``-inf`` with no allowed path.

    Raises:
        ValueError: for ``k`` other than 1 (the planner sends k-best Viterbi to the eager
            kernel).
    """
    if k != 1:
        raise ValueError(f"the Triton kernel computes the best path only (k = 1); got k={k}")
    if validate:
        eager.check_once(em, mask, (start, trans, end))
    paths, scores = ops.viterbi(em, mask, start, trans, end)
    return paths.unsqueeze(1), scores.unsqueeze(1)


def decode(
    em: Tensor,
    mask: Tensor,
    start: Tensor,
    trans: Tensor,
    end: Tensor,
    tags: Tensor | None = None,
    k: int = 1,
    constrained: bool = False,
    validate: bool = True,
) -> list[list[int]]:
    """The best path of each row as a list of its tags at the kept positions (all -1 where no
    path is allowed)."""
    if validate:
        eager.check_once(em, mask, (start, trans, end))
    paths, _ = ops.viterbi(em, mask, start, trans, end)
    return [
        [tag for tag, on in zip(row, keep) if on]
        for row, keep in zip(paths.tolist(), mask.tolist())
    ]


def marginals(
    em: Tensor,
    mask: Tensor,
    start: Tensor,
    trans: Tensor,
    end: Tensor,
    tags: Tensor | None = None,
    k: int = 1,
    constrained: bool = False,
    validate: bool = True,
) -> Tensor:
    """Posterior tag probabilities (B, T, K): rows sum to 1 where the mask is on, else 0 (and 0
    in a row with no allowed path); not differentiable."""
    if validate:
        eager.check_once(em, mask, (start, trans, end))
    return ops.marginals(em, mask, start, trans, end)
