"""The Python functions that launch the Triton kernels: the log-space ones
(:mod:`chaincrf.crf.kernels.triton.programs`) and, for many tags in float32, the exp-space
ones whose step is a matrix product (:mod:`chaincrf.crf.kernels.triton.dot`; the choice:
``chaincrf.crf.tuning.TRITON``). Each pass is one launch and reads nothing back to the host.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from chaincrf.crf import tracing, tuning
from chaincrf.crf.kernels.triton.dot import _dot_backward_kernel, _dot_forward_kernel
from chaincrf.crf.kernels.triton.programs import _backward_kernel, _forward_kernel

__all__ = ["backward", "blocks", "compute_dtype", "dot_path", "forward", "prepared", "viterbi"]

DOT_ROWS = 16
"""Rows per program of the exp-space kernels (``tl.dot`` needs at least 16)."""
DOT_MAX_TAGS = 128
"""The exp-space kernels keep (K, K) tiles in registers: beyond 128 tags, the log-space ones."""
DOT_SHARED_BYTES = 213_248
"""Shared memory per block of the exp-space kernels at 128 tags (``BLOCK_K`` 128; the backward's,
the larger; 65,792 at 64), compiled for sm_80 and sm_90 by Triton 3.6
(``scripts/check_triton_compile.py``). An sm_90 block gets 227 KiB, an A100's 163 KiB and
sm_86/sm_89's 99 KiB: there, beyond 64 tags, the launch would fail ("out of resource"), so the
log-space kernels run instead."""


def _pow2(n: int) -> int:
    """The next power of two >= n (plain Python: Triton's own is a constexpr function whose
    call costs microseconds on the host, every launch)."""
    return 1 << max(0, n - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def blocks(B: int, K: int) -> tuple[int, int, int]:
    """(BLOCK_B rows per program, BLOCK_K, num_warps) for ``B`` rows of ``K`` tags: the tile
    covers K; a program takes several rows while its (rows, K, K) step tile stays within
    4,096 entries and the rows still spread over about a hundred programs."""
    block_k = _pow2(max(K, 1))
    by_tile = max(1, 4096 // (block_k * block_k))
    by_rows = _pow2(max(1, -(-B // 128)))
    block_b = min(by_tile, by_rows)
    size = block_b * block_k * block_k
    return block_b, block_k, 1 if size <= 256 else 2 if size <= 1024 else 4


def compute_dtype(em: Tensor) -> torch.dtype:
    """The dtype the kernels compute in for emissions ``em``: float64 for float64, else
    float32 (half-precision emissions are read as they are)."""
    return torch.float64 if em.dtype == torch.float64 else torch.float32


def prepared(em: Tensor, *scores: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Contiguous emissions, and the scores contiguous in the compute dtype, as the launches
    take them (no copy, and no call, when they are already: each call costs microseconds on
    the host)."""
    dtype = compute_dtype(em)
    ready = [
        s if s.dtype == dtype and s.is_contiguous() else s.to(dtype).contiguous() for s in scores
    ]
    return (em if em.is_contiguous() else em.contiguous()), ready


def dot_path(K: int, dtype: torch.dtype, device: torch.device) -> bool:
    """Whether the likelihood's passes on ``K`` tags in ``dtype`` (the compute dtype) run the
    exp-space kernels on ``device`` (``tuning.TRITON.dot_min_tags``; float32 only, at most
    128 tags, 64 where a block's shared memory is under :data:`DOT_SHARED_BYTES`)."""
    return dtype == torch.float32 and tuning.TRITON.dot_min_tags <= K <= _dot_max_tags(device)


@functools.cache
def _dot_max_tags(device: torch.device) -> int:
    if device.type != "cuda":  # the interpreter: no limit of a device's
        return DOT_MAX_TAGS
    properties = torch.cuda.get_device_properties(device)
    shared = getattr(
        properties, "shared_memory_per_block_optin", properties.shared_memory_per_block
    )
    return DOT_MAX_TAGS if shared >= DOT_SHARED_BYTES else DOT_MAX_TAGS // 2


def _dot_blocks(K: int) -> tuple[int, int]:
    """(BLOCK_K, num_warps) of the exp-space kernels (``DOT_ROWS`` rows per program)."""
    block_k = max(16, _pow2(K))
    return block_k, 4 if block_k <= 64 else 8


