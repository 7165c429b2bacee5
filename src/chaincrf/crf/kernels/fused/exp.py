"""Exp-space rows for the fused CPU kernels: the forward and backward recursions of one row as
multiply-adds only, the messages scaled to a maximum of 1 at every step.

The emissions come pre-exponentiated (``P[t, j] = exp(em[t, j] - M[t])``, ``M[t]`` the row
maximum, computed by torch's vectorised ``exp`` in the emissions' dtype; at a step with an
entry under float32's smallest normal those are recomputed in float64), the scores as
``exp(x - max x)``: a step has no transcendental but one ``log`` of its scale. A tag that can
be reached (forward: from a tag of weight; backward: a tag of forward weight that leads to one
of backward weight) whose scaled weight falls under ``_FLOOR`` might carry the only paths later
(a forced path), and a step whose scale falls below ``_EXP_TINY`` may have lost every term:
either way the row reports failure and the caller recomputes it exactly in log space
(:func:`chaincrf.crf.kernels.fused.loops._forward_row` / ``_backward_row``), so forbidden
(``-inf``) scores and huge emissions stay exact. Plain Python until
:func:`chaincrf.crf.kernels.fused.impl._load` compiles each function (``_weight`` and
``_lowest`` first: the rows call them). Importing this module imports only numpy.
"""

from __future__ import annotations

import math

import numpy as np

_NEG_INF = -math.inf
# A step whose largest scaled message is below this may have lost every term to underflow:
# the row is recomputed in log space. Kept terms are then exact to 1e-16 (relative), dropped
# ones are below 1e-308 / 1e-200 of the step's total.
_EXP_TINY = 1e-200
# A reachable tag's scaled weight under this (about 645 nats below the step's largest) may have
# lost digits, or every term, to underflow.
_FLOOR = 1e-280
# float32's smallest normal: an exp(em - M) under it, from float32 emissions, lost digits.
_P_MIN = 1.1754943508222875e-38


def _weight(P, em, M, t, j):
    """exp(em[t, j] - M[t]): P's entry, or in float64 where P's is under float32's normals."""
    p = P[t, j]
    if p < _P_MIN and em[t, j] > _NEG_INF:
        p = math.exp(np.float64(em[t, j]) - np.float64(M[t]))  # float64: numba keeps float32
    return p


def _lowest(x):
    """The smallest entry of a vector (inf if it is empty)."""
    low = math.inf
    for v in x:
        low = min(low, v)
    return low


def _exp_scores(x):
    """(exp(x - top), top): top the largest entry of x (0 when all are -inf); any shape."""
    flat = x.ravel()
    top = _NEG_INF
    for v in flat:
        top = max(top, v)
    if top == _NEG_INF:
        top = 0.0
    out = np.empty(flat.shape[0])
    for i in range(flat.shape[0]):
        out[i] = math.exp(flat[i] - top)
    return out.reshape(x.shape), top


def _exp_emissions_kernel(em, P, M):
    """P = exp(em - M), M (B, T) the maxima over tags (-inf where every tag is -inf, P then
    unused): the small batches' version of impl._exp_emissions (no torch dispatch)."""
    B, T, K = em.shape
    for b in range(B):
        for t in range(T):
            top = _NEG_INF
            for j in range(K):
                top = max(top, em[b, t, j])
            M[b, t] = top
            for j in range(K):
                P[b, t, j] = math.exp(em[b, t, j] - top)


