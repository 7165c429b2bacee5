"""Fused CPU kernels for the linear-chain CRF, compiled with numba, exposed as torch custom ops.

Each kernel runs one batch row at a time (``numba.prange`` over rows, or over fixed chunks of
rows where parameter gradients are summed), in log space with float64 accumulation, whatever
the emissions' dtype (float32 or float64). Inputs are batch-first; a row ``b`` covers positions
``[0, lengths[b])`` and positions past its length are never read. Transitions are indexed
``[from, to]``; forbidden moves are ``-inf`` scores (see ``chaincrf.confidence.crf_scores``).

* ``chaincrf::log_partition``: the forward recursion, O(K) scratch per row.
* ``chaincrf::log_partition_backward``: recomputes the forward messages of a row (O(T·K)) and
  runs the backward messages over them (O(K)); writes ``grad`` times the unary marginals and
  sums ``grad`` times the pairwise marginals into one (K, K) buffer per chunk of rows, added in
  a fixed order afterwards (no data races, results independent of the thread count).
* ``chaincrf::viterbi``: the same forward recursion in the max-plus semiring, with O(T·K)
  int32 back-pointers per row. Ties go to the lowest tag index at every argmax, as the eager
  ``CRF.viterbi`` (sequential path) does.
* ``chaincrf::marginals``: the backward kernel with unit gradient and no pairwise sums.

A step of the log-semiring recursion is one multiply-add per (from, to) pair in exp space,
scaled by the message's maximum and each column's maximum transition score; a column whose
sum may have lost terms to underflow is recomputed exactly in log space, so ``-inf`` scores and
emissions up to 1e4 in magnitude over 10,000 steps stay exact and never produce NaN.

This module imports only torch (and the numpy that torch brings); numba is imported, and the
kernels compiled (``cache=True``: once per machine), on the first call.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import torch
from torch import Tensor

__all__ = ["available", "log_partition", "marginals", "viterbi"]

_NEG_INF = -math.inf
# An exp-space column sum at least this large lost nothing to underflow that matters: every
# dropped product is below 2.3e-308, i.e. under 1e-57 of the sum. Smaller sums are recomputed
# in log space.
_TINY = 1e-250
# Pairwise marginals are p_i * E_ij * exp(lw_j) in exp space while lw_j <= this (a weight of at
# most 1e250, so a product lost to underflow changes a marginal by under 1e-57); else log space.
_LOG_HUGE = 575.0
# The backward kernel sums parameter gradients over at most this many chunks of rows, each
# with its own buffers, in a fixed order.
_MAX_CHUNKS = 64
# Work (sweeps * B * T * K * (K + 16), about the multiply-adds plus transcendentals of a row step)
# below which a call runs on one thread: waking numba's second thread costs 50-100 µs, more than
# it saves below this (1 vs 2 threads over B 2-32, T 32-128, K 5-50, numba 0.68 omp layer,
# OMP_WAIT_POLICY=PASSIVE, 2-core shared CPU at load ~1, 2026-11-29).
_PARALLEL_MIN_WORK = 1 << 19

# The kernels below are plain Python until ``_load`` compiles them: numba resolves a kernel's
# global names when it compiles it, so ``_load`` first swaps ``prange`` for ``numba.prange``
# and each helper for its compiled version in this module's namespace.
prange = range
_HELPERS = (
    "_check_lengths",
    "_col_normalised",
    "_lse_step",
    "_max_step",
    "_forward_row",
    "_backward_row",
)
_KERNELS = ("_log_partition_kernel", "_forward_backward_kernel", "_viterbi_kernel")


# ------------------------------------------------------------------------------ kernels (numba)


def _check_lengths(lengths, T):
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


def _max_step(prev, scores, out, arg):
    """out[j] = max_i(prev[i] + scores[i, j]), arg[j] its lowest maximising i (0 if all -inf)."""
    out[:] = _NEG_INF
    arg[:] = 0
    for i in range(prev.shape[0]):
        p = prev[i]
        if p > _NEG_INF:
            for j in range(out.shape[0]):  # selects, not branches: the loop vectorises
                v = p + scores[i, j]
                better = v > out[j]
                out[j] = v if better else out[j]
                arg[j] = i if better else arg[j]


def _forward_row(em, n, start, scores, end, E, top, msg, shift, back):
    """The forward recursion over one row's first n positions, log or max-plus semiring.

    Args:
        em: float (T, K) the row's emissions; n: its length; start, end: float64 (K,);
            scores: float64 (K, K) transitions [from, to]; E, top: ``_col_normalised(scores)``
            (log semiring only).
        msg: float64 (S, K): messages at step t go to msg[t % S] (S = n keeps them all, S = 2
            keeps a rolling pair). Log semiring: shifted so that their maximum is 0, the shift
            in shift[t % S]; max-plus: unshifted (the eager CRF's arithmetic), shift 0.
        back: None for the log semiring (numba then drops the max-plus branch at compile
            time); for max-plus, int32 (n, K) back-pointers to fill.

    Returns:
        (total, last): the log-partition or best score (0 for n = 0, -inf without an allowed
        path) and, for max-plus, the best last tag (lowest on ties; -1 for n = 0).
    """
    if n == 0:
        return 0.0, -1
    K = start.shape[0]
    S = msg.shape[0]
    total = 0.0
    for t in range(n):
        cur = msg[t % S]
        if t == 0:
            for j in range(K):
                cur[j] = start[j] + em[0, j]
        else:
            if back is None:
                _lse_step(msg[(t - 1) % S], E, top, scores, cur)
            else:
                _max_step(msg[(t - 1) % S], scores, cur, back[t])
            for j in range(K):
                cur[j] += em[t, j]
        m = 0.0
        if back is None:
            m = _NEG_INF
            for j in range(K):
                m = max(m, cur[j])
            if m == _NEG_INF:
                return _NEG_INF, 0
            for j in range(K):
                cur[j] -= m
        shift[t % S] = m
        total += m
    last = msg[(n - 1) % S]
    best, tag = _NEG_INF, 0
    for j in range(K):  # log semiring: the maximum first, then the log-sum-exp below
        v = last[j] + end[j]
        if v > best:
            best, tag = v, j
    if back is not None or best == _NEG_INF:
        return total + best, tag
    s = 0.0
    for j in range(K):
        s += math.exp(last[j] + end[j] - best)
    return total + best + math.log(s), tag


def _backward_row(em, n, g, start, trans, end, fwd, bwd, la, shift, d_em, d_start, d_end, d_trans):
    """Adds g times the gradient of one row's log-partition to d_start, d_end (K,) and, unless
    d_trans is empty (0, 0), d_trans (K, K); writes d_em (T, K) (0 past n).

    fwd = (E, top) of trans, bwd = (trans.T, E, top of trans.T); la (T, K), shift (T,) scratch.
    Marginals are normalised per step: gamma_t = softmax(la_t + lb_t) with la, lb the shifted
    forward and backward messages, exact however large log Z grows. No allowed path: all 0.
    """
    E, top = fwd
    transT, Eb, topb = bwd
    K = start.shape[0]
    d_em[:] = 0.0
    log_z, _ = _forward_row(em, n, start, trans, end, E, top, la, shift, None)
    if n == 0 or log_z == _NEG_INF:
        return
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
            return
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


def _log_partition_kernel(em, lengths, start, trans, end, log_z):
    B, T, K = em.shape
    _check_lengths(lengths, T)
    E, top = _col_normalised(trans)
    for b in prange(B):
        msg, shift = np.empty((2, K)), np.empty(2)
        total, _ = _forward_row(em[b], lengths[b], start, trans, end, E, top, msg, shift, None)
        log_z[b] = total


def _forward_backward_kernel(
    em, lengths, grad, start, trans, end, d_em, part_start, part_end, part_trans
):
    """Chunk c of the C = part_start.shape[0] chunks adds its rows' gradients into
    part_start[c], part_end[c] (K,) and part_trans[c] (K, K); part_trans (C, 0, 0): none."""
    B, T, K = em.shape
    _check_lengths(lengths, T)
    fwd = _col_normalised(trans)
    transT = np.ascontiguousarray(trans.T)
    Eb, topb = _col_normalised(transT)
    bwd = (transT, Eb, topb)
    C = part_start.shape[0]
    for c in prange(C):
        la, shift = np.empty((T, K)), np.empty(T)
        for b in range(c * B // C, (c + 1) * B // C):
            _backward_row(
                em[b],
                lengths[b],
                grad[b],
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


def _viterbi_kernel(em, lengths, start, trans, end, paths, scores):
    B, T, K = em.shape
    _check_lengths(lengths, T)
    E, top = np.zeros((0, 0)), np.zeros(0)  # read by the log semiring only
    for b in prange(B):
        n = lengths[b]
        msg, shift = np.empty((2, K)), np.empty(2)
        back = np.empty((n, K), np.int32)
        best, tag = _forward_row(em[b], n, start, trans, end, E, top, msg, shift, back)
        scores[b] = best
        paths[b, :] = -1
        if best > _NEG_INF:  # also n > 0: an empty row scores 0 and has tag -1
            for t in range(n - 1, -1, -1):
                paths[b, t] = tag
                if t > 0:
                    tag = back[t, tag]


@functools.cache
def _load() -> SimpleNamespace | ImportError:
    """Imports numba and compiles the kernels (lazily, per dtype); the ImportError if it can't."""
    try:
        import numba
    except ImportError as err:
        return err
    names = globals()
    names["prange"] = numba.prange
    for name in _HELPERS:
        names[name] = numba.njit(cache=True, nogil=True)(names[name])
    jit = numba.njit(parallel=True, cache=True, nogil=True)
    return SimpleNamespace(numba=numba, **{name: jit(names[name]) for name in _KERNELS})


@functools.cache
def warm_up() -> None:
    """Load every kernel and start numba's threading layer now, once per process.

    The first launch initialises the process's shared OpenMP runtime, and loading the compiled
    kernels changes how torch's own CPU kernels round afterwards (measured: two identical
    training runs in one process, or a run resumed in another process, differed in the last bits
    when the first one met these loads mid-training). Done when a CRF that may use the kernels
    is built, every training step of the process sees the same state. Costs one tiny call of
    each kernel in float32 and float64 (compiled once, then read from numba's disk cache).
    """
    for dtype in (torch.float32, torch.float64):
        tiny = torch.zeros(1, 1, 1, dtype=dtype)
        scores = (tiny[0, 0], tiny[0], tiny[0, 0])
        lengths = torch.ones(1, dtype=torch.long)
        with torch.enable_grad():
            emissions = tiny.clone().requires_grad_(True)
            log_partition(emissions, lengths, *scores).sum().backward()
        viterbi(tiny, lengths, *scores)


def available() -> bool:
    """Whether numba imports, so that the fused kernels can run."""
    return not isinstance(_load(), ImportError)


def _kernels(shape: torch.Size, passes: int) -> SimpleNamespace:
    """The compiled kernels, with numba's thread count set for a call on emissions of ``shape``
    that makes ``passes`` sweeps over them (1 forward or Viterbi, 4 backward): one thread unless
    the work pays for waking the others."""
    loaded = _load()
    if isinstance(loaded, ImportError):
        raise RuntimeError(
            f"chaincrf.crf_fused needs numba (pip install numba), which failed to import: {loaded}"
        )
    B, T, K = shape
    threads = torch.get_num_threads() if passes * B * T * K * (K + 16) >= _PARALLEL_MIN_WORK else 1
    numba = loaded.numba
    numba.set_num_threads(max(1, min(threads, B, numba.config.NUMBA_NUM_THREADS)))
    return loaded


@contextlib.contextmanager
def _torch_threads_kept() -> Iterator[None]:
    """Run a kernel and give torch back its intra-op thread count: numba's OpenMP threading
    layer shares the process's OpenMP runtime, and its first launch resets that count (a run
    with ``threads=1`` found torch on 2 threads, with other rounding, after the first CRF call)."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def _as_numpy(x: Tensor, dtype: torch.dtype | None = None) -> np.ndarray:
    """A contiguous numpy view of x (a copy only where dtype or layout differ)."""
    x = x.detach()
    if dtype is not None and x.dtype != dtype:
        x = x.to(dtype)
    return x.numpy() if x.is_contiguous() else x.contiguous().numpy()


def _scores64(start: Tensor, transitions: Tensor, end: Tensor) -> list[np.ndarray]:
    return [_as_numpy(x, torch.float64) for x in (start, transitions, end)]


def _from_numpy(x: np.ndarray, dtype: torch.dtype) -> Tensor:
    out = torch.from_numpy(x)
    return out if dtype == torch.float64 else out.to(dtype)


# ------------------------------------------------------------------------------ custom ops


@torch.library.custom_op("chaincrf::log_partition", mutates_args=())
def _log_partition_op(
    emissions: Tensor, lengths: Tensor, start: Tensor, transitions: Tensor, end: Tensor
) -> Tensor:
    kernels = _kernels(emissions.shape, 1)
    log_z = emissions.new_empty(emissions.shape[0])
    params = _scores64(start, transitions, end)
    with _torch_threads_kept():
        kernels._log_partition_kernel(
            _as_numpy(emissions), _as_numpy(lengths), *params, log_z.numpy()
        )
    return log_z


@_log_partition_op.register_fake
def _(emissions, lengths, start, transitions, end):
    return emissions.new_empty(emissions.shape[0])


@torch.library.custom_op("chaincrf::log_partition_backward", mutates_args=())
def _log_partition_backward_op(
    grad: Tensor,
    emissions: Tensor,
    lengths: Tensor,
    start: Tensor,
    transitions: Tensor,
    end: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    kernels = _kernels(emissions.shape, 4)
    B, _, K = emissions.shape
    d_em = emissions.new_empty(emissions.shape)
    C = min(B, _MAX_CHUNKS)
    parts = np.zeros((C, K)), np.zeros((C, K)), np.zeros((C, K, K))
    params = _scores64(start, transitions, end)
    with _torch_threads_kept():
        kernels._forward_backward_kernel(
            _as_numpy(emissions),
            _as_numpy(lengths),
            _as_numpy(grad, torch.float64),
            *params,
            d_em.numpy(),
            *parts,
        )
    d_start, d_end, d_trans = (x.sum(0) for x in parts)  # in a fixed order
    return (
        d_em,
        _from_numpy(d_start, start.dtype),
        _from_numpy(d_trans, transitions.dtype),
        _from_numpy(d_end, end.dtype),
    )


@_log_partition_backward_op.register_fake
def _(grad, emissions, lengths, start, transitions, end):
    return (
        emissions.new_empty(emissions.shape),
        start.new_empty(start.shape),
        transitions.new_empty(transitions.shape),
        end.new_empty(end.shape),
    )


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad):
    emissions, lengths, start, transitions, end = ctx.saved_tensors
    d_em, d_start, d_trans, d_end = _log_partition_backward_op(
        grad, emissions, lengths, start, transitions, end
    )
    return d_em, None, d_start, d_trans, d_end


_log_partition_op.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("chaincrf::viterbi", mutates_args=())
def _viterbi_op(
    emissions: Tensor, lengths: Tensor, start: Tensor, transitions: Tensor, end: Tensor
) -> tuple[Tensor, Tensor]:
    kernels = _kernels(emissions.shape, 1)
    B, T, _ = emissions.shape
    paths = torch.empty(B, T, dtype=torch.long)
    scores = emissions.new_empty(B)
    params = _scores64(start, transitions, end)
    with _torch_threads_kept():
        kernels._viterbi_kernel(
            _as_numpy(emissions), _as_numpy(lengths), *params, paths.numpy(), scores.numpy()
        )
    return paths, scores


@_viterbi_op.register_fake
def _(emissions, lengths, start, transitions, end):
    B, T, _ = emissions.shape
    return emissions.new_empty((B, T), dtype=torch.long), emissions.new_empty(B)


@torch.library.custom_op("chaincrf::marginals", mutates_args=())
def _marginals_op(
    emissions: Tensor, lengths: Tensor, start: Tensor, transitions: Tensor, end: Tensor
) -> Tensor:
    kernels = _kernels(emissions.shape, 3)
    out = emissions.new_empty(emissions.shape)
    B, _, K = emissions.shape
    C = min(B, _MAX_CHUNKS)
    params = _scores64(start, transitions, end)
    with _torch_threads_kept():
        kernels._forward_backward_kernel(
            _as_numpy(emissions),
            _as_numpy(lengths),
            np.ones(B),
            *params,
            out.numpy(),
            np.zeros((C, K)),
            np.zeros((C, K)),
            np.zeros((C, 0, 0)),  # no pairwise marginals
        )
    return out


@_marginals_op.register_fake
def _(emissions, lengths, start, transitions, end):
    return emissions.new_empty(emissions.shape)


# ------------------------------------------------------------------------------ public API


def _check_inputs(
    emissions: Tensor, lengths: Tensor, start: Tensor, transitions: Tensor, end: Tensor
) -> None:
    """Shapes, dtypes and devices only: nothing here reads a value (compile-friendly)."""
    for name, x in (
        ("emissions", emissions),
        ("lengths", lengths),
        ("start", start),
        ("transitions", transitions),
        ("end", end),
    ):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
        if x.device.type != "cpu":
            raise ValueError(f"{name} must be on the CPU; got device {x.device}")
    if emissions.dim() != 3 or emissions.size(2) < 1:
        raise ValueError(
            "emissions must have shape (batch, seq_len, num_tags) with num_tags >= 1; "
            f"got {tuple(emissions.shape)}"
        )
    if emissions.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"emissions must be float32 or float64; got dtype {emissions.dtype}")
    B, _, K = emissions.shape
    if lengths.dtype != torch.int64:
        raise TypeError(f"lengths must be an int64 tensor; got dtype {lengths.dtype}")
    if lengths.dim() != 1 or lengths.size(0) != B:
        raise ValueError(f"lengths must have shape ({B},) (batch,); got {tuple(lengths.shape)}")
    for name, x, shape in (
        ("start", start, (K,)),
        ("transitions", transitions, (K, K)),
        ("end", end, (K,)),
    ):
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating point tensor; got dtype {x.dtype}")
        if tuple(x.shape) != shape:
            raise ValueError(
                f"{name} must have shape {shape} (num_tags = {K}); got {tuple(x.shape)}"
            )


def log_partition(
    emissions: Tensor, lengths: Tensor, start: Tensor, transitions: Tensor, end: Tensor
) -> Tensor:
    """Log-partition of each row, differentiable w.r.t. emissions and the three score tensors.

    Args:
        emissions: float32 or float64 tensor (batch, seq_len, num_tags), unnormalised scores;
            positions past a row's length are never read.
        lengths: int64 tensor (batch,), each in [0, seq_len] (else ``ValueError``); masks are
            left-aligned.
        start: float tensor (num_tags,), score of starting in each tag; ``-inf`` forbids it.
        transitions: float tensor (num_tags, num_tags), ``transitions[i, j]`` scores tag i
            followed by tag j; ``-inf`` forbids the move.
        end: float tensor (num_tags,), score of ending in each tag; ``-inf`` forbids it.

    Returns:
        tensor (batch,) in the emissions' dtype: 0 for an empty row, ``-inf`` for a row with no
        allowed path (its gradients are 0). Gradients come back in each input's dtype.
    """
    _check_inputs(emissions, lengths, start, transitions, end)
    return _log_partition_op(emissions, lengths, start, transitions, end)


def viterbi(
    emissions: Tensor, lengths: Tensor, start: Tensor, transitions: Tensor, end: Tensor
) -> tuple[Tensor, Tensor]:
    """Best tag path of each row; ties go to the lowest tag index at every step.

    Args:
        emissions, lengths, start, transitions, end: as in :func:`log_partition`.

    Returns:
        ``paths`` int64 tensor (batch, seq_len), the best tags, -1 past each row's length and
        in a row with no allowed path; ``scores`` tensor (batch,) in the emissions' dtype, the
        best path's score (0 for an empty row, ``-inf`` with no allowed path). Not
        differentiable.
    """
    _check_inputs(emissions, lengths, start, transitions, end)
    return _viterbi_op(emissions, lengths, start, transitions, end)


def marginals(
    emissions: Tensor, lengths: Tensor, start: Tensor, transitions: Tensor, end: Tensor
) -> Tensor:
    """Posterior probability of each tag at each position.

    Args:
        emissions, lengths, start, transitions, end: as in :func:`log_partition`.

    Returns:
        tensor (batch, seq_len, num_tags) in the emissions' dtype: each position's row sums to
        1 inside the row's length; 0 past it and in a row with no allowed path. Not
        differentiable.
    """
    _check_inputs(emissions, lengths, start, transitions, end)
    return _marginals_op(emissions, lengths, start, transitions, end)
