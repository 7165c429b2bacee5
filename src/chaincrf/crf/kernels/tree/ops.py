"""The tree kernel's operations: the kernel interface of :mod:`chaincrf.crf.kernels.eager` as a
log-depth tree of matrix products over time.

Position t of a row is a (K, K) matrix in log space: ``trans[i, j] + em[t, j]`` at a kept
position, ``em[t, j]`` on the diagonal at the row's first kept position (the start scores are
added at the root), and the identity (0 on the diagonal, ``-inf`` off it) at a masked position,
so gaps cost nothing and need no compaction. Adjacent matrices are multiplied pairwise, level
by level, until one is left: ``log Z = logsumexp_ij(start[i] + P[i, j] + end[j])``.

- **Exact at any length and scale.** It computes in float64 whatever the emissions' dtype
  (few long rows: the work is small, and float32 sums of emissions of 1e4 would lose 1e-3 per
  term), every product shifted by its own (detached) maximum so that the entries that carry
  the probability stay near 0; results are cast back. The products are log-sum-exps (no
  exp-space underflow: ``-inf`` scores and forced paths are exact).
- **Memory.** A product of two (K, K) matrices saves its inputs and output and recomputes the
  (K, K, K) sums in its backward: the gradient keeps O(B T K^2). The widest level's transient
  tensor holds B T K^3 / 2 float64 entries, and up to B T K^3 in Viterbi, whose tree is padded
  to a power of two so that its read-back halves evenly (the log-semiring loop carries an odd
  matrix to the next level instead); the planner's bound: :data:`chaincrf.crf.tuning.TREE`.
- **No host synchronisation** (the number of levels depends on the shape only); ``validate``
  reads one flag back (:func:`chaincrf.crf.kernels.eager.ops.check_once`), an asynchronous
  device assertion under torch.compile.
- **Viterbi**: the same tree in max-plus, keeping each product's best middle tag, read back
  top-down (as the eager kernel's ``_tree_viterbi``). Its scores equal the serial kernels'
  within rounding, not bit for bit (they add in another order), and an exact tie may resolve
  to another path of the same score.

Where a row has no allowed path, log Z and the Viterbi score are ``-inf``, its gradients and
marginals 0 and its path all -1, as the Triton kernel's; an empty row scores 0; without
``validate``, a row whose gold tags leave [0, K) has a NaN log-likelihood (as the Triton
kernel's).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from chaincrf.crf import tracing
from chaincrf.crf.kernels.eager import ops as eager

__all__ = ["decode", "log_likelihood", "log_partition", "marginals", "viterbi"]


class _LogMatMul(torch.autograd.Function):
    """``c[..., i, j] = logsumexp_k(a[..., i, k] + b[..., k, j])``; its backward recomputes
    the sums instead of saving them (O(K^2) kept per product, not O(K^3))."""

    @staticmethod
    def forward(a: Tensor, b: Tensor) -> Tensor:
        # torch's logsumexp gives -inf (not NaN) where every term is -inf; its own backward is
        # not used (see backward), so its NaN-free forward is all that matters here
        return torch.logsumexp(a.unsqueeze(-1) + b.unsqueeze(-3), -2)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, Tensor], output: Tensor) -> None:
        ctx.save_for_backward(*inputs, output)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:
        a, b, c = ctx.saved_tensors
        safe = torch.where(torch.isneginf(c), 0.0, c)  # no path: every weight is exp(-inf) = 0
        weight = torch.exp(a.unsqueeze(-1) + b.unsqueeze(-3) - safe.unsqueeze(-2))
        weight = weight * grad.unsqueeze(-2)  # (..., i, k, j)
        return weight.sum(-1), weight.sum(-3)


def _log_matmul(a: Tensor, b: Tensor) -> Tensor:
    out: Tensor = _LogMatMul.apply(a, b)  # type: ignore[no-untyped-call]  # apply: unannotated
    return out


def _max_matmul(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Max-plus product and its best middle tag, ties to the lowest:
    ``c[..., i, j] = max_k(a[..., i, k] + b[..., k, j])``, ``mid[..., i, j]`` that k."""
    cand = a.unsqueeze(-2) + b.transpose(-2, -1).unsqueeze(-3)  # (..., i, j, k)
    mid = cand.argmax(-1)
    return cand.gather(-1, mid.unsqueeze(-1)).squeeze(-1), mid


def _identity(K: int, like: Tensor) -> Tensor:
    """The (K, K) identity of both semirings: 0 on the diagonal, ``-inf`` off it."""
    eye = torch.eye(K, dtype=torch.bool, device=like.device)
    return torch.where(
        eye, 0.0, torch.full((), float("-inf"), dtype=like.dtype, device=like.device)
    )


