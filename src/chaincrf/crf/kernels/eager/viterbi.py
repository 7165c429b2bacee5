"""Eager Viterbi: the max-plus recursion, back-pointers and back-trace, the log-depth max-plus
tree, and k-best paths (tensor operations, any device)."""

from __future__ import annotations

import torch
from torch import Tensor

from chaincrf.crf import tuning


def _max_scan(em: Tensor, start: Tensor, trans: Tensor, n_active: list[int]) -> Tensor:
    """The max-plus (Viterbi) forward recursion: best prefix score per tag at each position.

    Two eager operations per step. Each step's candidates are laid out ``(K from, B, K to)`` so
    that the max runs over the outermost dimension (element-wise maxima of contiguous rows,
    faster than a max over a short innermost dimension: ``benchmarks/crf_kernels.md``). A step covers the whole batch, the
    rows already past their end included, unless slicing to the active prefix saves more
    arithmetic than the extra view operations cost (``tuning.EAGER.slice_min_saved`` elements).

    Args:
        em: float (T, B, K), time-major, batch sorted by decreasing length.
        start: float (K,) start scores; trans: float (K, K) ``[from, to]`` scores.
        n_active: rows with length > t, per t (see ``sort_time_major``).

    Returns:
        float (T, B, K): entry ``[t, b, j]`` is the best score of a prefix of row b ending in tag
        j at t, for t < length_b; entries past a row's end are unspecified and never read.
    """
    T, B, K = em.shape
    V = torch.empty((T, B, K), dtype=em.dtype, device=em.device)
    if T == 0:
        return V
    torch.add(start, em[0], out=V[0])
    steps, emits = V.unbind(0), em.unbind(0)
    prevs = V.transpose(1, 2).unsqueeze(3).unbind(0)  # (K from, B, 1) views of each step
    tr = trans.unsqueeze(1)  # (K from, 1, K to)
    buf = em.new_empty((K, B, K))
    min_rows_saved = tuning.EAGER.slice_min_saved // (K * K) + 1
    for t in range(1, T):
        n = n_active[t]
        if n == 0:
            break
        if B - n < min_rows_saved:
            torch.add(prevs[t - 1], tr, out=buf)
            torch.amax(buf, dim=0, out=steps[t])
            steps[t].add_(emits[t])
        else:
            cand, out = buf[:, :n], steps[t][:n]
            torch.add(prevs[t - 1][:, :n], tr, out=cand)
            torch.amax(cand, dim=0, out=out)
            out.add_(emits[t][:n])
    return V


def _best_sorted(
    em: Tensor, start: Tensor, trans: Tensor, end: Tensor, n_active: list[int], lengths: Tensor
) -> tuple[Tensor, Tensor]:
    """Viterbi (k = 1) on sorted time-major emissions: best tags and scores.

    The forward pass is ``_max_scan``. Small problems (batch * tags^2 at most
    ``tuning.EAGER.batched_backpointers_max``) then take every back-pointer in one argmax and follow them by
    pointer doubling (``_follow``): O(log T) operations; larger ones take the argmax for the
    chosen tag only, step by step ((B, K) work per step instead of (B, K, K)).

    Args:
        em: float (T, B, K), time-major, batch sorted by decreasing length (T >= 1).
        start, end: float (K,); trans: float (K, K) ``[from, to]``; n_active: as in
        ``sort_time_major``; lengths: long (B,) sorted lengths.

    Returns:
        ``seq`` long (T, B) best tags (unspecified past a row's end); ``best`` float (B,) best
        scores (unspecified for empty rows).
    """
    T, B, K = em.shape
    V = _max_scan(em, start, trans, n_active)
    last = (lengths - 1).clamp(min=0)
    final = V[last, torch.arange(B, device=em.device)] + end  # (B, K)
    tag = final.argmax(dim=1)  # (max with indices is 10x slower here on two threads)
    best = final.gather(1, tag.unsqueeze(1)).squeeze(1)
    if T == 1:
        return tag.unsqueeze(0), best
    if tuning.EAGER.batched_backpointers_max >= B * K * K:
        back = _max_backpointers(V, trans, lengths)  # (T-1, B, K)
        return torch.cat([_follow(back, tag), tag.unsqueeze(0)]), best
    tags = [tag]
    trans_to_from = trans.t().contiguous()
    running = torch.arange(1, T, device=em.device).unsqueeze(1) < lengths.unsqueeze(0)
    for t in range(T - 2, -1, -1):
        prev = (V[t] + trans_to_from.index_select(0, tag)).argmax(dim=1)
        tag = torch.where(running[t], prev, tag)
        tags.append(tag)
    return torch.stack(tags[::-1]), best


