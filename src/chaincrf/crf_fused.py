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
from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import torch
from torch import Tensor

from chaincrf import crf_fused_loops as loops

__all__ = ["available", "log_partition", "marginals", "viterbi"]


@functools.cache
def _load() -> SimpleNamespace | ImportError:
    """Imports numba and compiles the kernels (lazily, per dtype); the ImportError if it can't."""
    try:
        import numba
    except ImportError as err:
        return err
    names = vars(loops)
    names["prange"] = numba.prange
    for name in loops._HELPERS:
        names[name] = numba.njit(cache=True, nogil=True)(names[name])
    jit = numba.njit(parallel=True, cache=True, nogil=True)
    return SimpleNamespace(numba=numba, **{name: jit(names[name]) for name in loops._KERNELS})


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
    threads = (
        torch.get_num_threads() if passes * B * T * K * (K + 16) >= loops._PARALLEL_MIN_WORK else 1
    )
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
    C = min(B, loops._MAX_CHUNKS)
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
    C = min(B, loops._MAX_CHUNKS)
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
