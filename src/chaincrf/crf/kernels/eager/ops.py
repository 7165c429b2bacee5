"""The eager kernel: the CRF's operations as tensor operations (any device, any float dtype).

The portable fallback and the reference the other kernels are tested against. Every kernel
offers the same operations with one signature (:mod:`chaincrf.crf.kernels.base`), on
batch-first emissions ``em`` (B, T, K), a left-aligned bool ``mask`` (B, T) and the effective
scores ``start`` (K,), ``trans`` (K, K) indexed ``[from, to]`` and ``end`` (K,), ``-inf`` where
forbidden; with ``validate`` they check the values first and raise the same errors, in the same
order (mask gaps, scores, emissions, tags). Log-likelihoods and log-partitions are
differentiable w.r.t. ``em`` and the scores.
"""

from __future__ import annotations

import torch
from torch import Tensor

from chaincrf.crf import errors, tracing
from chaincrf.crf.kernels.eager import partition as part
from chaincrf.crf.kernels.eager import viterbi as vit
from chaincrf.crf.kernels.eager.scan import scan
from chaincrf.crf.ragged import sort_time_major

__all__ = ["check_once", "decode", "log_likelihood", "log_partition", "marginals", "viterbi"]


def validate_values(
    em: Tensor,
    mask: Tensor,
    start: Tensor,
    trans: Tensor,
    end: Tensor,
    tags: Tensor | None,
    gaps: bool = False,
) -> None:
    """Mask gaps (unless ``gaps`` allows them), then NaN/+inf scores, then NaN/+inf emissions
    where the mask is on (``-inf`` is allowed: a forbidden tag), then tags outside [0, K)
    there: each would give NaN results or a meaningless path. Raises naming the batch row
    (and position)."""
    if em.size(1) > 1 and not gaps:
        starts = mask[:, 1:] & ~mask[:, :-1]  # kept positions after a masked one
        if bool(starts.any()):
            row = int(starts.any(1).nonzero()[0])
            raise errors.mask_gap(row)
    for name, value in (
        ("start_transitions", start),
        ("end_transitions", end),
        ("transitions", trans),
    ):
        if bool((torch.isnan(value) | (value == float("inf"))).any()):
            raise errors.non_finite_scores(name)
    bad = (torch.isnan(em) | (em == float("inf"))).any(-1) & mask  # (B, T)
    if bool(bad.any()):
        row, position = (int(i) for i in bad.nonzero()[0])
        what = "NaN" if bool(torch.isnan(em[row, position]).any()) else "+inf"
        raise errors.non_finite_emissions(row, position, what)
    if tags is not None:
        K = em.size(2)
        bad = mask & ((tags < 0) | (tags >= K))
        if bool(bad.any()):
            b, t = (int(i) for i in bad.nonzero()[0])
            raise errors.bad_tag(K, int(tags[b, t]), b, t)


def _invalid(em: Tensor, mask: Tensor, scores: tuple[Tensor, ...], tags: Tensor | None) -> Tensor:
    """One bool tensor (a device reduction, not read): whether a score is NaN or +inf, an
    emission where the mask is on is NaN or +inf, or a tag there is outside [0, K)."""
    flat = torch.cat([s.reshape(-1) for s in scores])
    bad = (torch.isnan(flat) | torch.isposinf(flat)).any()
    bad = bad | ((torch.isnan(em) | torch.isposinf(em)).any(-1) & mask).any()
    if tags is not None:
        bad = bad | (mask & ((tags < 0) | (tags >= em.size(2)))).any()
    return bad


def check_once(
    em: Tensor,
    mask: Tensor,
    scores: tuple[Tensor, Tensor, Tensor],
    tags: Tensor | None = None,
    gold: Tensor | None = None,
    found: Tensor | None = None,
) -> None:
    """The value checks of :func:`validate_values` with one read-back, for the kernels that
    must not synchronise with the host per check (Triton, tree): every check (scores,
    emissions, tags, and with ``gold``, the gold scores of a constrained layer, ``-inf`` where
    the path is forbidden) is one device reduction read once; only when it finds something
    does :func:`validate_values` run to name it (same errors, same order). Gaps are allowed.
    ``found``: the kernel's own per-row flags of those values (nonzero: a rejected value in
    the row), used instead of the tensor operations that look for them. Under torch.compile
    the check is an asynchronous device assertion (no host read inside a graph)."""
    bad = _invalid(em, mask, scores, tags) if found is None else (found != 0).any()
    forbidden = None if gold is None else torch.isneginf(gold)
    if forbidden is not None:
        bad = bad | forbidden.any()
    if tracing.is_compiling():  # no host read inside a graph
        torch._assert_async(~bad)
        return
    if bool(bad):
        validate_values(em, mask, *scores, tags, gaps=True)
        if forbidden is not None:
            raise errors.forbidden_gold_path(int(forbidden.nonzero()[0]))


