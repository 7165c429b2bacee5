"""The likelihood's passes for many tags: the scaled exp-space recursion (Rabiner's scaling),
whose step is a matrix product on the tensor cores (``tl.dot``).

The log-space step (:mod:`chaincrf.crf.kernels.triton.programs`) takes one exp per entry of a
(K, K) tile per row and step. Here a program runs 16 rows (or more) at once: with ``E =
exp(trans - c)`` (c the largest finite transition score, so 0 <= E <= 1, 0 where forbidden)
and each row's forward message kept as ``a`` (its largest entry 1) and a log scale,

    v = a @ E                      (BLOCK_B, K) x (K, K): the tensor cores
    x = em_t + log v               K logs per row, not K^2 exps
    a = exp(x - max x), log scale += c + max x

and the backward the same way with ``E``'s transpose; the pairwise marginals summed over the
rows are one more product per step, ``(a * weights)^T @ (exp(em + beta) scaled)``, times
``E`` once at the end. The forward messages are stored in log space (as the log-space
kernel's: either backward reads them).

Exactness: a product of scores in float32 underflows where the transition scores spread
wider than about 87 nats, and a tag whose weight falls far below its step's best is lost,
though a forced path (forbidden transitions) may later run through it alone. So a call whose
finite transition scores spread wider than ``tuning.TRITON.span_limit`` (60) is recomputed in
log space by the same launch, and so is a row where a reachable tag (one with an allowed move
from a tag of weight: a second, 0/1 product per step, exact in float16), or the product feeding
it, falls under ``tuning.TRITON.floor`` (1e-30, about 69 nats) of its step's largest: the
forward flags the whole row (``aux[2]``), the backward hands a row over to the log-space
recursion from the position where it happened down (its later positions' sums are exact and
kept). Rows whose emissions put reachable tags more than 69 nats below the best (say masks of
-1e4 on allowed tags) therefore run in log space: exact, at the log-space kernel's speed.
``tl.dot``'s precision is ``tuning.TRITON.dot_precision`` (``tf32x3`` by default: float32's
accuracy on the tensor cores); under Triton's interpreter the products are numpy float32
products.
"""

from __future__ import annotations

import triton
import triton.language as tl

from chaincrf.crf.kernels.triton.programs import (
    _backward_rows,
    _forward_rows,
    _invalid,
    _logsumexp,
    _write_sums,
    _zero,
)

__all__: list[str] = []


@triton.jit
def _scaled_transitions(trans_ptr, K, SPAN: tl.constexpr, BLOCK_K: tl.constexpr):
    """(log-space tile, E = exp(tile - c), c, wide): ``wide`` (int32) 1 when the finite
    scores spread wider than ``SPAN`` (then the exp-space recursion may underflow)."""
    src = tl.arange(0, BLOCK_K)
    dst = tl.arange(0, BLOCK_K)
    tile = (src[:, None] < K) & (dst[None, :] < K)
    trans = tl.load(trans_ptr + src[:, None] * K + dst[None, :], mask=tile, other=float("-inf"))
    finite = trans > float("-inf")
    top = tl.max(tl.max(tl.where(finite, trans, float("-inf")), 1), 0)
    low = tl.min(tl.min(tl.where(finite, trans, float("inf")), 1), 0)
    shift = tl.where(top > float("-inf"), top, 0.0)
    wide = (tl.where(top > float("-inf"), top - low, 0.0) > SPAN).to(tl.int32)
    return trans, tl.exp(trans - shift), shift, wide


