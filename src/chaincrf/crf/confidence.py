"""Exact span confidences of a linear-chain CRF in O(T·K) memory.

The probability of a predicted span is the posterior mass of every tag path that labels the
span's tokens as predicted and does not extend the span. It factorises at the span's borders:

    log P(span) = left + inside + right - log Z

with ``left`` the log total score of the prefixes that reach the span's first tag (forward
messages ``alpha``), ``inside`` the score of the forced tags, ``right`` the log total score of
the suffixes that leave its last tag (backward messages ``beta``) and ``log Z`` the
log-partition. The messages are computed once per sentence, so memory is O(B·T·K) and time
O(B·T·K² + number of spans) whatever the number of spans.

Transitions are indexed ``[from, to]``. Everything is computed in float64 log space, exact for
any scores, ``-inf`` (forbidden moves) included, on the layer's own scores and messages
(:mod:`chaincrf.crf.structure`). This module imports only torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from chaincrf.crf import structure, tracing

if TYPE_CHECKING:
    from chaincrf.crf.layer import CRF

__all__ = ["chain_messages", "continuation_tables", "crf_scores", "span_log_probabilities"]


def crf_scores(crf: CRF) -> tuple[Tensor, Tensor, Tensor]:
    """The effective scores of a :class:`chaincrf.crf.CRF` in float64, detached: its
    parameters with its constraints applied, as the layer itself applies them
    (:meth:`chaincrf.crf.CRF.effective_scores`; a forbidden start, transition or end scores
    ``-inf``).

    Returns:
        ``start`` float64 (num_tags,), ``trans`` float64 (num_tags, num_tags) indexed
        ``[from, to]``, ``end`` float64 (num_tags,).
    """
    start, trans, end = crf.effective_scores(torch.float64)
    return start.detach(), trans.detach(), end.detach()


def chain_messages(
    emissions: Tensor, mask: Tensor, start: Tensor, trans: Tensor, end: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Forward and backward log-space messages of a batch of chains, and their log-partitions.

    The layer's log-space forward-backward (:func:`chaincrf.crf.structure.messages`), in
    float64; on the CPU computed in exp space with per-step scaling (about 3x fewer
    operations' time: ``benchmarks/predict.md``), the rows where a scaled sum fell near
    float64's subnormal range, or to 0, recomputed in log space, so the results are those of
    the log-space messages to rounding.

    Args:
        emissions: float (batch, seq_len, num_tags), unnormalised scores.
        mask: bool (batch, seq_len), left-aligned; padded positions are never read.
        start: float64 (num_tags,) start scores; trans: float64 (num_tags, num_tags) ``[from, to]``;
            end: float64 (num_tags,) end scores (see :func:`crf_scores`).

    Returns:
        ``alpha`` float64 (batch, seq_len, num_tags): log total score of the prefixes ending in
        each tag at each position, that position's emission included; ``beta`` float64 (batch,
        seq_len, num_tags): log total score of the suffixes after each position given its tag,
        end score included, its emission not; ``log_z`` float64 (batch,), 0 for empty rows.
        Past a row's end ``alpha`` holds its last value and ``beta`` the end scores.
    """
    em = torch.where(mask.unsqueeze(2), emissions.detach().double(), 0.0)  # (B, T, K)
    # (on an accelerator the scaled steps' extra launches might cost more than the
    # exponentials they save: unmeasured, so the log-space steps stay there)
    scaled = em.device.type == "cpu" and not tracing.is_compiling()
    return structure.messages(em, mask, start, trans, end, scaled=scaled)


