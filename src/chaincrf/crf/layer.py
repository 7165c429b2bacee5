"""The CRF layer: a padded, masked, batched linear-chain conditional random field.

``CRF`` is a drop-in replacement for ``torchcrf.CRF`` (pytorch-crf): same constructor, parameter
names, ``state_dict`` keys, initialisation and results, plus tensor Viterbi, top-k, marginals,
partial-label likelihood and hard transition constraints.

The layer checks shapes and dtypes, builds the effective scores (``-inf`` where forbidden) and
reduces; the planner (:mod:`chaincrf.crf.plan`) picks the kernel that computes each call, and
every kernel (:mod:`chaincrf.crf.kernels`) offers the same functions on batch-first inputs.
Transitions are indexed ``[from, to]``: ``transitions[i, j]`` scores moving from tag ``i`` to
tag ``j``. Forbidden moves are ``-inf`` scores, never finite sentinels.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from chaincrf.crf import gaps, inputs, kernels, plan, scores, state, structure, tracing
from chaincrf.crf.autocast import float32_computations
from chaincrf.crf.errors import NonFiniteInputError
from chaincrf.crf.kernels.eager import ops as eager

__all__ = ["CRF", "NonFiniteInputError"]


@float32_computations  # under autocast (mixed precision) the CRF computes in float32
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
            bool tensors (see ``chaincrf.data.schemes.allowed_transitions``). Disallowed moves get
            probability zero in training and decoding alike.
        kernel: ``"auto"`` (the planner's table, :mod:`chaincrf.crf.plan`; ``$CHAINCRF_KERNEL``
            overrides it), ``"eager"`` (tensor operations, any device), ``"fused"`` (compiled
            CPU loops, numba), ``"export"`` (masked steps: what torch.export, ONNX and
            TorchScript run) or ``"triton"`` (GPU kernels). A kernel runs what it can and
            leaves the rest to eager. Results agree to rounding; only speed differs.
        include_start_end_transitions: with False (AllenNLP's option of that name) a path has
            no start or end score: ``start_transitions`` and ``end_transitions`` are zero
            buffers, not parameters, and not in the ``state_dict`` (start and end constraints
            still apply).

    Attributes:
        start_transitions: float parameter (K,), score of starting in each tag (a zero buffer
            without start and end scores).
        end_transitions: float parameter (K,), score of ending in each tag (likewise).
        transitions: float parameter (K, K), ``transitions[i, j]`` scores tag i followed by tag j.
    """

    # Parameters or buffers, registered in __init__ (nn.Module's attribute lookup is untyped).
    start_transitions: Tensor
    end_transitions: Tensor
    transitions: Tensor
    start_allowed: Tensor
    end_allowed: Tensor
    transitions_allowed: Tensor

    def __init__(
        self,
        num_tags: int,
        batch_first: bool = False,
        constraints: tuple[Tensor, Tensor, Tensor] | None = None,
        kernel: str = "auto",
        include_start_end_transitions: bool = True,
    ) -> None:
        if kernel != "auto" and kernel not in kernels.REGISTRY:
            raise ValueError(f"kernel must be one of {('auto', *kernels.names())}; got {kernel!r}")
        if not isinstance(num_tags, int) or isinstance(num_tags, bool) or num_tags <= 0:
            raise ValueError(
                f"invalid number of tags: num_tags must be a positive int; got {num_tags!r}"
            )
        super().__init__()
        self.num_tags = num_tags
        self.batch_first = batch_first
        self.kernel = kernel
        plan.prepare(kernel)
        self.include_start_end_transitions = bool(include_start_end_transitions)
        if self.include_start_end_transitions:
            self.start_transitions = nn.Parameter(torch.empty(num_tags))
            self.end_transitions = nn.Parameter(torch.empty(num_tags))
        else:  # zero scores every kernel reads as usual; not parameters, not in the state_dict
            self.register_buffer("start_transitions", torch.zeros(num_tags), persistent=False)
            self.register_buffer("end_transitions", torch.zeros(num_tags), persistent=False)
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags))
        self.has_constraints = constraints is not None
        start_ok, end_ok, trans_ok = state.check_constraints(num_tags, constraints)
        # Not persistent buffers: an unconstrained layer's state_dict keys stay exactly
        # pytorch-crf's; a constrained one adds them (chaincrf.crf.state).
        self.register_buffer("start_allowed", start_ok, persistent=False)
        self.register_buffer("end_allowed", end_ok, persistent=False)
        self.register_buffer("transitions_allowed", trans_ok, persistent=False)
        self.reset_parameters()

    def __prepare_scriptable__(self) -> nn.Module:
        """What ``torch.jit.script`` compiles for this layer: a
        :class:`chaincrf.crf.scripted.ScriptableCRF` sharing its parameters."""
        from chaincrf.crf.scripted import ScriptableCRF

        return ScriptableCRF(self)

    def _save_to_state_dict(
        self, destination: dict[str, Tensor], prefix: str, keep_vars: bool
    ) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        state.save_constraints(self, destination, prefix, keep_vars)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Tensor],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        state.load_constraints(self, state_dict, prefix, unexpected_keys, error_msgs)

    def reset_parameters(self) -> None:
        """Initialise all transition scores uniformly in [-0.1, 0.1], as pytorch-crf does (the
        start and end scores stay zero without ``include_start_end_transitions``)."""
        if self.include_start_end_transitions:
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
            mask: bool or uint8 tensor shaped like ``tags``; ``None`` means all on. Masked
                positions are skipped: the chain runs over the kept ones (gaps allowed).
            reduction: ``none`` (per sequence, (batch,)), ``sum``, ``mean`` (over sequences) or
                ``token_mean`` (sum divided by the number of unmasked tokens).
            validate: check value-dependent properties (tag range, no NaN or +inf
                emissions where the mask is on, finite parameters).

        Returns:
            float tensor, (batch,) for ``none`` and () otherwise.
        """
        return self._log_likelihood(emissions, tags, mask, reduction, validate, negate=False)

    def nll(self, emissions: Tensor, tags: Tensor, mask: Tensor | None = None,
            reduction: str = "sum", validate: bool = True) -> Tensor:  # fmt: skip
        """Negative log-likelihood: ``-self(emissions, tags, mask, reduction)``; a loss to minimise."""
        return self._log_likelihood(emissions, tags, mask, reduction, validate, negate=True)

    loss = nll

    def log_partition(
        self, emissions: Tensor, mask: Tensor | None = None, validate: bool = True
    ) -> Tensor:
        """Log of the partition function (forward algorithm).

        Args:
            emissions: float tensor (seq_len, batch, num_tags) or batch-first; unnormalised scores.
            mask: bool/uint8 (seq_len, batch) or batch-first; ``None`` means all on; masked
                positions are skipped (gaps allowed).
            validate: check that emissions and parameters hold
                no NaN or +inf where the mask is on (with False, such inputs give NaN results).

        Returns:
            float tensor (batch,); 0 for empty sequences.
        """
        em, mask_bt = self._shapes(emissions, mask, keep_half=True)
        kernel = self._kernel("log_partition", em, grad=self._needs_grad(em))
        em = self._for_kernel(kernel, em)
        scores = self._scores(inputs.compute_dtype(em.dtype))
        log_z: Tensor = gaps.run(kernel, "log_partition", em, mask_bt, scores, validate=validate)
        return log_z

    def decode(
        self, emissions: Tensor, mask: Tensor | None = None, validate: bool = True
    ) -> list[list[int]]:
        """Best tag sequence per batch item, as lists of ints (pytorch-crf's ``decode``).

        Args:
            emissions: float tensor (seq_len, batch, num_tags) or batch-first.
            mask: bool/uint8 (seq_len, batch) or batch-first; ``None`` means all on; masked
                positions are skipped (gaps allowed).
            validate: check that emissions and parameters hold
                no NaN or +inf where the mask is on (with False, such inputs give NaN results).

        Returns:
            list of ``batch`` lists; list ``b`` holds ``length_b`` tag ids.
        """
        em, mask_bt = self._shapes(emissions, mask)
        kernel = self._kernel("viterbi", em)
        scores = self._scores(em.dtype)
        paths: list[list[int]] = gaps.run(kernel, "decode", em, mask_bt, scores, validate=validate)
        return paths

    def viterbi(
        self, emissions: Tensor, mask: Tensor | None = None, k: int = 1, validate: bool = True
    ) -> tuple[Tensor, Tensor]:
        """Best (k=1) or k best distinct tag paths and their scores, as tensors.

        Args:
            emissions: float tensor (seq_len, batch, num_tags) or batch-first.
            mask: bool/uint8 (seq_len, batch) or batch-first; ``None`` means all on; masked
                positions are skipped (gaps allowed).
            k: number of paths per sequence (>= 1).
            validate: check that emissions and parameters hold
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
        kernel = self._kernel("viterbi", em, k=k)
        scores_ = self._scores(em.dtype)
        paths, scores = gaps.run(kernel, "viterbi", em, mask_bt, scores_, k=k, validate=validate)
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
            mask: bool/uint8 (seq_len, batch) or batch-first; ``None`` means all on; masked
                positions are skipped (gaps allowed).
            validate: check that emissions and parameters hold
                no NaN or +inf where the mask is on (with False, such inputs give NaN results).

        Returns:
            float tensor shaped like ``emissions`` ((seq_len, batch, num_tags), or
            (batch, seq_len, num_tags) when ``batch_first``): rows sum to 1 where the mask is on
            and are 0 elsewhere. Differentiable (twice; w.r.t. the emissions and the
            parameters) when the emissions require a gradient: then computed in float64 by
            :func:`chaincrf.crf.structure.marginals` (tensor operations), else by a kernel.
        """
        em, mask_bt = self._shapes(emissions, mask)
        if torch.is_grad_enabled() and em.requires_grad:
            em, mask_bt, packed = self._structure_inputs(emissions, mask, validate)
            out = structure.marginals(em.double(), mask_bt, *self._scores(torch.float64))
            out = (out if packed is None else packed.scatter(out)).to(emissions.dtype)
            return out if self.batch_first else out.transpose(0, 1)
        kernel = self._kernel("marginals", em)
        scores = self._scores(em.dtype)
        probs: Tensor = gaps.run(kernel, "marginals", em, mask_bt, scores, validate=validate)
        probs = probs.to(emissions.dtype)
        return probs if self.batch_first else probs.transpose(0, 1)

    def pairwise_marginals(self, emissions: Tensor, mask: Tensor | None = None) -> Tensor:
        """P(tag i at t - 1, tag j at t), (batch, seq_len - 1, K, K) indexed ``[b, t - 1, i, j]``
        in either layout, 0 where t is masked; with gaps, the pair is (the previous kept
        position, t) (:mod:`chaincrf.crf.structure`: tensor operations, differentiable twice)."""
        em, mask_bt, packed = self._structure_inputs(emissions, mask)
        out = structure.pairwise_marginals(em, mask_bt, *self._scores(em.dtype))
        return out if packed is None else packed.scatter_pairs(out)

    def entropy(self, emissions: Tensor, mask: Tensor | None = None) -> Tensor:
        """Entropy (nats) of each sequence's distribution over tag paths, (batch,)."""
        em, mask_bt, _ = self._structure_inputs(emissions, mask)
        return structure.entropy(em, mask_bt, *self._scores(em.dtype))

    def sample(self, emissions: Tensor, mask: Tensor | None = None, num_samples: int = 1,
               generator: torch.Generator | None = None) -> Tensor:  # fmt: skip
        """Exact path samples, (num_samples, batch, seq_len) in either layout, -1 where masked."""
        em, mask_bt, packed = self._structure_inputs(emissions, mask)
        args = (num_samples, generator)
        out = structure.sample(em.detach(), mask_bt, *self._scores(em.dtype), *args)
        return out if packed is None else packed.scatter(out, 1, 2)

    def _structure_inputs(
        self, emissions: Tensor, mask: Tensor | None, validate: bool = False
    ) -> tuple[Tensor, Tensor, gaps.Compaction | None]:
        """Batch-first inputs for :mod:`chaincrf.crf.structure` (checked with ``validate``),
        compacted if the mask has gaps (then the compaction, to put results back)."""
        em, mask_bt = self._shapes(emissions, mask)
        if validate and not tracing.is_compiling():
            eager.validate_values(em, mask_bt, *self._scores(em.dtype), None, gaps=True)
        if tracing.is_compiling() or not gaps.has_gaps(mask_bt):
            return em, mask_bt, None
        packed = gaps.compaction(mask_bt)
        return packed.gather(em), packed.mask, packed

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
            mask: bool/uint8 (seq_len, batch) or batch-first; ``None`` means all on; masked
                positions are skipped (gaps allowed).
            reduction: as in ``forward``.
            validate: check that every unmasked position allows at least one tag.

        Returns:
            float tensor, (batch,) for ``none`` and () otherwise.
        """
        self._check_reduction(reduction)
        inputs.check_allowed(allowed, emissions)
        em, mask_bt = self._shapes(emissions, mask)
        allowed_bt = inputs.allowed_batch_first(allowed, mask_bt, self.batch_first, validate)
        neg_inf = torch.tensor(float("-inf"), dtype=em.dtype, device=em.device)
        clamped = torch.where(allowed_bt, em, neg_inf)
        scores = self._scores(em.dtype)
        kernel = self._kernel("log_partition", em, grad=self._needs_grad(em))
        log_z = gaps.run(kernel, "log_partition", em, mask_bt, scores, validate=validate)
        llh = gaps.run(kernel, "log_partition", clamped, mask_bt, scores, validate=False) - log_z
        return inputs.reduce(llh, mask_bt, reduction)

    # ------------------------------------------------------------------ internals

    def _log_likelihood(
        self,
        emissions: Tensor,
        tags: Tensor,
        mask: Tensor | None,
        reduction: str,
        validate: bool,
        negate: bool,
    ) -> Tensor:
        """The log-likelihood (``negate``: its negative, in the kernel's own pass when it has
        one, so that the sign costs no launch), reduced."""
        self._check_reduction(reduction)
        em, mask_bt = self._shapes(emissions, mask, keep_half=True)
        tags_bt = self._check_tags(tags, em)
        kernel = self._kernel("log_partition", em, grad=self._needs_grad(em))
        em = self._for_kernel(kernel, em)
        scores = self._scores(inputs.compute_dtype(em.dtype))
        constrained = self.has_constraints
        summed = self._summed(kernel, negate) if reduction != "none" else None
        if summed is not None:
            # a reduced loss weighs every row the same, so the kernel may return the sum (with
            # its gradient from one pass, compiled; with no reduction node for autograd, eager)
            args = (em, mask_bt, scores, tags_bt, 1, constrained, validate)
            total = inputs.reduce_total(gaps.run(kernel, summed, *args), mask_bt, reduction)
            return -total if negate and summed == "log_likelihood_sum" else total
        fused_sign = negate and "negative_log_likelihood" in kernel.OPERATIONS
        operation = "negative_log_likelihood" if fused_sign else "log_likelihood"
        llh = gaps.run(kernel, operation, em, mask_bt, scores, tags_bt, 1, constrained, validate)
        llh = inputs.reduce(llh, mask_bt, reduction)
        return -llh if negate and not fused_sign else llh

    @staticmethod
    def _summed(kernel: ModuleType, negate: bool) -> str | None:
        """The kernel's operation for a reduced (negative) log-likelihood, where it sums the
        rows itself: under torch.compile, or eagerly with ``EAGER_SUMS``; None: the rows'."""
        operations = kernel.OPERATIONS
        if not (getattr(kernel, "EAGER_SUMS", False) or tracing.is_compiling()):
            return None
        if negate and "negative_log_likelihood_sum" in operations:
            return "negative_log_likelihood_sum"
        return "log_likelihood_sum" if "log_likelihood_sum" in operations else None

    def _scores(self, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        return self.effective_scores(dtype)

    def effective_scores(self, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The scores every computation of this layer uses: start (num_tags,), transitions
        (num_tags, num_tags) indexed ``[from, to]`` and end (num_tags,), in ``dtype`` (default:
        the parameters'), ``-inf`` where the constraints forbid; differentiable."""
        trans = self.transitions
        start, end = self.start_transitions, self.end_transitions
        dtype = trans.dtype if dtype is None else dtype
        if not self.has_constraints:  # the masks unread: each module attribute costs host time
            return scores.effective_scores(start, trans, end, None, None, None, False, dtype)
        allowed = (self.start_allowed, self.transitions_allowed, self.end_allowed)
        return scores.effective_scores(start, trans, end, *allowed, True, dtype)

    @staticmethod
    def _check_reduction(reduction: str) -> None:
        inputs.check_reduction(reduction)

    def _shapes(
        self, emissions: Tensor, mask: Tensor | None, keep_half: bool = False
    ) -> tuple[Tensor, Tensor]:
        return inputs.emissions_and_mask(
            emissions, mask, self.num_tags, self.batch_first, keep_half
        )

    @staticmethod
    def _for_kernel(kernel: ModuleType, em: Tensor) -> Tensor:
        """Half-precision emissions as they are for a kernel that reads them
        (``HALF_EMISSIONS``: no conversion pass, and its gradient comes back in their dtype),
        upcast to float32 for the others."""
        if em.dtype in inputs.HALF and not getattr(kernel, "HALF_EMISSIONS", False):
            return em.float()
        return em

    def _check_tags(self, tags: Tensor, em: Tensor) -> Tensor:
        return inputs.batch_first_tags(tags, em, self.batch_first)

    def _needs_grad(self, em: Tensor) -> bool:
        return torch.is_grad_enabled() and (em.requires_grad or self.transitions.requires_grad)

    def _kernel(self, operation: str, em: Tensor, k: int = 1, grad: bool = False) -> ModuleType:
        """The kernel the planner picks for ``operation`` on these emissions."""
        B, T, K = em.shape
        compiling = tracing.is_compiling()
        device = em.device.type
        exporting = compiling and tracing.export_tracing(device)
        dtype = inputs.compute_dtype(em.dtype)
        problem = plan.Problem(operation, B, T, K, dtype, device, k, grad, compiling, exporting)
        return kernels.get(plan.choose(problem, self.kernel))
