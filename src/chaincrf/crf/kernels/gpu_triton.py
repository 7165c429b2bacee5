"""Triton kernels for the linear-chain CRF and the Python functions that launch them.

One program per batch row (grid ``(B,)``) runs a loop over the row's positions; the transition
matrix is loaded once into a ``BLOCK_K x BLOCK_K`` register tile (``BLOCK_K``: the next power of
two >= K; padded entries are ``-inf``). Transitions are indexed ``[from, to]``: the tile's rows
are source tags ``i``, its columns target tags ``j``. Arithmetic runs in the emissions' dtype
(float32 or float64). Inputs are batch-first and contiguous; a row covers its first
``lengths[b]`` positions, and positions past it are never read.

* :func:`chain_forward`: the forward recursion in log space, ``alpha_t[j] = logsumexp_i(
  alpha_{t-1}[i] + trans[i, j]) + em[t, j]``, log Z = ``logsumexp(alpha_{L-1} + end)``
  (0 for an empty row), the alphas kept for a backward pass when asked.
* :func:`chain_backward`: the backward recursion over the kept alphas: tag marginals times
  the incoming gradient (the emissions' gradient, and the start and end scores' at the first
  and last position) and, with ``pairwise``, the summed pairwise marginals (one (K, K) buffer
  per row, summed over rows by torch: no atomics). Marginals are its unit-gradient case.
* :func:`viterbi`: the same recursion in max-plus (``MAX_PLUS``): back-pointers to an int32
  (B, T, K) buffer, then the back-trace in the same program. Ties go to the smallest tag index
  (as ``torch.argmax``) and the sums are the eager kernel's, in its order.

A maximum of ``-inf`` shifts by 0 (never ``-inf - -inf``): a row with no allowed path gets
log Z ``-inf``, zero gradients and marginals, Viterbi score ``-inf`` and an all ``-1`` path.
Triton is imported with this module; with ``TRITON_INTERPRET=1`` (set before the import) the
kernels run on CPU tensors through Triton's interpreter.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["chain_backward", "chain_forward", "viterbi"]

NEG_INF = float("-inf")


@triton.jit
def _logsumexp(x, axis: tl.constexpr):
    """logsumexp of ``x`` along ``axis``; ``-inf`` (not NaN) where every entry is ``-inf``."""
    top = tl.max(x, axis=axis)
    shift = tl.where(top == float("-inf"), 0.0, top)
    total = tl.sum(tl.exp(x - tl.expand_dims(shift, axis)), axis=axis)
    return shift + tl.log(total)


@triton.jit
def _chain_kernel(
    em_ptr,  # (B, T, K) emissions
    len_ptr,  # (B,) int32 lengths
    start_ptr,  # (K,)
    trans_ptr,  # (K, K) [from, to]
    end_ptr,  # (K,)
    out_ptr,  # (B,) log Z, or the best score with MAX_PLUS
    alpha_ptr,  # (B, T, K) forward messages (written with STORE_ALPHA)
    back_ptr,  # (B, T, K) int32 back-pointers (MAX_PLUS)
    path_ptr,  # (B, T) int64 best paths, filled with -1 by the caller (MAX_PLUS)
    T,
    K,
    MAX_PLUS: tl.constexpr,
    STORE_ALPHA: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """The forward recursion of one row, reduced by logsumexp or (``MAX_PLUS``) by max."""
    b = tl.program_id(0).to(tl.int64)
    n = tl.load(len_ptr + b)
    src = tl.arange(0, BLOCK_K)  # source tags i: the tile's rows
    dst = tl.arange(0, BLOCK_K)  # target tags j: the tile's columns
    tile = (src[:, None] < K) & (dst[None, :] < K)
    trans = tl.load(trans_ptr + src[:, None] * K + dst[None, :], mask=tile, other=float("-inf"))
    on = dst < K
    row = b * T * K
    first = tl.load(em_ptr + row + dst, mask=on, other=float("-inf"))  # in bounds: T >= 1
    score = tl.load(start_ptr + dst, mask=on, other=float("-inf")) + first
    if STORE_ALPHA:
        tl.store(alpha_ptr + row + dst, score, mask=on)
    for t in range(1, n):
        cand = score[:, None] + trans  # (BLOCK_K from, BLOCK_K to)
        if MAX_PLUS:
            best = tl.max(cand, axis=0)
            arg = tl.min(tl.where(cand == best[None, :], src[:, None], BLOCK_K), axis=0)
            tl.store(back_ptr + row + t * K + dst, arg, mask=on)
        else:
            best = _logsumexp(cand, 0)
        score = best + tl.load(em_ptr + row + t * K + dst, mask=on, other=float("-inf"))
        if STORE_ALPHA:
            tl.store(alpha_ptr + row + t * K + dst, score, mask=on)
    final = score + tl.load(end_ptr + dst, mask=on, other=float("-inf"))
    if MAX_PLUS:
        top = tl.max(final, axis=0)
        tag = tl.min(tl.where(final == top, dst, BLOCK_K), axis=0)
        tl.debug_barrier()  # the back-pointers written by every thread, visible to all
        if (n > 0) & (top > float("-inf")):
            tl.store(path_ptr + b * T + n - 1, tag.to(tl.int64))
            for s in range(1, n):
                tag = tl.load(back_ptr + row + (n - s) * K + tag)
                tl.store(path_ptr + b * T + n - s - 1, tag.to(tl.int64))
        tl.store(out_ptr + b, tl.where(n > 0, top, 0.0))
    else:
        tl.store(out_ptr + b, tl.where(n > 0, _logsumexp(final, 0), 0.0))


@triton.jit
def _backward_kernel(
    em_ptr,  # (B, T, K) emissions
    len_ptr,  # (B,) int32 lengths
    trans_ptr,  # (K, K) [from, to]
    end_ptr,  # (K,)
    alpha_ptr,  # (B, T, K) forward messages
    log_z_ptr,  # (B,)
    grad_ptr,  # (B,) incoming gradient of log Z
    d_em_ptr,  # (B, T, K) out, zero-filled: marginals times the gradient
    d_start_ptr,  # (B, K) out, zero-filled
    d_trans_ptr,  # (B, K, K) out, zero-filled: summed pairwise marginals (PAIRWISE)
    d_end_ptr,  # (B, K) out, zero-filled
    T,
    K,
    PAIRWISE: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """The backward recursion of one row: beta_{L-1} = end, beta_{t-1}[i] =
    logsumexp_j(trans[i, j] + em[t, j] + beta_t[j]); marginals exp(alpha + beta - log Z)."""
    b = tl.program_id(0).to(tl.int64)
    n = tl.load(len_ptr + b)
    log_z = tl.load(log_z_ptr + b)
    if (n > 0) & (log_z > float("-inf")):
        g = tl.load(grad_ptr + b)
        src = tl.arange(0, BLOCK_K)
        dst = tl.arange(0, BLOCK_K)
        tile = (src[:, None] < K) & (dst[None, :] < K)
        trans = tl.load(trans_ptr + src[:, None] * K + dst[None, :], mask=tile, other=float("-inf"))
        on = dst < K
        row = b * T * K
        beta = tl.load(end_ptr + dst, mask=on, other=float("-inf"))  # beta_{n-1}
        alpha = tl.load(alpha_ptr + row + (n - 1) * K + dst, mask=on, other=float("-inf"))
        gamma = tl.exp(alpha + beta - log_z) * g
        tl.store(d_em_ptr + row + (n - 1) * K + dst, gamma, mask=on)
        tl.store(d_end_ptr + b * K + dst, gamma, mask=on)
        pair = tl.zeros((BLOCK_K, BLOCK_K), dtype=gamma.dtype)
        for s in range(1, n):
            t = n - s  # beta_t known; step to t - 1
            ahead = beta + tl.load(em_ptr + row + t * K + dst, mask=on, other=float("-inf"))
            alpha = tl.load(alpha_ptr + row + (t - 1) * K + src, mask=src < K, other=float("-inf"))
            if PAIRWISE:
                pair += tl.exp(alpha[:, None] + trans + ahead[None, :] - log_z) * g
            beta = _logsumexp(trans + ahead[None, :], 1)  # indexed by source tag
            gamma = tl.exp(alpha + beta - log_z) * g
            tl.store(d_em_ptr + row + (t - 1) * K + src, gamma, mask=src < K)
        tl.store(d_start_ptr + b * K + dst, gamma, mask=on)
        if PAIRWISE:
            tl.store(d_trans_ptr + b * K * K + src[:, None] * K + dst[None, :], pair, mask=tile)


def _block(K: int) -> tuple[int, int]:
    """(BLOCK_K, num_warps) for ``K`` tags: the tile covers K, more warps for larger tiles."""
    block = triton.next_power_of_2(max(K, 1))
    return block, 1 if block <= 16 else 2 if block <= 32 else 4


def chain_forward(
    em: Tensor, lengths: Tensor, start: Tensor, trans: Tensor, end: Tensor, keep_alpha: bool
) -> tuple[Tensor, Tensor]:
    """Log Z of each row and, with ``keep_alpha``, the forward messages.

    Args:
        em: float32/float64 contiguous (batch, seq_len, num_tags), unnormalised scores.
        lengths: int32 (batch,), each in [0, seq_len].
        start, end: (num_tags,) and trans: (num_tags, num_tags) ``[from, to]`` contiguous
            scores in ``em``'s dtype, ``-inf`` where forbidden.
        keep_alpha: also return the forward messages (for :func:`chain_backward`).

    Returns:
        ``log_z`` (batch,) (0 for an empty row, ``-inf`` with no allowed path) and ``alpha``
        (batch, seq_len, num_tags) (0 past each length), or (0, 0, 0) without
        ``keep_alpha``.
    """
    B, T, K = em.shape
    log_z = em.new_zeros(B)
    alpha = em.new_zeros((B, T, K) if keep_alpha else (0, 0, 0))  # deterministic padding
    if B and T:
        block, warps = _block(K)
        _chain_kernel[(B,)](
            em, lengths, start, trans, end, log_z, alpha if keep_alpha else em, lengths, em,
            T, K, MAX_PLUS=False, STORE_ALPHA=keep_alpha, BLOCK_K=block, num_warps=warps,
        )  # fmt: skip
    return log_z, alpha


def chain_backward(
    grad: Tensor,
    em: Tensor,
    lengths: Tensor,
    trans: Tensor,
    end: Tensor,
    alpha: Tensor,
    log_z: Tensor,
    pairwise: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of ``sum(grad * log Z)``, the tag marginals being those of a unit gradient.

    Args:
        grad: (batch,) incoming gradient, in ``em``'s dtype.
        em, lengths, trans, end: as in :func:`chain_forward`.
        alpha: (batch, seq_len, num_tags) and log_z (batch,): :func:`chain_forward`'s outputs.
        pairwise: also sum the pairwise marginals (the transitions' gradient).

    Returns:
        ``d_em`` (batch, seq_len, num_tags), 0 past each length; per-row ``d_start`` (batch,
        num_tags), ``d_trans`` (batch, num_tags, num_tags) ((0, K, K) without ``pairwise``) and
        ``d_end`` (batch, num_tags), to be summed over the rows. All 0 for an empty row and
        for a row with no allowed path.
    """
    B, T, K = em.shape
    d_em = torch.zeros_like(em)
    d_start, d_end = em.new_zeros((B, K)), em.new_zeros((B, K))
    d_trans = em.new_zeros((B if pairwise else 0, K, K))
    if B and T:
        block, warps = _block(K)
        _backward_kernel[(B,)](
            em, lengths, trans, end, alpha, log_z, grad, d_em, d_start,
            d_trans if pairwise else d_em, d_end, T, K,
            PAIRWISE=pairwise, BLOCK_K=block, num_warps=warps,
        )  # fmt: skip
    return d_em, d_start, d_trans, d_end


def viterbi(
    em: Tensor, lengths: Tensor, start: Tensor, trans: Tensor, end: Tensor
) -> tuple[Tensor, Tensor]:
    """Best path of each row and its score.

    Args:
        em, lengths, start, trans, end: as in :func:`chain_forward`.

    Returns:
        ``paths`` int64 (batch, seq_len), -1 past each length and in a row with no allowed
        path; ``scores`` (batch,) in ``em``'s dtype (0 for an empty row, ``-inf`` with no
        allowed path).
    """
    B, T, K = em.shape
    paths = torch.full((B, T), -1, dtype=torch.long, device=em.device)
    scores = em.new_zeros(B)
    if B and T:
        back = torch.empty((B, T, K), dtype=torch.int32, device=em.device)  # read where written
        block, warps = _block(K)
        _chain_kernel[(B,)](
            em, lengths, start, trans, end, scores, em, back, paths,
            T, K, MAX_PLUS=True, STORE_ALPHA=False, BLOCK_K=block, num_warps=warps,
        )  # fmt: skip
    return paths, scores