def gold_score(
    em: Tensor, tags: Tensor, mask: Tensor, start: Tensor, trans: Tensor, end: Tensor
) -> Tensor:
    """Score of the gold paths: em (B, T, K), tags (B, T) (0 where padded), mask (B, T) -> (B,)."""
    B, T, K = em.shape
    if T == 0:  # only empty sequences: the empty path scores 0
        return em.sum((1, 2))  # zeros (B,), still attached to the graph
    lengths = mask.sum(1)
    zero = torch.zeros((), dtype=em.dtype, device=em.device)
    # emission and transition scores with one gather each; padded entries are replaced
    # (torch.where), never multiplied by 0, so -inf or NaN there cannot leak in.
    emit = em.gather(2, tags.unsqueeze(2)).squeeze(2)  # (B, T)
    score = torch.where(mask, emit, zero).sum(1)
    if T > 1:
        pair = trans.view(-1)[(tags[:, :-1] * K + tags[:, 1:]).view(-1)].view(B, T - 1)
        score = score + torch.where(mask[:, 1:], pair, zero).sum(1)
    last = (lengths - 1).clamp(min=0)
    last_tag = tags.gather(1, last.unsqueeze(1)).squeeze(1)
    boundary = start[tags[:, 0]] + end[last_tag]
    return score + torch.where(lengths > 0, boundary, zero)


def log_likelihood(
    em: Tensor,
    mask: Tensor,
    start: Tensor,
    trans: Tensor,
    end: Tensor,
    tags: Tensor | None = None,
    k: int = 1,
    constrained: bool = False,
    validate: bool = True,
) -> Tensor:
    """Gold-path score minus log Z (B,); with ``constrained``, a forbidden gold path is an error."""
    if tags is None:
        raise ValueError("log_likelihood needs tags")
    if validate:
        validate_values(em, mask, start, trans, end, tags)
    tags = tags.masked_fill(~mask, 0)
    gold = gold_score(em, tags, mask, start, trans, end)
    if constrained:
        bad = torch.isneginf(gold)
        if bool(bad.any()):
            row = int(bad.nonzero()[0])
            raise errors.forbidden_gold_path(row)
    return gold - _log_partition(em, mask.sum(1), start, trans, end)


def log_partition(
    em: Tensor,
    mask: Tensor,
    start: Tensor,
    trans: Tensor,
    end: Tensor,
    tags: Tensor | None = None,
    k: int = 1,
    constrained: bool = False,
    validate: bool = True,
) -> Tensor:
    """Log Z of each row (B,), 0 for an empty row."""
    if validate:
        validate_values(em, mask, start, trans, end, None)
    return _log_partition(em, mask.sum(1), start, trans, end)


def _log_partition(
    em: Tensor, lengths: Tensor, start: Tensor, trans: Tensor, end: Tensor
) -> Tensor:
    em_tm, order, n_active = sort_time_major(em, lengths)
    log_z = part._log_partition_sorted(em_tm, start, trans, end, n_active, lengths[order])
    return torch.empty_like(log_z).index_put((order,), log_z)


def viterbi(
    em: Tensor,
    mask: Tensor,
    start: Tensor,
    trans: Tensor,
    end: Tensor,
    tags: Tensor | None = None,
    k: int = 1,
    constrained: bool = False,
    validate: bool = True,
) -> tuple[Tensor, Tensor]:
    """k-best paths (B, k, T), -1 past each length, and their scores (B, k), best first."""
    if validate:
        validate_values(em, mask, start, trans, end, None)
    lengths = mask.sum(1)
    B, T, _ = em.shape
    start, trans, end, em = start.detach(), trans.detach(), end.detach(), em.detach()
    if T == 0:  # every row is empty: one empty path, score 0
        scores = torch.full((B, k), float("-inf"), dtype=em.dtype, device=em.device)
        scores[:, 0] = 0.0
        return em.new_zeros((B, k, 0), dtype=torch.long), scores
    if k == 1:
        seq, best, order, lengths = _best_paths(em, lengths, start, trans, end)
        on = torch.arange(T, device=em.device).unsqueeze(1) < lengths.unsqueeze(0)  # (T, B)
        paths = torch.where(on & ~torch.isneginf(best), seq, -1).t()  # (B, T)
        best = torch.where(lengths > 0, best, 0.0)  # an empty row: its empty path scores 0
        if order is not None:
            paths = torch.empty_like(paths).index_copy_(0, order, paths)
            best = torch.empty_like(best).index_copy_(0, order, best)
        return paths.unsqueeze(1), best.unsqueeze(1)
    with torch.no_grad():
        em_tm, order, n_active = sort_time_major(em, lengths)
        state, backptr = scan(em_tm, start, trans, n_active, "topk", k)
        assert backptr is not None  # topk keeps back-pointers
        paths, scores = vit._backtrace(state, backptr, end, n_active, lengths[order], k)
        paths_out = torch.empty_like(paths)
        paths_out[order] = paths
        scores_out = torch.empty_like(scores)
        scores_out[order] = scores
    return paths_out, scores_out


