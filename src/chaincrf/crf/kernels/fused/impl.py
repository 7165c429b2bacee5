"""The implementations behind :mod:`chaincrf.crf.kernels.fused.custom_ops`: numba's loading, the numpy
views, and one function per operation that allocates the outputs, calls the compiled kernel and
turns its problem codes into the eager kernel's errors. Importing this module imports only
torch (and the numpy that torch brings); numba is imported on the first call.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np
import torch
from torch import Tensor

from chaincrf.crf import errors, tracing, tuning
from chaincrf.crf.kernels.fused import exp as cpu_exp
from chaincrf.crf.kernels.fused import logspace as cpu_logspace
from chaincrf.crf.kernels.fused import loops
from chaincrf.crf.kernels.fused.threads import _over_rows, _split, _threads


@functools.cache
def _load() -> SimpleNamespace | ImportError:
    """Imports numba and compiles the kernels (lazily, per dtype); the ImportError if it can't.

    The kernels are serial (``nogil``: one row after another on their thread); a large call
    runs them on torch's OpenMP threads itself (:mod:`chaincrf.crf.kernels.fused.threads`),
    not numba's own parallel pool, which reconfigures torch's OpenMP runtime (why and the
    figures: ``benchmarks/crf_kernels.md``, design figures).
    """
    try:
        import numba
    except ImportError as err:
        return err
    jit = numba.njit(cache=True, nogil=True)
    modules = (vars(loops), vars(cpu_exp), vars(cpu_logspace))
    for name in loops._HELPERS:  # numba resolves a caller's globals when it compiles it
        compiled = jit(next(names[name] for names in modules if name in names))
        for names in modules:
            if name in names:
                names[name] = compiled
    kernels = {
        name: jit(next(names[name] for names in modules if name in names))
        for name in loops._KERNELS
    }
    return SimpleNamespace(numba=numba, **kernels)


def available() -> bool:
    """Whether numba imports, so that the fused kernels can run."""
    return not isinstance(_load(), ImportError)


def _kernels() -> SimpleNamespace:
    """The compiled kernels (RuntimeError naming the cause when numba cannot be imported)."""
    loaded = _load()
    if isinstance(loaded, ImportError):
        raise RuntimeError(
            "chaincrf.crf.kernels.fused.custom_ops needs numba (pip install numba), which failed to "
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
    """exp(em - M) (B, T, K) and M (B, T), the maxima over tags: torch's vectorised exp (the
    kernels' exp-space rows then need no transcendental per tag; see cpu_exp), or for small
    batches one compiled loop (see tuning.FUSED.numba_exp_max_btk)."""
    em = emissions.detach()
    if em.numel() <= tuning.FUSED.numba_exp_max_btk:
        P, M = (
            np.empty(em.shape, _NUMPY_DTYPES[em.dtype]),
            np.empty(em.shape[:2], _NUMPY_DTYPES[em.dtype]),
        )
        _kernels()._exp_emissions_kernel(_as_numpy(em), P, M)
        return P, M
    top = em.amax(-1) if em.shape[2] > 0 else em.sum(-1)
    return _as_numpy((em - top.unsqueeze(-1)).exp_()), _as_numpy(top)


_NO_TAGS = torch.empty(0, 0, dtype=torch.long)


def _problems(B: int) -> np.ndarray:
    return np.empty((B, 3), np.int64)


def _raise_problems(problems: np.ndarray, found: int, emissions: Tensor, tags: Tensor) -> None:
    """The eager kernel's errors, in its order: mask gaps, scores, emissions, tags."""
    rows = np.flatnonzero(problems[:, 0] >= 0)
    if rows.size:
        raise errors.mask_gap(int(rows[0]))
    if found % 4:
        raise errors.non_finite_scores(
            ("start_transitions", "end_transitions", "transitions")[found % 4 - 1]
        )
    rows = np.flatnonzero(problems[:, 1] >= 0)
    if rows.size:
        row, position = int(rows[0]), int(problems[rows[0], 1])
        what = "NaN" if bool(torch.isnan(emissions[row, position]).any()) else "+inf"
        raise errors.non_finite_emissions(row, position, what)
    rows = np.flatnonzero(problems[:, 2] >= 0)
    if rows.size:
        row, position = int(rows[0]), int(problems[rows[0], 2])
        raise errors.bad_tag(emissions.shape[2], int(tags[row, position]), row, position)


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
    lengths = np.empty(mask.shape[0], np.int64)
    problems = _problems(mask.shape[0])
    if scores is None:
        zero = np.zeros(1)
        arrays = [zero, zero.reshape(1, 1), zero]
    else:
        arrays = _scores(*scores)
    found = kernels._ragged_kernel(
        _as_numpy(mask), _as_numpy(emissions), _as_numpy(tags), *arrays,
        validate and scores is not None, lengths, problems,
    )  # fmt: skip
    if found:
        _raise_problems(problems, found, emissions, tags)
    return torch.from_numpy(lengths)


