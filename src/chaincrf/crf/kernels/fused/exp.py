"""Exp-space rows for the fused CPU kernels: the forward and backward recursions of one row as
multiply-adds only, the messages scaled to a maximum of 1 at every step.

The emissions come pre-exponentiated (``P[t, j] = exp(em[t, j] - M[t])``, ``M[t]`` the row
maximum, computed by torch's vectorised ``exp``), the scores as ``exp(x - max x)``: a step has
no transcendental but one ``log`` of its scale. Terms smaller than ~1e-308 of a step's largest
vanish; when a step's scale falls below ``_EXP_TINY`` (nothing representable may be left) the
row reports failure and the caller recomputes it exactly in log space
(:func:`chaincrf.crf.kernels.fused.loops._forward_row` / ``_backward_row``), so forbidden
(``-inf``) scores and huge emissions stay exact. Plain Python until
:func:`chaincrf.crf.kernels.fused.custom_ops._load` compiles each function (they call none of each
other). Importing this module imports only numpy.
"""

from __future__ import annotations

import math

import numpy as np

_NEG_INF = -math.inf
# A step whose largest scaled message is below this may have lost every term to underflow:
# the row is recomputed in log space. Kept terms are then exact to 1e-16 (relative), dropped
# ones are below 1e-308 / 1e-200 of the step's total.
_EXP_TINY = 1e-200


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


def _forward_row_exp(P, M, n, Es, gs, E, g, Ee, ge, alpha, z):
    """log Z of one row of length n in exp space, and whether it could be computed.

    P (T, K) and M (T,): the row's emissions as exp(em - M[t]) and their maxima; Es, E, Ee and
    gs, g, ge: ``_exp_scores`` of start, transitions [from, to] and end. alpha (S, K), z (S,):
    the scaled messages of step t go to alpha[t % S] (their scale to z[t % S]); S = n keeps
    them all for the backward pass. Returns (log Z, True), (-inf, True) when some position
    allows no tag, (0, False) when a scale underflowed.
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
        for j in range(K):
            v = cur[j] * P[t, j]
            cur[j] = v
            top = max(top, v)
        if top < _EXP_TINY:
            return 0.0, False
        inv = 1.0 / top
        for j in range(K):
            cur[j] *= inv
        z[t % S] = top
        logs += m + math.log(top)
    last = alpha[(n - 1) % S]
    total = 0.0
    for j in range(K):
        total += last[j] * Ee[j]
    if total < _EXP_TINY:
        return 0.0, False
    return logs + ge + math.log(total), True


def _backward_row_exp(P, n, g, E, ET, Ee, alpha, z, d_em, d_start, d_end, d_trans, beta, u, w):
    """g times the gradient of one row's log Z, after ``_forward_row_exp`` kept all n steps in
    alpha, z. Writes d_em (T, K) rows [0, n) and adds into d_start, d_end (K,) and, unless it
    is (0, 0), d_trans (K, K); beta, u, w (K,) scratch; ET = E.T contiguous. Returns False
    (having written partial sums: the caller must discard them) when a scale underflowed.
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
        for j in range(K):
            u[j] = P[t, j] * beta[j]
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
        for i in range(K):
            top = max(top, beta[i])
        if top < _EXP_TINY:
            return False
        inv = 1.0 / top
        for i in range(K):
            beta[i] *= inv
    return True
