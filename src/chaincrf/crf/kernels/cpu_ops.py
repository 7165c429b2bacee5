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
import threading
from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import torch
from torch import Tensor

from chaincrf.crf.kernels import cpu_loops as loops

__all__ = ["available", "log_likelihood", "log_partition", "marginals", "ragged", "viterbi"]


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
            f"chaincrf.crf.kernels.cpu_ops needs numba (pip install numba), which failed to import: {loaded}"
        )
    B, T, K = shape
    threads = (
        torch.get_num_threads() if passes * B * T * K * (K + 16) >= loops._PARALLEL_MIN_WORK else 1
    )
    threads = max(1, min(threads, B, loaded.numba.config.NUMBA_NUM_THREADS))
    if getattr(_thread_state, "threads", None) != threads:  # numba's count is per thread
        loaded.numba.set_num_threads(threads)
        _thread_state.threads = threads
    return loaded


_thread_state = threading.local()


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
    if dtype is not None and x.dtype != dtype:
        x = x.detach().to(dtype)
    if x.requires_grad:
        x = x.detach()
    return x.numpy() if x.is_contiguous() else x.contiguous().numpy()


def _scores(start: Tensor, transitions: Tensor, end: Tensor) -> list[np.ndarray]:
    """The scores as numpy views, in their own dtype: the kernels read them into float64."""
    return [_as_numpy(x) for x in (start, transitions, end)]


_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


def _from_numpy(x: np.ndarray, dtype: torch.dtype) -> Tensor:
    """A float64 numpy array as a tensor of ``dtype`` (float32 or float64)."""
    return torch.from_numpy(x if dtype == torch.float64 else x.astype(_NUMPY_DTYPES[dtype]))


# ------------------------------------------------------------------------------ implementations


def _ragged_impl(
    mask: Tensor,
    emissions: Tensor,
    tags: Tensor,
    start: Tensor,
    transitions: Tensor,
    end: Tensor,
    validate: bool,
) -> Tensor:
    kernels = _kernels(emissions.shape, 1)
    B = mask.shape[0]
    lengths = torch.empty(B, dtype=torch.long)
    problems = np.empty((B, 3) if validate else (0, 3), dtype=np.int64)
    with _torch_threads_kept():
        found = kernels._ragged_kernel(
            _as_numpy(mask),
            _as_numpy(emissions),
            _as_numpy(tags),
            *(_as_numpy(x) for x in (start, transitions, end)),
            validate,
            lengths.numpy(),
            problems,
        )
    if found:
        _raise_problems(problems, found, emissions, tags)
    return lengths


def _raise_problems(problems: np.ndarray, found: int, emissions: Tensor, tags: Tensor) -> None:
    """The eager layer's errors, in its order: mask gaps, parameters, emissions, tags."""
    from chaincrf.crf.errors import NonFiniteInputError

    rows = np.flatnonzero(problems[:, 0] >= 0)
    if rows.size:
        raise ValueError(
            "mask must be left-aligned (a run of on, then off) with no gaps; "
            f"batch row {rows[0]} switches back on after an off position"
        )
    if found % 4:
        name = ("start_transitions", "end_transitions", "transitions")[found % 4 - 1]
        raise NonFiniteInputError(
            f"CRF parameter {name} holds NaN or +inf values (did training diverge?)"
        )
    rows = np.flatnonzero(problems[:, 1] >= 0)
    if rows.size:
        row, position = int(rows[0]), int(problems[rows[0], 1])
        what = "NaN" if bool(torch.isnan(emissions[row, position]).any()) else "+inf"
        raise NonFiniteInputError(
            f"emissions must be finite (or -inf) where the mask is on; batch row {row}, "
            f"position {position} holds {what}"
        )
    rows = np.flatnonzero(problems[:, 2] >= 0)
    if rows.size:
        row, position = int(rows[0]), int(problems[rows[0], 2])
        raise ValueError(
            f"tags must be in [0, {emissions.shape[2]}) where the mask is on; got "
            f"{int(tags[row, position])} at batch row {row}, position {position}"
        )


def _log_partition_impl(
    emissions: Tensor, lengths: Tensor, start: Tensor, transitions: Tensor, end: Tensor
) -> Tensor:
    kernels = _kernels(emissions.shape, 1)
    log_z = emissions.new_empty(emissions.shape[0])
    params = _scores(start, transitions, end)
    with _torch_threads_kept():
        kernels._log_partition_kernel(
            _as_numpy(emissions), _as_numpy(lengths), *params, log_z.numpy()
        )
    return log_z


