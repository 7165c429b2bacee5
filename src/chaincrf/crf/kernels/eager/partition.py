"""Eager log-partition and its gradient (forward-backward): the scaled exp-space recursion
(BLAS or broadcast products), its exact log-space fallback per row, and the log-depth tree
(tensor operations, any device)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from chaincrf.crf import tracing, tuning
from chaincrf.crf.kernels.eager.scan import scan
from chaincrf.crf.ragged import active_counts


def _broadcast_products(B: int, K: int) -> bool:
    """Whether the recursion's (B, K) @ (K, K) products should avoid BLAS.

    With several intra-op threads a BLAS product on a handful of rows costs a thread hand-off
    that dwarfs the arithmetic; a broadcast multiply and sum does not. Single-threaded, BLAS is
    far faster. Figures and the command: ``benchmarks/crf_kernels.md`` (design figures).
    """
    tune = tuning.EAGER
    threads = torch.get_num_threads()
    return threads >= tune.broadcast_min_threads and K <= 16 and tune.broadcast_max >= B * K * K


def _mm(a: Tensor, b: Tensor, out: Tensor, broadcast: bool) -> None:
    """``out = a @ b`` for a (n, K) and b (K, K), by BLAS or by broadcasting."""
    if broadcast:
        torch.sum(a.unsqueeze(2) * b, dim=1, out=out)
    else:
        torch.mm(a, b, out=out)


class _Scaled:
    """Forward-backward in scaled exp space: one matrix product per step.

    The step is ``p_t = normalise((p_{t-1} @ exp(trans - tmax)) * exp(em_t - max em_t))`` with
    log-scales accumulated in float64. Exact to working precision while the spread of finite
    transition scores stays under ``tuning.EAGER.span_limit``, no step's normaliser underflows
    and no reachable tag's weight falls under ``tuning.EAGER.floor``; rows where one does are
    reported in ``ok`` and must be recomputed in log space.

    Args:
        em: float (T, B, K) sorted time-major emissions; start, end: (K,); trans: (K, K).
        n_active: rows with length > t; lengths: long (B,) sorted lengths.
    """

    def __init__(
        self,
        em: Tensor,
        start: Tensor,
        trans: Tensor,
        end: Tensor,
        n_active: list[int],
        lengths: Tensor,
    ) -> None:
        T, B, K = em.shape
        dtype, device = em.dtype, em.device
        zero = torch.zeros((), dtype=dtype, device=device)
        self.n_active, self.lengths = n_active, lengths
        finite = torch.isfinite(trans)
        t_fin = trans[finite]
        tmax = t_fin.max()
        E = torch.exp(trans - tmax)  # (K, K), 0 where forbidden
        m = em.amax(dim=2, keepdim=True)  # (T, B, 1)
        m = torch.where(torch.isfinite(m), m, zero)
        X = torch.exp(em - m)  # (T, B, K)
        P = torch.zeros_like(em)  # p_t, normalised forward probabilities
        S = torch.ones(T, B, 1, dtype=dtype, device=device)  # per-step normalisers
        n0 = n_active[0]
        a0 = start + em[0, :n0]
        m0 = a0.amax(dim=1, keepdim=True)
        m0 = torch.where(torch.isfinite(m0), m0, zero)
        torch.exp(a0 - m0, out=P[0, :n0])
        torch.sum(P[0, :n0], dim=1, keepdim=True, out=S[0, :n0])
        P[0, :n0].div_(S[0, :n0])
        Ps, Ss, Xs = P.unbind(0), S.unbind(0), X.unbind(0)
        broadcast = _broadcast_products(B, K)
        for t in range(1, T):
            n = n_active[t]
            if n == 0:
                break
            prev, Pt, St, Xt = Ps[t - 1], Ps[t], Ss[t], Xs[t]
            if n < B:
                prev, Pt, St, Xt = prev[:n], Pt[:n], St[:n], Xt[:n]
            _mm(prev, E, Pt, broadcast)
            Pt.mul_(Xt)
            torch.sum(Pt, dim=1, keepdim=True, out=St)
            Pt.div_(St)
        active = torch.arange(T, device=device).unsqueeze(1) < lengths.unsqueeze(0)  # (T, B)
        # log-scale per row: sum over its steps of (m_t + log s_t + tmax), first step without tmax
        logs = m[..., 0].double() + S[..., 0].double().log() + tmax.double()
        logs = torch.where(active, logs, torch.zeros((), dtype=torch.float64, device=device))
        first = torch.zeros(B, dtype=torch.float64, device=device)
        first[:n0] = (m0 - m[0, :n0])[:, 0].double() - tmax.double()
        scale = logs.sum(0) + first
        rows = torch.arange(B, device=device)
        last = (lengths - 1).clamp(min=0)
        end_fin = end[torch.isfinite(end)]
        emax = end_fin.max() if end_fin.numel() else zero
        end_w = torch.exp(end - emax)  # (K,)
        z = (P[last, rows] * end_w).sum(1)  # (B,)
        ok = (S[..., 0] > tuning.EAGER.tiny(dtype)).all(0) & (z > tuning.EAGER.tiny(dtype))
        ok &= ~self._thin(em, start, finite, P, S, X, active)
        ok |= lengths == 0
        if not bool(ok.all()):  # neutralise failed rows so their backward is exactly zero
            bad = ~ok
            P.masked_fill_(bad.view(1, B, 1), 0.0)
            X.masked_fill_(bad.view(1, B, 1), 0.0)
            S.masked_fill_(bad.view(1, B, 1), 1.0)
            z = z.masked_fill(bad, 1.0)
        log_z = scale + emax.double() + z.double().log()
        self.log_z = torch.where(lengths > 0, log_z, 0.0).to(dtype)
        self.ok = ok
        self.forbids = not bool(finite.all()) or not bool(torch.isfinite(start).all())
        self.E, self.P, self.S, self.X, self.end_w, self.z = E, P, S, X, end_w, z

    @staticmethod
    def _thin(
        em: Tensor, start: Tensor, finite: Tensor, P: Tensor, S: Tensor, X: Tensor, active: Tensor
    ) -> Tensor:
        """(B,) rows where a reachable tag with a finite emission has a forward probability,
        or a product ``p_{t-1} @ E`` feeding it (``p_t s_t / x_t``), under
        ``tuning.EAGER.floor``: it may carry the only paths later (a forced path), so the row
        must be recomputed in log space. The backward needs no check of its own: with these
        in range a term it loses to underflow weighs below float's smallest normal in every
        marginal (and it zeroes the unreachable tags' terms, which would overflow).
        Elementwise after the scan; one batched product (which tags are reachable) only where
        some tag is low."""
        T, B, K = P.shape
        floor = tuning.EAGER.floor(P.dtype)
        # fed = p s / x >= p s (x <= 1): no tag, nor product, under the floor in the usual case
        # (padded positions, p = 0 there, left out)
        lowest = torch.where(active, P.amin(2), 1.0).min() if K else P.new_ones(())
        if bool(lowest * S.min().clamp(max=1.0) >= floor):
            return torch.zeros(B, dtype=torch.bool, device=P.device)
        low = P.lt(floor)  # (T, B, K); then the products under the floor
        low[1:] |= P[1:] * S[1:] < floor * X[1:]
        low &= torch.isfinite(em) & active.unsqueeze(2)
        rows = (low[0] & torch.isfinite(start)).any(1)
        if T > 1:
            prev = (P[:-1] > 0).to(P.dtype).reshape(-1, K)
            reach = (prev @ finite.to(P.dtype)).view(T - 1, B, K) > 0
            rows |= (low[1:] & reach).any(2).any(0)
        return rows

    def backward(self, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Gradients of ``sum(grad * log_z)`` w.r.t. em (T, B, K), start (K,), trans (K, K), end (K,).

        With ``grad`` all ones the emission gradient is the marginals. Rows not ``ok`` get zero.
        """
        P, X, S, E = self.P, self.X, self.S, self.E
        T, B, K = P.shape
        n_active, lengths = self.n_active, self.lengths
        rows = torch.arange(B, device=P.device)
        last = (lengths - 1).clamp(min=0)
        nonempty = (lengths > 0).unsqueeze(1)
        g = torch.where(self.ok, grad.to(P.dtype), 0.0)
        R = torch.zeros_like(P)  # r_t, with marginals gamma_t = p_t * r_t
        r_last = self.end_w.unsqueeze(0) / self.z.unsqueeze(1)
        R[last, rows] = torch.where(nonempty, r_last, 0.0)
        Xs = X / S  # (T, B, K)
        if self.forbids:
            # 0 at a tag no path reaches (p = 0): its r would grow by x / s a step until it
            # overflowed, and 0 * inf is NaN; exact, as such a tag carries no mass (a reachable
            # one with p = 0 fails the forward's floor check). Only forbidden moves or starts
            # leave a tag with x > 0 unreached.
            Xs.masked_fill_(P == 0, 0.0)
        Q = torch.zeros_like(P)  # q_t = x_t * r_t / s_t
        Et = E.t()
        Xss, Rs, Qs = Xs.unbind(0), R.unbind(0), Q.unbind(0)
        broadcast = _broadcast_products(B, K)
        for t in range(T - 1, 0, -1):
            n = n_active[t]
            if n == 0:
                continue
            Xt, Rt, Qt, Rprev = Xss[t], Rs[t], Qs[t], Rs[t - 1]
            if n < B:
                Xt, Rt, Qt, Rprev = Xt[:n], Rt[:n], Qt[:n], Rprev[:n]
            torch.mul(Xt, Rt, out=Qt)
            _mm(Qt, Et, Rprev, broadcast)
        if T > 1:  # sum_t p_{t-1}^T q_t: the expected transition counts, before E
            Qg = Q[1:].mul_(g.view(1, B, 1))
            d_trans = E * (P[:-1].reshape(-1, K).t() @ Qg.reshape(-1, K))
        else:
            d_trans = torch.zeros_like(E)
        gamma = R.mul_(P).mul_(g.view(1, B, 1))  # in place: R is spent, P kept for re-use
        d_start = gamma[0].sum(0)
        d_end = (gamma[last, rows] * nonempty).sum(0)
        return gamma, d_start, d_trans, d_end


class _Exact:
    """Forward-backward in log space, exact for any scores (``-inf`` included); O(T·B·K) memory.

    Forward log-scores come from ``_scan``; backward log-scores from the same recursion run over
    each row reversed, with transposed transitions and the end scores as start. Computed in
    float64 whatever the input dtype: log-scores of long sequences with large emissions reach
    1e8, where float32 cannot resolve the differences between tags.
    """

    def __init__(
        self,
        em: Tensor,
        start: Tensor,
        trans: Tensor,
        end: Tensor,
        n_active: list[int],
        lengths: Tensor,
    ) -> None:
        T, B, _K = em.shape
        self.dtype = em.dtype
        em, start, trans, end = (x.double() for x in (em, start, trans, end))
        self.em, self.trans, self.end = em, trans, end
        self.n_active, self.lengths = n_active, lengths
        self.A = scan(em, start, trans, n_active, "logsumexp", 1)[0][:, :, 0]  # (T, B, K)
        rows = torch.arange(B, device=em.device)
        last = (lengths - 1).clamp(min=0)
        log_z = torch.logsumexp(self.A[last, rows] + end, dim=1) if T else em.new_zeros(B)
        self.log_z = torch.where(lengths > 0, log_z, 0.0).to(self.dtype)
        self._log_z64 = log_z

    def backward(self, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Gradients of ``sum(grad * log_z)`` w.r.t. em (T, B, K), start (K,), trans (K, K), end (K,)."""
        em, A, lengths = self.em, self.A, self.lengths
        T, B, K = em.shape
        steps = torch.arange(T, device=em.device).unsqueeze(1)  # (T, 1)
        active = steps < lengths.unsqueeze(0)  # (T, B)
        # reverse each row inside its length (padded positions map to themselves)
        flip = (
            torch.where(active, lengths.unsqueeze(0) - 1 - steps, steps)
            .unsqueeze(2)
            .expand(T, B, K)
        )
        rev = scan(em.gather(0, flip), self.end, self.trans.t(), self.n_active, "logsumexp", 1)[0]
        G = rev[:, :, 0].gather(0, flip)  # (T, B, K): em_t + beta_t
        log_z = self._log_z64.view(1, B, 1)
        g = grad.to(em.dtype)
        # gamma_t = exp(alpha_t + beta_t - log Z); alpha_t already holds em_t once
        gamma = torch.exp(A + G - em - log_z)
        gamma = torch.where(active.unsqueeze(2) & ~torch.isneginf(em), gamma, 0.0) * g.view(1, B, 1)
        rows = torch.arange(B, device=em.device)
        last = (lengths - 1).clamp(min=0)
        d_start = gamma[0].sum(0)
        d_end = (gamma[last, rows] * (lengths > 0).unsqueeze(1)).sum(0)
        d_trans = torch.zeros_like(self.trans)
        if T > 1:  # exp(alpha_{t-1}(i) + trans(i, j) + em_t(j) + beta_t(j) - log Z), in chunks
            pairs = active[1:]
            a_prev = A[:-1][pairs]  # (N, K)
            g_next = G[1:][pairs]
            lz = log_z.expand(T, B, 1)[1:][pairs]  # (N, 1)
            gw = g.view(1, B).expand(T, B)[1:][pairs]  # (N,)
            chunk = max(1, (1 << 20) // (K * K))
            for lo in range(0, a_prev.size(0), chunk):
                hi = lo + chunk
                w = (
                    a_prev[lo:hi].unsqueeze(2)
                    + self.trans
                    + (g_next[lo:hi] - lz[lo:hi]).unsqueeze(1)
                )
                d_trans += torch.einsum("n,nij->ij", gw[lo:hi], torch.exp(w))
        dtype = self.dtype
        return gamma.to(dtype), d_start.to(dtype), d_trans.to(dtype), d_end.to(dtype)


class _ForwardBackward:
    """Log-partition and its gradient for sorted time-major emissions, choosing the method.

    The scaled exp-space recursion runs first; rows where it could lose precision (transition
    spread over ``tuning.EAGER.span_limit``, or a step whose normaliser underflows, as with ``-inf``
    constraints against huge emissions) are recomputed exactly in log space. Never approximate
    silently.
    """

    def __init__(
        self,
        em: Tensor,
        start: Tensor,
        trans: Tensor,
        end: Tensor,
        n_active: list[int],
        lengths: Tensor,
    ) -> None:
        T, B, K = em.shape
        self.shape = (T, B, K)
        self.scaled: _Scaled | None = None
        self.exact: _Exact | None = None
        self.exact_rows: Tensor | None = None
        if T == 0 or n_active[0] == 0:
            self.log_z = em.new_zeros(B)
            return
        finite = torch.isfinite(trans)
        spread = trans[finite].max() - trans[finite].min() if bool(finite.any()) else None
        limit = tuning.EAGER.span_limit(em.dtype)
        if limit is not None and spread is not None and float(spread) <= limit:
            self.scaled = _Scaled(em, start, trans, end, n_active, lengths)
            self.log_z = self.scaled.log_z
            tracing.path_taken("scaled", B)
            if bool(self.scaled.ok.all()):
                return
            rows = (~self.scaled.ok).nonzero()[:, 0]  # still sorted by decreasing length
            tracing.path_taken("exact", int(rows.numel()))
            sub_lengths = lengths[rows]
            self.exact = _Exact(
                em.index_select(1, rows),
                start,
                trans,
                end,
                active_counts(sub_lengths, T),
                sub_lengths,
            )
            self.exact_rows = rows
            self.log_z = self.log_z.index_put((rows,), self.exact.log_z)
        else:
            tracing.path_taken("exact", B)
            self.exact = _Exact(em, start, trans, end, n_active, lengths)
            self.log_z = self.exact.log_z

    def backward(self, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Gradients w.r.t. em (T, B, K), start (K,), trans (K, K), end (K,); marginals for ones."""
        T, B, K = self.shape
        if self.scaled is None and self.exact is None:
            z = grad.new_zeros(K)
            return grad.new_zeros(T, B, K), z, grad.new_zeros(K, K), z
        if self.scaled is None:
            assert self.exact is not None  # not both None (above)
            return self.exact.backward(grad)
        out = self.scaled.backward(grad)
        if self.exact is None:
            return out
        rows = self.exact_rows
        d_em, d_start, d_trans, d_end = self.exact.backward(grad[rows])
        out[0][:, rows] = d_em
        return out[0], out[1] + d_start, out[2] + d_trans, out[3] + d_end


class _LogPartition(torch.autograd.Function):
    """Differentiable log-partition whose backward is forward-backward, not autograd of a loop."""

    @staticmethod
    def forward(
        ctx: Any,
        em: Tensor,
        start: Tensor,
        trans: Tensor,
        end: Tensor,
        n_active: list[int],
        lengths: Tensor,
    ) -> Tensor:
        fb = _ForwardBackward(em, start, trans, end, n_active, lengths)
        ctx.fb = fb
        return fb.log_z

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, None, None]:
        d_em, d_start, d_trans, d_end = ctx.fb.backward(grad)
        return d_em, d_start, d_trans, d_end, None, None


def _tree_log_partition(
    em: Tensor, start: Tensor, trans: Tensor, end: Tensor, lengths: Tensor
) -> Tensor | None:
    """Log-depth log-partition: a balanced tree of batched matrix products, differentiable.

    ``Z = v_0 · M_1 · ... · M_{T-1} · w`` with ``M_t[i, j] = exp(trans[i, j] + em_t[j])`` (scaled),
    identity past a row's end; each level of the tree halves the number of matrices and
    rescales every product by its (detached) maximum. O(log T) operations instead of O(T):
    pays for small batches with few tags. Gradients by autograd (O(T·B·K²) memory, so only
    chosen for small problems). Only valid without ``-inf`` scores (checked by the caller);
    returns None if a product underflows.

    Args:
        em: float (T, B, K) time-major emissions; start, end: (K,); trans: (K, K).
        lengths: long (B,) lengths.

    Returns:
        float (B,) log-partition, or None.
    """
    T, B, K = em.shape
    dtype, device = em.dtype, em.device
    active = torch.arange(T, device=device).unsqueeze(1) < lengths.unsqueeze(0)  # (T, B)
    em = torch.where(active.unsqueeze(2), em, 0.0)
    tmax = trans.detach().max()
    E = torch.exp(trans - tmax)  # (K, K)
    m = em.detach().amax(dim=2, keepdim=True)  # (T, B, 1)
    X = torch.exp(em - m)  # (T, B, K)
    eye = torch.eye(K, dtype=dtype, device=device)
    M = torch.where(active[1:, :, None, None], E * X[1:].unsqueeze(2), eye)  # (T-1, B, K, K)
    log_c = torch.where(active[1:], m[1:, :, 0] + tmax, 0.0).double().sum(0)  # (B,)
    n = M.size(0)
    if n & (n - 1):  # pad with identities to a power of two
        size = 1 << n.bit_length()
        M = torch.cat([M, eye.expand(size - n, B, K, K)], 0)
    while M.size(0) > 1:
        M = torch.matmul(M[0::2], M[1::2])
        c = M.detach().amax(dim=(2, 3), keepdim=True)  # (n, B, 1, 1)
        if not bool((c > tuning.EAGER.tiny(dtype)).all()):
            return None
        M = M / c
        log_c = log_c + c.double().log().sum((0, 2, 3))
    a0 = start + em[0]  # (B, K)
    m0 = a0.detach().amax(dim=1, keepdim=True)
    emax = end.detach().max()
    v = torch.exp(a0 - m0).unsqueeze(1)  # (B, 1, K)
    total = M[0] if M.size(0) else eye.expand(B, K, K)
    z = (torch.matmul(v, total).squeeze(1) * torch.exp(end - emax)).sum(1)  # (B,)
    if not bool((z.detach() > tuning.EAGER.tiny(dtype)).all()):
        return None
    log_z = (log_c + m0[:, 0].double() + emax.double()).to(dtype) + z.log()
    return torch.where(lengths > 0, log_z, 0.0)


def _use_tree(em: Tensor, start: Tensor, trans: Tensor, end: Tensor) -> bool:
    """Whether the log-depth path is both exact and faster: small, unconstrained, few tags."""
    T, B, K = em.shape
    tune = tuning.EAGER
    if tune.tree_min_t > T or tune.tree_max_bkk < B * K * K or tune.span_limit(em.dtype) is None:
        return False
    scores = torch.cat([start.detach(), end.detach(), trans.detach().view(-1)])
    if not bool(torch.isfinite(scores).all()) or bool(torch.isneginf(em).any()):
        return False
    return float(trans.detach().max() - trans.detach().min()) <= tune.tree_span_limit


def _log_partition_sorted(
    em: Tensor, start: Tensor, trans: Tensor, end: Tensor, n_active: list[int], lengths: Tensor
) -> Tensor:
    """Log-partition (B,) of sorted time-major emissions (T, B, K), differentiable.

    Small unconstrained problems take the log-depth tree; the rest the sequential
    forward-backward (scaled exp space, exact log space where needed).
    """
    if _use_tree(em, start, trans, end):
        log_z = _tree_log_partition(em, start, trans, end, lengths)
        if log_z is not None:
            tracing.path_taken("tree", em.shape[1])
            return log_z
    # torch.autograd.Function.apply is unannotated in torch
    out: Tensor = _LogPartition.apply(em, start, trans, end, n_active, lengths)  # type: ignore[no-untyped-call]
    return out