def _matrices(em: Tensor, mask: Tensor, trans: Tensor) -> Tensor:
    """Each position's (K from, K to) matrix (B, T, K, K): see the module docstring."""
    K = em.size(2)
    eye = torch.eye(K, dtype=torch.bool, device=em.device)
    emit = em.unsqueeze(2)  # (B, T, 1, K to)
    neg = torch.full((), float("-inf"), dtype=em.dtype, device=em.device)
    first = mask & (mask.cumsum(1) == 1)
    kept = torch.where(first[..., None, None], torch.where(eye, emit, neg), trans + emit)
    return torch.where(mask[..., None, None], kept, _identity(K, em))


def _shifted(m: Tensor) -> tuple[Tensor, Tensor]:
    """``m`` (..., K, K) minus its detached maximum per matrix (0 for an all ``-inf`` one),
    and that maximum (...)."""
    top = torch.nan_to_num(m.detach().amax((-2, -1)), neginf=0.0)
    return m - top[..., None, None], top


def _log_product(a: Tensor, b: Tensor) -> tuple[Tensor, None]:
    return _log_matmul(a, b), None


_MULTIPLY: dict[str, Callable[[Tensor, Tensor], tuple[Tensor, Tensor | None]]] = {
    "log": _log_product,  # logsumexp over the middle tag: log Z, and marginals by autograd
    "max": _max_matmul,  # max over it, keeping the arg-max: Viterbi
}


def _tree(M: Tensor, semiring: str) -> tuple[Tensor, Tensor, list[Tensor]]:
    """The one recursion: M's (B, N, K, K) matrices multiplied in order in ``semiring``
    (``"log"`` or ``"max"``), adjacent pairs level by level (an odd last matrix carried up).

    Returns:
        the product (B, K, K) shifted, its shift (B,) in float64 (the product is
        ``result + shift``), and each level's best middle tags (``"max"``; empty for ``"log"``).
    """
    B, N, K, _ = M.shape
    shift = torch.zeros(B, dtype=torch.float64, device=M.device)
    mids: list[Tensor] = []
    if N == 0:
        return _identity(K, M).expand(B, K, K), shift, mids
    multiply = _MULTIPLY[semiring]
    tops = []  # each level's shifts, summed once at the end (fewer launches per level)
    while M.size(1) > 1:
        n = M.size(1)
        product, mid = multiply(M[:, 0 : n - 1 : 2], M[:, 1:n:2])
        pairs, top = _shifted(product)
        tops.append(top)
        if mid is not None:
            mids.append(mid)
        M = pairs if n % 2 == 0 else torch.cat([pairs, M[:, n - 1 :]], 1)
    if tops:
        shift = torch.cat(tops, 1).double().sum(1)
    return M[:, 0], shift, mids


def _log_partition(em: Tensor, mask: Tensor, start: Tensor, trans: Tensor, end: Tensor) -> Tensor:
    B, _, K = em.shape
    tracing.path_taken("tree_kernel", B)
    dtype = em.dtype
    em, start, trans, end = (x.double() for x in (em, start, trans, end))
    total, shift, _ = _tree(_matrices(em, mask, trans), "log")
    z = _log_matmul(_log_matmul(start.expand(B, 1, K), total), end.view(K, 1).expand(B, K, 1))
    log_z = (z.view(B) + shift).to(dtype)
    return torch.where(mask.any(1), log_z, 0.0)


def _gold_score(
    em: Tensor, tags: Tensor, mask: Tensor, start: Tensor, trans: Tensor, end: Tensor
) -> Tensor:
    """The gold paths' scores (B,) over the kept positions (gaps skipped), ``-inf`` where the
    path is forbidden, 0 for an empty row."""
    B, T, K = em.shape
    if T == 0:
        return em.sum((1, 2))  # zeros (B,), still attached to the graph
    # a tag out of range is found by the checks (no host read here): clamped, never used to
    # index, and its row's score NaN (as the Triton kernel's)
    tags = tags.masked_fill(~mask, 0)
    bad = ((tags < 0) | (tags >= K)).any(1)
    tags = tags.clamp(0, K - 1)
    zero = torch.zeros((), dtype=em.dtype, device=em.device)
    count = mask.cumsum(1)
    first = mask & (count == 1)
    last = mask & (count == count[:, -1:])
    # replaced (torch.where), never multiplied by 0: -inf or NaN where masked cannot leak in
    score = torch.where(mask, em.gather(2, tags.unsqueeze(2)).squeeze(2), zero).sum(1)
    score = score + torch.where(first, start[tags], zero).sum(1)
    score = score + torch.where(last, end[tags], zero).sum(1)
    if T > 1:  # each kept position after the first: the move from the previous kept one
        kept = torch.where(mask, torch.arange(T, device=em.device), -1)
        before = torch.cat([kept.new_full((B, 1), -1), kept.cummax(1).values[:, :-1]], 1)
        pair = trans[tags.gather(1, before.clamp(min=0)), tags]
        score = score + torch.where(mask & (before >= 0), pair, zero).sum(1)
    return torch.where(bad, float("nan"), score)