def span_log_probabilities(
    emissions: Tensor,
    mask: Tensor,
    tags: Tensor,
    spans: Tensor,
    scores: tuple[Tensor, Tensor, Tensor],
    continuation: tuple[Tensor, Tensor, Tensor],
) -> Tensor:
    """Log posterior probability of each span's labelling, exactly.

    For a span ``[s, e)`` of row ``b`` with forced tags ``y_s .. y_{e-1}`` (from ``tags``): the
    log total probability of the paths that carry those tags there, whose tag at ``e`` (if
    ``e`` is inside the row) is not in ``after[y_s]`` and, when ``first_is_inside[y_s]`` and
    ``s > 0``, whose tag at ``s - 1`` is not in ``before[y_s]``.

    Args:
        emissions: float (batch, seq_len, num_tags), unnormalised scores.
        mask: bool (batch, seq_len), left-aligned.
        tags: long (batch, seq_len), the predicted tag ids (values off the mask are ignored).
        spans: long (num_spans, 3), rows ``(batch row, start, end)`` with ``end`` exclusive and
            ``0 <= start < end <= length`` of that row.
        scores: ``(start, trans, end)`` float64 (num_tags,), (num_tags, num_tags) ``[from, to]``,
            (num_tags,): the CRF's effective scores (:func:`crf_scores`).
        continuation: ``(after, before, first_is_inside)``: bool (num_tags, num_tags), bool
            (num_tags, num_tags) and bool (num_tags,), indexed by the span's first tag (see
            ``Predictor.continuation_tables``).

    Returns:
        float64 (num_spans,) log-probabilities (``-inf`` for an impossible labelling).
    """
    start, trans, end = scores
    device = emissions.device
    after, before, first_is_inside = (x.to(device) for x in continuation)
    T = emissions.size(1)
    alpha, beta, log_z = chain_messages(emissions, mask, start, trans, end)
    lengths = mask.sum(1)  # (B,)
    rows, starts, ends = spans.to(device).unbind(1)  # (N,) each
    if rows.numel() == 0:
        return alpha.new_zeros(0)
    em = torch.where(mask.unsqueeze(2), emissions.detach().double(), 0.0)  # (B, T, K)
    path = torch.where(mask, tags, 0).clamp(min=0)  # (B, T)

    # inside: the forced tags' emissions and the transitions between them, by prefix sums;
    # -inf terms are counted apart so that differences of sums stay exact
    emit = em.gather(2, path.unsqueeze(2)).squeeze(2)  # (B, T)
    step = torch.zeros_like(emit)  # (B, T): trans[y_{t-1}, y_t], 0 at t = 0
    if T > 1:
        step[:, 1:] = trans[path[:, :-1], path[:, 1:]]
    emit_sum, emit_bad = _prefix_sums(emit)  # (B, T + 1) each
    step_sum, step_bad = _prefix_sums(step)
    inside = (emit_sum[rows, ends] - emit_sum[rows, starts]) + (
        step_sum[rows, ends] - step_sum[rows, starts + 1]
    )
    bad = (emit_bad[rows, ends] - emit_bad[rows, starts]) + (
        step_bad[rows, ends] - step_bad[rows, starts + 1]
    )
    inside = torch.where(bad > 0, float("-inf"), inside)  # (N,)

    first = path[rows, starts]  # (N,)
    last = path[rows, ends - 1]  # (N,)
    neg_inf = torch.tensor(float("-inf"), dtype=torch.float64, device=device)

    # left: how paths reach y_s; the tag before an I- first tag may not start the span earlier
    prev = alpha[rows, (starts - 1).clamp(min=0)] + trans[:, first].t()  # (N, K)
    blocked = before[first] & first_is_inside[first].unsqueeze(1)  # (N, K)
    left = torch.logsumexp(torch.where(blocked, neg_inf, prev), dim=1)
    left = torch.where(starts > 0, left, start[first])

    # right: how paths leave y_{e-1}; the tag after the span may not continue it
    at = ends.clamp(max=max(T - 1, 0))
    nxt = trans[last] + em[rows, at] + beta[rows, at]  # (N, K)
    right = torch.logsumexp(torch.where(after[first], neg_inf, nxt), dim=1)
    right = torch.where(ends < lengths[rows], right, end[last])

    return left + inside + right - log_z[rows]


def _prefix_sums(values: Tensor) -> tuple[Tensor, Tensor]:
    """Exclusive prefix sums of the finite values and prefix counts of the ``-inf`` ones.

    Args:
        values: float64 (batch, seq_len), no ``+inf`` or NaN.

    Returns:
        ``sums`` float64 (batch, seq_len + 1) with ``sums[:, t]`` the sum of the finite values
        before ``t``; ``counts`` long (batch, seq_len + 1), the number of ``-inf`` values before.
    """
    neg = torch.isneginf(values)
    pad = values.new_zeros(values.size(0), 1)
    sums = torch.cat([pad, torch.where(neg, 0.0, values).cumsum(1)], dim=1)
    counts = torch.cat([pad.long(), neg.long().cumsum(1)], dim=1)
    return sums, counts


def continuation_tables(labels: Sequence[str]) -> tuple[Tensor, Tensor, Tensor]:
    """Per first tag of a span, the tags that would extend it.

    Args:
        labels: the tag names in id order (``"O"``, ``"B-PER"``, ...), K of them.

    Returns:
        ``after`` bool (K, K): row ``f`` marks the tags that, right after a span starting with
        tag ``f``, would continue it (``I-``/``E-`` of its type); ``before`` bool (K, K): the tags
        that, right before it, would make it start earlier (``B-``/``I-`` of its type; used only
        when ``f`` is an ``I-`` tag, in IOB1); ``first_is_inside`` bool (K,): whether tag ``f``
        is an ``I-`` tag.
    """
    K = len(labels)
    after = torch.zeros(K, K, dtype=torch.bool)
    before = torch.zeros(K, K, dtype=torch.bool)
    first_is_inside = torch.zeros(K, dtype=torch.bool)
    types = [None if label == "O" else label[2:] for label in labels]
    prefixes = [label[0] for label in labels]
    for f, type_ in enumerate(types):
        if type_ is None:
            continue
        first_is_inside[f] = prefixes[f] == "I"
        for tag, (prefix, other) in enumerate(zip(prefixes, types)):
            if other == type_:
                after[f, tag] = prefix in ("I", "E", "L")
                before[f, tag] = prefix in ("B", "I")
    return after, before, first_is_inside