def forward(
    em: Tensor,
    tags: Tensor | None,
    mask: Tensor,
    start: Tensor,
    trans: Tensor,
    end: Tensor,
    scale: float,
    keep_alpha: bool,
    accumulator: bool = False,
    check: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The forward pass: ``scale * (gold - log Z)`` with ``tags``, else log Z.

    Args:
        em: float contiguous (batch, seq_len, num_tags), unnormalised scores.
        tags: int64 contiguous (batch, seq_len) gold tags (read where the mask is on), or None.
        mask: uint8 contiguous (batch, seq_len), 1 at kept positions (gaps allowed).
        start, end: (num_tags,) and trans: (num_tags, num_tags) ``[from, to]`` contiguous
            scores in the compute dtype, ``-inf`` where forbidden.
        scale: the factor of the log-likelihood (-1 gives the negative log-likelihood).
        keep_alpha: also return the forward messages (for :func:`backward`).
        accumulator: also return a zeroed (num_tags + 2, num_tags) buffer, zeroed by this
            launch, that :func:`backward` adds the score gradients into (no launch of its own).
        check: also flag each row that meets a value ``validate`` rejects (a NaN or ``+inf``
            score; a NaN or ``+inf`` emission, or a tag outside [0, num_tags), where the mask
            is on), in the same pass: ``aux[3]``.

    Returns:
        ``out`` (batch,) in the compute dtype (0 for an empty row), ``aux`` (3, batch): log Z
        and the gold score (with ``tags``) and the rows the exp-space kernel recomputed in log
        space (1; written by that kernel only: give it to :func:`backward`); with ``check``
        (4, batch), the fourth row 1 where the row holds a rejected value, else 0; ``alpha``
        (batch, seq_len, num_tags) or (0, 0, 0) without ``keep_alpha``, and the accumulator
        ((0, 0) without).
    """
    B, T, K = em.shape
    dtype = compute_dtype(em)
    out = em.new_empty(B, dtype=dtype)
    aux = em.new_empty((4 if check else 3, B), dtype=dtype)  # every entry written
    alpha = em.new_empty((B, T, K) if keep_alpha else (0, 0, 0), dtype=dtype)
    acc = em.new_empty((K + 2, K) if accumulator else (0, 0), dtype=dtype)
    if B == 0:
        return out, aux, alpha, acc.zero_()
    gold = tags is not None
    dot = dot_path(K, dtype, em.device)
    tracing.path_taken("triton_dot" if dot else "triton_log", B)
    if dot:
        block_k, warps = _dot_blocks(K)
        setting = tuning.TRITON
        _dot_forward_kernel[(_cdiv(B, DOT_ROWS),)](
            em, tags if gold else mask, mask, start, trans, end, out, aux,
            alpha if keep_alpha else out, acc if accumulator else out, (K + 2) * K,
            B, T, K, float(scale),
            ZERO_ACC=accumulator, GOLD=gold, STORE_ALPHA=keep_alpha, BLOCK_B=DOT_ROWS,
            BLOCK_K=block_k, BLOCK_ACC=_pow2((K + 2) * K), SPAN=setting.span_limit,
            FLOOR=setting.floor, PRECISION=setting.dot_precision, CHECK=check,
            num_warps=warps,
        )  # fmt: skip
        return out, aux, alpha, acc
    block_b, block_k, warps = blocks(B, K)
    _forward_kernel[(_cdiv(B, block_b),)](
        em, tags if gold else mask, mask, start, trans, end, out, aux,
        alpha if keep_alpha else out, out, acc if accumulator else out, (K + 2) * K,
        B, T, K, float(scale),
        ZERO_ACC=accumulator, GOLD=gold, STORE_ALPHA=keep_alpha, MAX_PLUS=False,
        BLOCK_B=block_b, BLOCK_K=block_k, BLOCK_ACC=_pow2((K + 2) * K), CHECK=check,
        num_warps=warps,
    )  # fmt: skip
    return out, aux, alpha, acc


def backward(
    grad: Tensor,
    em: Tensor,
    tags: Tensor | None,
    mask: Tensor,
    trans: Tensor,
    end: Tensor,
    alpha: Tensor,
    log_z: Tensor,
    scale: float,
    pairwise: bool,
    acc: Tensor | None = None,
    flags: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Gradients of ``sum(grad * out)`` for :func:`forward`'s ``out``; the tag marginals are
    those of a unit gradient without ``tags``.

    Args:
        grad: (batch,) incoming gradient, any stride (an expanded scalar is read in place).
        em, tags, mask, trans, end, scale: as in :func:`forward`.
        alpha: (batch, seq_len, num_tags) and log_z (batch,): from :func:`forward`.
        pairwise: also sum the pairwise marginals (the transitions' gradient).
        acc: :func:`forward`'s zeroed accumulator: the score gradients are added into it
            (atomically: the order of the additions, so the last bits, can vary between
            runs), and it is returned; None: each program writes its own sums, added by one
            more launch (deterministic).
        flags: (batch,) :func:`forward`'s ``aux[2]``: the rows the exp-space forward
            recomputed in log space (read by the exp-space backward only; either kernel is
            exact on any flags: they choose the recursion, not the result).

    Returns:
        ``d_em`` (batch, seq_len, num_tags), 0 where the mask is off, and ``d_par``
        (num_tags + 2, num_tags): the start scores' gradient, the transitions' (num_tags
        rows; 0 without ``pairwise``) and the end scores'. All 0 for a row with no allowed path.
    """
    B, T, K = em.shape
    dtype = alpha.dtype
    d_em = em.new_empty((B, T, K))  # in the emissions' dtype (half: the kernels cast on store)
    if B == 0:
        return d_em, (acc if acc is not None else em.new_zeros((K + 2, K), dtype=dtype))
    dot = dot_path(K, dtype, em.device) and flags is not None
    if dot:
        block_b = DOT_ROWS
        block_k, warps = _dot_blocks(K)
    else:
        block_b, block_k, warps = blocks(B, K)
    programs = _cdiv(B, block_b)
    atomic = acc is not None
    if acc is not None:
        d_par = acc
    else:  # every entry written by the kernel, but the transitions' without ``pairwise``
        d_par = (em.new_empty if pairwise else em.new_zeros)((programs, K + 2, K), dtype=dtype)
    stride = grad.stride(0) if grad.dim() else 0
    if dot:
        setting = tuning.TRITON
        _dot_backward_kernel[(programs,)](
            grad, em, tags if tags is not None else mask, mask, trans, end, alpha, log_z,
            flags, d_em, d_par, B, T, K, stride, float(scale),
            GOLD=tags is not None, PAIRWISE=pairwise, ATOMIC=atomic, BLOCK_B=block_b,
            BLOCK_K=block_k, SPAN=setting.span_limit, FLOOR=setting.floor,
            PRECISION=setting.dot_precision, num_warps=warps,
        )  # fmt: skip
    else:
        _backward_kernel[(programs,)](
            grad, em, tags if tags is not None else mask, mask, trans, end, alpha, log_z, d_em,
            d_par, B, T, K, stride, float(scale),
            GOLD=tags is not None, PAIRWISE=pairwise, ATOMIC=atomic,
            BLOCK_B=block_b, BLOCK_K=block_k, num_warps=warps,
        )  # fmt: skip
    if atomic:
        return d_em, d_par
    return d_em, d_par[0] if programs == 1 else d_par.sum(0)


def viterbi(
    em: Tensor, mask: Tensor, start: Tensor, trans: Tensor, end: Tensor
) -> tuple[Tensor, Tensor]:
    """Best path of each row and its score.

    Args:
        em, mask, start, trans, end: as in :func:`forward`.

    Returns:
        ``paths`` int64 (batch, seq_len), -1 where the mask is off and in a row with no
        allowed path; ``scores`` (batch,) in the compute dtype (0 for an empty row, ``-inf``
        with no allowed path). Ties go to the smallest tag index, as ``torch.argmax``.
    """
    B, T, K = em.shape
    paths = torch.empty((B, T), dtype=torch.long, device=em.device)
    scores = em.new_empty(B, dtype=compute_dtype(em))
    if B == 0 or T == 0:
        return paths, scores.zero_()
    back = torch.empty((B, T, K), dtype=torch.int32, device=em.device)  # read where written
    block_b, block_k, warps = blocks(B, K)
    _forward_kernel[(_cdiv(B, block_b),)](
        em, mask, mask, start, trans, end, scores, scores, back, paths, scores, 0, B, T, K, 1.0,
        ZERO_ACC=False, GOLD=False, STORE_ALPHA=False, MAX_PLUS=True,
        BLOCK_B=block_b, BLOCK_K=block_k, BLOCK_ACC=1, num_warps=warps,
    )  # fmt: skip
    return paths, scores