@triton.jit
def _dot_forward_kernel(
    em_ptr, tags_ptr, mask_ptr, start_ptr, trans_ptr, end_ptr, out_ptr, aux_ptr, alpha_ptr,
    acc_ptr, acc_size, B, T, K, scale,
    ZERO_ACC: tl.constexpr,
    GOLD: tl.constexpr,
    STORE_ALPHA: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_ACC: tl.constexpr,
    SPAN: tl.constexpr,
    FLOOR: tl.constexpr,
    PRECISION: tl.constexpr,
    CHECK: tl.constexpr = False,
):  # fmt: skip
    """:func:`programs._forward_kernel` (without ``MAX_PLUS``) in exp space; arguments as
    there, ``aux`` (3, B): log Z, the gold score, 1 where the row was recomputed in log
    space; with ``CHECK`` (4, B), the fourth row 1 where the row meets a value ``validate``
    rejects."""
    if ZERO_ACC:
        _zero(acc_ptr, acc_size, BLOCK_ACC)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    dst = tl.arange(0, BLOCK_K)
    col_ok = dst < K
    cell_ok = row_ok[:, None] & col_ok[None, :]
    _trans, E, shift, wide = _scaled_transitions(trans_ptr, K, SPAN, BLOCK_K)
    start = tl.load(start_ptr + dst, mask=col_ok, other=float("-inf"))
    em_rows = em_ptr + rows[:, None] * T * K + dst[None, :]
    a = tl.zeros((BLOCK_B, BLOCK_K), tl.float32)  # the message over its scale: max entry 1
    log_c = tl.zeros((BLOCK_B,), tl.float32)  # the scale's log
    started = rows < 0
    flag = row_ok & ((rows * 0 + wide) != 0)  # (a scalar's broadcast, as the interpreter takes it)
    gold = tl.zeros((BLOCK_B,), tl.float32)
    prev = tl.zeros((BLOCK_B,), tl.int64)
    allowed = (_trans > float("-inf")).to(tl.float16)  # 1 where a transition is allowed
    if CHECK:  # as the log-space kernel's: the scores once, emissions and tags per position
        end = tl.load(end_ptr + dst, mask=col_ok, other=float("-inf"))
        bad_scores = tl.maximum(
            tl.max(tl.max(_invalid(_trans), 1), 0),
            tl.maximum(tl.max(_invalid(start), 0), tl.max(_invalid(end), 0)),
        )
        bad = (rows * 0 + bad_scores) != 0
    for t in range(0, T):
        kept = tl.load(mask_ptr + rows * T + t, mask=row_ok, other=0) != 0
        e = tl.load(em_rows + t * K, mask=cell_ok, other=float("-inf")).to(tl.float32)
        if CHECK:
            bad = bad | (kept & (tl.max(_invalid(e), 1) != 0))
        v = tl.dot(a, E, input_precision=PRECISION)  # (BLOCK_B, BLOCK_K)
        # reached: a tag with an allowed move from one of weight (0/1 products in float16,
        # summed in float32: exact)
        fed = tl.dot((a > 0.0).to(tl.float16), allowed) > 0.5
        # the first kept position starts from the start scores instead; the scale is the
        # largest score, so a tag far below the step's best emission keeps its weight
        x = tl.where(started[:, None], e + tl.log(v), e + start[None, :])
        top = tl.max(x, 1)
        ok = top > float("-inf")
        top = tl.where(ok, top, 0.0)
        u = tl.exp(x - top[:, None])
        # a reachable tag whose weight (or product) fell under the floor may carry the only
        # paths later: the row is recomputed in log space
        live = (e > float("-inf")) & tl.where(started[:, None], fed, x > float("-inf"))
        thin = live & ((u < FLOOR) | (started[:, None] & (v < FLOOR)))
        thin_row = tl.max(thin.to(tl.int32), 1) > 0
        flag = flag | (kept & row_ok & (~ok | thin_row))
        a = tl.where(kept[:, None], tl.where(ok[:, None], u, 0.0), a)
        grow = top + tl.where(started, shift, 0.0)
        log_c = tl.where(kept, log_c + grow, log_c)
        if STORE_ALPHA:
            alpha = tl.log(a) + log_c[:, None]
            tl.store(alpha_ptr + rows[:, None] * T * K + t * K + dst[None, :], alpha, mask=cell_ok)
        if GOLD:
            on = row_ok & kept
            y = tl.load(tags_ptr + rows * T + t, mask=on, other=0)
            outside = (y < 0) | (y >= K)
            y = tl.minimum(tl.maximum(y, 0), K - 1)
            ey = tl.load(em_ptr + rows * T * K + t * K + y, mask=on, other=0.0).to(tl.float32)
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
    final = tl.log(a) + end[None, :]
    log_z = tl.where(started, _logsumexp(final, 1) + log_c, 0.0)
    if GOLD:
        gold += tl.where(started, tl.load(end_ptr + prev, mask=row_ok & started, other=0.0), 0.0)
        tl.store(out_ptr + rows, scale * (gold - log_z), mask=row_ok)
        tl.store(aux_ptr + B + rows, gold, mask=row_ok)
    else:
        tl.store(out_ptr + rows, log_z, mask=row_ok)
        tl.store(aux_ptr + B + rows, tl.zeros_like(log_z), mask=row_ok)
    tl.store(aux_ptr + rows, log_z, mask=row_ok)
    tl.store(aux_ptr + 2 * B + rows, flag.to(tl.float32), mask=row_ok)
    if tl.max(flag.to(tl.int32), 0) > 0:  # rare: the flagged rows again, in log space
        tl.debug_barrier()
        for r in range(0, BLOCK_B):
            row = tl.program_id(0).to(tl.int64) * BLOCK_B + r
            hit = tl.load(aux_ptr + 2 * B + row, mask=row < B, other=0.0)
            if hit != 0.0:
                one = row + tl.arange(0, 1)
                _forward_rows(
                    one, em_ptr, tags_ptr, mask_ptr, start_ptr, trans_ptr, end_ptr, out_ptr,
                    aux_ptr, alpha_ptr, out_ptr, B, T, K, scale, GOLD, STORE_ALPHA, False, 1,
                    BLOCK_K, False,
                )  # fmt: skip


