"""The Triton CRF kernels (:mod:`chaincrf.crf.kernels.gpu_triton`) as ``torch.library`` custom ops.

Each op has a fake (shape-only) implementation, so that torch.compile and torch.export can
trace it, and the log-partition has its autograd formula (the backward kernel), so that it is
differentiable eagerly and compiled alike. Inputs are batch-first; ``lengths`` (B,) are the
rows' lengths (a left-aligned mask's row sums), in any integer dtype on the emissions' device.
Transitions are indexed ``[from, to]``; forbidden moves are ``-inf`` scores.

* ``chaincrf::triton_log_partition`` -> (log Z (B,), forward messages (B, T, K), or (0, 0, 0)
  without ``keep_alpha``);
* ``chaincrf::triton_log_partition_backward`` -> gradients of ``sum(grad * log Z)`` for the
  emissions and the three score tensors (recomputing the forward messages when they were not
  kept);
* ``chaincrf::triton_viterbi`` -> (best paths (B, T) int64, -1 padded; their scores (B,));
* ``chaincrf::triton_marginals`` -> tag marginals (B, T, K), 0 past each length.
"""

from __future__ import annotations

import torch
from torch import Tensor

from chaincrf.crf.kernels import gpu_triton as kernels

__all__ = ["log_partition", "marginals", "viterbi"]


