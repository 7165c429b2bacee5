"""Fused CPU kernels for the linear-chain CRF, compiled with numba, exposed as torch custom ops.

Each kernel runs one batch row at a time (over fixed chunks of rows where parameter gradients
are summed, in a fixed order), float64 accumulation whatever the emissions' dtype (float32 or
float64). Inputs are batch-first; a row covers the leading on positions of its mask, and
positions past its length are never read. Transitions are indexed ``[from, to]``; forbidden
moves are ``-inf`` scores (see ``chaincrf.confidence.crf_scores``).

* ``chaincrf::log_partition`` (mask) -> (log Z, lengths): the forward recursion in exp space
  (:mod:`chaincrf.crf.kernels.cpu_exp`), O(K) scratch per row; a row whose scale underflows is
  recomputed exactly in log space (:mod:`chaincrf.crf.kernels.cpu_loops`).
* ``chaincrf::log_likelihood`` (tags, mask) -> (gold score - log Z, lengths): the same pass
  plus the gold path's score.
* ``chaincrf::forward_backward`` (grad, tags or none, lengths): the gradient of either, for the
  emissions and the three score tensors: forward messages kept (O(T·K) per row), backward
  messages over them, pairwise marginals summed into one (K, K) buffer per chunk of rows.
* ``chaincrf::viterbi`` (mask) -> (paths, scores, lengths): the max-plus recursion with int32
  back-pointers; ties go to the lowest tag index at every argmax, as the eager kernel's.
* ``chaincrf::marginals`` (mask): the backward kernel with unit gradient, no pairwise sums.

With ``validate`` the kernels also check the values in the pass that counts the lengths (mask
gaps, NaN/+inf scores and emissions, tags out of range: the eager kernel's errors, in its
order); tags are always range-checked before they index anything. Run eagerly, the public
functions call the implementations directly (through ``torch.autograd.Function`` for the
gradients); under torch.compile / torch.export they call the custom ops.

This module imports only torch (and the numpy that torch brings); numba is imported, and the
kernels compiled (``cache=True``: once per machine), on the first call.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np
import torch
from torch import Tensor

from chaincrf.crf import plan
from chaincrf.crf.errors import NonFiniteInputError
from chaincrf.crf.kernels import cpu_loops as loops

__all__ = [
    "available",
    "log_likelihood",
    "log_likelihood_masked",
    "log_partition",
    "log_partition_masked",
    "marginals",
    "marginals_masked",
    "viterbi",
    "viterbi_masked",
    "warm_up",
]


@functools.cache
def _load() -> SimpleNamespace | ImportError:
    """Imports numba and compiles the kernels (lazily, per dtype); the ImportError if it can't.

    The kernels are serial (one row after another on the calling thread): numba's parallel
    versions, measured with its workqueue pool, ran no faster on this 2-core CPU
    (serial / parallel 0.98-1.00 over B 8-128, T 32-128, K 5-50, numba 0.68, 2026-11-29), and
    its OpenMP pool shares the process's OpenMP runtime with torch: starting it changed the
    last bits of later torch CPU results (a training run killed and resumed ended 2.9e-6 away
    from the uninterrupted one). The planner leaves the largest problems, where threads would
    pay, to the eager kernel's batched BLAS products.
    """
    try:
        import numba
    except ImportError as err:
        return err
    names = vars(loops)
    jit = numba.njit(cache=True, nogil=True)
    for name in loops._HELPERS:
        names[name] = jit(names[name])
    return SimpleNamespace(numba=numba, **{name: jit(names[name]) for name in loops._KERNELS})


@functools.cache
def warm_up() -> None:
    """Load (compile, or read from numba's disk cache) the float32 kernels now, once per
    process, when a CRF that may use them is built: the first training step then does not
    pay for it. float64 kernels load on their first call."""
    tiny = torch.zeros(1, 1, 1)
    scores = (tiny[0, 0], tiny[0], tiny[0, 0])
    lengths = torch.ones(1, dtype=torch.long)
    with torch.enable_grad():
        emissions = tiny.clone().requires_grad_(True)
        log_partition(emissions, lengths, *scores).sum().backward()
    viterbi(tiny, lengths, *scores)


def available() -> bool:
    """Whether numba imports, so that the fused kernels can run."""
    return not isinstance(_load(), ImportError)


def _kernels() -> SimpleNamespace:
    """The compiled kernels (RuntimeError naming the cause when numba cannot be imported)."""
    loaded = _load()
    if isinstance(loaded, ImportError):
        raise RuntimeError(
            "chaincrf.crf.kernels.cpu_ops needs numba (pip install numba), which failed to "
            f"import: {loaded}"
        )
    return loaded


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
# Each takes the left-aligned bool mask (B, T) and finds the lengths itself, checking the values
# (``validate``) in the same pass; it returns the lengths with its results.


def _exp_emissions(emissions: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """exp(em - M) (B, T, K) and M (B, T), the maxima over tags (torch's vectorised exp: the
    kernels' exp-space rows then need no transcendental per tag; see cpu_exp)."""
    em = emissions.detach()
    top = em.amax(-1) if em.shape[2] > 0 else em.sum(-1)
    return _as_numpy((em - top.unsqueeze(-1)).exp_()), _as_numpy(top)


_NO_TAGS = torch.empty(0, 0, dtype=torch.long)


def _problems(B: int) -> np.ndarray:
    return np.empty((B, 3), dtype=np.int64)


def _raise_problems(problems: np.ndarray, found: int, emissions: Tensor, tags: Tensor) -> None:
    """The eager kernel's errors, in its order: mask gaps, scores, emissions, tags."""
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


def _lengths_impl(
    mask: Tensor,
    emissions: Tensor,
    validate: bool,
    scores: tuple[Tensor, Tensor, Tensor] | None = None,
    tags: Tensor = _NO_TAGS,
) -> Tensor:
    """Each row's length; with ``validate`` the values checked (the scores too when given);
    tags, when given, always range-checked."""
    kernels = _kernels()
    lengths = torch.empty(mask.shape[0], dtype=torch.long)
    problems = _problems(mask.shape[0])
    if scores is None:
        zero = np.zeros(1)
        arrays = [zero, zero.reshape(1, 1), zero]
    else:
        arrays = _scores(*scores)
    found = kernels._ragged_kernel(
        _as_numpy(mask), _as_numpy(emissions), _as_numpy(tags), *arrays,
        validate and scores is not None, lengths.numpy(), problems,
    )  # fmt: skip
    if found:
        _raise_problems(problems, found, emissions, tags)
    return lengths


def _log_partition_impl(
    emissions: Tensor, mask: Tensor, start: Tensor, transitions: Tensor, end: Tensor, validate: bool
) -> tuple[Tensor, Tensor]:
    kernels = _kernels()
    B = emissions.shape[0]
    log_z = emissions.new_empty(B)
    lengths = torch.empty(B, dtype=torch.long)
    problems = _problems(B)
    found = kernels._log_partition_kernel(
        _as_numpy(emissions), *_exp_emissions(emissions), _as_numpy(mask), *_scores(start, transitions, end), validate,
        log_z.numpy(), lengths.numpy(), problems,
    )  # fmt: skip
    if found:
        _raise_problems(problems, found, emissions, _NO_TAGS)
    return log_z, lengths


def _log_likelihood_impl(
    emissions: Tensor,
    tags: Tensor,
    mask: Tensor,
    start: Tensor,
    transitions: Tensor,
    end: Tensor,
    constrained: bool,
    validate: bool,
) -> tuple[Tensor, Tensor]:
    kernels = _kernels()
    B = emissions.shape[0]
    llh = emissions.new_empty(B)
    lengths = torch.empty(B, dtype=torch.long)
    gold = np.zeros(B)
    problems = _problems(B)
    found = kernels._log_likelihood_kernel(
        _as_numpy(emissions), *_exp_emissions(emissions), _as_numpy(tags), _as_numpy(mask),
        *_scores(start, transitions, end), validate, llh.numpy(), gold, lengths.numpy(),
        problems,
    )  # fmt: skip
    if found:
        _raise_problems(problems, found, emissions, tags)
    if constrained:
        _check_gold(gold)
    return llh, lengths


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
    return _forward_backward_call(
        grad, emissions, tags, lengths, start, transitions, end, pairwise
    )[:4]


def _forward_backward_call(
    grad: Tensor,
    emissions: Tensor,
    tags: Tensor,
    lengths: Tensor,
    start: Tensor,
    transitions: Tensor,
    end: Tensor,
    pairwise: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor, np.ndarray, np.ndarray]:
    """:func:`_forward_backward_impl`'s gradients, then each row's log Z and gold score
    (float64 numpy, the gold scores 0 without tags), which the same pass computes."""
    kernels = _kernels()
    B, _, K = emissions.shape
    d_em = emissions.new_empty(emissions.shape)
    C = min(B, loops._MAX_CHUNKS)
    parts = np.zeros((C, K)), np.zeros((C, K)), np.zeros((C, K, K) if pairwise else (C, 0, 0))
    log_z, gold = np.zeros(B), np.zeros(B)
    kernels._forward_backward_kernel(
        _as_numpy(emissions), *_exp_emissions(emissions), _as_numpy(tags), _as_numpy(lengths),
        _as_numpy(grad, torch.float64), *_scores(start, transitions, end), d_em.numpy(),
        *parts, log_z, gold,
    )  # fmt: skip
    d_start, d_end, d_trans = (x.sum(0) for x in parts)  # in a fixed order
    return (
        d_em,
        _from_numpy(d_start, start.dtype),
        _from_numpy(d_trans, transitions.dtype),
        _from_numpy(d_end, end.dtype),
        log_z,
        gold,
    )


def _viterbi_impl(
    emissions: Tensor, mask: Tensor, start: Tensor, transitions: Tensor, end: Tensor, validate: bool
) -> tuple[Tensor, Tensor, Tensor]:
    kernels = _kernels()
    B, T, _ = emissions.shape
    paths = torch.empty(B, T, dtype=torch.long)
    scores = emissions.new_empty(B)
    lengths = torch.empty(B, dtype=torch.long)
    problems = _problems(B)
    found = kernels._viterbi_kernel(
        _as_numpy(emissions), _as_numpy(mask), *_scores(start, transitions, end), validate,
        paths.numpy(), scores.numpy(), lengths.numpy(), problems,
    )  # fmt: skip
    if found:
        _raise_problems(problems, found, emissions, _NO_TAGS)
    return paths, scores, lengths


def _marginals_impl(
    emissions: Tensor, mask: Tensor, start: Tensor, transitions: Tensor, end: Tensor, validate: bool
) -> Tensor:
    if validate:  # the checks of the log-partition kernel, then the marginals
        _log_partition_impl(emissions, mask, start, transitions, end, True)
    lengths = _lengths_impl(mask, emissions, False)
    ones = torch.ones(emissions.shape[0], dtype=torch.float64)
    return _forward_backward_impl(
        ones, emissions, _NO_TAGS, lengths, start, transitions, end, pairwise=False
    )[0]


# ------------------------------------------------------------------------------ custom ops
# What torch.compile and torch.export see: each op with its fake (shape-only) implementation
# and, for the two differentiable ones, its autograd formula. Run eagerly, the functions below
# call the implementations directly instead (through a torch.autograd.Function for the
# gradients): the custom-op dispatcher costs 60-90 µs a call, measured, several times the
# kernel itself on one sentence.


@torch.library.custom_op("chaincrf::log_partition", mutates_args=())
def _log_partition_op(
    emissions: Tensor, mask: Tensor, start: Tensor, transitions: Tensor, end: Tensor, validate: bool
) -> tuple[Tensor, Tensor]:
    return _log_partition_impl(emissions, mask, start, transitions, end, validate)


@_log_partition_op.register_fake
def _(emissions, mask, start, transitions, end, validate):
    B = emissions.shape[0]
    return emissions.new_empty(B), emissions.new_empty(B, dtype=torch.long)


@torch.library.custom_op("chaincrf::log_likelihood", mutates_args=())
def _log_likelihood_op(
    emissions: Tensor,
    tags: Tensor,
    mask: Tensor,
    start: Tensor,
    transitions: Tensor,
    end: Tensor,
    constrained: bool,
    validate: bool,
) -> tuple[Tensor, Tensor]:
    return _log_likelihood_impl(
        emissions, tags, mask, start, transitions, end, constrained, validate
    )


@_log_likelihood_op.register_fake
def _(emissions, tags, mask, start, transitions, end, constrained, validate):
    B = emissions.shape[0]
    return emissions.new_empty(B), emissions.new_empty(B, dtype=torch.long)


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


def _save_log_partition(ctx, inputs, output):
    emissions, _mask, start, transitions, end, _validate = inputs
    ctx.save_for_backward(emissions, output[1], start, transitions, end)


def _log_partition_backward(ctx, grad, _grad_lengths):
    emissions, lengths, start, transitions, end = ctx.saved_tensors
    no_tags = lengths.new_empty((0, 0))
    d_em, d_start, d_trans, d_end = _forward_backward_op(
        grad, emissions, no_tags, lengths, start, transitions, end
    )
    return d_em, None, d_start, d_trans, d_end, None


def _save_log_likelihood(ctx, inputs, output):
    emissions, tags, _mask, start, transitions, end, _constrained, _validate = inputs
    ctx.save_for_backward(emissions, tags, output[1], start, transitions, end)


def _log_likelihood_backward(ctx, grad, _grad_lengths):
    emissions, tags, lengths, start, transitions, end = ctx.saved_tensors
    d_em, d_start, d_trans, d_end = _forward_backward_op(
        grad, emissions, tags, lengths, start, transitions, end
    )
    return d_em, None, None, d_start, d_trans, d_end, None, None


_log_partition_op.register_autograd(_log_partition_backward, setup_context=_save_log_partition)
_log_likelihood_op.register_autograd(_log_likelihood_backward, setup_context=_save_log_likelihood)


@torch.library.custom_op("chaincrf::viterbi", mutates_args=())
def _viterbi_op(
    emissions: Tensor, mask: Tensor, start: Tensor, transitions: Tensor, end: Tensor, validate: bool
) -> tuple[Tensor, Tensor, Tensor]:
    return _viterbi_impl(emissions, mask, start, transitions, end, validate)


@_viterbi_op.register_fake
def _(emissions, mask, start, transitions, end, validate):
    B, T, _ = emissions.shape
    long = torch.long
    return (
        emissions.new_empty((B, T), dtype=long),
        emissions.new_empty(B),
        mask.new_empty(B, dtype=long),
    )


@torch.library.custom_op("chaincrf::marginals", mutates_args=())
def _marginals_op(
    emissions: Tensor, mask: Tensor, start: Tensor, transitions: Tensor, end: Tensor, validate: bool
) -> Tensor:
    return _marginals_impl(emissions, mask, start, transitions, end, validate)


@_marginals_op.register_fake
def _(emissions, mask, start, transitions, end, validate):
    return emissions.new_empty(emissions.shape)


# ------------------------------------------------------------------------------ eager calls


class _LogPartition(torch.autograd.Function):
    @staticmethod
    def forward(ctx, emissions, mask, start, transitions, end, validate):  # type: ignore[override]
        log_z, lengths = _log_partition_impl(emissions, mask, start, transitions, end, validate)
        ctx.save_for_backward(emissions, lengths, start, transitions, end)
        ctx.mark_non_differentiable(lengths)
        return log_z, lengths

    @staticmethod
    def backward(ctx, grad, _grad_lengths):  # type: ignore[override]
        emissions, lengths, start, transitions, end = ctx.saved_tensors
        grads = _forward_backward_impl(grad, emissions, _NO_TAGS, lengths, start, transitions, end)
        d_em, d_start, d_trans, d_end = grads
        return d_em, None, d_start, d_trans, d_end, None


class _LogLikelihood(torch.autograd.Function):
    """The log-likelihood; when a gradient will be needed, the forward pass runs the
    forward-backward kernel once and keeps the gradient of a unit output (one pass over the
    rows instead of a forward and, later, a forward-backward)."""

    @staticmethod
    def forward(ctx, emissions, tags, mask, start, transitions, end, constrained, validate):  # type: ignore[override]
        if not any(ctx.needs_input_grad):
            return _log_likelihood_impl(
                emissions, tags, mask, start, transitions, end, constrained, validate
            )[0]
        scores = (start, transitions, end)
        lengths = _lengths_impl(mask, emissions, validate, scores, tags)
        ones = torch.ones(emissions.shape[0], dtype=torch.float64)
        *unit, log_z, gold = _forward_backward_call(ones, emissions, tags, lengths, *scores)
        if constrained:
            _check_gold(gold)
        ctx.save_for_backward(emissions, tags, lengths, start, transitions, end, *unit)
        return torch.from_numpy(gold - log_z).to(emissions.dtype)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        emissions, tags, lengths, start, transitions, end, *unit = ctx.saved_tensors
        B = grad.shape[0]
        # one weight for every row (a sum's gradient is expanded: stride 0): scale the sums
        if B and (B == 1 or grad.stride(0) == 0 or bool((grad == grad[0]).all())):
            d_em = unit[0] * grad.view(B, 1, 1).to(unit[0].dtype)
            d_start, d_trans, d_end = (g * grad[0].to(g.dtype) for g in unit[1:])
        else:
            grads = _forward_backward_impl(grad, emissions, tags, lengths, start, transitions, end)
            d_em, d_start, d_trans, d_end = grads
        return d_em, None, None, d_start, d_trans, d_end, None, None


def _check_gold(gold: np.ndarray) -> None:
    rows = np.flatnonzero(np.isneginf(gold))
    if rows.size:
        raise ValueError(
            f"tags at batch row {rows[0]} break the transition constraints (a forbidden "
            "start, transition or end); the gold path has probability zero"
        )


def _detached(*tensors: Tensor) -> list[Tensor]:
    return [x.detach() for x in tensors]


_is_compiling = plan.is_compiling


# ------------------------------------------------------------------------------ masked calls
# What the kernel interface (chaincrf.crf.kernels.cpu) calls: a left-aligned bool mask, the
# value checks in the kernel (``validate``), the lengths returned with the results.


def log_partition_masked(
    emissions: Tensor, mask: Tensor, start: Tensor, transitions: Tensor, end: Tensor, validate: bool
) -> tuple[Tensor, Tensor]:
    """(log Z (B,), lengths (B,)); differentiable w.r.t. emissions and the scores."""
    if _is_compiling():
        return _log_partition_op(emissions, mask, start, transitions, end, validate)
    return _LogPartition.apply(emissions, mask, start, transitions, end, validate)


def log_likelihood_masked(
    emissions: Tensor,
    tags: Tensor,
    mask: Tensor,
    start: Tensor,
    transitions: Tensor,
    end: Tensor,
    constrained: bool,
    validate: bool,
) -> Tensor:
    """Gold score - log Z (B,); differentiable w.r.t. emissions and scores."""
    args = (emissions, tags, mask, start, transitions, end, constrained, validate)
    if _is_compiling():
        return _log_likelihood_op(*args)[0]
    return _LogLikelihood.apply(*args)


def viterbi_masked(
    emissions: Tensor, mask: Tensor, start: Tensor, transitions: Tensor, end: Tensor, validate: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """(best paths (B, T) -1 padded, their scores (B,), lengths (B,)); not differentiable."""
    if _is_compiling():
        em, start, transitions, end = _detached(emissions, start, transitions, end)
        return _viterbi_op(em, mask, start, transitions, end, validate)
    return _viterbi_impl(emissions, mask, start, transitions, end, validate)


def marginals_masked(
    emissions: Tensor, mask: Tensor, start: Tensor, transitions: Tensor, end: Tensor, validate: bool
) -> Tensor:
    """Posterior tag probabilities (B, T, K), 0 past each length; not differentiable."""
    if _is_compiling():
        em, start, transitions, end = _detached(emissions, start, transitions, end)
        return _marginals_op(em, mask, start, transitions, end, validate)
    return _marginals_impl(emissions, mask, start, transitions, end, validate)


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


def _mask_of(emissions: Tensor, lengths: Tensor) -> Tensor:
    """The left-aligned mask of ``lengths`` (checked to lie in [0, T] unless compiling)."""
    T = emissions.shape[1]
    if not _is_compiling():
        _load_or_raise()
        loops._check_lengths(lengths.numpy(), T)  # compiled by _load
    return torch.arange(T) < lengths.unsqueeze(1)


def _load_or_raise() -> SimpleNamespace:
    return _kernels()


def log_partition(
    emissions: Tensor, lengths: Tensor, start: Tensor, transitions: Tensor, end: Tensor
) -> Tensor:
    """Log-partition of each row, differentiable w.r.t. emissions and the three score tensors.

    Args:
        emissions: float32 or float64 tensor (batch, seq_len, num_tags), unnormalised scores;
            positions past a row's length are never read.
        lengths: int64 tensor (batch,), each in [0, seq_len] (else ``ValueError``).
        start: float tensor (num_tags,), score of starting in each tag; ``-inf`` forbids it.
        transitions: float tensor (num_tags, num_tags), ``transitions[i, j]`` scores tag i
            followed by tag j; ``-inf`` forbids the move.
        end: float tensor (num_tags,), score of ending in each tag; ``-inf`` forbids it.

    Returns:
        tensor (batch,) in the emissions' dtype: 0 for an empty row, ``-inf`` for a row with no
        allowed path (its gradients are 0). Gradients come back in each input's dtype.
    """
    _check_inputs(emissions, lengths, start, transitions, end)
    mask = _mask_of(emissions, lengths)
    return log_partition_masked(emissions, mask, start, transitions, end, False)[0]


def log_likelihood(
    emissions: Tensor,
    tags: Tensor,
    lengths: Tensor,
    start: Tensor,
    transitions: Tensor,
    end: Tensor,
    constrained: bool = False,
) -> Tensor:
    """Log-likelihood of the gold paths ``tags[b, :lengths[b]]``: their score minus log Z, in
    one pass; differentiable w.r.t. emissions and the three scores.

    Args:
        emissions, lengths, start, transitions, end: as in :func:`log_partition`.
        tags: int64 tensor (batch, seq_len), each in [0, num_tags) inside its row's length
            (else ``ValueError``); positions past it are never read.
        constrained: refuse gold paths that score ``-inf`` (forbidden by the constraints).

    Returns:
        tensor (batch,) in the emissions' dtype (0 for an empty row).
    """
    _check_inputs(emissions, lengths, start, transitions, end)
    if tuple(tags.shape) != tuple(emissions.shape[:2]) or tags.dtype != torch.int64:
        raise ValueError(
            f"tags must be an int64 tensor of shape {tuple(emissions.shape[:2])}; "
            f"got {tags.dtype} {tuple(tags.shape)}"
        )
    mask = _mask_of(emissions, lengths)
    args = (emissions, tags.contiguous(), mask, start, transitions, end, constrained, False)
    return log_likelihood_masked(*args)


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
    mask = _mask_of(emissions, lengths)
    return viterbi_masked(emissions, mask, start, transitions, end, False)[:2]


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
    mask = _mask_of(emissions, lengths)
    return marginals_masked(emissions, mask, start, transitions, end, False)