def _backtrace(
    scores: Tensor,
    backptr: Tensor,
    end: Tensor,
    n_active: list[int],
    lengths: Tensor,
    k: int,
) -> tuple[Tensor, Tensor]:
    """Follows the k best paths back from their final states (k-best Viterbi).

    Args:
        scores: float (T, B, k, K) and backptr: long (T, B, k, K) from ``scan(reduce="topk")``.
        end: float (K,) end scores; n_active: as in ``_scan``;
        lengths: long (B,) sorted lengths; k: paths per row.

    Returns:
        paths long (B, k, T) with -1 past each row's end and for missing paths; scores (B, k).
    """
    T, B, _, K = scores.shape
    rows = torch.arange(B, device=scores.device)
    last = (lengths - 1).clamp(min=0)
    final = (scores[last, rows] + end).view(B, -1)  # (B, k*K)
    best, pos = final.topk(k, dim=1)  # (B, k), flat index rank*K+tag
    idx = torch.full((T, B, k), -1, dtype=torch.long, device=scores.device)
    for t in range(T - 1, -1, -1):
        n = n_active[t]
        if n == 0:
            continue
        idx[t, :n] = pos[:n]
        if t > 0:
            pos[:n] = backptr[t, :n].view(n, -1).gather(1, pos[:n])
    paths = torch.where(idx >= 0, idx % K, idx).permute(1, 2, 0)  # (B, k, T)
    # an empty sequence has exactly one (empty) path, with score 0
    empty_scores = torch.full((k,), float("-inf"), dtype=best.dtype, device=best.device)
    empty_scores[0] = 0.0
    best = torch.where((lengths == 0).unsqueeze(1), empty_scores, best)
    paths = paths.masked_fill(torch.isneginf(best).unsqueeze(2), -1)
    return paths, best


