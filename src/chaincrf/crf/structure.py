"""Structured-prediction quantities beyond the kernels' four operations: pairwise (transition)
marginals, the entropy of the path distribution, and exact path samples. One log-space forward-backward in plain
tensor operations (any device, any float dtype; autograd differentiates it, twice if asked), on
the layer's effective scores (constraints as ``-inf``). Importing this module imports only
torch."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["entropy", "marginals", "messages", "pairwise_marginals", "sample"]


def _padding_zeroed(em: Tensor, mask: Tensor) -> Tensor:
    """Padded emissions set to 0: never used, but a huge or infinite one would still reach the
    discarded branch of a ``where`` and turn its (double) gradient into NaN."""
    return em.masked_fill(~mask.unsqueeze(2), 0.0)


def messages(
    em: Tensor, mask: Tensor, start: Tensor, trans: Tensor, end: Tensor, scaled: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """The one log-space forward-backward (the structure quantities here and the span
    confidences, :mod:`chaincrf.crf.confidence`, use it). Forward and backward log-messages
    alpha (prefix scores, position t's emission included), beta (suffix scores after t given
    its tag, end score included, t's emission not) (B, T, K) and log Z (B,) of batch-first
    emissions under a left-aligned mask; past a row's end alpha holds its last value and beta
    is ``end``, so ``alpha[t] + beta[t] - log Z`` is the node log-marginal at every t < length.
    An empty row has log Z = 0.

    ``scaled`` (float64, eager calls: it reads the host once): each step in exp space, one
    (B, K) x (K, K) product of the previous messages, scaled by their row maximum, with the
    exponentiated transitions (K exponentials and logarithms a row instead of K² in a
    log-sum-exp); the rows where a scaled sum fell below ``SCALED_TINY`` (a term may have been
    lost to the subnormal range), to 0 or to NaN are recomputed with the log-space steps, so
    the results are theirs to rounding."""
    B, T, K = em.shape
    if not T:
        empty = em.new_zeros(B, 0, K)
        return empty, empty, em.new_zeros(B)
    if scaled:
        forward, backward, smallest = _scaled_steps(trans)
    else:
        smallest = []

        def forward(prev: Tensor) -> Tensor:
            return torch.logsumexp(prev.unsqueeze(2) + trans, dim=1)

        def backward(after: Tensor) -> Tensor:
            return torch.logsumexp(trans + after.unsqueeze(1), dim=2)

    alphas = [start + em[:, 0]]
    for t in range(1, T):
        step = forward(alphas[-1]) + em[:, t]
        alphas.append(torch.where(mask[:, t, None], step, alphas[-1]))
    betas = [end.expand(B, K)]
    for t in range(T - 1, 0, -1):
        step = backward(em[:, t] + betas[-1])
        betas.append(torch.where(mask[:, t, None], step, betas[-1]))
    alpha, beta = torch.stack(alphas, 1), torch.stack(betas[::-1], 1)
    log_z = torch.logsumexp(alpha[:, -1] + end, dim=1)
    log_z = torch.where(mask[:, 0], log_z, torch.zeros_like(log_z))
    if smallest:  # (past a row's end its steps are discarded: a small sum there costs a redo)
        rows = (~(torch.stack(smallest, 1) >= SCALED_TINY).all(1)).nonzero().squeeze(1)
        if rows.numel():
            exact = messages(em[rows], mask[rows], start, trans, end)
            for out, value in zip((alpha, beta, log_z), exact):
                out[rows] = value
    return alpha, beta, log_z


SCALED_TINY = 1e-280
"""Below this, a scaled sum of :func:`messages` may have lost terms to float64's subnormal
range: its row is recomputed in log space."""


def _scaled_steps(trans: Tensor) -> tuple[Any, Any, list[Tensor]]:
    """The forward and backward steps of :func:`messages` in exp space, and the list into
    which they put each step's smallest scaled sum per row."""
    finite = torch.isfinite(trans)
    top = trans[finite].max() if bool(finite.any()) else trans.new_zeros(())
    weights = torch.exp(trans - top)  # (K, K) in [0, 1], 0 where forbidden
    smallest: list[Tensor] = []

    def step(log_v: Tensor, matrix: Tensor) -> Tensor:
        """log(sum_i exp(log_v[:, i] + trans[i, j])) for every j, (B, K)."""
        m = log_v.amax(1, keepdim=True)
        total = torch.exp(log_v - m) @ matrix
        smallest.append(total.amin(1))
        return torch.log(total) + (m + top)

    transposed = weights.t()
    return (lambda prev: step(prev, weights)), (lambda after: step(after, transposed)), smallest


def marginals(em: Tensor, mask: Tensor, start: Tensor, trans: Tensor, end: Tensor) -> Tensor:
    """P(y_t = j) as (B, T, K), 0 where masked: the differentiable (twice) counterpart of the
    kernels' marginals, which autograd does not see through."""
    em = _padding_zeroed(em, mask)
    alpha, beta, log_z = messages(em, mask, start, trans, end)
    node = torch.exp(alpha + beta - log_z.view(-1, 1, 1))
    return torch.where(mask.unsqueeze(2), node, torch.zeros_like(node))


def pairwise_marginals(
    em: Tensor, mask: Tensor, start: Tensor, trans: Tensor, end: Tensor
) -> Tensor:
    """P(y_{t-1} = i, y_t = j) as (B, T - 1, K, K), indexed ``[b, t - 1, i, j]``; 0 where
    position t is masked."""
    em = _padding_zeroed(em, mask)
    alpha, beta, log_z = messages(em, mask, start, trans, end)
    if em.shape[1] < 2:
        return em.new_zeros(em.shape[0], 0, em.shape[2], em.shape[2])
    scores = alpha[:, :-1].unsqueeze(3) + trans + (em[:, 1:] + beta[:, 1:]).unsqueeze(2)
    xi = torch.exp(scores - log_z.view(-1, 1, 1, 1))
    return torch.where(mask[:, 1:, None, None], xi, torch.zeros_like(xi))


def entropy(em: Tensor, mask: Tensor, start: Tensor, trans: Tensor, end: Tensor) -> Tensor:
    """Entropy (nats) of each row's path distribution, (B,): log Z minus the expected path
    score (forbidden moves have probability 0 and add nothing; an empty row has entropy 0)."""
    em = _padding_zeroed(em, mask)
    alpha, beta, log_z = messages(em, mask, start, trans, end)
    B, T, K = em.shape
    if T == 0:
        return em.new_zeros(B)
    node = torch.exp(alpha + beta - log_z.view(-1, 1, 1)) * mask.unsqueeze(2)
    lengths = mask.sum(1)
    last = node.gather(1, (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(B, 1, K)).squeeze(1)
    xi = pairwise_marginals(em, mask, start, trans, end)

    def expected(p: Tensor, score: Tensor) -> Tensor:  # 0 * -inf is 0 here, not NaN
        return p * torch.where(p > 0, score, torch.zeros_like(score))  # (nor its gradient)

    score = expected(node, em).sum((1, 2)) + expected(xi, trans.expand_as(xi)).sum((1, 2, 3))
    score = score + expected(node[:, 0], start.expand(B, K)).sum(1)
    score = score + expected(last, end.expand(B, K)).sum(1)
    return torch.where(lengths > 0, log_z - score, torch.zeros_like(log_z))


@torch.no_grad()
def sample(
    em: Tensor,
    mask: Tensor,
    start: Tensor,
    trans: Tensor,
    end: Tensor,
    num_samples: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Exact samples from each row's distribution over tag paths (forward filtering, backward
    sampling), (num_samples, B, T) long: -1 past each length, and everywhere in a row that
    allows no path."""
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int; got {num_samples!r}")
    em = _padding_zeroed(em, mask)
    alpha, _, log_z = messages(em, mask, start, trans, end)
    B, T, K = em.shape
    out = torch.full((num_samples, B, T), -1, dtype=torch.long, device=em.device)
    if T == 0:
        return out
    lengths = mask.sum(1).masked_fill(torch.isneginf(log_z), 0)

    def draw(logits: Tensor) -> Tensor:  # Gumbel-max: argmax of logits + Gumbel noise
        u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype).to(logits.device)
        return (logits - torch.log(-torch.log(u.clamp_min(torch.finfo(u.dtype).tiny)))).argmax(-1)

    tag = draw((alpha[:, -1] + end).expand(num_samples, B, K))  # each row's last tag
    trans_to_from = trans.t()
    for t in range(T - 1, -1, -1):
        inside = t < lengths  # (B,): position t is on; past the end the last tag waits
        out[:, :, t] = torch.where(inside, tag, -1)
        if t > 0:
            previous = draw(alpha[:, t - 1] + trans_to_from[tag])
            tag = torch.where(inside, previous, tag)
    return out
