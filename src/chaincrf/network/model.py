"""The network: token features -> encoder -> dropout -> projection -> CRF (or softmax).

:class:`TaggerModel` is a plain ``nn.Module`` with ``emissions``, ``loss``, ``decode`` and
``marginals``; it knows nothing about training, labels or files.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from chaincrf.crf import CRF

__all__ = ["TaggerModel"]


class TaggerModel(nn.Module):
    """Embeddings -> encoder -> dropout -> Linear -> CRF (or an independent softmax per token).

    Args:
        embedder: maps a batch dict to features, float (batch, seq_len, embedder.output_dim).
        encoder: ``forward(features, mask, tokens=None)`` -> (batch, seq_len, encoder.output_dim);
            its class attribute ``needs_tokens`` says whether it wants the token strings.
        num_tags: number of tags K.
        use_crf: a CRF output layer (True) or per-token softmax (False).
        constraints: ``(start_allowed (K,), end_allowed (K,), transitions_allowed (K, K))`` bool
            tensors for the CRF, or None. Ignored without a CRF.
        dropout: dropout on the encoder output.

    Raises:
        ValueError: if the encoder's ``input_dim`` differs from the embedder's ``output_dim``,
            ``num_tags < 1`` or ``dropout`` is outside [0, 1).
    """

    def __init__(
        self,
        embedder: nn.Module,
        encoder: nn.Module,
        num_tags: int,
        use_crf: bool = True,
        constraints: tuple[Tensor, Tensor, Tensor] | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        embed_dim = getattr(embedder, "output_dim", None)
        encoder_in = getattr(encoder, "input_dim", embed_dim)
        encoder_out = getattr(encoder, "output_dim", None)
        if not isinstance(embed_dim, int) or not isinstance(encoder_out, int):
            raise ValueError(
                "embedder and encoder must expose an integer output_dim; got "
                f"{type(embedder).__name__}.output_dim={embed_dim!r}, "
                f"{type(encoder).__name__}.output_dim={encoder_out!r}"
            )
        if encoder_in != embed_dim:
            raise ValueError(
                f"encoder input_dim must equal the embedder's output_dim {embed_dim}; got {encoder_in}"
            )
        if not isinstance(num_tags, int) or num_tags < 1:
            raise ValueError(f"num_tags must be a positive int; got {num_tags!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {dropout!r}")
        self.embedder = embedder
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.projection = nn.Linear(encoder_out, num_tags)
        self.crf = CRF(num_tags, batch_first=True, constraints=constraints) if use_crf else None
        self.num_tags = num_tags

    @property
    def use_crf(self) -> bool:
        return self.crf is not None

    def emissions(self, batch: Mapping[str, Any]) -> Tensor:
        """Per-token tag scores.

        Args:
            batch: the collated batch; uses ``mask`` (bool (B, T)), the embedder's inputs and,
                for encoders with ``needs_tokens``, ``tokens`` (list of token lists).

        Returns:
            float tensor (batch, seq_len, num_tags), unnormalised scores.
        """
        mask = batch["mask"]
        features = self.embedder(batch)  # (B, T, D)
        tokens = batch.get("tokens") if getattr(self.encoder, "needs_tokens", False) else None
        encoded = self.encoder(features, mask, tokens=tokens)  # (B, T, H)
        return self.projection(self.dropout(encoded))  # (B, T, K)

    def loss(self, emissions: Tensor, tags: Tensor, mask: Tensor, validate: bool = True) -> Tensor:
        """Mean negative log-likelihood per real token (CRF), or token-mean cross-entropy.

        Args:
            emissions: float (batch, seq_len, num_tags).
            tags: long (batch, seq_len), gold tag ids; padded positions are ignored.
            mask: bool (batch, seq_len), left-aligned.
            validate: the CRF's input checks (off: a non-finite score makes a non-finite
                loss instead of an error).

        Returns:
            Scalar loss.
        """
        if self.crf is not None:
            return self.crf.nll(emissions, tags, mask, reduction="token_mean", validate=validate)
        log_probs = F.log_softmax(emissions.float(), dim=-1)  # (B, T, K)
        picked = log_probs.gather(-1, tags.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # (B, T)
        return -(picked * mask).sum() / mask.sum().clamp(min=1)

    def decode(self, emissions: Tensor, mask: Tensor) -> Tensor:
        """Best tag ids: Viterbi with a CRF, per-token argmax without.

        Args:
            emissions: float (batch, seq_len, num_tags).
            mask: bool (batch, seq_len), left-aligned.

        Returns:
            long (batch, seq_len); -1 where the mask is off.
        """
        if self.crf is not None:
            paths, _ = self.crf.viterbi(emissions, mask)
            return paths
        return emissions.argmax(-1).masked_fill(~mask, -1)

    def marginals(self, emissions: Tensor, mask: Tensor) -> Tensor:
        """Posterior probability of each tag at each position.

        Args:
            emissions: float (batch, seq_len, num_tags).
            mask: bool (batch, seq_len), left-aligned.

        Returns:
            float (batch, seq_len, num_tags); rows sum to 1 where the mask is on, 0 where off.
        """
        if self.crf is not None:
            return self.crf.marginals(emissions, mask)
        return F.softmax(emissions.float(), dim=-1) * mask.unsqueeze(-1)