def _log_likelihood_impl(
    emissions: Tensor,
    tags: Tensor,
    lengths: Tensor,
    start: Tensor,
    transitions: Tensor,
    end: Tensor,
    constrained: bool,
) -> Tensor:
    kernels = _kernels(emissions.shape, 1)
    B = emissions.shape[0]
    llh = emissions.new_empty(B)
    gold = np.empty(B)
    params = _scores(start, transitions, end)
    with _torch_threads_kept():
        kernels._log_likelihood_kernel(
            _as_numpy(emissions), _as_numpy(tags), _as_numpy(lengths), *params, llh.numpy(), gold
        )
    if constrained:
        rows = np.flatnonzero(np.isneginf(gold))
        if rows.size:
            raise ValueError(
                f"tags at batch row {rows[0]} break the transition constraints (a forbidden "
                "start, transition or end); the gold path has probability zero"
            )
    return llh


def _forward_backward_impl(
    grad: Tensor,
    emissions: Tensor,
    tags: Tensor,
    lengths: Tensor,
    start: Tensor,
    transitions: Tensor,
    end: Tensor,
    pairwise: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of grad . log Z (tags empty) or grad . (gold - log Z) w.r.t. emissions and the
    three scores; without ``pairwise``, the transitions' gradient is left empty (marginals)."""
    kernels = _kernels(emissions.shape, 4 if pairwise else 3)
    B, _, K = emissions.shape
    d_em = emissions.new_empty(emissions.shape)
    C = min(B, loops._MAX_CHUNKS)
    parts = np.zeros((C, K)), np.zeros((C, K)), np.zeros((C, K, K) if pairwise else (C, 0, 0))
    params = _scores(start, transitions, end)
    with _torch_threads_kept():
        kernels._forward_backward_kernel(
            _as_numpy(emissions),
            _as_numpy(tags),
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


def _viterbi_impl(
    emissions: Tensor, lengths: Tensor, start: Tensor, transitions: Tensor, end: Tensor
) -> tuple[Tensor, Tensor]:
    kernels = _kernels(emissions.shape, 1)
    B, T, _ = emissions.shape
    paths = torch.empty(B, T, dtype=torch.long)
    scores = emissions.new_empty(B)
    params = _scores(start, transitions, end)
    with _torch_threads_kept():
        kernels._viterbi_kernel(
            _as_numpy(emissions), _as_numpy(lengths), *params, paths.numpy(), scores.numpy()
        )
    return paths, scores


_NO_TAGS = torch.empty(0, 0, dtype=torch.long)


def _marginals_impl(
    emissions: Tensor, lengths: Tensor, start: Tensor, transitions: Tensor, end: Tensor
) -> Tensor:
    ones = torch.ones(emissions.shape[0], dtype=torch.float64)
    return _forward_backward_impl(
        ones, emissions, _NO_TAGS, lengths, start, transitions, end, pairwise=False
    )[0]


# ------------------------------------------------------------------------------ custom ops
# What torch.compile and torch.export see: each op with its fake (shape-only) implementation
# and, for the two differentiable ones, its autograd formula. Run eagerly, the public functions
# below call the implementations directly instead (through a torch.autograd.Function for the
# gradients): the custom-op dispatcher costs 60-90 µs a call, measured, about ten times the
# kernel itself on one sentence.


@torch.library.custom_op("chaincrf::ragged", mutates_args=())
def _ragged_op(
    mask: Tensor,
    emissions: Tensor,
    tags: Tensor,
    start: Tensor,
    transitions: Tensor,
    end: Tensor,
    validate: bool,
) -> Tensor:
    return _ragged_impl(mask, emissions, tags, start, transitions, end, validate)


@_ragged_op.register_fake
def _(mask, emissions, tags, start, transitions, end, validate):
    return mask.new_empty(mask.shape[0], dtype=torch.long)


@torch.library.custom_op("chaincrf::log_partition", mutates_args=())
def _log_partition_op(
    emissions: Tensor, lengths: Tensor, start: Tensor, transitions: Tensor, end: Tensor
) -> Tensor:
    return _log_partition_impl(emissions, lengths, start, transitions, end)


@_log_partition_op.register_fake
def _(emissions, lengths, start, transitions, end):
    return emissions.new_empty(emissions.shape[0])


@torch.library.custom_op("chaincrf::log_likelihood", mutates_args=())
def _log_likelihood_op(
    emissions: Tensor,
    tags: Tensor,
    lengths: Tensor,
    start: Tensor,
    transitions: Tensor,
    end: Tensor,
    constrained: bool,
) -> Tensor:
    return _log_likelihood_impl(emissions, tags, lengths, start, transitions, end, constrained)


@_log_likelihood_op.register_fake
def _(emissions, tags, lengths, start, transitions, end, constrained):
    return emissions.new_empty(emissions.shape[0])


@torch.library.custom_op("chaincrf::forward_backward", mutates_args=())
def _forward_backward_op(
    grad: Tensor,
    emissions: Tensor,
    tags: Tensor,
    lengths: Tensor,
    start: Tensor,
    transitions: Tensor,
    end: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _forward_backward_impl(grad, emissions, tags, lengths, start, transitions, end)


@_forward_backward_op.register_fake
def _(grad, emissions, tags, lengths, start, transitions, end):
    return (
        emissions.new_empty(emissions.shape),
        start.new_empty(start.shape),
        transitions.new_empty(transitions.shape),
        end.new_empty(end.shape),
    )


def _save_inputs(ctx, inputs, output):
    ctx.save_for_backward(*(x for x in inputs if isinstance(x, Tensor)))


def _log_partition_backward(ctx, grad):
    emissions, lengths, start, transitions, end = ctx.saved_tensors
    no_tags = lengths.new_empty((0, 0))
    d_em, d_start, d_trans, d_end = _forward_backward_op(
        grad, emissions, no_tags, lengths, start, transitions, end
    )
    return d_em, None, d_start, d_trans, d_end


def _log_likelihood_backward(ctx, grad):
    emissions, tags, lengths, start, transitions, end = ctx.saved_tensors
    d_em, d_start, d_trans, d_end = _forward_backward_op(
        grad, emissions, tags, lengths, start, transitions, end
    )
    return d_em, None, None, d_start, d_trans, d_end, None


_log_partition_op.register_autograd(_log_partition_backward, setup_context=_save_inputs)
_log_likelihood_op.register_autograd(_log_likelihood_backward, setup_context=_save_inputs)


@torch.library.custom_op("chaincrf::viterbi", mutates_args=())
def _viterbi_op(
    emissions: Tensor, lengths: Tensor, start: Tensor, transitions: Tensor, end: Tensor
) -> tuple[Tensor, Tensor]:
    return _viterbi_impl(emissions, lengths, start, transitions, end)


@_viterbi_op.register_fake
def _(emissions, lengths, start, transitions, end):
    B, T, _ = emissions.shape
    return emissions.new_empty((B, T), dtype=torch.long), emissions.new_empty(B)


@torch.library.custom_op("chaincrf::marginals", mutates_args=())
def _marginals_op(
    emissions: Tensor, lengths: Tensor, start: Tensor, transitions: Tensor, end: Tensor
) -> Tensor:
    return _marginals_impl(emissions, lengths, start, transitions, end)


@_marginals_op.register_fake
def _(emissions, lengths, start, transitions, end):
    return emissions.new_empty(emissions.shape)


# ------------------------------------------------------------------------------ eager calls


class _LogPartition(torch.autograd.Function):
    @staticmethod
    def forward(ctx, emissions, lengths, start, transitions, end):  # type: ignore[override]
        ctx.save_for_backward(emissions, lengths, start, transitions, end)
        return _log_partition_impl(emissions, lengths, start, transitions, end)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        emissions, lengths, start, transitions, end = ctx.saved_tensors
        grads = _forward_backward_impl(grad, emissions, _NO_TAGS, lengths, start, transitions, end)
        d_em, d_start, d_trans, d_end = grads
        return d_em, None, d_start, d_trans, d_end


class _LogLikelihood(torch.autograd.Function):
    @staticmethod
    def forward(ctx, emissions, tags, lengths, start, transitions, end, constrained):  # type: ignore[override]
        ctx.save_for_backward(emissions, tags, lengths, start, transitions, end)
        return _log_likelihood_impl(emissions, tags, lengths, start, transitions, end, constrained)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        emissions, tags, lengths, start, transitions, end = ctx.saved_tensors
        grads = _forward_backward_impl(grad, emissions, tags, lengths, start, transitions, end)
        d_em, d_start, d_trans, d_end = grads
        return d_em, None, None, d_start, d_trans, d_end, None


def _detached(*tensors: Tensor) -> list[Tensor]:
    return [x.detach() for x in tensors]


_is_compiling = getattr(torch.compiler, "is_compiling", None) or torch._dynamo.is_compiling


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
    emissions: Tensor,
    lengths: Tensor,
    start: Tensor,
    transitions: Tensor,
    end: Tensor,
    check: bool = True,
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
        check: check the arguments' types, shapes and devices (the CRF layer, which checked
            them already, passes False).

    Returns:
        tensor (batch,) in the emissions' dtype: 0 for an empty row, ``-inf`` for a row with no
        allowed path (its gradients are 0). Gradients come back in each input's dtype.
    """
    if check:
        _check_inputs(emissions, lengths, start, transitions, end)
    if _is_compiling():
        return _log_partition_op(emissions, lengths, start, transitions, end)
    return _LogPartition.apply(emissions, lengths, start, transitions, end)


def viterbi(
    emissions: Tensor,
    lengths: Tensor,
    start: Tensor,
    transitions: Tensor,
    end: Tensor,
    check: bool = True,
) -> tuple[Tensor, Tensor]:
    """Best tag path of each row; ties go to the lowest tag index at every step.

    Args:
        emissions, lengths, start, transitions, end, check: as in :func:`log_partition`.

    Returns:
        ``paths`` int64 tensor (batch, seq_len), the best tags, -1 past each row's length and
        in a row with no allowed path; ``scores`` tensor (batch,) in the emissions' dtype, the
        best path's score (0 for an empty row, ``-inf`` with no allowed path). Not
        differentiable.
    """
    if check:
        _check_inputs(emissions, lengths, start, transitions, end)
    if _is_compiling():
        return _viterbi_op(*_detached(emissions, lengths, start, transitions, end))
    return _viterbi_impl(emissions, lengths, start, transitions, end)


def marginals(
    emissions: Tensor,
    lengths: Tensor,
    start: Tensor,
    transitions: Tensor,
    end: Tensor,
    check: bool = True,
) -> Tensor:
    """Posterior probability of each tag at each position.

    Args:
        emissions, lengths, start, transitions, end, check: as in :func:`log_partition`.

    Returns:
        tensor (batch, seq_len, num_tags) in the emissions' dtype: each position's row sums to
        1 inside the row's length; 0 past it and in a row with no allowed path. Not
        differentiable.
    """
    if check:
        _check_inputs(emissions, lengths, start, transitions, end)
    if _is_compiling():
        return _marginals_op(*_detached(emissions, lengths, start, transitions, end))
    return _marginals_impl(emissions, lengths, start, transitions, end)


def ragged(
    mask: Tensor,
    emissions: Tensor,
    start: Tensor,
    transitions: Tensor,
    end: Tensor,
    tags: Tensor | None = None,
    validate: bool = True,
) -> Tensor:
    """The length of each row of a left-aligned mask, checking the inputs' values in one pass.

    Args:
        mask: bool tensor (batch, seq_len).
        emissions: float32 or float64 tensor (batch, seq_len, num_tags).
        start, transitions, end: the scores, as in :func:`log_partition`.
        tags: optional int64 tensor (batch, seq_len), gold tags to range-check.
        validate: check, in this order, that the mask has no gaps, that the scores hold no
            NaN or +inf, that the emissions hold none where the mask is on and that the tags
            lie in [0, num_tags) there; without it, only the lengths are computed.

    Returns:
        int64 tensor (batch,), the number of leading on positions of each row.

    Raises:
        ValueError: naming the batch row (and position) of a mask gap or a tag out of range.
        chaincrf.crf.NonFiniteInputError: naming the score tensor, or the emissions' batch
            row and position, that holds NaN or +inf.
    """
    tags = mask.new_empty((0, 0), dtype=torch.long) if tags is None else tags
    if _is_compiling():
        return _ragged_op(mask, *_detached(emissions, tags, start, transitions, end), validate)
    return _ragged_impl(mask, emissions, tags, start, transitions, end, validate)


def log_likelihood(
    emissions: Tensor,
    tags: Tensor,
    lengths: Tensor,
    start: Tensor,
    transitions: Tensor,
    end: Tensor,
    constrained: bool = False,
    check: bool = True,
) -> Tensor:
    """Log-likelihood of the gold paths ``tags[b, :lengths[b]]``: their score minus log Z, in
    one pass; differentiable w.r.t. emissions and the three scores.

    Args:
        emissions, lengths, start, transitions, end, check: as in :func:`log_partition`.
        tags: int64 tensor (batch, seq_len), each in [0, num_tags) inside its row's length
            (see :func:`ragged`); positions past it are never read.
        constrained: refuse gold paths that score ``-inf`` (forbidden by the constraints).
        check: as in :func:`log_partition`.

    Returns:
        tensor (batch,) in the emissions' dtype (0 for an empty row).

    Raises:
        ValueError: with ``constrained``, naming the first batch row whose gold path is
            forbidden.
    """
    if check:
        _check_inputs(emissions, lengths, start, transitions, end)
        if tuple(tags.shape) != tuple(emissions.shape[:2]) or tags.dtype != torch.int64:
            raise ValueError(
                f"tags must be an int64 tensor of shape {tuple(emissions.shape[:2])}; "
                f"got {tags.dtype} {tuple(tags.shape)}"
            )
    if _is_compiling():
        return _log_likelihood_op(emissions, tags, lengths, start, transitions, end, constrained)
    return _LogLikelihood.apply(emissions, tags, lengths, start, transitions, end, constrained)
