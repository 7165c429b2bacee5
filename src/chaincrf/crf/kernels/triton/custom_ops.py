"""The Triton CRF kernels (:mod:`chaincrf.crf.kernels.triton.launch`) as torch ops, for traced
calls.

Each op has a fake (shape-only) implementation, so that torch.compile and torch.export trace
it. The ops have no autograd kernel (:func:`chaincrf.crf.kernels.library.direct_op`: the
dispatcher calls them with no Python layer in between); the likelihood's gradient is carried
by :class:`CompiledLikelihood`, which torch.compile traces: the forward op, and the backward
op for its gradient. Inputs are batch-first; ``mask`` is uint8 (B, T), 1 at kept positions,
gaps allowed (a bool mask viewed as uint8 costs nothing). Transitions are indexed
``[from, to]``; forbidden moves are ``-inf`` scores. No op reads a value back to the host:
each is one kernel launch (the backward's per-program sums add one reduction when the batch
spans several programs).

* ``chaincrf::triton_forward`` -> (``scale * (gold - log Z)`` with tags, else log Z (B,);
  log Z, the gold scores, the exp-space kernel's log-space rows (3, B), and with ``check``
  a fourth row, 1 where the row holds a value ``validate`` rejects; the forward messages
  (B, T, K) or (0, 0, 0); an empty (0, 0) tensor);
* ``chaincrf::triton_backward`` -> the emissions' gradient and the score gradients stacked
  (K + 2, K): start, transitions (K rows), end;
* ``chaincrf::triton_viterbi`` -> (best paths (B, T) int64, -1 where masked; scores (B,));
* ``chaincrf::triton_marginals`` -> tag marginals (B, T, K), 0 where masked.

The public calls (:func:`forward`, :func:`viterbi`, :func:`marginals`) run these ops when a
graph is traced; eager calls launch the kernels directly (the likelihood through
:class:`chaincrf.crf.kernels.triton.autograd.Likelihood`, whose backward adds the score
gradients into a buffer the forward zeroed: one launch fewer, which a traced graph cannot
have, as AOTAutograd cannot save a buffer that the backward mutates).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from chaincrf.crf import tracing
from chaincrf.crf.kernels.library import direct_op
from chaincrf.crf.kernels.triton import launch as kernels
from chaincrf.crf.kernels.triton.autograd import Likelihood

__all__ = ["CompiledLikelihood", "forward", "marginals", "viterbi"]

_DEVICES = ("CPU", "CUDA")  # CPU tensors: Triton's interpreter (TRITON_INTERPRET=1)


def _forward_kernel(
    emissions: Tensor,
    tags: Tensor | None,
    mask: Tensor,
    start: Tensor,
    transitions: Tensor,
    end: Tensor,
    scale: float,
    keep_alpha: bool,
    check: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    em, (start, transitions, end) = kernels.prepared(emissions, start, transitions, end)
    tags = None if tags is None else tags.contiguous()
    mask = mask.contiguous()
    args = (em, tags, mask, start, transitions, end, scale, keep_alpha, False, check)
    return kernels.forward(*args)


def _forward_fake(
    emissions: Tensor,
    tags: Tensor | None,
    mask: Tensor,
    start: Tensor,
    transitions: Tensor,
    end: Tensor,
    scale: float,
    keep_alpha: bool,
    check: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    B, T, K = emissions.shape
    dtype = kernels.compute_dtype(emissions)
    return (
        emissions.new_empty(B, dtype=dtype),
        emissions.new_empty((4 if check else 3, B), dtype=dtype),
        emissions.new_empty((B, T, K) if keep_alpha else (0, 0, 0), dtype=dtype),
        emissions.new_empty((0, 0), dtype=dtype),
    )


_forward_op = direct_op(
    "triton_forward(Tensor emissions, Tensor? tags, Tensor mask, Tensor start, "
    "Tensor transitions, Tensor end, float scale, bool keep_alpha, bool check) "
    "-> (Tensor, Tensor, Tensor, Tensor)",
    _forward_kernel,
    _forward_fake,
    differentiable=(0, 3, 4, 5),
    devices=_DEVICES,
)


def _backward_kernel(
    grad: Tensor,
    emissions: Tensor,
    tags: Tensor | None,
    mask: Tensor,
    start: Tensor,
    transitions: Tensor,
    end: Tensor,
    alpha: Tensor,
    log_z: Tensor,
    flags: Tensor,
    scale: float,
) -> tuple[Tensor, Tensor]:
    em, (start, transitions, end) = kernels.prepared(emissions, start, transitions, end)
    mask = mask.contiguous()
    tags = None if tags is None else tags.contiguous()
    if alpha.shape != em.shape:  # not kept by the forward call: recompute them
        out, aux, alpha, _ = kernels.forward(em, tags, mask, start, transitions, end, scale, True)
        log_z = aux[0] if tags is not None else out
        flags = aux[2]
    d_em, d_par = kernels.backward(
        grad,
        em,
        tags,
        mask,
        transitions,
        end,
        alpha,
        log_z.contiguous(),
        scale,
        True,
        None,
        flags.contiguous(),
    )
    return d_em.to(emissions.dtype), d_par


def _backward_fake(
    grad: Tensor,
    emissions: Tensor,
    tags: Tensor | None,
    mask: Tensor,
    start: Tensor,
    transitions: Tensor,
    end: Tensor,
    alpha: Tensor,
    log_z: Tensor,
    flags: Tensor,
    scale: float,
) -> tuple[Tensor, Tensor]:
    K = emissions.shape[2]
    d_par = emissions.new_empty((K + 2, K), dtype=kernels.compute_dtype(emissions))
    return emissions.new_empty(emissions.shape), d_par


_backward_op = direct_op(
    "triton_backward(Tensor grad, Tensor emissions, Tensor? tags, Tensor mask, Tensor start, "
    "Tensor transitions, Tensor end, Tensor alpha, Tensor log_z, Tensor flags, float scale) "
    "-> (Tensor, Tensor)",
    _backward_kernel,
    _backward_fake,
    differentiable=(0, 1, 4, 5, 6),  # a double backward: not supported
    devices=_DEVICES,
)


class CompiledLikelihood(torch.autograd.Function):
    """What torch.compile traces for the likelihood or log-partition: ``triton_forward``
    (keeping the forward messages when a gradient will be needed), and ``triton_backward``
    for its gradient (the ops have no autograd kernel of their own)."""

    @staticmethod
    def forward(
        emissions: Tensor,
        tags: Tensor | None,
        mask: Tensor,
        start: Tensor,
        transitions: Tensor,
        end: Tensor,
        scale: float,
        keep_alpha: bool,
        check: bool,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        args = (emissions, tags, mask, start, transitions, end, scale, keep_alpha, check)
        out: tuple[Tensor, Tensor, Tensor, Tensor] = _forward_op(*args)
        return out

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        emissions, tags, mask, start, transitions, end, scale, _keep, _check = inputs
        out, aux, alpha, acc = output
        log_z = aux[0] if tags is not None else out
        ctx.save_for_backward(emissions, tags, mask, start, transitions, end, alpha, log_z, aux[2])
        ctx.mark_non_differentiable(aux, alpha, acc)
        ctx.scale = scale

    @staticmethod
    def backward(
        ctx: Any, grad: Tensor, *_unused: Tensor | None
    ) -> tuple[Tensor, None, None, Tensor, Tensor, Tensor, None, None, None]:
        emissions, tags, mask, start, transitions, end, alpha, log_z, flags = ctx.saved_tensors
        args = (grad, emissions, tags, mask, start, transitions, end, alpha, log_z, flags)
        d_em, d_par = _backward_op(*args, ctx.scale)
        K = d_par.shape[1]
        grads = (d_par[0], d_par[1 : K + 1], d_par[K + 1])
        d_start, d_trans, d_end = (g.to(s.dtype) for g, s in zip(grads, (start, transitions, end)))
        return d_em, None, None, d_start, d_trans, d_end, None, None, None


def _viterbi(
    emissions: Tensor, mask: Tensor, start: Tensor, transitions: Tensor, end: Tensor
) -> tuple[Tensor, Tensor]:
    em, (start, transitions, end) = kernels.prepared(emissions, start, transitions, end)
    return kernels.viterbi(
        em, mask if mask.is_contiguous() else mask.contiguous(), start, transitions, end
    )


def _viterbi_fake(
    emissions: Tensor, mask: Tensor, start: Tensor, transitions: Tensor, end: Tensor
) -> tuple[Tensor, Tensor]:
    B, T, _ = emissions.shape
    return (
        emissions.new_empty((B, T), dtype=torch.long),
        emissions.new_empty(B, dtype=kernels.compute_dtype(emissions)),
    )


_viterbi_op = direct_op(
    "triton_viterbi(Tensor emissions, Tensor mask, Tensor start, Tensor transitions, "
    "Tensor end) -> (Tensor, Tensor)",
    _viterbi,
    _viterbi_fake,
    differentiable=(0, 2, 3, 4),
    devices=_DEVICES,
)


def _marginals(
    emissions: Tensor, mask: Tensor, start: Tensor, transitions: Tensor, end: Tensor
) -> Tensor:
    em, (start, transitions, end) = kernels.prepared(emissions, start, transitions, end)
    mask = mask.contiguous()
    log_z, aux, alpha, _ = kernels.forward(em, None, mask, start, transitions, end, 1.0, True)
    one = log_z.new_ones(())  # a unit weight for every row: read at stride 0
    d_em, _ = kernels.backward(
        one, em, None, mask, transitions, end, alpha, log_z, 1.0, False, None, aux[2]
    )
    return d_em.to(
        kernels.compute_dtype(emissions)
    )  # as the fake says (half emissions: written as read)


def _marginals_fake(
    emissions: Tensor, mask: Tensor, start: Tensor, transitions: Tensor, end: Tensor
) -> Tensor:
    return emissions.new_empty(emissions.shape, dtype=kernels.compute_dtype(emissions))


_marginals_op = direct_op(
    "triton_marginals(Tensor emissions, Tensor mask, Tensor start, Tensor transitions, "
    "Tensor end) -> Tensor",
    _marginals,
    _marginals_fake,
    differentiable=(0, 2, 3, 4),
    devices=_DEVICES,
)


# ------------------------------------------------------------------------------ public calls


def _tracing() -> bool:
    return tracing.is_compiling()


def _uint8(mask: Tensor) -> Tensor:
    """The mask as uint8: a bool mask viewed as it is eagerly (no launch), converted in a
    traced graph (Inductor fuses it; torch 2.11's Inductor cannot lower a bool tensor's
    ``view(torch.uint8)``: "torch.bool is not supported by torch.iinfo")."""
    if mask.dtype == torch.bool and not _tracing():
        return mask.view(torch.uint8)
    return mask.to(torch.uint8)


def forward(
    emissions: Tensor,
    tags: Tensor | None,
    mask: Tensor,
    start: Tensor,
    transitions: Tensor,
    end: Tensor,
    scale: float = 1.0,
    total: bool = False,
    gold: bool = True,
    check: bool = False,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``scale * (gold score - log Z)`` of each row with ``tags``, else log Z (with ``total``,
    their sum); differentiable w.r.t. the emissions and the three score tensors.

    Args:
        emissions: float (batch, seq_len, num_tags), unnormalised scores (float16 and
            bfloat16 are computed in float32).
        tags: long (batch, seq_len) gold tags, read where the mask is on (a tag outside
            [0, num_tags) there makes the row's result NaN; nothing is read outside the
            tensors), or None.
        mask: bool or uint8 (batch, seq_len), on at kept positions (gaps allowed).
        start: (num_tags,) scores of starting in each tag, ``-inf`` where forbidden.
        transitions: (num_tags, num_tags), ``transitions[i, j]`` scores tag i followed by j.
        end: (num_tags,) scores of ending in each tag.
        scale: the factor (-1 gives the negative log-likelihood in the same launch).
        total: return the rows' sum (0-d) as ``out``, summed in this call (an eager call's
            backward then runs no reduction node).
        gold: also return the gold scores (with ``tags``; False: None, and an eager call
            costs the host less).
        check: also return each row's flag (1.0) of a value ``validate`` rejects: a NaN or
            ``+inf`` score, or where the mask is on a NaN or ``+inf`` emission or a tag
            outside [0, num_tags); computed in the forward launch (False: None).

    Returns:
        ``out`` (batch,), or 0-d with ``total``, in float32 (float64 for float64
        emissions): 0 for an empty row; log Z ``-inf`` for a row with no allowed path (whose
        gradients are 0); the gold scores (batch,) (``-inf`` for a forbidden gold path), or
        None without ``tags`` or ``gold``; and the flags (batch,) with ``check``, else None.
    """
    keep = torch.is_grad_enabled() and (
        emissions.requires_grad
        or start.requires_grad
        or transitions.requires_grad
        or end.requires_grad
    )
    traced = _tracing()
    # the backward adds the score gradients into a buffer this launch zeroes (one launch
    # fewer), unless the results must not vary in their last bits (deterministic mode) or a
    # graph is being traced (where a graph input must not be mutated)
    adding = keep and not traced and not torch.are_deterministic_algorithms_enabled()
    mask8 = _uint8(mask)
    gold = gold and tags is not None
    if not traced:
        options = (float(scale), keep, adding, total, gold or check, check)
        args = (emissions, tags, mask8, start, transitions, end, options)
        result = Likelihood.apply(*args)  # type: ignore[no-untyped-call]  # apply: unannotated
        if not (gold or check):
            return result, None, None
        out, aux = result
    else:
        traced_args = (emissions, tags, mask8, start, transitions, end, float(scale), keep, check)
        out, aux, _alpha, _acc = CompiledLikelihood.apply(*traced_args)  # type: ignore[no-untyped-call]  # (unannotated)
        out = out.sum() if total else out
    return out, (aux[1] if gold else None), (aux[3] if check else None)