def _forward_row_exp(P, M, em, n, Es, gs, E, g, Ee, ge, alpha, z):
    """log Z of one row of length n in exp space, and whether it could be computed.

    P (T, K) and M (T,): the row's emissions em (T, K) as exp(em - M[t]) and their maxima;
    Es, E, Ee and gs, g, ge: ``_exp_scores`` of start, transitions [from, to] and end. alpha (S, K), z (S,):
    the scaled messages of step t go to alpha[t % S] (their scale to z[t % S]); S = n keeps
    them all for the backward pass. Returns (log Z, True), (-inf, True) when some position
    allows no tag, (0, False) when a scale underflowed or a reachable tag's weight fell under
    the floor.
    """
    if n == 0:
        return 0.0, True
    K = Es.shape[0]
    S = alpha.shape[0]
    logs = 0.0
    for t in range(n):
        m = M[t]
        if m == _NEG_INF:
            return _NEG_INF, True
        cur = alpha[t % S]
        if t == 0:
            for j in range(K):
                cur[j] = Es[j]
            logs += gs
        else:
            prev = alpha[(t - 1) % S]
            for j in range(K):
                cur[j] = 0.0
            for i in range(K):
                p = prev[i]
                if p > 0.0:
                    for j in range(K):
                        cur[j] += p * E[i, j]
            logs += g
        top = 0.0
        low = math.inf
        if _lowest(P[t]) < _P_MIN:  # rare: a tag over 87 nats below the best, or at -inf
            for j in range(K):
                v = cur[j] * _weight(P, em, M, t, j)
                cur[j] = v
                top = max(top, v)
                low = min(low, v)
        else:
            for j in range(K):
                v = cur[j] * P[t, j]
                cur[j] = v
                top = max(top, v)
                low = min(low, v)
        if top < _EXP_TINY:
            return 0.0, False
        inv = 1.0 / top
        for j in range(K):
            cur[j] *= inv
        # an unreachable tag (fine), or a reachable one that lost its weight
        if low < _FLOOR * top:
            for j in range(K):
                if cur[j] < _FLOOR and em[t, j] > _NEG_INF:
                    if t == 0:
                        if Es[j] > 0.0:
                            return 0.0, False
                    else:
                        prev = alpha[(t - 1) % S]
                        for i in range(K):
                            if prev[i] > 0.0 and E[i, j] > 0.0:
                                return 0.0, False
        z[t % S] = top
        logs += m + math.log(top)
    last = alpha[(n - 1) % S]
    total = 0.0
    for j in range(K):
        total += last[j] * Ee[j]
    if total < _EXP_TINY:
        return 0.0, False
    return logs + ge + math.log(total), True


def _backward_row_exp(
    P, M, em, n, g, E, ET, Ee, alpha, z, d_em, d_start, d_end, d_trans, beta, u, w
):
    """g times the gradient of one row's log Z, after ``_forward_row_exp`` kept all n steps in
    alpha, z (P, M, em as there). Writes d_em (T, K) rows [0, n) and adds into d_start, d_end
    (K,) and, unless it is (0, 0), d_trans (K, K); beta, u, w (K,) scratch; ET = E.T
    contiguous. Returns False (having written partial sums: the caller must discard them) when
    a scale underflowed or a tag's backward weight fell under the floor.
    """
    K = Ee.shape[0]
    top = 0.0
    for j in range(K):
        top = max(top, Ee[j])
    for j in range(K):
        beta[j] = Ee[j] / top
    for t in range(n - 1, -1, -1):
        a = alpha[t]
        s = 0.0
        for j in range(K):
            s += a[j] * beta[j]
        if s < _EXP_TINY:
            return False
        scale = g / s
        for j in range(K):
            gm = a[j] * beta[j] * scale
            d_em[t, j] = gm
            if t == n - 1:
                d_end[j] += gm
            if t == 0:
                d_start[j] += gm
        if t == 0:
            break
        low = math.inf
        if _lowest(P[t]) < _P_MIN:  # rare, as in the forward
            for j in range(K):
                v = _weight(P, em, M, t, j) * beta[j]
                u[j] = v
                low = min(low, v)
        else:
            for j in range(K):
                v = P[t, j] * beta[j]
                u[j] = v
                low = min(low, v)
        if low < _FLOOR:  # a tag of forward weight whose backward weight vanished
            for j in range(K):
                if u[j] < _FLOOR and a[j] > 0.0 and beta[j] > 0.0 and em[t, j] > _NEG_INF:
                    return False
        if d_trans.shape[0] > 0:  # xi(i, j) = a[t-1, i] E[i, j] u[j] / (z[t] s)
            coef = g / (z[t] * s)
            for j in range(K):
                w[j] = u[j] * coef
            prev = alpha[t - 1]
            for i in range(K):
                p = prev[i]
                if p > 0.0:
                    for j in range(K):
                        d_trans[i, j] += p * E[i, j] * w[j]
        for i in range(K):  # beta[t-1, i] = sum_j E[i, j] u[j]
            beta[i] = 0.0
        for j in range(K):
            uj = u[j]
            if uj > 0.0:
                for i in range(K):
                    beta[i] += ET[j, i] * uj
        top = 0.0
        low = math.inf
        for i in range(K):
            top = max(top, beta[i])
            low = min(low, beta[i])
        if top < _EXP_TINY:
            return False
        inv = 1.0 / top
        for i in range(K):
            beta[i] *= inv
        # a tag of forward weight that leads on to weight, whose sum vanished
        if low < _FLOOR * top:
            prev = alpha[t - 1]
            for i in range(K):
                if beta[i] < _FLOOR and prev[i] > 0.0:
                    for j in range(K):
                        if u[j] > 0.0 and E[i, j] > 0.0:
                            return False
    return True