def _log_partition_impl(
    emissions: Tensor, mask: Tensor, start: Tensor, transitions: Tensor, end: Tensor, validate: bool
) -> tuple[Tensor, Tensor]:
    B = emissions.shape[0]
    log_z = np.empty(B, _NUMPY_DTYPES[emissions.dtype])
    lengths, problems = np.empty(B, np.int64), _problems(B)
    args = (
        _as_numpy(emissions), *_exp_emissions(emissions), _as_numpy(mask),
        *_scores(start, transitions, end), validate, log_z, lengths, problems,
    )  # fmt: skip
    kernel = _kernels()._log_partition_kernel
    found = _over_rows(kernel, B, _threads(*emissions.shape), args, "rrrr....rrr")
    if found:
        _raise_problems(problems, found, emissions, _NO_TAGS)
    return torch.from_numpy(log_z), torch.from_numpy(lengths)


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
    B = emissions.shape[0]
    llh = np.empty(B, _NUMPY_DTYPES[emissions.dtype])
    gold, lengths, problems = np.zeros(B), np.empty(B, np.int64), _problems(B)
    args = (
        _as_numpy(emissions), *_exp_emissions(emissions), _as_numpy(tags), _as_numpy(mask),
        *_scores(start, transitions, end), validate, llh, gold, lengths, problems,
    )  # fmt: skip
    kernel = _kernels()._log_likelihood_kernel
    found = _over_rows(kernel, B, _threads(*emissions.shape), args, "rrrrr....rrrr")
    if found:
        _raise_problems(problems, found, emissions, tags)
    if constrained:
        _check_gold(gold)
    return torch.from_numpy(llh), torch.from_numpy(lengths)


def _forward_backward_impl(
    grad: Tensor,
    emissions: Tensor,
    tags: Tensor,
    lengths: Tensor,
    start: Tensor,
    transitions: Tensor,
    end: Tensor,
    pairwise: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor, np.ndarray, np.ndarray]:
    """Gradients of grad . log Z (tags empty) or grad . (gold - log Z) w.r.t. emissions and the
    three scores (without ``pairwise``, the transitions' gradient is left empty: marginals),
    then each row's log Z and gold score (float64 numpy, the gold scores 0 without tags), which
    the same pass computes."""
    arrays = (_as_numpy(emissions), _as_numpy(tags), _as_numpy(lengths))
    weights = _as_numpy(grad, torch.float64)
    scores = (start, transitions, end)
    return _forward_backward_arrays(emissions, *arrays, weights, scores, pairwise)


def _likelihood_gradient_impl(
    emissions: Tensor,
    tags: Tensor,
    mask: Tensor,
    start: Tensor,
    transitions: Tensor,
    end: Tensor,
    validate: bool,
    weight: float = 1.0,
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor, Tensor], np.ndarray, np.ndarray]:
    """The log-likelihood's pass with a gradient: the lengths and checks (see _lengths_impl),
    then the forward-backward kernel with every row's weight ``weight`` (-1: the negative
    log-likelihood's), on one conversion of the inputs. Returns (lengths, the gradients of
    ``weight`` times the summed log-likelihood (emissions, start, transitions, end), log Z,
    gold)."""
    em, tg, mk = _as_numpy(emissions), _as_numpy(tags), _as_numpy(mask)
    B = em.shape[0]
    lengths, problems = np.empty(B, np.int64), _problems(B)
    scores = (start, transitions, end)
    found = _kernels()._ragged_kernel(mk, em, tg, *_scores(*scores), validate, lengths, problems)
    if found:
        _raise_problems(problems, found, emissions, tags)
    d_em, d_start, d_trans, d_end, log_z, gold = _forward_backward_arrays(
        emissions, em, tg, lengths, np.full(B, weight), scores
    )
    return torch.from_numpy(lengths), (d_em, d_start, d_trans, d_end), log_z, gold


