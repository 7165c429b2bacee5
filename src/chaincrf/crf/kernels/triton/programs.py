"""Triton kernels for the linear-chain CRF and the Python functions that launch them.

One recursion, two reductions: :func:`_forward_kernel` runs the forward messages in log space
(``alpha_t[j] = logsumexp_i(alpha_{t-1}[i] + trans[i, j]) + em[t, j]``) or, with ``MAX_PLUS``,
the Viterbi recursion with its back-pointers and back-trace; :func:`_backward_kernel` runs the
backward messages over the kept forward ones and writes the gradients. Each pass is one launch
and reads nothing back to the host.

Each program runs ``BLOCK_B`` batch rows (several rows where the tags are few, so that small
tiles still fill the threads) through a loop over the positions; the transition matrix is
loaded once into a ``BLOCK_K x BLOCK_K`` register tile (``BLOCK_K``: the next power of two
>= K; padded entries are ``-inf``). Transitions are indexed ``[from, to]``. The mask is read
at every step, so a mask with gaps needs no compaction: a masked position keeps the state of
the previous kept one, and the chain runs over the kept positions in order. Arithmetic runs
in float32 for float32, float16 and bfloat16 emissions, in float64 for float64.

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

__all__ = ["backward", "blocks", "forward", "viterbi"]


@triton.jit
def _logsumexp(x, axis: tl.constexpr):
    """logsumexp of ``x`` along ``axis``; ``-inf`` (not NaN) where every entry is ``-inf``."""
    top = tl.max(x, axis=axis)
    shift = tl.where(top == float("-inf"), 0.0, top)
    total = tl.sum(tl.exp(x - tl.expand_dims(shift, axis)), axis=axis)
    return shift + tl.log(total)


@triton.jit
def _forward_kernel(
    em_ptr,  # (B, T, K) emissions
    tags_ptr,  # (B, T) int64 gold tags (GOLD)
    mask_ptr,  # (B, T) uint8, 1 where kept
    start_ptr,  # (K,)
    trans_ptr,  # (K, K) [from, to]
    end_ptr,  # (K,)
    out_ptr,  # (B,) scale * (gold - log Z) with GOLD, log Z without, best score (MAX_PLUS)
    aux_ptr,  # (2, B) log Z and the gold score (GOLD)
    alpha_ptr,  # (B, T, K) forward messages (STORE_ALPHA) or int32 back-pointers (MAX_PLUS)
    path_ptr,  # (B, T) int64 best paths, -1 where masked or no path (MAX_PLUS)
    acc_ptr,  # (K + 2, K) zeroed by program 0 (ZERO_ACC): the backward kernel's sums
    acc_size,  # (K + 2) * K
    B,
    T,
    K,
    scale,
    ZERO_ACC: tl.constexpr,
    GOLD: tl.constexpr,
    STORE_ALPHA: tl.constexpr,
    MAX_PLUS: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_ACC: tl.constexpr,  # a power of two >= acc_size
):
    """The forward recursion of ``BLOCK_B`` rows, reduced by logsumexp or (``MAX_PLUS``) max."""
    if ZERO_ACC:  # noqa: SIM102 (a compile-time branch)  the backward adds into it
        if tl.program_id(0) == 0:
            cells = tl.arange(0, BLOCK_ACC)
            tl.store(acc_ptr + cells, 0.0, mask=cells < acc_size)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    src = tl.arange(0, BLOCK_K)  # source tags i
    dst = tl.arange(0, BLOCK_K)  # target tags j
    col_ok = dst < K
    tile = (src[:, None] < K) & col_ok[None, :]
    trans = tl.load(trans_ptr + src[:, None] * K + dst[None, :], mask=tile, other=float("-inf"))
    start = tl.load(start_ptr + dst, mask=col_ok, other=float("-inf"))
    em_rows = em_ptr + rows[:, None] * T * K + dst[None, :]  # (BLOCK_B, BLOCK_K) pointers
    cell_ok = row_ok[:, None] & col_ok[None, :]
    alpha = tl.full((BLOCK_B, BLOCK_K), float("-inf"), trans.dtype)  # the compute dtype
    started = rows < 0  # (BLOCK_B,) False: no kept position yet
    gold = tl.zeros((BLOCK_B,), alpha.dtype)
    prev = tl.zeros((BLOCK_B,), tl.int64)
    for t in range(0, T):
        kept = tl.load(mask_ptr + rows * T + t, mask=row_ok, other=0) != 0
        e = tl.load(em_rows + t * K, mask=cell_ok, other=float("-inf")).to(alpha.dtype)
        cand = alpha[:, :, None] + trans[None, :, :]  # (BLOCK_B, from, to)
        if MAX_PLUS:
            best = tl.max(cand, axis=1)
            arg = tl.min(tl.where(cand == best[:, None, :], src[None, :, None], BLOCK_K), axis=1)
            arg = tl.where(started[:, None], arg, dst[None, :])
            back = alpha_ptr + rows[:, None] * T * K + t * K + dst[None, :]
            tl.store(back, arg, mask=cell_ok & kept[:, None])
        else:
            best = _logsumexp(cand, 1)
        step = tl.where(started[:, None], best, start[None, :]) + e
        alpha = tl.where(kept[:, None], step, alpha)
        if STORE_ALPHA:
            tl.store(alpha_ptr + rows[:, None] * T * K + t * K + dst[None, :], alpha, mask=cell_ok)
        if GOLD:
            on = row_ok & kept
            y = tl.load(tags_ptr + rows * T + t, mask=on, other=0)
            outside = (y < 0) | (y >= K)  # a NaN score, never an address outside the tensors
            y = tl.minimum(tl.maximum(y, 0), K - 1)
            ey = tl.load(em_ptr + rows * T * K + t * K + y, mask=on, other=0.0).to(alpha.dtype)
            ty = tl.load(trans_ptr + prev * K + y, mask=on & started, other=0.0)
            sy = tl.load(start_ptr + y, mask=on & ~started, other=0.0)
            step_gold = tl.where(outside, float("nan"), ey + tl.where(started, ty, sy))
            gold += tl.where(on, step_gold, 0.0)
            prev = tl.where(on, y, prev)
        started = started | kept
    end = tl.load(end_ptr + dst, mask=col_ok, other=float("-inf"))
    final = alpha + end[None, :]
    if MAX_PLUS:
        top = tl.max(final, axis=1)
        tag = tl.min(tl.where(final == top[:, None], dst[None, :], BLOCK_K), axis=1).to(tl.int64)
        found = started & (top > float("-inf"))
        tl.debug_barrier()  # the back-pointers written by every thread, visible to all
        for s in range(0, T):
            t = T - 1 - s
            kept = tl.load(mask_ptr + rows * T + t, mask=row_ok, other=0) != 0
            tl.store(path_ptr + rows * T + t, tl.where(kept & found, tag, -1), mask=row_ok)
            hop = alpha_ptr + rows * T * K + t * K + tag
            tag = tl.load(hop, mask=row_ok & kept & found, other=tag.to(tl.int32)).to(tl.int64)
        tl.store(out_ptr + rows, tl.where(started, top, 0.0), mask=row_ok)
    else:
        log_z = tl.where(started, _logsumexp(final, 1), 0.0)
        if GOLD:
            gold += tl.where(
                started, tl.load(end_ptr + prev, mask=row_ok & started, other=0.0), 0.0
            )
            tl.store(out_ptr + rows, scale * (gold - log_z), mask=row_ok)
            tl.store(aux_ptr + rows, log_z, mask=row_ok)
            tl.store(aux_ptr + B + rows, gold, mask=row_ok)
        else:
            tl.store(out_ptr + rows, log_z, mask=row_ok)


@triton.jit
def _backward_kernel(
    grad_ptr,  # (B,) incoming gradient of the forward output, at stride grad_stride
    em_ptr,  # (B, T, K) emissions
    tags_ptr,  # (B, T) int64 gold tags (GOLD)
    mask_ptr,  # (B, T) uint8
    trans_ptr,  # (K, K) [from, to]
    end_ptr,  # (K,)
    alpha_ptr,  # (B, T, K) the forward messages
    log_z_ptr,  # (B,)
    d_em_ptr,  # (B, T, K) out, every entry written
    d_par_ptr,  # d_start, d_trans (K rows), d_end: (K + 2, K) added into (ATOMIC), else
    # (programs, K + 2, K), each program's sums
    B,
    T,
    K,
    grad_stride,
    scale,
    GOLD: tl.constexpr,
    PAIRWISE: tl.constexpr,
    ATOMIC: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """The backward recursion of ``BLOCK_B`` rows: beta_last = end, beta_t[i] =
    logsumexp_j(trans[i, j] + em[t', j] + beta_t'[j]) (t' the next kept position); marginals
    ``exp(alpha + beta - log Z)``. With ``GOLD`` the gradients are those of
    ``scale * (gold - log Z)``: gold counts minus marginals."""
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    src = tl.arange(0, BLOCK_K)
    dst = tl.arange(0, BLOCK_K)
    col_ok = dst < K
    tile = (src[:, None] < K) & col_ok[None, :]
    trans = tl.load(trans_ptr + src[:, None] * K + dst[None, :], mask=tile, other=float("-inf"))
    log_z = tl.load(log_z_ptr + rows, mask=row_ok, other=float("-inf"))
    live = row_ok & (log_z > float("-inf"))
    log_z = tl.where(live, log_z, 0.0)
    g = tl.load(grad_ptr + rows * grad_stride, mask=live, other=0.0).to(log_z.dtype) * scale
    g = tl.where(live, g, 0.0)
    weight = g  # of the pairwise marginals: d(log Z) = marginals
    if GOLD:
        weight = -g  # d(gold - log Z) = gold counts - marginals
    cell_ok = row_ok[:, None] & col_ok[None, :]
    base = rows[:, None] * T * K + dst[None, :]
    end = tl.load(end_ptr + dst, mask=col_ok, other=float("-inf"))
    ahead = tl.zeros((BLOCK_B, BLOCK_K), log_z.dtype)  # em + beta at the next kept position
    begun = rows < 0  # a later kept position was seen
    after = tl.zeros((BLOCK_B,), tl.int64)  # the gold tag there
    first = tl.zeros((BLOCK_B, BLOCK_K), log_z.dtype)  # the gradient at the first kept one
    pair = tl.zeros((BLOCK_K, BLOCK_K), log_z.dtype)
    d_end = tl.zeros((BLOCK_K,), log_z.dtype)
    for s in range(0, T):
        t = T - 1 - s
        kept = tl.load(mask_ptr + rows * T + t, mask=row_ok, other=0) != 0
        on = kept & live
        alpha = tl.load(alpha_ptr + base + t * K, mask=cell_ok, other=float("-inf"))
        e = tl.load(em_ptr + base + t * K, mask=cell_ok, other=float("-inf")).to(log_z.dtype)
        use = (on & begun)[:, None, None] & tile[None, :, :]
        if PAIRWISE:
            joint = alpha[:, :, None] + trans[None, :, :] + ahead[:, None, :]
            joint = joint - log_z[:, None, None]
            pair += tl.sum(tl.where(use, tl.exp(joint), 0.0) * weight[:, None, None], 0)
        later = _logsumexp(trans[None, :, :] + ahead[:, None, :], 2)
        beta = tl.where(begun[:, None], later, end[None, :])
        gamma = tl.exp(alpha + beta - log_z[:, None])
        gamma = tl.where(on[:, None] & col_ok[None, :], gamma, 0.0)
        grad = gamma
        if GOLD:
            y = tl.load(tags_ptr + rows * T + t, mask=on, other=0)
            y = tl.minimum(tl.maximum(y, 0), K - 1)
            grad = tl.where(on[:, None] & (dst[None, :] == y[:, None]), 1.0, 0.0) - gamma
            if PAIRWISE:
                hit = (src[None, :, None] == y[:, None, None]) & (
                    dst[None, None, :] == after[:, None, None]
                )
                pair += tl.sum(tl.where(use & hit, 1.0, 0.0) * g[:, None, None], 0)
            after = tl.where(on, y, after)
        grad = grad * g[:, None]
        tl.store(d_em_ptr + base + t * K, grad, mask=cell_ok)
        d_end += tl.sum(tl.where((on & ~begun)[:, None], grad, 0.0), 0)
        first = tl.where(on[:, None], grad, first)
        ahead = tl.where(kept[:, None], beta + e, ahead)
        begun = begun | kept
    if ATOMIC:
        tl.atomic_add(d_par_ptr + dst, tl.sum(first, 0), mask=col_ok)
        if PAIRWISE:
            tl.atomic_add(d_par_ptr + K + src[:, None] * K + dst[None, :], pair, mask=tile)
        tl.atomic_add(d_par_ptr + (K + 1) * K + dst, d_end, mask=col_ok)
    else:
        out = d_par_ptr + pid.to(tl.int64) * (K + 2) * K
        tl.store(out + dst, tl.sum(first, 0), mask=col_ok)
        if PAIRWISE:
            tl.store(out + K + src[:, None] * K + dst[None, :], pair, mask=tile)
        tl.store(out + (K + 1) * K + dst, d_end, mask=col_ok)


def _pow2(n: int) -> int:
    """The next power of two >= n (plain Python: Triton's own is a constexpr function whose
    call costs microseconds on the host, every launch)."""
    return 1 << max(0, n - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def blocks(B: int, K: int) -> tuple[int, int, int]:
    """(BLOCK_B rows per program, BLOCK_K, num_warps) for ``B`` rows of ``K`` tags: the tile
    covers K; a program takes several rows while its (rows, K, K) step tile stays within
    4,096 entries and the rows still spread over about a hundred programs."""
    block_k = _pow2(max(K, 1))
    by_tile = max(1, 4096 // (block_k * block_k))
    by_rows = _pow2(max(1, -(-B // 128)))
    block_b = min(by_tile, by_rows)
    size = block_b * block_k * block_k
    return block_b, block_k, 1 if size <= 256 else 2 if size <= 1024 else 4


def _compute_dtype(em: Tensor) -> torch.dtype:
    return torch.float64 if em.dtype == torch.float64 else torch.float32


def forward(
    em: Tensor,
    tags: Tensor | None,
    mask: Tensor,
    start: Tensor,
    trans: Tensor,
    end: Tensor,
    scale: float,
    keep_alpha: bool,
    accumulator: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The forward pass: ``scale * (gold - log Z)`` with ``tags``, else log Z.

    Args:
        em: float contiguous (batch, seq_len, num_tags), unnormalised scores.
        tags: int64 contiguous (batch, seq_len) gold tags (read where the mask is on), or None.
        mask: uint8 contiguous (batch, seq_len), 1 at kept positions (gaps allowed).
        start, end: (num_tags,) and trans: (num_tags, num_tags) ``[from, to]`` contiguous
            scores in the compute dtype, ``-inf`` where forbidden.
        scale: the factor of the log-likelihood (-1 gives the negative log-likelihood).
        keep_alpha: also return the forward messages (for :func:`backward`).
        accumulator: also return a zeroed (num_tags + 2, num_tags) buffer, zeroed by this
            launch, that :func:`backward` adds the score gradients into (no launch of its own).

    Returns:
        ``out`` (batch,) in the compute dtype (0 for an empty row), ``aux`` (2, batch): log Z
        and the gold score ((0, 0) without ``tags``), ``alpha`` (batch, seq_len, num_tags) or
        (0, 0, 0) without ``keep_alpha``, and the accumulator ((0, 0) without).
    """
    B, T, K = em.shape
    dtype = _compute_dtype(em)
    out = em.new_empty(B, dtype=dtype)
    aux = em.new_empty((2, B) if tags is not None else (0, 0), dtype=dtype)
    alpha = em.new_empty((B, T, K) if keep_alpha else (0, 0, 0), dtype=dtype)
    acc = em.new_empty((K + 2, K) if accumulator else (0, 0), dtype=dtype)
    if B == 0:
        return out, aux, alpha, acc.zero_()
    block_b, block_k, warps = blocks(B, K)
    gold = tags is not None
    _forward_kernel[(_cdiv(B, block_b),)](
        em, tags if gold else mask, mask, start, trans, end, out, aux if gold else out,
        alpha if keep_alpha else out, out, acc if accumulator else out, (K + 2) * K,
        B, T, K, float(scale),
        ZERO_ACC=accumulator, GOLD=gold, STORE_ALPHA=keep_alpha, MAX_PLUS=False,
        BLOCK_B=block_b, BLOCK_K=block_k, BLOCK_ACC=_pow2((K + 2) * K),
        num_warps=warps,
    )  # fmt: skip
    return out, aux, alpha, acc


def backward(
    grad: Tensor,
    em: Tensor,
    tags: Tensor | None,
    mask: Tensor,
    trans: Tensor,
    end: Tensor,
    alpha: Tensor,
    log_z: Tensor,
    scale: float,
    pairwise: bool,
    acc: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Gradients of ``sum(grad * out)`` for :func:`forward`'s ``out``; the tag marginals are
    those of a unit gradient without ``tags``.

    Args:
        grad: (batch,) incoming gradient, any stride (an expanded scalar is read in place).
        em, tags, mask, trans, end, scale: as in :func:`forward`.
        alpha: (batch, seq_len, num_tags) and log_z (batch,): from :func:`forward`.
        pairwise: also sum the pairwise marginals (the transitions' gradient).
        acc: :func:`forward`'s zeroed accumulator: the score gradients are added into it
            (atomically: the order of the additions, so the last bits, can vary between
            runs), and it is returned; None: each program writes its own sums, added by one
            more launch (deterministic).

    Returns:
        ``d_em`` (batch, seq_len, num_tags), 0 where the mask is off, and ``d_par``
        (num_tags + 2, num_tags): the start scores' gradient, the transitions' (num_tags
        rows; 0 without ``pairwise``) and the end scores'. All 0 for a row with no allowed path.
    """
    B, T, K = em.shape
    dtype = alpha.dtype
    d_em = em.new_empty((B, T, K), dtype=dtype)
    if B == 0:
        return d_em, (acc if acc is not None else em.new_zeros((K + 2, K), dtype=dtype))
    block_b, block_k, warps = blocks(B, K)
    programs = _cdiv(B, block_b)
    atomic = acc is not None
    if acc is not None:
        d_par = acc
    else:  # every entry written by the kernel, but the transitions' without ``pairwise``
        d_par = (em.new_empty if pairwise else em.new_zeros)((programs, K + 2, K), dtype=dtype)
    _backward_kernel[(programs,)](
        grad, em, tags if tags is not None else mask, mask, trans, end, alpha, log_z, d_em,
        d_par, B, T, K, grad.stride(0) if grad.dim() else 0, float(scale),
        GOLD=tags is not None, PAIRWISE=pairwise, ATOMIC=atomic,
        BLOCK_B=block_b, BLOCK_K=block_k, num_warps=warps,
    )  # fmt: skip
    if atomic:
        return d_em, d_par
    return d_em, d_par[0] if programs == 1 else d_par.sum(0)


def viterbi(
    em: Tensor, mask: Tensor, start: Tensor, trans: Tensor, end: Tensor
) -> tuple[Tensor, Tensor]:
    """Best path of each row and its score.

    Args:
        em, mask, start, trans, end: as in :func:`forward`.

    Returns:
        ``paths`` int64 (batch, seq_len), -1 where the mask is off and in a row with no
        allowed path; ``scores`` (batch,) in the compute dtype (0 for an empty row, ``-inf``
        with no allowed path). Ties go to the smallest tag index, as ``torch.argmax``.
    """
    B, T, K = em.shape
    paths = torch.empty((B, T), dtype=torch.long, device=em.device)
    scores = em.new_empty(B, dtype=_compute_dtype(em))
    if B == 0 or T == 0:
        return paths, scores.zero_()
    back = torch.empty((B, T, K), dtype=torch.int32, device=em.device)  # read where written
    block_b, block_k, warps = blocks(B, K)
    _forward_kernel[(_cdiv(B, block_b),)](
        em, mask, mask, start, trans, end, scores, scores, back, paths, scores, 0, B, T, K, 1.0,
        ZERO_ACC=False, GOLD=False, STORE_ALPHA=False, MAX_PLUS=True,
        BLOCK_B=block_b, BLOCK_K=block_k, BLOCK_ACC=1, num_warps=warps,
    )  # fmt: skip
    return paths, scores
