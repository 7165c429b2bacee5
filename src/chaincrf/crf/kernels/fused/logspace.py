"""Exact log-space rows for the fused CPU kernels: the forward recursion and the
forward-backward gradient of one row, for the rows whose exp-space computation
(:mod:`chaincrf.crf.kernels.fused.exp`) underflowed, so that ``-inf`` scores and emissions up to
1e4 over 10,000 steps stay exact and never produce NaN.

A step of the recursion is one multiply-add per (from, to) pair in exp space, scaled by the
message's maximum and each column's maximum transition score; a column whose sum may have lost
terms to underflow is recomputed exactly in log space. Plain Python until
:func:`chaincrf.crf.kernels.fused.impl._load` compiles each function (and swaps the compiled
versions into this namespace: they call each other). Importing this module imports only numpy.
"""

from __future__ import annotations

import math

import numpy as np

_NEG_INF = -math.inf
# An exp-space column sum at least this large lost nothing to underflow that matters: every
# dropped product is below 2.3e-308, i.e. under 1e-57 of the sum. Smaller sums are recomputed
# in log space.
_TINY = 1e-250
# Pairwise marginals are p_i * E_ij * exp(lw_j) in exp space while lw_j <= this (a weight of at
# most 1e250, so a product lost to underflow changes a marginal by under 1e-57); else log space.
_LOG_HUGE = 575.0


def _col_normalised(scores):
    """exp(scores - top) (K, K) with top (K,) the column maxima; zeros for a column of -inf."""
    K = scores.shape[0]
    top = np.full(K, _NEG_INF)
    for i in range(K):
        for j in range(K):
            top[j] = max(top[j], scores[i, j])
    E = np.zeros((K, K))
    for i in range(K):
        for j in range(K):
            if top[j] > _NEG_INF:
                E[i, j] = math.exp(scores[i, j] - top[j])
    return E, top


def _lse_step(prev, E, top, scores, out):
    """out[j] = logsumexp_i(prev[i] + scores[i, j]); E, top = _col_normalised(scores)."""
    K = prev.shape[0]
    shift = _NEG_INF
    for i in range(K):
        shift = max(shift, prev[i])
    if shift == _NEG_INF:
        out[:] = _NEG_INF
        return
    out[:] = 0.0
    for i in range(K):  # exp space: sum_i exp(prev_i - shift) * E_ij
        p = math.exp(prev[i] - shift)
        if p > 0.0:
            for j in range(K):
                out[j] += p * E[i, j]
    for j in range(K):
        s = out[j]
        if s >= _TINY:
            out[j] = shift + top[j] + math.log(s)
            continue
        m = _NEG_INF  # terms may have underflowed: this column exactly, in log space
        for i in range(K):
            m = max(m, prev[i] + scores[i, j])
        if m == _NEG_INF:
            out[j] = _NEG_INF
            continue
        s = 0.0
        for i in range(K):
            s += math.exp(prev[i] + scores[i, j] - m)
        out[j] = m + math.log(s)


def _forward_row(em, n, start, scores, end, E, top, msg, shift):
    """The forward recursion over one row's first n positions, exactly in log space.

    Args:
        em: float (T, K) the row's emissions; n: its length; start, end: (K,); scores: (K, K)
            transitions [from, to]; E, top: ``_col_normalised(scores)``.
        msg: float64 (S, K): messages at step t go to msg[t % S] (S = n keeps them all, S = 2
            keeps a rolling pair), shifted so that their maximum is 0, the shift in
            shift[t % S].

    Returns:
        the log-partition: 0 for n = 0, -inf without an allowed path.
    """
    if n == 0:
        return 0.0
    K = start.shape[0]
    S = msg.shape[0]
    total = 0.0
    for t in range(n):
        cur = msg[t % S]
        if t == 0:
            for j in range(K):
                cur[j] = start[j] + em[0, j]
        else:
            _lse_step(msg[(t - 1) % S], E, top, scores, cur)
            for j in range(K):
                cur[j] += em[t, j]
        m = _NEG_INF
        for j in range(K):
            m = max(m, cur[j])
        if m == _NEG_INF:
            return _NEG_INF
        for j in range(K):
            cur[j] -= m
        shift[t % S] = m
        total += m
    last = msg[(n - 1) % S]
    best = _NEG_INF
    for j in range(K):  # the maximum first, then the log-sum-exp
        best = max(best, last[j] + end[j])
    if best == _NEG_INF:
        return _NEG_INF
    s = 0.0
    for j in range(K):
        s += math.exp(last[j] + end[j] - best)
    return total + best + math.log(s)


