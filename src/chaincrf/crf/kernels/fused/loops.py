"""The numba kernels behind :mod:`chaincrf.crf.kernels.fused.custom_ops`: plain Python until it compiles
them. One batch row at a time (a caller may give each thread its own rows): the value checks
and lengths of each row, the gold score, then float64 exp-space rows (:mod:`chaincrf.crf.kernels.fused.exp`) with an exact
log-space recomputation (:mod:`chaincrf.crf.kernels.fused.logspace`) of any row that underflows;
the max-plus recursion for Viterbi, in the emissions' dtype. ``chaincrf.crf.kernels.fused.impl._load`` swaps each helper
for its compiled version in these modules' namespaces, then compiles the kernels: numba
resolves a kernel's global names when it compiles it. Importing this module imports only numpy.
"""

from __future__ import annotations

import math

import numpy as np

from chaincrf.crf.kernels.fused.exp import (
    _backward_row_exp,
    _exp_scores,
    _forward_row_exp,
)
from chaincrf.crf.kernels.fused.logspace import (
    _backward_row,
    _col_normalised,
    _forward_row,
)

_NEG_INF = -math.inf
# The backward kernel sums parameter gradients over at most this many chunks of rows, each
# with its own buffers, in a fixed order.
_MAX_CHUNKS = 64
# Widest spread of finite start, transition or end scores the exp-space rows take (exp(-600)
# is far above float64's smallest normal); wider: every row in log space.
_SPAN = 600.0

# The helpers ``_load`` compiles first (the log-space and exp-space ones are imported above).
_HELPERS = (
    "_check_lengths",
    "_check_tags",
    "_col_normalised",
    "_lse_step",
    "_forward_row",
    "_backward_row",
    "_gold_row",
    "_not_finite",
    "_row_prelude",
    "_param_problem",
    "_viterbi_row",
    "_exp_scores",
    "_weight",
    "_lowest",
    "_forward_row_exp",
    "_backward_row_exp",
    "_spread",
    "_all_exp_scores",
    "_log_z_row",
)
_KERNELS = (
    "_exp_emissions_kernel",
    "_ragged_kernel",
    "_log_partition_kernel",
    "_log_likelihood_kernel",
    "_forward_backward_kernel",
    "_viterbi_kernel",
)


# ------------------------------------------------------------------------------ kernels (numba)


def _check_lengths(lengths: np.ndarray, T: int) -> None:
    for b in range(lengths.shape[0]):
        if lengths[b] < 0 or lengths[b] > T:
            raise ValueError(
                "lengths must lie in [0, seq_len = "
                + str(T)
                + "]; got "
                + str(lengths[b])
                + " at batch row "
                + str(b)
            )


def _check_tags(tags, lengths, K):
    """Memory safety: every tag read (inside its row's length) indexes a tag."""
    for b in range(tags.shape[0]):
        for t in range(lengths[b]):
            if tags[b, t] < 0 or tags[b, t] >= K:
                raise ValueError(
                    "tags must lie in [0, num_tags = "
                    + str(K)
                    + ") inside each row's length; got "
                    + str(tags[b, t])
                    + " at batch row "
                    + str(b)
                    + ", position "
                    + str(t)
                )


def _not_finite(x):
    """Whether x (any shape) holds NaN or +inf."""
    for v in x.ravel():  # noqa: SIM110 (numba compiles loops, not generators)
        if v != v or v == np.inf:
            return True
    return False