@triton.jit
def _dot_backward_kernel(
    grad_ptr, em_ptr, tags_ptr, mask_ptr, trans_ptr, end_ptr, alpha_ptr, log_z_ptr, flag_ptr,
    d_em_ptr, d_par_ptr, B, T, K, grad_stride, scale,
    GOLD: tl.constexpr,
    PAIRWISE: tl.constexpr,
    ATOMIC: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SPAN: tl.constexpr,
    FLOOR: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    """:func:`programs._backward_kernel` in exp space; ``flag`` (B,): the rows the forward
    recomputed in log space, whose backward runs in log space here too."""
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    dst = tl.arange(0, BLOCK_K)
    col_ok = dst < K
    cell_ok = row_ok[:, None] & col_ok[None, :]
    _trans, E, shift, _wide = _scaled_transitions(trans_ptr, K, SPAN, BLOCK_K)
    flag = tl.load(flag_ptr + rows, mask=row_ok, other=0.0) != 0.0
    log_z = tl.load(log_z_ptr + rows, mask=row_ok, other=float("-inf"))
    live = row_ok & (log_z > float("-inf"))
    log_z = tl.where(live, log_z, 0.0)
    g = tl.load(grad_ptr + rows * grad_stride, mask=live, other=0.0).to(tl.float32) * scale
    g = tl.where(live & ~flag, g, 0.0)
    weight = g
    if GOLD:
        weight = -g
    base = rows[:, None] * T * K + dst[None, :]
    end = tl.load(end_ptr + dst, mask=col_ok, other=float("-inf"))
    q = tl.zeros((BLOCK_B, BLOCK_K), tl.float32)  # exp(em + beta) at the next kept position,
    log_q = tl.zeros((BLOCK_B,), tl.float32)  # over its scale
    begun = rows < 0
    after = tl.zeros((BLOCK_B,), tl.int64)
    first = tl.zeros((BLOCK_B, BLOCK_K), tl.float32)
    pair = tl.zeros((BLOCK_K, BLOCK_K), tl.float32)  # sum of weighted a_i q_j (times E later)
    gold_pair = tl.zeros((BLOCK_K, BLOCK_K), tl.float32)
    d_end = tl.zeros((BLOCK_K,), tl.float32)
    allowed_t = tl.trans((_trans > float("-inf")).to(tl.float16))
    thin = rows < 0  # rows whose backward message lost weight: log space below ``upto``
    upto = tl.zeros((BLOCK_B,), tl.int64)
    for s in range(0, T):
        t = T - 1 - s
        kept = tl.load(mask_ptr + rows * T + t, mask=row_ok, other=0) != 0
        alpha = tl.load(alpha_ptr + base + t * K, mask=cell_ok, other=float("-inf"))
        e = tl.load(em_ptr + base + t * K, mask=cell_ok, other=float("-inf")).to(tl.float32)
        later = tl.dot(q, tl.trans(E), input_precision=PRECISION)  # sum_j E[i, j] q[j]
        # a tag with forward weight and an allowed move to a tag of weight whose sum fell under
        # the floor: from here down the row runs in log space (after the loop)
        feeds = tl.dot((q > 0.0).to(tl.float16), allowed_t) > 0.5
        lost = begun[:, None] & feeds & (alpha > float("-inf")) & (later < FLOOR)
        lost_row = kept & live & ~flag & ~thin & (tl.max(lost.to(tl.int32), 1) > 0)
        upto = tl.where(lost_row, t + 1, upto)
        thin = thin | lost_row
        on = kept & live & ~flag & ~thin
        beta = tl.where(begun[:, None], tl.log(later) + (log_q + shift)[:, None], end[None, :])
        gamma = tl.exp(alpha + beta - log_z[:, None])
        gamma = tl.where(on[:, None] & col_ok[None, :], gamma, 0.0)
        if PAIRWISE:
            use = on & begun
            # = gamma / later; where later is over the floor that is under e^69; the cap keeps
            # tags without a move to a tag of weight (their products are 0) finite
            lift = tl.minimum(alpha - log_z[:, None] + (log_q + shift)[:, None], 80.0)
            coef = tl.where(use[:, None] & feeds, tl.exp(lift) * weight[:, None], 0.0)
            pair += tl.dot(tl.trans(coef), q, input_precision=PRECISION)
        grad = gamma
        if GOLD:
            y = tl.load(tags_ptr + rows * T + t, mask=on, other=0)
            y = tl.minimum(tl.maximum(y, 0), K - 1)
            grad = tl.where(on[:, None] & (dst[None, :] == y[:, None]), 1.0, 0.0) - gamma
            if PAIRWISE:  # the gold pair (y here, the tag at the next kept position), g each
                here = tl.where(
                    (on & begun)[:, None] & (dst[None, :] == y[:, None]), g[:, None], 0.0
                )
                there = tl.where(dst[None, :] == after[:, None], 1.0, 0.0)
                gold_pair += tl.dot(tl.trans(here), there, input_precision=PRECISION)
            after = tl.where(on, y, after)
        grad = grad * g[:, None]
        tl.store(d_em_ptr + base + t * K, grad, mask=cell_ok & ~flag[:, None])
        d_end += tl.sum(tl.where((on & ~begun)[:, None], grad, 0.0), 0)
        first = tl.where(on[:, None], grad, first)
        x = e + beta
        top = tl.max(x, 1)
        top = tl.where(top > float("-inf"), top, 0.0)
        q_next = tl.exp(x - top[:, None])
        # a tag with forward weight whose backward weight fell under the floor
        sunk = (alpha > float("-inf")) & (x > float("-inf")) & (q_next < FLOOR)
        sunk_row = on & (tl.max(sunk.to(tl.int32), 1) > 0)
        upto = tl.where(sunk_row, t, upto)
        thin = thin | sunk_row
        q = tl.where(kept[:, None], q_next, q)
        log_q = tl.where(kept, top, log_q)
        begun = begun | kept
    first = tl.where(thin[:, None], 0.0, first)  # the log-space pass below gives theirs
    first_sum = tl.sum(first, 0)
    pair = pair * E + gold_pair
    redo = flag | thin
    if tl.max(redo.to(tl.int32), 0) > 0:  # rows recomputed in log space (all, or below upto)
        tl.debug_barrier()
        for r in range(0, BLOCK_B):
            pick = tl.arange(0, BLOCK_B) == r
            redo_r = tl.max(tl.where(pick & redo, 1, 0), 0)
            if redo_r != 0:
                row = pid.to(tl.int64) * BLOCK_B + r
                upto_r = tl.max(tl.where(pick, tl.where(flag, T, upto), 0), 0)
                one = row + tl.arange(0, 1)
                f1, p1, e1 = _backward_rows(
                    one, one * 0 + upto_r, grad_ptr, em_ptr, tags_ptr, mask_ptr, trans_ptr,
                    end_ptr, alpha_ptr, log_z_ptr, d_em_ptr, B, T, K, grad_stride, scale, GOLD,
                    PAIRWISE, 1, BLOCK_K,
                )  # fmt: skip
                first_sum += f1
                pair += p1
                d_end += e1
    _write_sums(d_par_ptr, pid, first_sum, pair, d_end, K, PAIRWISE, ATOMIC, BLOCK_K)
