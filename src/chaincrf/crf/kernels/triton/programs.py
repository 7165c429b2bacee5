"""Triton kernels for the linear-chain CRF in log space (launched by
:mod:`chaincrf.crf.kernels.triton.launch`).

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

import triton
import triton.language as tl

__all__: list[str] = []


@triton.jit
def _logsumexp(x, axis: tl.constexpr):
    """logsumexp of ``x`` along ``axis``; ``-inf`` (not NaN) where every entry is ``-inf``."""
    top = tl.max(x, axis=axis)
    shift = tl.where(top == float("-inf"), 0.0, top)
    total = tl.sum(tl.exp(x - tl.expand_dims(shift, axis)), axis=axis)
    return shift + tl.log(total)


@triton.jit
def _invalid(x):
    """1 (int32) where ``x`` is NaN or ``+inf`` (the values ``validate`` rejects), else 0."""
    return ((x != x) | (x == float("inf"))).to(tl.int32)


@triton.jit
def _forward_kernel(
    em_ptr,  # (B, T, K) emissions
    tags_ptr,  # (B, T) int64 gold tags (GOLD)
    mask_ptr,  # (B, T) uint8, 1 where kept
    start_ptr,  # (K,)
    trans_ptr,  # (K, K) [from, to]
    end_ptr,  # (K,)
    out_ptr,  # (B,) scale * (gold - log Z) with GOLD, log Z without, best score (MAX_PLUS)
    aux_ptr,  # (3, B) log Z, the gold score (GOLD), 1 (rows computed in log space; not
    # MAX_PLUS); with CHECK (4, B), the fourth row 1 where the row meets a value ``validate``
    # rejects
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
    CHECK: tl.constexpr = False,
):
    """The forward recursion of ``BLOCK_B`` rows, reduced by logsumexp or (``MAX_PLUS``) max;
    with ``CHECK`` (not with ``MAX_PLUS``), each row's flag of a NaN or ``+inf`` score, a NaN
    or ``+inf`` emission where the mask is on, or a tag outside [0, K) there (``aux[3]``)."""
    if ZERO_ACC:  # the backward adds into it
        _zero(acc_ptr, acc_size, BLOCK_ACC)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    _forward_rows(
        rows, em_ptr, tags_ptr, mask_ptr, start_ptr, trans_ptr, end_ptr, out_ptr, aux_ptr,
        alpha_ptr, path_ptr, B, T, K, scale, GOLD, STORE_ALPHA, MAX_PLUS, BLOCK_B, BLOCK_K,
        CHECK,
    )  # fmt: skip


@triton.jit
def _zero(acc_ptr, acc_size, BLOCK_ACC: tl.constexpr):
    """Program 0 zeroes ``acc_size`` entries (the backward's score sums)."""
    if tl.program_id(0) == 0:
        cells = tl.arange(0, BLOCK_ACC)
        tl.store(acc_ptr + cells, 0.0, mask=cells < acc_size)


@triton.jit
def _forward_rows(
    rows, em_ptr, tags_ptr, mask_ptr, start_ptr, trans_ptr, end_ptr, out_ptr, aux_ptr, alpha_ptr,
    path_ptr, B, T, K, scale,
    GOLD: tl.constexpr,
    STORE_ALPHA: tl.constexpr,
    MAX_PLUS: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_K: tl.constexpr,
    CHECK: tl.constexpr,
):  # fmt: skip
    """:func:`_forward_kernel`'s recursion for the ``BLOCK_B`` rows ``rows`` (also the
    exp-space kernel's log-space recomputation of one row)."""
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
    if CHECK:  # the scores once, the emissions and tags at each kept position below
        end = tl.load(end_ptr + dst, mask=col_ok, other=float("-inf"))
        bad_scores = tl.maximum(
            tl.max(tl.max(_invalid(trans), 1), 0),
            tl.maximum(tl.max(_invalid(start), 0), tl.max(_invalid(end), 0)),
        )
        bad = (rows * 0 + bad_scores) != 0  # (BLOCK_B,) a scalar's broadcast
    for t in range(0, T):
        kept = tl.load(mask_ptr + rows * T + t, mask=row_ok, other=0) != 0
        e = tl.load(em_rows + t * K, mask=cell_ok, other=float("-inf")).to(alpha.dtype)
        if CHECK:
            bad = bad | (kept & (tl.max(_invalid(e), 1) != 0))
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
            if CHECK:
                bad = bad | (on & outside)
        started = started | kept
    end = tl.load(end_ptr + dst, mask=col_ok, other=float("-inf"))
    if CHECK:
        tl.store(aux_ptr + 3 * B + rows, bad.to(tl.float32), mask=row_ok)
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
            tl.store(aux_ptr + B + rows, gold, mask=row_ok)
        else:
            tl.store(out_ptr + rows, log_z, mask=row_ok)
            tl.store(aux_ptr + B + rows, tl.zeros_like(log_z), mask=row_ok)
        # log Z, and every row flagged as computed in log space: a backward that takes the
        # exp-space kernel (the tuning changed in between) runs these rows in log space
        tl.store(aux_ptr + rows, log_z, mask=row_ok)
        tl.store(aux_ptr + 2 * B + rows, row_ok.to(tl.float32), mask=row_ok)


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
    """The backward recursion of ``BLOCK_B`` rows (:func:`_backward_rows`), its score sums
    added into ``d_par`` or written as the program's own."""
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    first, pair, d_end = _backward_rows(
        rows, rows * 0 + T, grad_ptr, em_ptr, tags_ptr, mask_ptr, trans_ptr, end_ptr, alpha_ptr,
        log_z_ptr, d_em_ptr, B, T, K, grad_stride, scale, GOLD, PAIRWISE, BLOCK_B, BLOCK_K,
    )  # fmt: skip
    _write_sums(d_par_ptr, pid, first, pair, d_end, K, PAIRWISE, ATOMIC, BLOCK_K)


@triton.jit
def _write_sums(
    d_par_ptr, pid, first, pair, d_end, K,
    PAIRWISE: tl.constexpr, ATOMIC: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """The score gradients (start: ``first``, transitions: ``pair``, end: ``d_end``) added into
    the (K + 2, K) sums (``ATOMIC``) or stored as program ``pid``'s own."""
    src = tl.arange(0, BLOCK_K)
    dst = tl.arange(0, BLOCK_K)
    col_ok = dst < K
    tile = (src[:, None] < K) & col_ok[None, :]
    if ATOMIC:  # relaxed: the sums are read by a later launch, nothing here orders on them
        # (Triton's default, acq_rel, adds fences to every addition)
        tl.atomic_add(d_par_ptr + dst, first, mask=col_ok, sem="relaxed")
        if PAIRWISE:
            pairs = d_par_ptr + K + src[:, None] * K + dst[None, :]
            tl.atomic_add(pairs, pair, mask=tile, sem="relaxed")
        tl.atomic_add(d_par_ptr + (K + 1) * K + dst, d_end, mask=col_ok, sem="relaxed")
    else:
        out = d_par_ptr + pid.to(tl.int64) * (K + 2) * K
        tl.store(out + dst, first, mask=col_ok)
        if PAIRWISE:
            tl.store(out + K + src[:, None] * K + dst[None, :], pair, mask=tile)
        tl.store(out + (K + 1) * K + dst, d_end, mask=col_ok)


@triton.jit
def _backward_rows(
    rows, upto, grad_ptr, em_ptr, tags_ptr, mask_ptr, trans_ptr, end_ptr, alpha_ptr, log_z_ptr,
    d_em_ptr, B, T, K, grad_stride, scale,
    GOLD: tl.constexpr, PAIRWISE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    """The backward recursion of ``BLOCK_B`` rows: beta_last = end, beta_t[i] =
    logsumexp_j(trans[i, j] + em[t', j] + beta_t'[j]) (t' the next kept position); marginals
    ``exp(alpha + beta - log Z)``. With ``GOLD`` the gradients are those of
    ``scale * (gold - log Z)``: gold counts minus marginals. Returns the rows' summed score
    gradients: start (K,), transitions (K, K), end (K,); the transitions' and the end's only
    from the positions before ``upto`` (BLOCK_B,) (T: all; the exp-space backward, which
    hands a row over at a position, has added those of the later ones)."""
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
        use = (on & begun & (t < upto))[:, None, None] & tile[None, :, :]
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
        d_end += tl.sum(tl.where((on & ~begun & (t < upto))[:, None], grad, 0.0), 0)
        first = tl.where(on[:, None], grad, first)
        ahead = tl.where(kept[:, None], beta + e, ahead)
        begun = begun | kept
    return tl.sum(first, 0), pair, d_end
