"""What ``torch.jit.script`` compiles for a :class:`chaincrf.CRF`.

``torch.jit.script(crf)`` (or of any module holding one) calls ``CRF.__prepare_scriptable__``,
which returns a :class:`ScriptableCRF`: the same parameters, constraints and layout (shared
tensors, not copies), with the layer's methods written in TorchScript's subset of Python on
the export kernel (:mod:`chaincrf.crf.kernels.export`, a loop over time that TorchScript keeps
as a loop: any batch size and length). Results equal the layer's (Viterbi bit for bit; the
log-partition and marginals to rounding). Shapes are checked; values are not (a scripted
graph has no ``validate``: the argument is accepted for the layer's signature and ignored);
k-best paths stay with the Python layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor, nn

from chaincrf.crf.kernels.export import ops as export
from chaincrf.crf.scores import effective_scores


class _Layer(Protocol):
    """What :class:`ScriptableCRF` reads of the layer (:class:`chaincrf.CRF`, which imports
    this module when it is scripted: a protocol, not an import, so there is no circle)."""

    num_tags: int
    batch_first: bool
    has_constraints: bool


__all__ = ["ScriptableCRF"]


class ScriptableCRF(nn.Module):
    """A :class:`chaincrf.CRF` for TorchScript (built by ``CRF.__prepare_scriptable__``).

    Args:
        crf: the layer; its parameters and constraint buffers are shared, not copied.
    """

    if TYPE_CHECKING:
        # Parameters or buffers shared with the layer, set in __init__ (nn.Module's attribute
        # lookup is untyped). For the type checker only: TorchScript reads a class annotation
        # and cannot resolve a postponed (string) one.
        start_transitions: Tensor
        end_transitions: Tensor
        transitions: Tensor
        start_allowed: Tensor
        end_allowed: Tensor
        transitions_allowed: Tensor

    def __init__(self, crf: _Layer) -> None:
        super().__init__()
        self.num_tags: int = crf.num_tags
        self.batch_first: bool = crf.batch_first
        self.has_constraints: bool = crf.has_constraints
        for name in ("start_transitions", "end_transitions", "transitions"):
            value = getattr(crf, name)
            if isinstance(value, nn.Parameter):
                setattr(self, name, value)
            else:
                self.register_buffer(name, value, persistent=False)
        for name in ("start_allowed", "end_allowed", "transitions_allowed"):
            self.register_buffer(name, getattr(crf, name), persistent=False)

    def forward(
        self,
        emissions: Tensor,
        tags: Tensor,
        mask: Tensor | None = None,
        reduction: str = "sum",
        validate: bool = True,
    ) -> Tensor:
        """Log-likelihood of ``tags`` (as ``CRF.forward``)."""
        em, mask_bt = self._shapes(emissions, mask)
        tags_bt = tags if self.batch_first else tags.t()
        if tags_bt.shape != mask_bt.shape:
            raise ValueError("tags must have the shape of the mask " + str(list(mask_bt.shape)))
        start, trans, end = self._scores(em.dtype)
        llh = export.log_likelihood(em, mask_bt, start, trans, end, tags_bt.long(), validate=False)
        if reduction == "none":
            return llh
        if reduction == "sum":
            return llh.sum()
        if reduction == "mean":
            return llh.mean()
        if reduction == "token_mean":
            return llh.sum() / mask_bt.sum().clamp(min=1).to(llh.dtype)
        raise ValueError("invalid reduction: expected none, sum, mean or token_mean")

    @torch.jit.export
    def nll(
        self,
        emissions: Tensor,
        tags: Tensor,
        mask: Tensor | None = None,
        reduction: str = "sum",
        validate: bool = True,
    ) -> Tensor:
        """Negative log-likelihood (as ``CRF.nll``)."""
        return -self.forward(emissions, tags, mask, reduction, validate)

    @torch.jit.export
    def log_partition(
        self, emissions: Tensor, mask: Tensor | None = None, validate: bool = True
    ) -> Tensor:
        """Log of the partition function, (batch,) (as ``CRF.log_partition``)."""
        em, mask_bt = self._shapes(emissions, mask)
        start, trans, end = self._scores(em.dtype)
        return export.log_partition(em, mask_bt, start, trans, end, validate=False)

    @torch.jit.export
    def viterbi(
        self, emissions: Tensor, mask: Tensor | None = None, k: int = 1, validate: bool = True
    ) -> tuple[Tensor, Tensor]:
        """The best path and its score (as ``CRF.viterbi`` with k = 1; -1 past each end)."""
        if k != 1:
            raise ValueError("a scripted CRF computes the best path only (k = 1)")
        em, mask_bt = self._shapes(emissions, mask)
        start, trans, end = self._scores(em.dtype)
        paths, scores = export.viterbi(em, mask_bt, start, trans, end, validate=False)
        paths, scores = paths[:, 0], scores[:, 0]
        return (paths if self.batch_first else paths.t().contiguous()), scores

    @torch.jit.export
    def decode(
        self, emissions: Tensor, mask: Tensor | None = None, validate: bool = True
    ) -> list[list[int]]:
        """Best tag sequence per batch item, as lists of ints (as ``CRF.decode``)."""
        em, mask_bt = self._shapes(emissions, mask)
        start, trans, end = self._scores(em.dtype)
        return export.decode(em, mask_bt, start, trans, end, validate=False)

    @torch.jit.export
    def marginals(
        self, emissions: Tensor, mask: Tensor | None = None, validate: bool = True
    ) -> Tensor:
        """Posterior tag probabilities (as ``CRF.marginals``; 0 where the mask is off)."""
        em, mask_bt = self._shapes(emissions, mask)
        start, trans, end = self._scores(em.dtype)
        probs = export.marginals(em, mask_bt, start, trans, end, validate=False)
        return probs if self.batch_first else probs.transpose(0, 1)

    def _scores(self, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        return effective_scores(
            self.start_transitions,
            self.transitions,
            self.end_transitions,
            self.start_allowed,
            self.transitions_allowed,
            self.end_allowed,
            self.has_constraints,
            dtype,
        )

    def _shapes(self, emissions: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        if emissions.dim() != 3 or emissions.size(2) != self.num_tags:
            raise ValueError(
                "emissions must have 3 dimensions, the last of size "
                + str(self.num_tags)
                + " (num_tags); got shape "
                + str(list(emissions.shape))
            )
        em = emissions if self.batch_first else emissions.transpose(0, 1)
        if em.dtype == torch.float16 or em.dtype == torch.bfloat16:
            em = em.float()
        if mask is None:
            return em, torch.ones(em.shape[:2], dtype=torch.bool, device=em.device)
        if mask.shape != emissions.shape[:2]:
            raise ValueError(
                "mask must have the shape "
                + str(list(emissions.shape[:2]))
                + " of the emissions' first two dimensions; got "
                + str(list(mask.shape))
            )
        return em, (mask if self.batch_first else mask.t()).to(torch.bool)