def _forward_backward_arrays(
    emissions: Tensor,
    em: np.ndarray,
    tags: np.ndarray,
    lengths: np.ndarray,
    weights: np.ndarray,
    scores: tuple[Tensor, Tensor, Tensor],
    pairwise: bool = True,
) -> tuple[Tensor, Tensor, Tensor, Tensor, np.ndarray, np.ndarray]:
    """_forward_backward_impl on numpy views of its inputs (em: of ``emissions``)."""
    kernels = _kernels()
    B, _, K = emissions.shape
    d_em = np.empty(emissions.shape, _NUMPY_DTYPES[emissions.dtype])
    C = min(B, loops._MAX_CHUNKS)
    parts = np.zeros((C, K)), np.zeros((C, K)), np.zeros((C, K, K) if pairwise else (C, 0, 0))
    log_z, gold = np.zeros(B), np.zeros(B)
    args = (
        em, *_exp_emissions(emissions), tags, lengths, weights, *_scores(*scores), d_em, *parts,
        log_z, gold,
    )  # fmt: skip
    threads = min(_threads(*emissions.shape), C)
    if threads == 1:
        kernels._forward_backward_kernel(*args, 0, C)
    else:
        _split(C, threads, lambda lo, hi: kernels._forward_backward_kernel(*args, lo, hi))
    d_start, d_end, d_trans = (x[0] if C == 1 else x.sum(0) for x in parts)  # a fixed order
    start, transitions, end = scores
    return (
        torch.from_numpy(d_em),
        _from_numpy(d_start, start.dtype),
        _from_numpy(d_trans, transitions.dtype),
        _from_numpy(d_end, end.dtype),
        log_z,
        gold,
    )


def _viterbi_impl(
    emissions: Tensor, mask: Tensor, start: Tensor, transitions: Tensor, end: Tensor, validate: bool
) -> tuple[Tensor, Tensor, Tensor]:
    B, T, K = emissions.shape
    paths, best = np.empty((B, T), np.int64), np.empty(B, _NUMPY_DTYPES[emissions.dtype])
    lengths, problems = np.empty(B, np.int64), _problems(B)
    args = (
        _as_numpy(emissions), _as_numpy(mask), *_scores(start, transitions, end), validate,
        paths, best, lengths, problems,
    )  # fmt: skip
    threads = _threads(B, T, K, viterbi=True)
    found = _over_rows(_kernels()._viterbi_kernel, B, threads, args, "rr....rrrr")
    if found:
        _raise_problems(problems, found, emissions, _NO_TAGS)
    return torch.from_numpy(paths), torch.from_numpy(best), torch.from_numpy(lengths)


def _marginals_impl(
    emissions: Tensor, mask: Tensor, start: Tensor, transitions: Tensor, end: Tensor, validate: bool
) -> Tensor:
    lengths = _lengths_impl(mask, emissions, validate, (start, transitions, end))
    ones = torch.ones(emissions.shape[0], dtype=torch.float64)
    return _forward_backward_impl(
        ones, emissions, _NO_TAGS, lengths, start, transitions, end, pairwise=False
    )[0]


def _check_gold(gold: np.ndarray) -> None:
    rows = np.flatnonzero(np.isneginf(gold))
    if rows.size:
        raise errors.forbidden_gold_path(int(rows[0]))


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
    if not tracing.is_compiling():
        _kernels()
        loops._check_lengths(lengths.numpy(), T)  # compiled by _load
    return torch.arange(T) < lengths.unsqueeze(1)
