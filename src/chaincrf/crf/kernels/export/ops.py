"""The export kernel: the log-partition and Viterbi as masked steps, for TorchScript,
torch.export and ONNX.

The interface of :mod:`chaincrf.crf.kernels.eager` (``log_partition``, ``log_likelihood``,
``viterbi`` with k = 1, ``decode``, ``marginals``; k-best paths stay with the other kernels),
written so that a graph can hold it: every row steps through every position, a masked step
keeps the row's state (no sorting by length, no slicing, no host synchronisation, no shape
logic in Python). The same step functions run three ways:

- eagerly and under ``torch.jit.script``: a loop over time (TorchScript keeps it as a loop
  whose length is the input's, so a scripted layer takes any batch and length);
- under torch.export (and the ONNX exporter, which runs it):
  :func:`torch._higher_order_ops.scan`, one graph node with a symbolic length (the ONNX
  exporter turns it into an ONNX ``Scan``);
- under torch.compile: the loop, unrolled for each length (torch 2.13's inductor cannot
  lower the scan yet: ``decompose_scan_to_while_loop`` fails).

Viterbi adds in eager's order (``max_i(score[i] + trans[i, j]) + em[j]``, then ``+ end``) and
breaks ties toward the smaller tag, as ``argmax``: its paths and scores equal the eager and
fused kernels' bit for bit. Value checks (``validate``) are eager's, run only outside a trace
(a traced or scripted graph cannot stop on a value; an exported model checks nothing).
"""

from __future__ import annotations

import torch
from torch import Tensor

from chaincrf.crf import errors, tracing
from chaincrf.crf.kernels.eager import ops as eager

__all__ = ["decode", "log_likelihood", "log_partition", "marginals", "viterbi"]


def _logsumexp(x: Tensor, dim: int) -> Tensor:
    """``logsumexp`` that gives -inf (not NaN) where every term is -inf, in any runtime (ONNX's
    ReduceLogSumExp would subtract -inf from -inf)."""
    top = x.amax(dim)
    shift = torch.where(torch.isneginf(top), torch.zeros_like(top), top)
    return (x - shift.unsqueeze(dim)).exp().sum(dim).log() + shift


def _partition_step(
    alpha: Tensor, em_t: Tensor, on_t: Tensor, first: Tensor, trans: Tensor
) -> Tensor:
    """One forward step: alpha (B, K) after position t; a masked row keeps its alpha, a row's
    first kept position (``first`` (B, 1)) adds its emissions to the start scores (``alpha``
    holds them)."""
    moved = _logsumexp(alpha.unsqueeze(2) + trans, 1)
    nxt = torch.where(first, alpha, moved) + em_t
    return torch.where(on_t.unsqueeze(1), nxt, alpha)


def _viterbi_step(
    score: Tensor, em_t: Tensor, on_t: Tensor, first: Tensor, trans: Tensor, tags: Tensor
) -> tuple[Tensor, Tensor]:
    """One max-plus step: the best score (B, K) per tag after position t and the back-pointer
    (B, K) of each tag (itself where the row is masked or at its first kept position)."""
    cand = score.unsqueeze(2) + trans  # (B, K from, K to)
    best = cand.amax(1)
    back = cand.argmax(1)
    nxt = torch.where(first, score, best) + em_t
    on = on_t.unsqueeze(1)
    keep = on & ~first
    return torch.where(on, nxt, score), torch.where(keep, back, tags.expand_as(back))


def _gold_score(
    em: Tensor, tags: Tensor, mask: Tensor, start: Tensor, trans: Tensor, end: Tensor
) -> Tensor:
    """Score of the gold paths over the kept positions (a mask may have gaps), (B,): each kept
    position's predecessor is the last kept one before it (a running maximum, no loop)."""
    B, T, K = em.shape
    kept = torch.where(mask, torch.arange(T, device=em.device).expand(B, T), -1)
    upto = kept.cummax(1).values  # the last kept position at or before t
    prev = torch.cat([upto.new_full((B, 1), -1), upto], 1)[:, :T]  # ... strictly before t
    emit = em.gather(2, tags.unsqueeze(2)).squeeze(2)
    prev_tag = tags.gather(1, prev.clamp(min=0))
    pair = trans.reshape(-1)[(prev_tag * K + tags).reshape(-1)].reshape(B, T)
    step = torch.where(prev < 0, start[tags], pair) + emit
    score = torch.where(mask, step, torch.zeros_like(step)).sum(1)
    last = kept.amax(1) if T > 0 else kept.new_full((B,), -1)
    last_tag = tags.gather(1, last.clamp(min=0).unsqueeze(1)).squeeze(1) if T > 0 else last * 0
    return score + torch.where(last >= 0, end[last_tag], torch.zeros_like(score))


def _firsts(mask: Tensor) -> Tensor:
    """(B, T): whether position t is its row's first kept one (none kept before it)."""
    return (mask.cumsum(1) - mask.long() == 0) & mask