def _row_prelude(mask, em, tags, b, validate, problems, lengths):
    """Row b's length (its leading on positions of mask) into lengths[b]; problems[b] = (first
    position where the mask switches back on, first position < length whose emissions hold NaN
    or +inf, first such position whose tag lies outside [0, K)), -1 for none. Emissions are
    checked with validate only; gaps and tags (unless tags is (0, 0)) always: the layer
    compacts a row with gaps, and a kernel never indexes with unchecked tags. Returns whether
    the row may be computed."""
    T = mask.shape[1]
    K = em.shape[2]
    n = 0
    while n < T and mask[b, n]:
        n += 1
    lengths[b] = n
    for i in range(3):
        problems[b, i] = -1
    ok = True
    for t in range(n, T):  # gaps: always (the layer compacts such rows; a few compares)
        if mask[b, t]:
            problems[b, 0] = t
            ok = False
            break
    if validate:
        for t in range(n):  # indexed, not sliced: a view per position costs an allocation
            bad = False
            for j in range(K):
                v = em[b, t, j]
                bad = bad or v != v or v == np.inf
            if bad:
                problems[b, 1] = t
                ok = False
                break
    if tags.shape[0] > 0:
        for t in range(n):
            if tags[b, t] < 0 or tags[b, t] >= K:
                problems[b, 2] = t
                ok = False
                break
    return ok


def _param_problem(start, trans, end):
    """Which score tensor holds NaN or +inf: 0 none, 1 start, 2 end, 3 transitions."""
    if _not_finite(start):
        return 1
    if _not_finite(end):
        return 2
    if _not_finite(trans):
        return 3
    return 0


def _ragged_kernel(mask, em, tags, start, trans, end, validate, lengths, problems):
    """Each row's length and problems (see _row_prelude); returns the score tensor holding NaN
    or +inf (0 none, 1 start, 2 end, 3 transitions; with validate only), plus 4 if any row has
    a problem."""
    bad_rows = 0
    for b in range(mask.shape[0]):
        if not _row_prelude(mask, em, tags, b, validate, problems, lengths):
            bad_rows += 1
    code = _param_problem(start, trans, end) if validate else 0
    return code + (4 if bad_rows > 0 else 0)


def _gold_row(em, tags, n, start, trans, end):
    """Score of the path tags[:n] through one row (0 for n = 0), float64."""
    if n == 0:
        return 0.0
    prev = tags[0]
    score = start[prev] + em[0, prev]
    for t in range(1, n):
        tag = tags[t]
        score += trans[prev, tag] + em[t, tag]
        prev = tag
    return score + end[prev]


def _log_z_row(em, P, M, n, start, trans, end, E, top, exp_scores):
    """log Z of one row: exp space, or exactly in log space where that underflows."""
    K = start.shape[0]
    Es, gs, Et, gt, Ee, ge, narrow = exp_scores
    msg, shift = np.empty((2, K)), np.empty(2)
    ok = False
    if narrow:
        log_z, ok = _forward_row_exp(P, M, em, n, Es, gs, Et, gt, Ee, ge, msg, shift)
    if not ok:
        log_z = _forward_row(em, n, start, trans, end, E, top, msg, shift)
    return log_z


def _all_exp_scores(start, trans, end):
    """The scores' ``_exp_scores``, and whether the exp-space rows may run: each score
    tensor's finite entries spread over at most ``_SPAN`` nats (wider, an allowed move's
    exp underflows to 0, and the rows would read it as forbidden)."""
    Es, gs = _exp_scores(start)
    Et, gt = _exp_scores(trans)
    Ee, ge = _exp_scores(end)
    narrow = _spread(start) <= _SPAN and _spread(trans) <= _SPAN and _spread(end) <= _SPAN
    return Es, gs, Et, gt, Ee, ge, narrow


def _spread(x):
    """The largest finite entry minus the smallest (0 if none is finite); any shape."""
    top, low = _NEG_INF, math.inf
    for v in x.ravel():
        if v > _NEG_INF and v < math.inf:
            top = max(top, v)
            low = min(low, v)
    return top - low if top > _NEG_INF else 0.0


def _log_likelihood_kernel(
    em, P, M, tags, mask, start, trans, end, validate, llh, gold, lengths, problems
):
    """llh[b] = gold[b] - log Z[b], gold[b] the score of tags[b] (float64), for each row that
    passes its checks (see _ragged_kernel for the checks and the code returned). P, M: the
    emissions as exp(em - M) and their maxima over tags (see cpu_exp)."""
    B = em.shape[0]
    E, top = _col_normalised(trans)
    exp_scores = _all_exp_scores(start, trans, end)
    bad_rows = 0
    for b in range(B):
        if not _row_prelude(mask, em, tags, b, validate, problems, lengths):
            bad_rows += 1
            continue
        n = lengths[b]
        log_z = _log_z_row(em[b], P[b], M[b], n, start, trans, end, E, top, exp_scores)
        gold[b] = _gold_row(em[b], tags[b], n, start, trans, end)
        llh[b] = gold[b] - log_z
    code = _param_problem(start, trans, end) if validate else 0
    return code + (4 if bad_rows > 0 else 0)