def _best_paths(
    em: Tensor, mask: Tensor, start: Tensor, trans: Tensor, end: Tensor
) -> tuple[Tensor, Tensor]:
    """(paths (B, T), -1 where masked or no path is allowed; best scores (B,))."""
    B, T, K = em.shape
    tracing.path_taken("tree_kernel_viterbi", B)
    dtype = em.dtype
    em, start, trans, end = (x.double() for x in (em, start, trans, end))
    size = 1 << max(T - 1, 0).bit_length()  # a power of two >= T: the read-back halves evenly
    M = torch.cat([_matrices(em, mask, trans), _identity(K, em).expand(B, size - T, K, K)], 1)
    product, shift, mids = _tree(M, "max")
    total = (start.view(K, 1) + product + end).view(B, K * K)
    flat = total.argmax(1)
    best = (total.gather(1, flat.unsqueeze(1)).squeeze(1) + shift).to(dtype)
    bound = torch.stack([flat // K, flat % K], 1)  # (B, 2): the state before and after it all
    for mid in reversed(mids):  # S products with known boundary tags -> 2S
        S = mid.size(1)
        pair = bound[:, :-1] * K + bound[:, 1:]  # (B, S)
        m = mid.view(B, S, K * K).gather(2, pair.unsqueeze(2)).squeeze(2)
        bound = torch.cat([torch.stack([bound[:, :-1], m], 2).view(B, 2 * S), bound[:, -1:]], 1)
    allowed = ~torch.isneginf(best)
    paths = torch.where(mask & allowed.unsqueeze(1), bound[:, 1 : T + 1], -1)
    return paths, torch.where(mask.any(1), best, 0.0)


def _checked(
    validate: bool, em: Tensor, mask: Tensor, start: Tensor, trans: Tensor, end: Tensor
) -> None:
    if validate:
        eager.check_once(em, mask, (start, trans, end))


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
    gold path is an error (without ``validate`` its log-likelihood is ``-inf``)."""
    if tags is None:
        raise ValueError("log_likelihood needs tags")
    gold = _gold_score(em, tags, mask, start, trans, end)
    if validate:
        eager.check_once(em, mask, (start, trans, end), tags, gold if constrained else None)
    return gold - _log_partition(em, mask, start, trans, end)


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
    """Log Z of each row (B,), 0 for an empty row, ``-inf`` with no allowed path;
    differentiable w.r.t. ``em`` and the three scores."""
    _checked(validate, em, mask, start, trans, end)
    return _log_partition(em, mask, start, trans, end)


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
        ValueError: for ``k`` other than 1.
    """
    if k != 1:
        raise ValueError(f"the tree kernel computes the best path only (k = 1); got k={k}")
    _checked(validate, em, mask, start, trans, end)
    with torch.no_grad():
        paths, best = _best_paths(em, mask, start, trans, end)
    return paths.unsqueeze(1), best.unsqueeze(1)


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
    _checked(validate, em, mask, start, trans, end)
    with torch.no_grad():
        paths, _ = _best_paths(em, mask, start, trans, end)
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
    in a row with no allowed path); the gradient of log Z, not differentiable. Not under
    torch.compile (``torch.autograd.grad`` breaks a graph: the planner sends compiled
    marginals elsewhere)."""
    _checked(validate, em, mask, start, trans, end)
    if em.size(1) == 0:
        return torch.zeros_like(em)
    scores = (start.detach(), trans.detach(), end.detach())
    with torch.inference_mode(False), torch.enable_grad():  # a fresh leaf: autograd
        leaf = em.detach().clone().requires_grad_(True)
        log_z = _log_partition(leaf, mask.clone(), *(s.clone() for s in scores))
        (gamma,) = torch.autograd.grad(log_z.sum(), leaf)
    return gamma.masked_fill(~mask[..., None], 0.0)