def _max_backpointers(V: Tensor, trans: Tensor, lengths: Tensor) -> Tensor:
    """All Viterbi back-pointers at once, after the max-plus forward pass.

    Args:
        V: float (T, B, K) best prefix scores per tag; trans: (K, K) ``[from, to]``;
        lengths: long (B,) lengths.

    Returns:
        long (T-1, B, K): entry ``[t - 1, b, j]`` is the best tag at t-1 before tag j at t; the
        identity past each row's end, so one back-trace serves the whole ragged batch.
    """
    T, B, K = V.shape
    trans_to_from = trans.t().contiguous()
    back = torch.empty(T - 1, B, K, dtype=torch.long, device=V.device)
    chunk = max(1, (1 << 22) // max(1, B * K * K))  # bound the (chunk, B, K, K) candidates
    for lo in range(0, T - 1, chunk):
        hi = min(T - 1, lo + chunk)
        torch.argmax(V[lo:hi].unsqueeze(2) + trans_to_from, dim=3, out=back[lo:hi])
    running = torch.arange(1, T, device=V.device).unsqueeze(1) < lengths.unsqueeze(0)  # (T-1, B)
    return torch.where(running.unsqueeze(2), back, torch.arange(K, device=V.device))


def _follow(back: Tensor, last: Tensor) -> Tensor:
    """Follows back-pointers from the last position by pointer doubling: O(log T) operations.

    ``Q_t = back[t] o back[t+1] o ... o back[T-2]`` maps a tag at T-1 to the tag the best path
    takes at t. A Hillis-Steele suffix scan of map compositions builds every ``Q_t`` in
    ``ceil(log2(T-1))`` rounds of one gather each; the path is then one gather.

    Args:
        back: long (T-1, B, K) back-pointers (``[t, b, j]`` = best tag at t before tag j at t+1;
            the identity past each row's end, as ``_max_backpointers`` returns them).
        last: long (B,) the tag at position T-1 (a row's final tag, carried by the identities).

    Returns:
        long (T-1, B): the tag at each position t < T-1.
    """
    Q = back
    n, s = Q.size(0), 1
    while s < n:  # Q_t <- Q_t o Q_{t+s}
        Q = torch.cat([Q[:-s].gather(2, Q[s:]), Q[-s:]])
        s *= 2
    return Q.gather(2, last.view(1, -1, 1).expand(n, -1, 1)).squeeze(2)


def _use_tree_viterbi(em: Tensor) -> bool:
    """Whether the log-depth max-plus tree beats the sequential Viterbi: long sequences, few
    rows and few tags (its arithmetic grows as batch * T * tags^3, its operations as log T)."""
    B, T, K = em.shape
    work = B * K**3
    tune = tuning.EAGER
    return (tune.tree_viterbi_min_t <= T and work <= tune.tree_viterbi_max_bkkk) or (
        tune.tree_viterbi_long_t <= T and work <= tune.tree_viterbi_long_max_bkkk
    )


def _tree_viterbi(
    em: Tensor, start: Tensor, trans: Tensor, end: Tensor, lengths: Tensor
) -> tuple[Tensor, Tensor]:
    """Best path by a log-depth tree of max-plus matrix products (exact for any scores).

    Step t's matrix is ``M_t[i, j] = trans[i, j] + em_t[j]`` (the max-plus identity past a
    row's end and in the padding up to a power of two). Adjacent products are combined level by
    level, keeping each combination's maximising middle tag; the root gives the best score and
    the path's first and last tags, and the middle tags are read back top-down, one gather per
    level. O(log T) operations and O(B T K^3) arithmetic: it pays for few rows and few tags.

    Args:
        em: float (B, T, K) batch-first emissions, T >= 1; start, end: (K,); trans: (K, K).
        lengths: long (B,) lengths.

    Returns:
        ``seq`` long (T, B) best tags (unspecified past a row's end); ``best`` float (B,) best
        scores (unspecified for empty rows).
    """
    B, T, K = em.shape
    device = em.device
    first = start + em[:, 0]  # (B, K)
    n = T - 1
    if n == 0:
        tag = (first + end).argmax(dim=1)
        return tag.unsqueeze(0), (first + end).gather(1, tag.unsqueeze(1)).squeeze(1)
    N = 1 << (n - 1).bit_length()  # steps padded to a power of two
    ident = torch.full((K, K), float("-inf"), dtype=em.dtype, device=device)
    ident.fill_diagonal_(0.0)
    M = ident.repeat(B, N, 1, 1)  # (B, N, K from, K to)
    on = torch.arange(1, T, device=device).unsqueeze(0) < lengths.unsqueeze(1)  # (B, n)
    M[:, :n] = torch.where(on[:, :, None, None], trans + em[:, 1:].unsqueeze(2), ident)
    mids = []
    while M.size(1) > 1:  # (i, m) then (m, j): best middle tag m for each (i, j)
        left, right = M[:, 0::2], M[:, 1::2]
        cand = left.unsqueeze(3) + right.transpose(2, 3).contiguous().unsqueeze(2)  # (B,S,i,j,m)
        mid = cand.argmax(dim=4)  # (B, S, i, j)
        M = cand.gather(4, mid.unsqueeze(4)).squeeze(4)
        mids.append(mid)
    total = (first.unsqueeze(2) + M[:, 0] + end).view(B, K * K)
    flat = total.argmax(dim=1)
    best = total.gather(1, flat.unsqueeze(1)).squeeze(1)
    bound = torch.stack([flat // K, flat % K], dim=1)  # (B, 2): tags at positions 0 and N
    for mid in reversed(mids):  # S segments with known boundary tags -> 2S
        S = mid.size(1)
        pair = bound[:, :-1] * K + bound[:, 1:]  # (B, S)
        m = mid.view(B, S, K * K).gather(2, pair.unsqueeze(2)).squeeze(2)
        bound = torch.cat([torch.stack([bound[:, :-1], m], dim=2).view(B, 2 * S), bound[:, -1:]], 1)
    return bound[:, :T].t(), best
