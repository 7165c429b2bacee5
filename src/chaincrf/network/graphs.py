"""The embedder's parts as graphs: what :class:`~chaincrf.network.embeddings.TokenEmbedder`
computes in eval mode, written for TorchScript and ONNX (no host synchronisation, no packed
sequences, no data-dependent shapes: every token of the padded batch is encoded, padding masked
out after). Each eager module's ``export_graph()`` returns its twin here, sharing its weights;
:class:`chaincrf.predict.export.ExportableTagger` assembles them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from chaincrf.network.encoders.bilstm import one_direction, reverse_index, reversed_rows

__all__ = ["CharCNNGraph", "CharLSTMGraph", "TokenEmbedderGraph"]


class CharCNNGraph(nn.Module):
    """The character CNN over every token of the padded batch (N = B * T tokens)."""

    def __init__(self, encoder: Any) -> None:
        super().__init__()
        self.embedding = encoder.embedding
        self.conv = encoder.conv

    def forward(self, chars: Tensor) -> Tensor:
        """``chars`` (N, C) ids, 0-padded -> (N, filters): max over each token's characters."""
        C = chars.shape[1]
        lengths = (chars != 0).sum(1).clamp(min=1)  # (N,)
        conv = self.conv(self.embedding(chars).transpose(1, 2))  # (N, F, C)
        real = torch.arange(C, device=chars.device).unsqueeze(0) < lengths.unsqueeze(1)
        return conv.masked_fill(~real.unsqueeze(1), float("-inf")).amax(2)


class CharLSTMGraph(nn.Module):
    """The character BiLSTM over every token of the padded batch: each direction's state at
    the token's last character (the backward one run over the reversed characters)."""

    def __init__(self, encoder: Any) -> None:
        super().__init__()
        self.embedding = encoder.embedding
        self.ahead = one_direction(encoder.lstm, 0, False)
        self.behind = one_direction(encoder.lstm, 0, True)

    def forward(self, chars: Tensor) -> Tensor:
        """``chars`` (N, C) ids, 0-padded -> (N, 2H)."""
        N, C = chars.shape
        lengths = (chars != 0).sum(1).clamp(min=1)  # (N,)
        embedded = self.embedding(chars)  # (N, C, E)
        ahead, _ = self.ahead(embedded)  # (N, C, H)
        behind, _ = self.behind(reversed_rows(embedded, reverse_index(lengths, C)))
        last = (lengths - 1).view(N, 1, 1).expand(N, 1, ahead.shape[2])
        return torch.cat([ahead.gather(1, last).squeeze(1), behind.gather(1, last).squeeze(1)], 1)


class TokenEmbedderGraph(nn.Module):
    """:class:`~chaincrf.network.embeddings.TokenEmbedder` in eval mode, written for graphs: every token of the padded batch
    is encoded (no data-dependent shapes, no host synchronisation), padding masked out after.

    Args:
        embedder: the trained embedder (its weights are shared).
    """

    def __init__(self, embedder: Any) -> None:
        super().__init__()
        self.word_embedding = embedder.word_embedding
        self.has_adapter = embedder.word_map is not None and embedder.word_residual is not None
        self.word_map: nn.Module = embedder.word_map if self.has_adapter else nn.Identity()  # type: ignore[assignment]
        self.word_residual: nn.Module = (
            embedder.word_residual if self.has_adapter else nn.Identity()  # type: ignore[assignment]
        )
        chars = embedder.char_encoder
        self.has_chars = chars is not None
        self.chars = chars.export_graph() if chars is not None else nn.Identity()
        self.has_casing = embedder.casing_embedding is not None
        self.casing_embedding = embedder.casing_embedding or nn.Identity()
        self.feature_embeddings = embedder.feature_embeddings
        self.num_features: int = len(embedder.feature_embeddings)

    def forward(
        self,
        words: Tensor,
        chars: Tensor,
        casing: Tensor,
        mask: Tensor,
        features: Tensor | None = None,
    ) -> Tensor:
        """The padded batch's ids (as :meth:`~chaincrf.network.embeddings.TokenEmbedder.forward` reads them) -> float
        (B, T, output_dim), zero at padded positions. (Padding ids are the literal 0: TorchScript
        keeps no module constant here.)"""
        B, T = words.shape
        keep = mask.unsqueeze(2)
        words = words.masked_fill(~mask, 0)
        feats = self.word_embedding(words)
        if self.has_adapter:
            feats = self.word_map(feats) + self.word_residual(words)
        parts = [feats]
        if self.has_chars:
            encoded = self.chars(chars.reshape(B * T, chars.shape[2])).reshape(B, T, -1)
            parts.append(torch.where(keep, encoded, torch.zeros_like(encoded)))
        if self.has_casing:
            parts.append(self.casing_embedding(casing.masked_fill(~mask, 0)))
        if features is not None:
            columns = features.masked_fill(~keep, 0)
            for k, embedding in enumerate(self.feature_embeddings):
                parts.append(embedding(columns[:, :, k]))
        return torch.cat(parts, dim=2) * keep.to(feats.dtype)