def viterbi(
    emissions: Tensor, mask: Tensor, start: Tensor, transitions: Tensor, end: Tensor
) -> tuple[Tensor, Tensor]:
    """Best path of each row (ties to the lowest tag index) and its score; not differentiable.

    Args:
        emissions, mask, start, transitions, end: as in :func:`forward`.

    Returns:
        ``paths`` int64 (batch, seq_len), -1 where the mask is off and in a row with no
        allowed path; ``scores`` (batch,) (0 for an empty row, ``-inf`` with no allowed path).
    """
    em, start, transitions, end = (x.detach() for x in (emissions, start, transitions, end))
    if not _tracing():  # eager: the launch without the custom op's dispatch (host time)
        return _viterbi(em, _uint8(mask), start, transitions, end)
    best: tuple[Tensor, Tensor] = _viterbi_op(em, _uint8(mask), start, transitions, end)
    return best  # (a custom op's call is typed Any)


def marginals(
    emissions: Tensor, mask: Tensor, start: Tensor, transitions: Tensor, end: Tensor
) -> Tensor:
    """Posterior tag probabilities (batch, seq_len, num_tags); not differentiable.

    Args:
        emissions, mask, start, transitions, end: as in :func:`forward`.

    Returns:
        (batch, seq_len, num_tags): each kept position's row sums to 1; 0 where the mask is
        off and in a row with no allowed path.
    """
    em, start, transitions, end = (x.detach() for x in (emissions, start, transitions, end))
    if not _tracing():  # eager: the launches without the custom op's dispatch (host time)
        return _marginals(em, _uint8(mask), start, transitions, end)
    probs: Tensor = _marginals_op(em, _uint8(mask), start, transitions, end)
    return probs  # (a custom op's call is typed Any)