def decode(
    em: Tensor,
    mask: Tensor,
    start: Tensor,
    trans: Tensor,
    end: Tensor,
    tags: Tensor | None = None,
    k: int = 1,
    constrained: bool = False,
    validate: bool = True,
) -> list[list[int]]:
    """The best path of each row as a list of its tags (all -1 where no path is allowed)."""
    if validate:
        validate_values(em, mask, start, trans, end, None)
    em, start, trans, end = em.detach(), start.detach(), trans.detach(), end.detach()
    seq, best, order, lengths = _best_paths(em, mask.sum(1), start, trans, end)
    rows, lens, bests = seq.t().tolist(), lengths.tolist(), best.tolist()
    paths = [
        row[:n] if score != float("-inf") else [-1] * n for row, n, score in zip(rows, lens, bests)
    ]
    if order is None:
        return paths
    out: list[list[int]] = [[] for _ in paths]
    for i, path in zip(order.tolist(), paths):
        out[i] = path
    return out


def _best_paths(
    em: Tensor, lengths: Tensor, start: Tensor, trans: Tensor, end: Tensor
) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """The best path of each row (k = 1), in whatever row order was cheapest to compute.

    Args:
        em: float (B, T, K) batch-first emissions, T >= 0; lengths: long (B,); scores detached.

    Returns:
        ``seq`` long (T, B) tags, time-major (entries past a row's end are unspecified);
        ``best`` float (B,) best scores (-inf where no path is allowed; unspecified for
        empty rows); ``order`` long (B,), the original row of each returned row, or None
        for the original order; ``lengths`` long (B,) in the returned order.
    """
    B, T, _ = em.shape
    with torch.no_grad():
        if T == 0:
            return em.new_zeros((0, B), dtype=torch.long), em.new_zeros(B), None, lengths
        if vit._use_tree_viterbi(em):
            tracing.path_taken("tree_viterbi", B)
            seq, best = vit._tree_viterbi(em, start, trans, end, lengths)
            return seq, best, None, lengths
        tracing.path_taken("scan_viterbi", B)
        if B == 1:  # nothing to sort
            n = int(lengths[0])
            em_tm, order, n_active = em.transpose(0, 1), None, [1] * n + [0] * (T - n)
        else:
            em_tm, order, n_active = sort_time_major(em, lengths)
            lengths = lengths[order]
        seq, best = vit._best_sorted(em_tm, start, trans, end, n_active, lengths)
    return seq, best, order, lengths


def marginals(
    em: Tensor,
    mask: Tensor,
    start: Tensor,
    trans: Tensor,
    end: Tensor,
    tags: Tensor | None = None,
    k: int = 1,
    constrained: bool = False,
    validate: bool = True,
) -> Tensor:
    """Posterior tag probabilities (B, T, K): rows sum to 1 where the mask is on, else 0."""
    if validate:
        validate_values(em, mask, start, trans, end, None)
    lengths = mask.sum(1)
    start, trans, end = start.detach(), trans.detach(), end.detach()
    em_tm, order, n_active = sort_time_major(em.detach(), lengths)
    lengths = lengths[order]
    gamma = None
    if part._use_tree(em_tm, start, trans, end):
        with torch.inference_mode(False), torch.enable_grad():  # fresh copies: autograd
            em_req = em_tm.clone().requires_grad_(True)
            args = (start.clone(), trans.clone(), end.clone(), lengths.clone())
            log_z = part._tree_log_partition(em_req, *args)
            if log_z is not None:
                tracing.path_taken("tree", em_tm.shape[1])
                (gamma,) = torch.autograd.grad(log_z.sum(), em_req)
    if gamma is None:
        with torch.no_grad():
            fb = part._ForwardBackward(em_tm, start, trans, end, n_active, lengths)
            gamma = fb.backward(torch.ones_like(fb.log_z))[0]
    gamma = gamma.transpose(0, 1)  # (B, T, K), sorted rows
    out = torch.empty_like(gamma)
    out[order] = gamma
    return out.masked_fill(~mask[..., None], 0.0)
