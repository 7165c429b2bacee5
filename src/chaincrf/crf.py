"""A padded, masked, batched linear-chain conditional random field.

``CRF`` is a drop-in replacement for ``torchcrf.CRF`` (pytorch-crf): same constructor, parameter
names, ``state_dict`` keys, initialisation and results, plus tensor Viterbi, top-k, marginals,
partial-label likelihood and hard transition constraints.

Conventions used throughout this module:

* Transitions are indexed ``[from, to]``: ``transitions[i, j]`` scores moving from tag ``i`` to
  tag ``j``.
* Internally every computation is time-major, ``(T, B, K)`` (seq_len, batch, num_tags), with the
  batch sorted by decreasing length, so that the rows still inside their sequence at step ``t``
  are a prefix ``[:n_active[t]]`` of the batch. Padded positions are never read.
* Forbidden moves are ``-inf`` scores, never finite sentinels.

This module imports only torch.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from chaincrf import crf_plan

__all__ = ["CRF", "NonFiniteInputError"]


class NonFiniteInputError(ValueError):
    """NaN or +inf emissions where the mask is on, or NaN/+inf CRF parameters (a ``ValueError``)."""


_REDUCTIONS = ("none", "sum", "mean", "token_mean")
# Largest spread of finite transition scores for which the scaled exp-space recursion cannot
# lose a significant term to underflow, and the smallest per-step normaliser it accepts.
_SPAN_LIMIT = {torch.float32: 60.0, torch.float64: 600.0}
_TINY = {torch.float32: 1e-20, torch.float64: 1e-200}
# The log-depth tree path: used when batch * tags^2 is at most this, T at least _TREE_MIN_T and
# the transition spread at most _TREE_SPAN_LIMIT (products must not underflow).
_TREE_MAX_BKK = 512
_TREE_MIN_T = 8
_TREE_SPAN_LIMIT = 25.0
# Matrix products with at most this many multiplications are done by broadcasting, not BLAS.
_BROADCAST_MAX = 4096
# Viterbi back-pointers for all steps in one argmax when batch * tags^2 is at most this; above
# it, the back-trace takes the argmax for the chosen tag only, step by step.
_BATCHED_BACKPOINTERS_MAX = 3000
# The Viterbi forward step slices to the rows still running only when that skips at least this
# many candidate scores (the slicing's view operations cost about as much as this arithmetic).
_SLICE_MIN_SAVED = 8192
# Viterbi's max-plus tree: used when T >= _TREE_VITERBI_MIN_T and batch * tags^3 is at most
# _TREE_VITERBI_MAX_BKKK, or T >= _TREE_VITERBI_LONG_T and batch * tags^3 is at most
# _TREE_VITERBI_LONG_MAX_BKKK (measured 0.3-0.8x the sequential time there, 1.1-10x elsewhere).
_TREE_VITERBI_MIN_T = 64
_TREE_VITERBI_MAX_BKKK = 512
_TREE_VITERBI_LONG_T = 256
_TREE_VITERBI_LONG_MAX_BKKK = 1024


class CRF(nn.Module):
    """Linear-chain conditional random field over ``num_tags`` tags.

    The score of a tag path ``y`` for emissions ``x`` of length ``L`` is
    ``start[y_0] + sum_t x[t, y_t] + sum_{t>0} transitions[y_{t-1}, y_t] + end[y_{L-1}]``.
    Transitions are indexed ``[from, to]``.

    Args:
        num_tags: number of tags ``K`` (>= 1).
        batch_first: if True, inputs are laid out ``(batch, seq_len, ...)``; otherwise
            ``(seq_len, batch, ...)`` as in pytorch-crf.
        constraints: optional ``(start_allowed (K,), end_allowed (K,), transitions_allowed (K, K))``
            bool tensors (see ``chaincrf.constraints.allowed_transitions``). Disallowed moves get
            probability zero in training and decoding alike.
        kernel: ``"auto"`` (the planner's table, :mod:`chaincrf.crf_plan`; ``$CHAINCRF_KERNEL``
            overrides it), ``"eager"`` (tensor operations, any device) or ``"fused"`` (compiled
            CPU loops, numba). Results agree to rounding; only speed differs.

    Attributes:
        start_transitions: float parameter (K,), score of starting in each tag.
        end_transitions: float parameter (K,), score of ending in each tag.
        transitions: float parameter (K, K), ``transitions[i, j]`` scores tag i followed by tag j.
    """

    def __init__(
        self,
        num_tags: int,
        batch_first: bool = False,
        constraints: tuple[Tensor, Tensor, Tensor] | None = None,
        kernel: str = "auto",
    ) -> None:
        if kernel not in ("auto", *crf_plan.KERNELS):
            raise ValueError(f"kernel must be one of ('auto', 'eager', 'fused'); got {kernel!r}")
        if not isinstance(num_tags, int) or isinstance(num_tags, bool) or num_tags <= 0:
            raise ValueError(
                f"invalid number of tags: num_tags must be a positive int; got {num_tags!r}"
            )
        super().__init__()
        self.num_tags = num_tags
        self.batch_first = batch_first
        self.kernel = kernel
        crf_plan.prepare(kernel)
        self.start_transitions = nn.Parameter(torch.empty(num_tags))
        self.end_transitions = nn.Parameter(torch.empty(num_tags))
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags))
        self.has_constraints = constraints is not None
        start_ok, end_ok, trans_ok = self._check_constraints(constraints)
        # Not persistent: state_dict keys stay exactly pytorch-crf's.
        self.register_buffer("start_allowed", start_ok, persistent=False)
        self.register_buffer("end_allowed", end_ok, persistent=False)
        self.register_buffer("transitions_allowed", trans_ok, persistent=False)
        self.reset_parameters()

    def _check_constraints(
        self, constraints: tuple[Tensor, Tensor, Tensor] | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        K = self.num_tags
        if constraints is None:
            return (
                torch.ones(K, dtype=torch.bool),
                torch.ones(K, dtype=torch.bool),
                torch.ones(K, K, dtype=torch.bool),
            )
        if not isinstance(constraints, (tuple, list)) or len(constraints) != 3:
            raise ValueError(
                "constraints must be a tuple (start_allowed (K,), end_allowed (K,), "
                f"transitions_allowed (K, K)); got {type(constraints).__name__}"
            )
        expected = ((K,), (K,), (K, K))
        names = ("start_allowed", "end_allowed", "transitions_allowed")
        out = []
        for name, shape, value in zip(names, expected, constraints):
            value = torch.as_tensor(value)
            if value.dtype != torch.bool:
                raise ValueError(
                    f"constraints {name} must be a bool tensor; got dtype {value.dtype}"
                )
            if tuple(value.shape) != shape:
                raise ValueError(
                    f"constraints {name} must have shape {shape}; got {tuple(value.shape)}"
                )
            out.append(value.clone())
        return out[0], out[1], out[2]

    def reset_parameters(self) -> None:
        """Initialise all transition scores uniformly in [-0.1, 0.1], as pytorch-crf does."""
        nn.init.uniform_(self.start_transitions, -0.1, 0.1)
        nn.init.uniform_(self.end_transitions, -0.1, 0.1)
        nn.init.uniform_(self.transitions, -0.1, 0.1)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(num_tags={self.num_tags})"

    # ------------------------------------------------------------------ public API

    def forward(
        self,
        emissions: Tensor,
        tags: Tensor,
        mask: Tensor | None = None,
        reduction: str = "sum",
        validate: bool = True,
    ) -> Tensor:
        """Log-likelihood of ``tags`` given ``emissions`` (positive sign, as pytorch-crf).

        Args:
            emissions: float tensor (seq_len, batch, num_tags), or (batch, seq_len, num_tags) when
                ``batch_first``; unnormalised scores.
            tags: long tensor (seq_len, batch) / (batch, seq_len), gold tag ids. Values at padded
                positions are ignored (``-100`` padding is fine).
            mask: bool or uint8 tensor shaped like ``tags``, left-aligned; ``None`` means all on.
            reduction: ``none`` (per sequence, (batch,)), ``sum``, ``mean`` (over sequences) or
                ``token_mean`` (sum divided by the number of unmasked tokens).
            validate: check value-dependent properties (tag range, mask gaps, no NaN or +inf
                emissions where the mask is on, finite parameters).

        Returns:
            float tensor, (batch,) for ``none`` and () otherwise.
        """
        self._check_reduction(reduction)
        em, mask_bt = self._shapes(emissions, mask)
        kernel = self._kernel_for("log_partition", em, grad=self._needs_grad(em))
        if kernel == "fused":
            from chaincrf import crf_fused

            tags_bt = self._check_tags(tags, em).contiguous()
            start, trans, end = self._scores(em.dtype)
            lengths = crf_fused.ragged(mask_bt, em, start, trans, end, tags_bt, validate)
            llh = crf_fused.log_likelihood(
                em, tags_bt, lengths, start, trans, end, self.has_constraints, check=False
            )
            return _reduce(llh, mask_bt, reduction)
        if validate:
            self._validate(em, mask_bt)
        tags_bt = self._prepare_tags(tags, em, mask_bt, validate)
        llh = self._log_likelihood(em, tags_bt, mask_bt, kernel)
        return _reduce(llh, mask_bt, reduction)

    def nll(
        self,
        emissions: Tensor,
        tags: Tensor,
        mask: Tensor | None = None,
        reduction: str = "sum",
        validate: bool = True,
    ) -> Tensor:
        """Negative log-likelihood: ``-self(emissions, tags, mask, reduction)``; a loss to minimise."""
        return -self.forward(emissions, tags, mask, reduction=reduction, validate=validate)

    loss = nll

    def log_partition(
        self, emissions: Tensor, mask: Tensor | None = None, validate: bool = True
    ) -> Tensor:
        """Log of the partition function (forward algorithm).

        Args:
            emissions: float tensor (seq_len, batch, num_tags) or batch-first; unnormalised scores.
            mask: bool/uint8 (seq_len, batch) or batch-first, left-aligned; ``None`` means all on.
            validate: check that the mask has no gaps and that emissions and parameters hold
                no NaN or +inf where the mask is on (with False, such inputs give NaN results).

        Returns:
            float tensor (batch,); 0 for empty sequences.
        """
        em, mask_bt = self._shapes(emissions, mask)
        lengths = self._lengths(em, mask_bt, validate, "log_partition", grad=self._needs_grad(em))
        return self._log_partition_bt(em, lengths)

    def decode(
        self, emissions: Tensor, mask: Tensor | None = None, validate: bool = True
    ) -> list[list[int]]:
        """Best tag sequence per batch item, as lists of ints (pytorch-crf's ``decode``).

        Args:
            emissions: float tensor (seq_len, batch, num_tags) or batch-first.
            mask: bool/uint8 (seq_len, batch) or batch-first, left-aligned; ``None`` means all on.
            validate: check that the mask has no gaps and that emissions and parameters hold
                no NaN or +inf where the mask is on (with False, such inputs give NaN results).

        Returns:
            list of ``batch`` lists; list ``b`` holds ``length_b`` tag ids.
        """
        em, mask_bt = self._shapes(emissions, mask)
        lengths = self._lengths(em, mask_bt, validate, "viterbi")
        if self._kernel_for("viterbi", em) == "fused":
            from chaincrf import crf_fused

            start, trans, end = self._scores(em.dtype)
            paths, _ = crf_fused.viterbi(em, lengths, start, trans, end, check=False)  # -1 padded
            return [row[:n] for row, n in zip(paths.tolist(), lengths.tolist())]
        seq, best, order, lengths = self._best_paths(em, lengths)
        rows, lens, bests = seq.t().tolist(), lengths.tolist(), best.tolist()
        paths = [
            row[:n] if score != float("-inf") else [-1] * n
            for row, n, score in zip(rows, lens, bests)
        ]
        if order is None:
            return paths
        out: list[list[int]] = [[] for _ in paths]
        for i, path in zip(order.tolist(), paths):
            out[i] = path
        return out

    def viterbi(
        self, emissions: Tensor, mask: Tensor | None = None, k: int = 1, validate: bool = True
    ) -> tuple[Tensor, Tensor]:
        """Best (k=1) or k best distinct tag paths and their scores, as tensors.

        Args:
            emissions: float tensor (seq_len, batch, num_tags) or batch-first.
            mask: bool/uint8 (seq_len, batch) or batch-first, left-aligned; ``None`` means all on.
            k: number of paths per sequence (>= 1).
            validate: check that the mask has no gaps and that emissions and parameters hold
                no NaN or +inf where the mask is on (with False, such inputs give NaN results).

        Returns:
            With k=1: ``paths`` long (seq_len, batch) / (batch, seq_len) and ``scores`` float
            (batch,). With k>1: ``paths`` long (seq_len, batch, k) / (batch, k, seq_len) and
            ``scores`` (batch, k), best first. Positions past a sequence's end hold -1; where a
            sequence has fewer than k paths the missing ones are all -1 with score -inf.
        """
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive int; got {k!r}")
        em, mask_bt = self._shapes(emissions, mask)
        lengths = self._lengths(em, mask_bt, validate, "viterbi", k=k)
        paths, scores = self._viterbi_bt(em, lengths, k)  # (B, k, T), (B, k)
        if k == 1:
            paths, scores = paths[:, 0], scores[:, 0]
            return (paths if self.batch_first else paths.t().contiguous()), scores
        return (paths if self.batch_first else paths.permute(2, 0, 1).contiguous()), scores

    def marginals(
        self, emissions: Tensor, mask: Tensor | None = None, validate: bool = True
    ) -> Tensor:
        """Posterior probability of each tag at each position.

        Args:
            emissions: float tensor (seq_len, batch, num_tags) or batch-first.
            mask: bool/uint8 (seq_len, batch) or batch-first, left-aligned; ``None`` means all on.
            validate: check that the mask has no gaps and that emissions and parameters hold
                no NaN or +inf where the mask is on (with False, such inputs give NaN results).

        Returns:
            float tensor shaped like ``emissions`` ((seq_len, batch, num_tags), or
            (batch, seq_len, num_tags) when ``batch_first``): rows sum to 1 where the mask is on
            and are 0 elsewhere.
        """
        em, mask_bt = self._shapes(emissions, mask)
        lengths = self._lengths(em, mask_bt, validate, "marginals")
        start, trans, end = (x.detach() for x in self._scores(em.dtype))
        if self._kernel_for("marginals", em) == "fused":
            from chaincrf import crf_fused

            out = crf_fused.marginals(em, lengths, start, trans, end, check=False)
            out = out.to(emissions.dtype)
            return out if self.batch_first else out.transpose(0, 1)
        em_tm, order, n_active = _sort_time_major(em.detach(), lengths)
        lengths = lengths[order]
        gamma = None
        if _use_tree(em_tm, start, trans, end):
            with torch.inference_mode(False), torch.enable_grad():  # fresh copies: autograd
                em_req = em_tm.clone().requires_grad_(True)
                args = (start.clone(), trans.clone(), end.clone(), lengths.clone())
                log_z = _tree_log_partition(em_req, *args)
                if log_z is not None:
                    (gamma,) = torch.autograd.grad(log_z.sum(), em_req)
        if gamma is None:
            with torch.no_grad():
                fb = _ForwardBackward(em_tm, start, trans, end, n_active, lengths)
                gamma = fb.backward(torch.ones_like(fb.log_z))[0]
        gamma = gamma.transpose(0, 1)  # (B, T, K), sorted rows
        out = torch.empty_like(gamma)
        out[order] = gamma
        out = out.masked_fill(~mask_bt[..., None], 0.0).to(emissions.dtype)
        return out if self.batch_first else out.transpose(0, 1)

    def partial_log_likelihood(
        self,
        emissions: Tensor,
        allowed: Tensor,
        mask: Tensor | None = None,
        reduction: str = "sum",
        validate: bool = True,
    ) -> Tensor:
        """Log total probability of the paths that use only allowed tags (partial labels).

        Args:
            emissions: float tensor (seq_len, batch, num_tags) or batch-first.
            allowed: bool tensor shaped like ``emissions``; ``allowed[.., t, y]`` says tag y may be
                used at position t. With exactly one allowed tag per position this equals the
                log-likelihood of that path.
            mask: bool/uint8 (seq_len, batch) or batch-first, left-aligned; ``None`` means all on.
            reduction: as in ``forward``.
            validate: check that every unmasked position allows at least one tag, and mask gaps.

        Returns:
            float tensor, (batch,) for ``none`` and () otherwise.
        """
        self._check_reduction(reduction)
        em, mask_bt = self._shapes(emissions, mask)
        if validate:
            self._validate(em, mask_bt)
        if not isinstance(allowed, Tensor) or allowed.dtype != torch.bool:
            raise ValueError(
                f"allowed must be a bool tensor; got {getattr(allowed, 'dtype', type(allowed).__name__)}"
            )
        if tuple(allowed.shape) != tuple(emissions.shape):
            raise ValueError(
                f"allowed must have the shape of emissions {tuple(emissions.shape)}; "
                f"got {tuple(allowed.shape)}"
            )
        allowed_bt = allowed if self.batch_first else allowed.transpose(0, 1)
        if validate:
            empty = mask_bt & ~allowed_bt.any(-1)
            if bool(empty.any()):
                b, t = (int(i) for i in empty.nonzero()[0])
                raise ValueError(
                    f"allowed must allow at least one tag at every unmasked position; "
                    f"batch row {b}, position {t} allows none"
                )
        lengths = mask_bt.sum(1)
        neg_inf = torch.tensor(float("-inf"), dtype=em.dtype, device=em.device)
        clamped = torch.where(allowed_bt, em, neg_inf)
        llh = self._log_partition_bt(clamped, lengths) - self._log_partition_bt(em, lengths)
        return _reduce(llh, mask_bt, reduction)

    # ------------------------------------------------------------------ internals

    def _scores(self, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """Start (K,), transition (K, K) and end (K,) scores in ``dtype``, -inf where forbidden."""
        start, trans, end = self.start_transitions, self.transitions, self.end_transitions
        if start.dtype != dtype:
            start, trans, end = start.to(dtype), trans.to(dtype), end.to(dtype)
        if self.has_constraints:
            neg_inf = torch.tensor(float("-inf"), dtype=dtype, device=start.device)
            start = torch.where(self.start_allowed, start, neg_inf)
            trans = torch.where(self.transitions_allowed, trans, neg_inf)
            end = torch.where(self.end_allowed, end, neg_inf)
        return start, trans, end

    @staticmethod
    def _check_reduction(reduction: str) -> None:
        if reduction not in _REDUCTIONS:
            raise ValueError(f"invalid reduction: expected one of {_REDUCTIONS}; got {reduction!r}")

    def _layout(self, what: str) -> str:
        return f"(batch, seq_len{what})" if self.batch_first else f"(seq_len, batch{what})"

    def _shapes(self, emissions: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """Checks shapes and dtypes (no values: nothing syncs with the device); returns
        batch-first float emissions (B, T, K) and a bool mask (B, T)."""
        if not isinstance(emissions, Tensor):
            raise ValueError(f"emissions must be a torch.Tensor; got {type(emissions).__name__}")
        if emissions.dim() != 3:
            raise ValueError(
                f"emissions must have 3 dimensions {self._layout(f', {self.num_tags}')}; "
                f"got shape {tuple(emissions.shape)}"
            )
        if emissions.size(2) != self.num_tags:
            raise ValueError(
                f"emissions must have shape {self._layout(f', {self.num_tags}')}: last dimension "
                f"{self.num_tags} (num_tags); got {tuple(emissions.shape)}"
            )
        if not emissions.is_floating_point():
            raise ValueError(
                f"emissions must be a floating point tensor; got dtype {emissions.dtype}"
            )
        em = emissions if self.batch_first else emissions.transpose(0, 1)
        if em.dtype in (torch.float16, torch.bfloat16):
            em = em.float()
        B, T, _ = em.shape
        if mask is None:
            mask_bt = torch.ones(B, T, dtype=torch.bool, device=em.device)
        else:
            if not isinstance(mask, Tensor):
                raise ValueError(f"mask must be a torch.Tensor; got {type(mask).__name__}")
            if tuple(mask.shape) != tuple(emissions.shape[:2]):
                raise ValueError(
                    f"mask must have shape {self._layout('')} = {tuple(emissions.shape[:2])} "
                    f"matching emissions; got {tuple(mask.shape)}"
                )
            if mask.dtype not in (torch.bool, torch.uint8):
                raise ValueError(f"mask must be a bool or uint8 tensor; got dtype {mask.dtype}")
            mask_bt = (mask if self.batch_first else mask.t()).bool()
        return em, mask_bt

    def _validate(self, em: Tensor, mask_bt: Tensor) -> None:
        """The eager kernels' value checks: mask gaps, then NaN/+inf parameters or emissions."""
        if em.size(1) > 1:
            gaps = mask_bt[:, 1:] & ~mask_bt[:, :-1]
            if bool(gaps.any()):
                row = int(gaps.any(1).nonzero()[0])
                raise ValueError(
                    "mask must be left-aligned (a run of on, then off) with no gaps; "
                    f"batch row {row} switches back on after an off position"
                )
        self._check_finite(em, mask_bt)

    def _lengths(
        self,
        em: Tensor,
        mask_bt: Tensor,
        validate: bool,
        operation: str,
        k: int = 1,
        grad: bool = False,
    ) -> Tensor:
        """Each row's length (B,), validated (``validate``) by the kernel ``operation`` will
        run on: the fused kernels check the values in the same pass that counts the lengths."""
        if self._kernel_for(operation, em, k, grad, record=False) == "fused":
            from chaincrf import crf_fused

            start, trans, end = self._scores(em.dtype)
            return crf_fused.ragged(mask_bt, em, start, trans, end, validate=validate)
        if validate:
            self._validate(em, mask_bt)
        return mask_bt.sum(1)

    def _check_finite(self, em: Tensor, mask_bt: Tensor) -> None:
        """NaN or +inf where the mask is on (``-inf`` is allowed: a forbidden tag), or NaN/+inf
        in the parameters, would give NaN results and a path whose score is NaN: refuse them."""
        for name in ("start_transitions", "end_transitions", "transitions"):
            value = getattr(self, name)
            if bool((torch.isnan(value) | (value == float("inf"))).any()):
                raise NonFiniteInputError(
                    f"CRF parameter {name} holds NaN or +inf values (did training diverge?)"
                )
        bad = (torch.isnan(em) | (em == float("inf"))).any(-1) & mask_bt  # (B, T)
        if bool(bad.any()):
            row, position = (int(i) for i in bad.nonzero()[0])
            found = em[row, position]
            what = "NaN" if bool(torch.isnan(found).any()) else "+inf"
            raise NonFiniteInputError(
                f"emissions must be finite (or -inf) where the mask is on; batch row {row}, "
                f"position {position} holds {what}"
            )

    def _prepare_tags(self, tags: Tensor, em: Tensor, mask_bt: Tensor, validate: bool) -> Tensor:
        """Checks tags; returns (B, T) long tags with padded positions set to 0."""
        tags_bt = self._check_tags(tags, em)
        if validate:
            bad = mask_bt & ((tags_bt < 0) | (tags_bt >= self.num_tags))
            if bool(bad.any()):
                b, t = (int(i) for i in bad.nonzero()[0])
                raise ValueError(
                    f"tags must be in [0, {self.num_tags}) where the mask is on; got "
                    f"{int(tags_bt[b, t])} at batch row {b}, position {t}"
                )
        return tags_bt.masked_fill(~mask_bt, 0)

    def _check_tags(self, tags: Tensor, em: Tensor) -> Tensor:
        """Checks the tags' shape and dtype; returns them (B, T) long, batch-first."""
        if not isinstance(tags, Tensor):
            raise ValueError(f"tags must be a torch.Tensor; got {type(tags).__name__}")
        expected = tuple(em.shape[:2]) if self.batch_first else (em.shape[1], em.shape[0])
        if tuple(tags.shape) != expected:
            raise ValueError(
                f"tags must have shape {self._layout('')} = {expected} matching emissions; "
                f"got {tuple(tags.shape)}"
            )
        if tags.is_floating_point() or tags.dtype == torch.bool or tags.is_complex():
            raise ValueError(f"tags must be an integer tensor; got dtype {tags.dtype}")
        return (tags if self.batch_first else tags.t()).long()

    def _gold_score(self, em: Tensor, tags: Tensor, mask: Tensor) -> Tensor:
        """Score of the gold paths: em (B, T, K), tags (B, T) (0 where padded), mask (B, T) -> (B,)."""
        start, trans, end = self._scores(em.dtype)
        B, T, K = em.shape
        if T == 0:  # only empty sequences: the empty path scores 0
            return em.sum((1, 2))  # zeros (B,), still attached to the graph
        lengths = mask.sum(1)
        # emission and transition scores with one gather each; padded entries are replaced
        # (torch.where), never multiplied by 0, so -inf or NaN there cannot leak in.
        emit = em.gather(2, tags.unsqueeze(2)).squeeze(2)  # (B, T)
        emit = torch.where(mask, emit, torch.zeros((), dtype=em.dtype, device=em.device))
        score = emit.sum(1)
        if T > 1:
            pair = trans.view(-1)[(tags[:, :-1] * K + tags[:, 1:]).view(-1)].view(B, T - 1)
            pair = torch.where(mask[:, 1:], pair, torch.zeros((), dtype=em.dtype, device=em.device))
            score = score + pair.sum(1)
        last = (lengths - 1).clamp(min=0)
        last_tag = tags.gather(1, last.unsqueeze(1)).squeeze(1)
        boundary = start[tags[:, 0]] + end[last_tag]
        nonempty = lengths > 0
        score = score + torch.where(
            nonempty, boundary, torch.zeros((), dtype=em.dtype, device=em.device)
        )
        return score

    def _log_likelihood(self, em: Tensor, tags: Tensor, mask: Tensor, kernel: str) -> Tensor:
        gold = self._gold_score(em, tags, mask)
        if self.has_constraints:
            bad = torch.isneginf(gold)
            if bool(bad.any()):
                row = int(bad.nonzero()[0])
                raise ValueError(
                    f"tags at batch row {row} break the transition constraints (a forbidden start, "
                    "transition or end); the gold path has probability zero"
                )
        return gold - self._log_partition_bt(em, mask.sum(1), kernel)

    def _needs_grad(self, em: Tensor) -> bool:
        return torch.is_grad_enabled() and (em.requires_grad or self.transitions.requires_grad)

    def _kernel_for(
        self, operation: str, em: Tensor, k: int = 1, grad: bool = False, record: bool = True
    ) -> str:
        """The planner's kernel for ``operation``; ``record=False`` for a look-ahead that the
        kernel's own call records (one record per operation)."""
        B, T, K = em.shape
        problem = crf_plan.Problem(operation, B, T, K, em.dtype, em.device.type, k, grad)
        return crf_plan.choose(problem, self.kernel, record=record)

    def _log_partition_bt(self, em: Tensor, lengths: Tensor, kernel: str | None = None) -> Tensor:
        """Log-partition of batch-first emissions (B, T, K) with lengths (B,) -> (B,), by
        ``kernel`` (None: the planner's choice)."""
        start, trans, end = self._scores(em.dtype)
        if kernel is None:
            kernel = self._kernel_for("log_partition", em, grad=self._needs_grad(em))
        if kernel == "fused":
            from chaincrf import crf_fused

            return crf_fused.log_partition(em, lengths, start, trans, end, check=False)
        em_tm, order, n_active = _sort_time_major(em, lengths)
        log_z = _log_partition_sorted(em_tm, start, trans, end, n_active, lengths[order])
        out = torch.empty_like(log_z)
        return out.index_put((order,), log_z)

    def _viterbi_bt(self, em: Tensor, lengths: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """k-best Viterbi on batch-first emissions -> paths (B, k, T) long, scores (B, k)."""
        B, T, _ = em.shape
        if T == 0:  # every row is empty: one empty path, score 0
            scores = torch.full((B, k), float("-inf"), dtype=em.dtype, device=em.device)
            scores[:, 0] = 0.0
            return em.new_zeros((B, k, 0), dtype=torch.long), scores
        if k == 1 and self._kernel_for("viterbi", em) == "fused":
            from chaincrf import crf_fused

            start, trans, end = (x.detach() for x in self._scores(em.dtype))
            paths, best = crf_fused.viterbi(em, lengths, start, trans, end, check=False)
            return paths.unsqueeze(1), best.unsqueeze(1)
        if k == 1:
            seq, best, order, lengths = self._best_paths(em, lengths)
            on = torch.arange(T, device=em.device).unsqueeze(1) < lengths.unsqueeze(0)  # (T, B)
            paths = torch.where(on & ~torch.isneginf(best), seq, -1).t()  # (B, T)
            best = torch.where(lengths > 0, best, 0.0)  # an empty row: its empty path scores 0
            if order is not None:
                paths = torch.empty_like(paths).index_copy_(0, order, paths)
                best = torch.empty_like(best).index_copy_(0, order, best)
            return paths.unsqueeze(1), best.unsqueeze(1)
        start, trans, end = (x.detach() for x in self._scores(em.dtype))
        with torch.no_grad():
            em_tm, order, n_active = _sort_time_major(em.detach(), lengths)
            state, backptr = _scan(em_tm, start, trans, n_active, "topk", k)
            paths, scores = _backtrace(state, backptr, end, n_active, lengths[order], k)
            paths_out = torch.empty_like(paths)
            paths_out[order] = paths
            scores_out = torch.empty_like(scores)
            scores_out[order] = scores
        return paths_out, scores_out

    def _best_paths(
        self, em: Tensor, lengths: Tensor
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
        """The best path of each row (k = 1), in whatever row order was cheapest to compute.

        Args:
            em: float (B, T, K) batch-first emissions, T >= 0; lengths: long (B,).

        Returns:
            ``seq`` long (T, B) tags, time-major (entries past a row's end are unspecified);
            ``best`` float (B,) best scores (-inf where no path is allowed; unspecified for
            empty rows); ``order`` long (B,), the original row of each returned row, or None
            for the original order; ``lengths`` long (B,) in the returned order.
        """
        start, trans, end = (x.detach() for x in self._scores(em.dtype))
        B, T, _ = em.shape
        em = em.detach()
        with torch.no_grad():
            if T == 0:
                return em.new_zeros((0, B), dtype=torch.long), em.new_zeros(B), None, lengths
            if _use_tree_viterbi(em):
                seq, best = _tree_viterbi(em, start, trans, end, lengths)
                return seq, best, None, lengths
            if B == 1:  # nothing to sort
                n = int(lengths[0])
                em_tm, order, n_active = em.transpose(0, 1), None, [1] * n + [0] * (T - n)
            else:
                em_tm, order, n_active = _sort_time_major(em, lengths)
                lengths = lengths[order]
            seq, best = _best_sorted(em_tm, start, trans, end, n_active, lengths)
        return seq, best, order, lengths


# ---------------------------------------------------------------------- helpers (torch only)


def _reduce(llh: Tensor, mask: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return llh
    if reduction == "sum":
        return llh.sum()
    if reduction == "mean":
        return llh.mean()
    return llh.sum() / mask.sum().clamp(min=1).to(llh.dtype)  # no 0/0 for all-empty batches


def _sort_time_major(em: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, list[int]]:
    """Sorts a batch by decreasing length and makes it time-major.

    Args:
        em: float (B, T, K) batch-first emissions.
        lengths: long (B,) sequence lengths.

    Returns:
        ``em_tm`` float (T, B, K) contiguous, rows in decreasing length order; ``order`` long (B,),
        the original row of each sorted row; ``n_active`` list of T ints, the number of rows with
        length > t (those rows are the prefix ``[:n_active[t]]``).
    """
    order = torch.argsort(lengths, descending=True, stable=True)
    em_tm = em.index_select(0, order).transpose(0, 1).contiguous()
    return em_tm, order, _n_active(lengths, em.size(1))


def _n_active(lengths: Tensor, T: int) -> list[int]:
    """Number of rows with length > t, for t in [0, T) (one host transfer)."""
    counts = torch.bincount(lengths, minlength=T + 1)[:T]
    return (lengths.numel() - torch.cumsum(counts, 0)).tolist()


def _scan(
    em: Tensor, start: Tensor, trans: Tensor, n_active: list[int], reduce: str, k: int = 1
) -> tuple[Tensor, Tensor | None]:
    """The one recursion over time, parameterised by its semiring reduction.

    ``reduce="logsumexp"`` gives forward log-scores (log semiring) and ``"topk"`` the k best
    scores per tag (k-max semiring); the max-plus case (k = 1 Viterbi) has its own faster loop,
    ``_max_scan``. Runs without autograd; gradients come from the forward-backward functions
    below.

    Args:
        em: float (T, B, K), time-major, batch sorted by decreasing length.
        start: float (K,) start scores; trans: float (K, K) ``[from, to]`` scores.
        n_active: rows with length > t, per t (see ``_sort_time_major``).
        reduce: ``logsumexp`` | ``topk``.
        k: paths kept per tag (used by ``topk`` only).

    Returns:
        ``scores`` float (T, B, k, K): score of the best k (k = 1 for logsumexp: of all)
        prefixes ending in each tag at each position; ``backptr`` long (T, B, k, K) flat
        indices ``rank * K + tag`` into the previous step for ``topk``, else None.
        Entries past a row's end are never written and never read.
    """
    T, B, K = em.shape
    k = k if reduce == "topk" else 1
    scores = em.new_full((T, B, k, K), float("-inf"))
    backptr = em.new_zeros((T, B, k, K), dtype=torch.long) if reduce == "topk" else None
    if T == 0:
        return scores, backptr
    n0 = n_active[0]
    scores[0, :n0, 0] = start + em[0, :n0]
    steps, emits = scores.unbind(0), em.unbind(0)
    # k = 1: reduce over the last (contiguous) dimension, with transitions laid out [to, from]
    trans_to_from = trans.t().contiguous()
    for t in range(1, T):
        n = n_active[t]
        if n == 0:
            break
        prev, out, emit = steps[t - 1], steps[t], emits[t]
        if n < B:
            prev, out, emit = prev[:n], out[:n], emit[:n]
        if reduce == "topk":
            cand = (prev.unsqueeze(3) + trans).view(n, k * K, K)  # (n, k*K from, K to)
            torch.topk(cand, k, dim=1, out=(out, backptr[t, :n]))
        else:
            cand = prev + trans_to_from  # (n, 1, K from) + (K to, K from) -> (n, K to, K from)
            torch.logsumexp(cand, dim=2, out=out[:, 0])
        out.add_(emit.unsqueeze(1))
    return scores, backptr


def _max_scan(em: Tensor, start: Tensor, trans: Tensor, n_active: list[int]) -> Tensor:
    """The max-plus (Viterbi) forward recursion: best prefix score per tag at each position.

    Two eager operations per step. Each step's candidates are laid out ``(K from, B, K to)`` so
    that the max runs over the outermost dimension (element-wise maxima of contiguous rows,
    3-6x faster than a max over a short innermost dimension). A step covers the whole batch, the
    rows already past their end included, unless slicing to the active prefix saves more
    arithmetic than the extra view operations cost (``_SLICE_MIN_SAVED`` elements).

    Args:
        em: float (T, B, K), time-major, batch sorted by decreasing length.
        start: float (K,) start scores; trans: float (K, K) ``[from, to]`` scores.
        n_active: rows with length > t, per t (see ``_sort_time_major``).

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
    min_rows_saved = _SLICE_MIN_SAVED // (K * K) + 1
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
    ``_BATCHED_BACKPOINTERS_MAX``) then take every back-pointer in one argmax and follow them by
    pointer doubling (``_follow``): O(log T) operations; larger ones take the argmax for the
    chosen tag only, step by step ((B, K) work per step instead of (B, K, K)).

    Args:
        em: float (T, B, K), time-major, batch sorted by decreasing length (T >= 1).
        start, end: float (K,); trans: float (K, K) ``[from, to]``; n_active: as in
        ``_sort_time_major``; lengths: long (B,) sorted lengths.

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
    if B * K * K <= _BATCHED_BACKPOINTERS_MAX:
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
        scores: float (T, B, k, K) and backptr: long (T, B, k, K) from ``_scan(reduce="topk")``.
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


def _broadcast_products(B: int, K: int) -> bool:
    """Whether the recursion's (B, K) @ (K, K) products should avoid BLAS.

    With several intra-op threads a BLAS product on a handful of rows costs a thread hand-off
    (measured 30-80 µs here) that dwarfs the arithmetic; a broadcast multiply and sum does not.
    Single-threaded, BLAS is far faster (2 µs against 40 µs at B=32, K=9).
    """
    return torch.get_num_threads() > 1 and K <= 16 and B * K * K <= _BROADCAST_MAX


def _mm(a: Tensor, b: Tensor, out: Tensor, broadcast: bool) -> None:
    """``out = a @ b`` for a (n, K) and b (K, K), by BLAS or by broadcasting."""
    if broadcast:
        torch.sum(a.unsqueeze(2) * b, dim=1, out=out)
    else:
        torch.mm(a, b, out=out)


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


class _Scaled:
    """Forward-backward in scaled exp space: one matrix product per step.

    The step is ``p_t = normalise((p_{t-1} @ exp(trans - tmax)) * exp(em_t - max em_t))`` with
    log-scales accumulated in float64. Exact to working precision while the spread of finite
    transition scores stays under ``_SPAN_LIMIT`` and no step's normaliser underflows; rows where
    one does are reported in ``ok`` and must be recomputed in log space.

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
        ok = (S[..., 0] > _TINY[dtype]).all(0) & (z > _TINY[dtype])
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
        self.E, self.P, self.S, self.X, self.end_w, self.z = E, P, S, X, end_w, z

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
        self.A = _scan(em, start, trans, n_active, "logsumexp", 1)[0][:, :, 0]  # (T, B, K)
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
        rev = _scan(em.gather(0, flip), self.end, self.trans.t(), self.n_active, "logsumexp", 1)[0]
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
        return tuple(x.to(self.dtype) for x in (gamma, d_start, d_trans, d_end))


class _ForwardBackward:
    """Log-partition and its gradient for sorted time-major emissions, choosing the method.

    The scaled exp-space recursion runs first; rows where it could lose precision (transition
    spread over ``_SPAN_LIMIT``, or a step whose normaliser underflows, as with ``-inf``
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
        if (
            em.dtype in _SPAN_LIMIT
            and spread is not None
            and float(spread) <= _SPAN_LIMIT[em.dtype]
        ):
            self.scaled = _Scaled(em, start, trans, end, n_active, lengths)
            self.log_z = self.scaled.log_z
            if bool(self.scaled.ok.all()):
                return
            rows = (~self.scaled.ok).nonzero()[:, 0]  # still sorted by decreasing length
            sub_lengths = lengths[rows]
            self.exact = _Exact(
                em.index_select(1, rows), start, trans, end, _n_active(sub_lengths, T), sub_lengths
            )
            self.exact_rows = rows
            self.log_z = self.log_z.index_put((rows,), self.exact.log_z)
        else:
            self.exact = _Exact(em, start, trans, end, n_active, lengths)
            self.log_z = self.exact.log_z

    def backward(self, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Gradients w.r.t. em (T, B, K), start (K,), trans (K, K), end (K,); marginals for ones."""
        T, B, K = self.shape
        if self.scaled is None and self.exact is None:
            z = grad.new_zeros(K)
            return grad.new_zeros(T, B, K), z, grad.new_zeros(K, K), z
        if self.scaled is None:
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
    def forward(ctx, em, start, trans, end, n_active, lengths):  # type: ignore[override]
        fb = _ForwardBackward(em, start, trans, end, n_active, lengths)
        ctx.fb = fb
        return fb.log_z

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
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
        if not bool((c > _TINY[dtype]).all()):
            return None
        M = M / c
        log_c = log_c + c.double().log().sum((0, 2, 3))
    a0 = start + em[0]  # (B, K)
    m0 = a0.detach().amax(dim=1, keepdim=True)
    emax = end.detach().max()
    v = torch.exp(a0 - m0).unsqueeze(1)  # (B, 1, K)
    total = M[0] if M.size(0) else eye.expand(B, K, K)
    z = (torch.matmul(v, total).squeeze(1) * torch.exp(end - emax)).sum(1)  # (B,)
    if not bool((z.detach() > _TINY[dtype]).all()):
        return None
    log_z = (log_c + m0[:, 0].double() + emax.double()).to(dtype) + z.log()
    return torch.where(lengths > 0, log_z, 0.0)


def _use_tree(em: Tensor, start: Tensor, trans: Tensor, end: Tensor) -> bool:
    """Whether the log-depth path is both exact and faster: small, unconstrained, few tags."""
    T, B, K = em.shape
    if T < _TREE_MIN_T or B * K * K > _TREE_MAX_BKK or em.dtype not in _SPAN_LIMIT:
        return False
    scores = torch.cat([start.detach(), end.detach(), trans.detach().view(-1)])
    if not bool(torch.isfinite(scores).all()) or bool(torch.isneginf(em).any()):
        return False
    return float(trans.detach().max() - trans.detach().min()) <= _TREE_SPAN_LIMIT


def _use_tree_viterbi(em: Tensor) -> bool:
    """Whether the log-depth max-plus tree beats the sequential Viterbi: long sequences, few
    rows and few tags (its arithmetic grows as batch * T * tags^3, its operations as log T)."""
    B, T, K = em.shape
    work = B * K**3
    return (T >= _TREE_VITERBI_MIN_T and work <= _TREE_VITERBI_MAX_BKKK) or (
        T >= _TREE_VITERBI_LONG_T and work <= _TREE_VITERBI_LONG_MAX_BKKK
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
            return log_z
    return _LogPartition.apply(em, start, trans, end, n_active, lengths)