def _log_partition_kernel(em, P, M, mask, start, trans, end, validate, log_z, lengths, problems):
    """log_z[b] = log Z of row b, for each row that passes its checks (see _ragged_kernel)."""
    B = em.shape[0]
    E, top = _col_normalised(trans)
    exp_scores = _all_exp_scores(start, trans, end)
    no_tags = np.zeros((0, 0), np.int64)
    bad_rows = 0
    for b in range(B):
        if not _row_prelude(mask, em, no_tags, b, validate, problems, lengths):
            bad_rows += 1
            continue
        log_z[b] = _log_z_row(em[b], P[b], M[b], lengths[b], start, trans, end, E, top, exp_scores)
    code = _param_problem(start, trans, end) if validate else 0
    return code + (4 if bad_rows > 0 else 0)


def _forward_backward_kernel(
    em, P, M, tags, lengths, grad, start, trans, end, d_em, part_start, part_end, part_trans,
    log_z_out, gold_out, c0, c1,
):  # fmt: skip
    """Chunks [c0, c1) of the C = part_start.shape[0] chunks: chunk c adds its rows' (rows
    [c B / C, (c + 1) B / C)) gradients into part_start[c], part_end[c] (K,) and
    part_trans[c] (K, K); part_trans (C, 0, 0): none. Callers on several threads give each
    its own range of chunks: the sums do not depend on the split.

    tags (0, 0): the gradient of grad . log Z. tags (B, T): of grad . (gold - log Z), the
    log-likelihood of the paths tags[b, :lengths[b]]. Also writes each row's log Z into
    log_z_out and, with tags, its gold score into gold_out (float64 (B,)).
    """
    B, T, K = em.shape
    _check_lengths(lengths, T)
    if tags.shape[0] > 0:
        _check_tags(tags, lengths, K)
    fwd = _col_normalised(trans)
    transT = np.ascontiguousarray(trans.T)
    Eb, topb = _col_normalised(transT)
    bwd = (transT, Eb, topb)
    Es, gs, Et, gt, Ee, ge, narrow = _all_exp_scores(start, trans, end)
    EtT = np.ascontiguousarray(Et.T)
    C = part_start.shape[0]
    pairwise = part_trans.shape[1] > 0
    for c in range(c0, c1):
        la, shift = np.empty((T, K)), np.empty(T)
        row_start, row_end = np.empty(K), np.empty(K)
        row_trans = np.empty((K, K) if pairwise else (0, 0))
        beta, u, w = np.empty(K), np.empty(K), np.empty(K)
        for b in range(c * B // C, (c + 1) * B // C):
            n, g = lengths[b], grad[b]
            sign_g = -g if tags.shape[0] > 0 else g
            d_row = d_em[b]
            d_row[:] = 0.0
            log_z, ok = 0.0, False
            if narrow:
                log_z, ok = _forward_row_exp(
                    P[b], M[b], em[b], n, Es, gs, Et, gt, Ee, ge, la, shift
                )
            if ok and n > 0 and log_z > _NEG_INF:
                row_start[:] = 0.0
                row_end[:] = 0.0
                row_trans[:] = 0.0
                ok = _backward_row_exp(
                    P[b], M[b], em[b], n, sign_g, Et, EtT, Ee, la, shift, d_row, row_start, row_end,
                    row_trans, beta, u, w,
                )  # fmt: skip
                if ok:
                    for j in range(K):
                        part_start[c, j] += row_start[j]
                        part_end[c, j] += row_end[j]
                    if pairwise:
                        for i in range(K):
                            for j in range(K):
                                part_trans[c, i, j] += row_trans[i, j]
            if not ok:
                log_z = _backward_row(
                    em[b],
                    n,
                    sign_g,
                    start,
                    trans,
                    end,
                    fwd,
                    bwd,
                    la,
                    shift,
                    d_em[b],
                    part_start[c],
                    part_end[c],
                    part_trans[c],
                )
            log_z_out[b] = log_z
            if tags.shape[0] == 0:
                continue
            gold_out[b] = _gold_row(em[b], tags[b], n, start, trans, end)
            if n == 0:
                continue
            row, d_row = tags[b], d_em[b]
            part_start[c, row[0]] += g
            part_end[c, row[n - 1]] += g
            for t in range(n):
                d_row[t, row[t]] += g
                if t > 0 and part_trans.shape[1] > 0:
                    part_trans[c, row[t - 1], row[t]] += g


def _viterbi_row(em, n, start, trans, end, a, best):
    """The max-plus forward recursion of one row in the messages' dtype (a's: the emissions'),
    the eager kernel's arithmetic step for step (max is exact, each sum one rounding: the same
    bits for the same inputs), keeping every step's messages a[t] (T, K) for the back-trace.
    The step is an ``fmax`` per (from, to) pair, which vectorises (no arg-max tracked).
    Returns (best score, best last tag): (0, -1) for n = 0, lowest tag on ties."""
    if n == 0:
        return 0.0, -1
    K = start.shape[0]
    for j in range(K):
        a[0, j] = start[j] + em[0, j]
    for t in range(1, n):
        prev = a[t - 1]
        for j in range(K):
            best[j] = _NEG_INF
        # best: its own buffer (no aliasing with a), so the loops vectorise; from K = 16 two
        # source tags per pass (max is exact in any order: the same bits; 1.6x at K = 50,
        # slower at K = 9)
        i = 0
        if K >= 16:
            while i + 1 < K:
                p0, r0, p1, r1 = prev[i], trans[i], prev[i + 1], trans[i + 1]
                for j in range(K):
                    best[j] = np.fmax(best[j], np.fmax(p0 + r0[j], p1 + r1[j]))
                i += 2
        while i < K:
            p, row = prev[i], trans[i]
            for j in range(K):
                best[j] = np.fmax(best[j], p + row[j])
            i += 1
        for j in range(K):
            a[t, j] = best[j] + em[t, j]
    best, tag = _NEG_INF, 0
    for j in range(K):
        v = a[n - 1, j] + end[j]
        if v > best:
            best, tag = v, j
    return best, tag


def _viterbi_kernel(em, mask, start, trans, end, validate, paths, scores, lengths, problems):
    """Best path of each row that passes its checks (see _ragged_kernel for the checks and the
    code returned): paths[b] its tags (-1 past the length and where no path is allowed),
    scores[b] its score. The back-trace recomputes the arg-max of the chosen tag only, from the
    kept messages: the lowest previous tag that attains it, as the eager kernel."""
    B, T, K = em.shape
    no_tags = np.zeros((0, 0), np.int64)
    # messages in the emissions' dtype, as the eager kernel's (float32 rows: twice the lanes)
    a, scratch = np.empty((T, K), em.dtype), np.empty(K, em.dtype)
    trans_em = trans.astype(em.dtype)
    bad_rows = 0
    for b in range(B):
        if not _row_prelude(mask, em, no_tags, b, validate, problems, lengths):
            bad_rows += 1
            continue
        n = lengths[b]
        best, tag = _viterbi_row(em[b], n, start, trans_em, end, a, scratch)
        scores[b] = best
        paths[b, :] = -1
        if best == _NEG_INF:  # n > 0 here: an empty row scores 0 and has tag -1
            continue
        for t in range(n - 1, -1, -1):
            paths[b, t] = tag
            if t > 0:
                top, prev = _NEG_INF, 0
                for i in range(K):
                    v = a[t - 1, i] + trans_em[i, tag]
                    if v > top:
                        top, prev = v, i
                tag = prev
    code = _param_problem(start, trans, end) if validate else 0
    return code + (4 if bad_rows > 0 else 0)