def _log_partition_loop(em: Tensor, mask: Tensor, start: Tensor, trans: Tensor) -> Tensor:
    B, T, K = em.shape
    alpha = start.unsqueeze(0).expand(B, K)
    firsts = _firsts(mask).unsqueeze(2)
    for t in range(T):
        alpha = _partition_step(alpha, em[:, t], mask[:, t], firsts[:, t], trans)
    return alpha


def _normalized(alpha: Tensor) -> Tensor:
    """``alpha`` (B, K) shifted so that its largest entry is 0 (rows of -inf unchanged): the
    forward-backward passes carry these, whatever the length (float32 loses the marginals of
    long chains otherwise)."""
    top = alpha.amax(1, keepdim=True)
    return alpha - torch.where(torch.isneginf(top), torch.zeros_like(top), top)


def _alphas_loop(em: Tensor, mask: Tensor, start: Tensor, trans: Tensor) -> Tensor:
    """The forward scores after every position (T, B, K), each row shifted by a constant per
    position (:func:`_normalized`; a masked position repeats the row's previous ones)."""
    B, T, K = em.shape
    alpha = start.unsqueeze(0).expand(B, K)
    firsts = _firsts(mask).unsqueeze(2)
    steps: list[Tensor] = []
    for t in range(T):
        alpha = _normalized(_partition_step(alpha, em[:, t], mask[:, t], firsts[:, t], trans))
        steps.append(alpha)
    if T == 0:
        return em.new_zeros((0, B, K))
    return torch.stack(steps, 0)


def _viterbi_loop(
    em: Tensor, mask: Tensor, start: Tensor, trans: Tensor, end: Tensor
) -> tuple[Tensor, Tensor]:
    B, T, K = em.shape
    tags = torch.arange(K, device=em.device).unsqueeze(0)
    score = start.unsqueeze(0).expand(B, K)
    firsts = _firsts(mask).unsqueeze(2)
    backs: list[Tensor] = []
    for t in range(T):
        score, back = _viterbi_step(score, em[:, t], mask[:, t], firsts[:, t], trans, tags)
        backs.append(back)
    final = score + end
    tag = final.argmax(1)
    best = final.gather(1, tag.unsqueeze(1)).squeeze(1)
    out: list[Tensor] = []
    for t in range(T - 1, -1, -1):
        out.append(tag)
        tag = backs[t].gather(1, tag.unsqueeze(1)).squeeze(1)
    out.reverse()
    if T == 0:
        return torch.zeros((B, 0), dtype=torch.long, device=em.device), best
    return torch.stack(out, 1), best