def _backward_row(em, n, g, start, trans, end, fwd, bwd, la, shift, d_em, d_start, d_end, d_trans):
    """Adds g times the gradient of one row's log-partition to d_start, d_end (K,) and, unless
    d_trans is empty (0, 0), d_trans (K, K); writes d_em (T, K) (0 past n). Returns log Z.

    fwd = (E, top) of trans, bwd = (trans.T, E, top of trans.T); la (T, K), shift (T,) scratch.
    Marginals are normalised per step: gamma_t = softmax(la_t + lb_t) with la, lb the shifted
    forward and backward messages, exact however large log Z grows. No allowed path: all 0.
    """
    E, top = fwd
    transT, Eb, topb = bwd
    K = start.shape[0]
    d_em[:] = 0.0
    log_z = _forward_row(em, n, start, trans, end, E, top, la, shift)
    if n == 0 or log_z == _NEG_INF:
        return log_z
    lb, gam, w, nxt = np.empty(K), np.empty(K), np.empty(K), np.empty(K)
    exact = np.zeros(K, np.bool_)
    m = _NEG_INF
    for j in range(K):
        m = max(m, end[j])
    for j in range(K):
        lb[j] = end[j] - m
    for t in range(n - 1, -1, -1):
        norm = _NEG_INF
        for j in range(K):
            norm = max(norm, la[t, j] + lb[j])
        if norm == _NEG_INF:  # unreachable with a finite log Z; never divide -inf by -inf
            return log_z
        s = 0.0
        for j in range(K):
            s += math.exp(la[t, j] + lb[j] - norm)
        norm += math.log(s)
        for j in range(K):
            gam[j] = math.exp(la[t, j] + lb[j] - norm)
            d_em[t, j] = g * gam[j]
            if t == n - 1:
                d_end[j] += g * gam[j]
            if t == 0:
                d_start[j] += g * gam[j]
        if t == 0:
            break
        if d_trans.shape[0] > 0:
            # xi(i, j) = exp(la[t-1, i] + trans[i, j] + em[t, j] + lb[j] - shift[t] - norm)
            for j in range(K):
                w[j] = 0.0
                exact[j] = False
                if gam[j] > 0.0:
                    lw = top[j] + em[t, j] + lb[j] - shift[t] - norm
                    if lw <= _LOG_HUGE:
                        w[j] = math.exp(lw)
                    else:
                        exact[j] = True
            for i in range(K):
                p = math.exp(la[t - 1, i])
                if p > 0.0:
                    for j in range(K):
                        d_trans[i, j] += p * E[i, j] * w[j] * g  # xi <= 1, then g
            for j in range(K):
                if exact[j]:
                    lw = em[t, j] + lb[j] - shift[t] - norm
                    for i in range(K):
                        d_trans[i, j] += g * math.exp(la[t - 1, i] + trans[i, j] + lw)
        for j in range(K):  # lb_{t-1}(i) = logsumexp_j(trans[i, j] + em[t, j] + lb_t(j))
            w[j] = em[t, j] + lb[j]
        _lse_step(w, Eb, topb, transT, nxt)
        m = _NEG_INF
        for j in range(K):
            m = max(m, nxt[j])
        for j in range(K):
            lb[j] = nxt[j] - m if m > _NEG_INF else _NEG_INF
    return log_z