def _prepared(
    emissions: Tensor, lengths: Tensor, *scores: Tensor
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Contiguous emissions and scores (the kernels index them densely), int32 lengths."""
    dtype = emissions.dtype
    return (
        emissions.contiguous(),
        lengths.to(torch.int32).contiguous(),
        [s.to(dtype).contiguous() for s in scores],
    )


@torch.library.custom_op("chaincrf::triton_log_partition", mutates_args=())
def _log_partition_op(
    emissions: Tensor,
    lengths: Tensor,
    start: Tensor,
    transitions: Tensor,
    end: Tensor,
    keep_alpha: bool,
) -> tuple[Tensor, Tensor]:
    em, lens, (start, transitions, end) = _prepared(emissions, lengths, start, transitions, end)
    return kernels.chain_forward(em, lens, start, transitions, end, keep_alpha)


@_log_partition_op.register_fake
def _(emissions, lengths, start, transitions, end, keep_alpha):
    B = emissions.shape[0]
    alpha_shape = emissions.shape if keep_alpha else (0, 0, 0)
    return emissions.new_empty(B), emissions.new_empty(alpha_shape)


@torch.library.custom_op("chaincrf::triton_log_partition_backward", mutates_args=())
def _log_partition_backward_op(
    grad: Tensor,
    emissions: Tensor,
    lengths: Tensor,
    start: Tensor,
    transitions: Tensor,
    end: Tensor,
    alpha: Tensor,
    log_z: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    em, lens, (start, transitions, end) = _prepared(emissions, lengths, start, transitions, end)
    if alpha.shape != em.shape:  # not kept by the forward call: recompute them
        log_z, alpha = kernels.chain_forward(em, lens, start, transitions, end, True)
    grad = grad.to(em.dtype).contiguous()
    d_em, d_start, d_trans, d_end = kernels.chain_backward(
        grad, em, lens, transitions, end, alpha.contiguous(), log_z.contiguous(), True
    )
    return d_em, d_start.sum(0), d_trans.sum(0), d_end.sum(0)


@_log_partition_backward_op.register_fake
def _(grad, emissions, lengths, start, transitions, end, alpha, log_z):
    return (
        emissions.new_empty(emissions.shape),
        emissions.new_empty(start.shape),
        emissions.new_empty(transitions.shape),
        emissions.new_empty(end.shape),
    )


def _save_log_partition(ctx, inputs, output) -> None:
    emissions, lengths, start, transitions, end, _keep_alpha = inputs
    log_z, alpha = output
    ctx.save_for_backward(emissions, lengths, start, transitions, end, alpha, log_z)
    ctx.dtypes = (start.dtype, transitions.dtype, end.dtype)


def _log_partition_backward(ctx, grad: Tensor, _grad_alpha: Tensor | None):
    emissions, lengths, start, transitions, end, alpha, log_z = ctx.saved_tensors
    d_em, d_start, d_trans, d_end = _log_partition_backward_op(
        grad, emissions, lengths, start, transitions, end, alpha, log_z
    )
    d_start, d_trans, d_end = (g.to(d) for g, d in zip((d_start, d_trans, d_end), ctx.dtypes))
    return d_em, None, d_start, d_trans, d_end, None


_log_partition_op.register_autograd(_log_partition_backward, setup_context=_save_log_partition)


@torch.library.custom_op("chaincrf::triton_viterbi", mutates_args=())
def _viterbi_op(
    emissions: Tensor, lengths: Tensor, start: Tensor, transitions: Tensor, end: Tensor
) -> tuple[Tensor, Tensor]:
    em, lens, (start, transitions, end) = _prepared(emissions, lengths, start, transitions, end)
    return kernels.viterbi(em, lens, start, transitions, end)


@_viterbi_op.register_fake
def _(emissions, lengths, start, transitions, end):
    B, T, _ = emissions.shape
    return emissions.new_empty((B, T), dtype=torch.long), emissions.new_empty(B)


@torch.library.custom_op("chaincrf::triton_marginals", mutates_args=())
def _marginals_op(
    emissions: Tensor, lengths: Tensor, start: Tensor, transitions: Tensor, end: Tensor
) -> Tensor:
    em, lens, (start, transitions, end) = _prepared(emissions, lengths, start, transitions, end)
    log_z, alpha = kernels.chain_forward(em, lens, start, transitions, end, True)
    ones = torch.ones_like(log_z)
    return kernels.chain_backward(ones, em, lens, transitions, end, alpha, log_z, False)[0]


@_marginals_op.register_fake
def _(emissions, lengths, start, transitions, end):
    return emissions.new_empty(emissions.shape)


# ------------------------------------------------------------------------------ public calls


def log_partition(
    emissions: Tensor, lengths: Tensor, start: Tensor, transitions: Tensor, end: Tensor
) -> Tensor:
    """Log Z of each row, differentiable w.r.t. the emissions and the three score tensors.

    Args:
        emissions: float32/float64 (batch, seq_len, num_tags), unnormalised scores; positions
            past a row's length are never read.
        lengths: integer (batch,), each in [0, seq_len].
        start: (num_tags,) scores of starting in each tag, ``-inf`` where forbidden.
        transitions: (num_tags, num_tags), ``transitions[i, j]`` scores tag i followed by j.
        end: (num_tags,) scores of ending in each tag.

    Returns:
        (batch,) in the emissions' dtype: 0 for an empty row, ``-inf`` for a row with no
        allowed path (whose gradients are 0).
    """
    scores = (start, transitions, end)
    keep_alpha = torch.is_grad_enabled() and any(x.requires_grad for x in (emissions, *scores))
    return _log_partition_op(emissions, lengths, *scores, keep_alpha)[0]


def viterbi(
    emissions: Tensor, lengths: Tensor, start: Tensor, transitions: Tensor, end: Tensor
) -> tuple[Tensor, Tensor]:
    """Best path of each row (ties to the lowest tag index) and its score; not differentiable.

    Args:
        emissions, lengths, start, transitions, end: as in :func:`log_partition`.

    Returns:
        ``paths`` int64 (batch, seq_len), -1 past each length and in a row with no allowed
        path; ``scores`` (batch,) in the emissions' dtype (0 for an empty row, ``-inf`` with
        no allowed path).
    """
    em, start, transitions, end = (x.detach() for x in (emissions, start, transitions, end))
    return _viterbi_op(em, lengths, start, transitions, end)


def marginals(
    emissions: Tensor, lengths: Tensor, start: Tensor, transitions: Tensor, end: Tensor
) -> Tensor:
    """Posterior tag probabilities (batch, seq_len, num_tags); not differentiable.

    Args:
        emissions, lengths, start, transitions, end: as in :func:`log_partition`.

    Returns:
        (batch, seq_len, num_tags) in the emissions' dtype: each position's row sums to 1
        inside the row's length; 0 past it and in a row with no allowed path.
    """
    em, start, transitions, end = (x.detach() for x in (emissions, start, transitions, end))
    return _marginals_op(em, lengths, start, transitions, end)