def _padded(em: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """One masked-off position after the last: a scan needs a step even when T = 0."""
    em = torch.cat([em, em.new_zeros((em.size(0), 1, em.size(2)))], 1)
    return em, torch.cat([mask, mask.new_zeros((mask.size(0), 1))], 1)


@torch.jit.unused
def _forward_scan(
    em: Tensor, mask: Tensor, start: Tensor, trans: Tensor, normalized: bool
) -> tuple[Tensor, Tensor]:
    """The forward recursion as one ``scan``: the scores after the last position (B, K) and
    after every position (T, B, K); ``normalized`` shifts them to a maximum of 0 at each step
    (:func:`_normalized`)."""
    from torch._higher_order_ops.scan import scan

    B, T, K = em.shape
    em, mask = _padded(em, mask)
    first = _firsts(mask).t().unsqueeze(2)  # (T + 1, B, 1)

    def step(alpha: Tensor, xs: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        em_t, on_t, first_t = xs
        alpha = _partition_step(alpha, em_t, on_t, first_t, trans)
        if normalized:
            alpha = _normalized(alpha)
        return alpha.clone(), alpha.clone()

    init = start.unsqueeze(0).expand(B, K).contiguous()
    alpha, alphas = scan(step, init, (em.transpose(0, 1), mask.t(), first))
    return alpha, alphas[:T]


@torch.jit.unused
def _viterbi_scan(
    em: Tensor, mask: Tensor, start: Tensor, trans: Tensor, end: Tensor
) -> tuple[Tensor, Tensor]:
    from torch._higher_order_ops.scan import scan

    B, T, K = em.shape
    tags = torch.arange(K, device=em.device).unsqueeze(0)
    em, mask = _padded(em, mask)
    first = _firsts(mask).t().unsqueeze(2)  # (T + 1, B, 1)

    def forward(score: Tensor, xs: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        em_t, on_t, first_t = xs
        score, back = _viterbi_step(score, em_t, on_t, first_t, trans, tags)
        return score.clone(), back

    init = start.unsqueeze(0).expand(B, K).contiguous()
    score, backs = scan(forward, init, (em.transpose(0, 1), mask.t(), first))  # backs (T+1, B, K)
    final = score + end
    tag = final.argmax(1)
    best = final.gather(1, tag.unsqueeze(1)).squeeze(1)

    def backward(tag: Tensor, back: Tensor) -> tuple[Tensor, Tensor]:
        return back.gather(1, tag.unsqueeze(1)).squeeze(1), tag.clone()

    _, seq = scan(backward, tag, backs.flip(0))  # tags from the last position to the first
    return seq.flip(0).t()[:, :T], best


def _alpha(em: Tensor, mask: Tensor, start: Tensor, trans: Tensor) -> Tensor:
    if not torch.jit.is_scripting():  # noqa: SIM102 (TorchScript skips this block only)
        if tracing.export_tracing(em.device.type):
            return _forward_scan(em, mask, start, trans, False)[0]
    return _log_partition_loop(em, mask, start, trans)


def _all_alphas(em: Tensor, mask: Tensor, start: Tensor, trans: Tensor) -> Tensor:
    if not torch.jit.is_scripting():  # noqa: SIM102 (TorchScript skips this block only)
        if tracing.export_tracing(em.device.type):
            return _forward_scan(em, mask, start, trans, True)[1]
    return _alphas_loop(em, mask, start, trans)


def _best(
    em: Tensor, mask: Tensor, start: Tensor, trans: Tensor, end: Tensor
) -> tuple[Tensor, Tensor]:
    if not torch.jit.is_scripting():  # noqa: SIM102 (TorchScript skips this block only)
        if tracing.export_tracing(em.device.type):
            return _viterbi_scan(em, mask, start, trans, end)
    return _viterbi_loop(em, mask, start, trans, end)


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
    if not torch.jit.is_scripting():  # noqa: SIM102 (TorchScript skips this block only)
        if validate and not tracing.is_compiling():
            eager.validate_values(em, mask, start, trans, end, None, True)
    log_z = _logsumexp(_alpha(em, mask, start, trans) + end, 1)
    return torch.where(mask.sum(1) > 0, log_z, torch.zeros_like(log_z))  # 0 if empty


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
    """Gold-path score minus log Z (B,); outside a trace, with ``constrained`` and
    ``validate``, a forbidden gold path is an error (as eager)."""
    if tags is None:
        raise ValueError("log_likelihood needs tags")
    if not torch.jit.is_scripting():  # noqa: SIM102 (TorchScript skips this block only)
        if validate and not tracing.is_compiling():
            eager.validate_values(em, mask, start, trans, end, tags, True)
    gold = _gold_score(em, tags.masked_fill(~mask, 0), mask, start, trans, end)
    if not torch.jit.is_scripting():  # noqa: SIM102 (TorchScript skips this block only)
        if constrained and validate and not tracing.is_compiling():
            bad = torch.isneginf(gold)
            if bool(bad.any()):
                raise errors.forbidden_gold_path(int(bad.nonzero()[0]))
    return gold - log_partition(em, mask, start, trans, end, validate=False)


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
    """The best path (k = 1 only) (B, 1, T), -1 past each length and where no path is
    allowed, and its score (B, 1): 0 for an empty row, -inf where no path is allowed."""
    if k != 1:
        raise ValueError(f"the export kernel computes the best path only (k = 1); got k={k}")
    if not torch.jit.is_scripting():  # noqa: SIM102 (TorchScript skips this block only)
        if validate and not tracing.is_compiling():
            eager.validate_values(em, mask, start, trans, end, None, True)
    em, start, trans, end = em.detach(), start.detach(), trans.detach(), end.detach()
    seq, best = _best(em, mask, start, trans, end)
    found = ~torch.isneginf(best)
    paths = torch.where(mask & found.unsqueeze(1), seq, torch.full_like(seq, -1))
    best = torch.where(mask.sum(1) > 0, best, torch.zeros_like(best))  # 0 if empty
    return paths.unsqueeze(1), best.unsqueeze(1)


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
    """The best path of each row as a list of its kept positions' tags (all -1 where no path
    is allowed)."""
    paths, _ = viterbi(em, mask, start, trans, end, validate=validate)
    rows: list[list[int]] = paths[:, 0].tolist()
    kept: list[list[bool]] = mask.tolist()
    out: list[list[int]] = []
    for i in range(len(rows)):
        path: list[int] = []
        for t in range(len(rows[i])):
            if kept[i][t]:
                path.append(rows[i][t])
        out.append(path)
    return out


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
    """Posterior tag probabilities (B, T, K): rows sum to 1 where the mask is on, else 0.

    Forward-backward as two masked-step passes: the forward scores, and the same recursion on
    the time-reversed rows with the transitions transposed and the end scores as start (a
    mask's gaps are skipped both ways), each shifted to a maximum of 0 at every step; at each
    kept position, ``alpha + beta - emission`` normalised over the tags (the shifts cancel).
    """
    if not torch.jit.is_scripting():  # noqa: SIM102 (TorchScript skips this block only)
        if validate and not tracing.is_compiling():
            eager.validate_values(em, mask, start, trans, end, None, True)
    em, start, trans, end = em.detach(), start.detach(), trans.detach(), end.detach()
    ahead = _all_alphas(em, mask, start, trans)  # (T, B, K), emissions at t included
    behind = _all_alphas(em.flip(1), mask.flip(1), end, trans.t()).flip(0)  # (T, B, K), too
    em_tm = em.transpose(0, 1)
    joint = torch.where(torch.isneginf(em_tm), em_tm, ahead + behind - em_tm)
    probs = torch.softmax(joint, 2)  # exp(x - max) / sum: sums to 1 where log Z would round
    probs = torch.where(mask.t().unsqueeze(2), probs, torch.zeros_like(probs))
    return probs.transpose(0, 1)
