"""A Transformer encoder trained from scratch, with sinusoidal or learned positions."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from chaincrf.network.encoders.base import Encoder, check_dropout, check_inputs, check_num_layers

__all__ = ["POSITIONS", "TransformerEncoder"]

POSITIONS: tuple[str, ...] = ("sinusoidal", "learned")
"""Accepted values of ``TransformerEncoder(positions=...)``."""


def sinusoidal_positions(length: int, dim: int, device: torch.device | None = None) -> Tensor:
    """Return the sinusoidal position encodings of Vaswani et al. (2017), float (length, dim)."""
    position = torch.arange(length, device=device, dtype=torch.float32).unsqueeze(1)  # (L, 1)
    frequency = torch.exp(
        torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim)
    )  # (ceil(dim / 2),)
    angles = position * frequency  # (L, ceil(dim / 2))
    encoding = torch.zeros(length, dim, device=device)
    encoding[:, 0::2] = torch.sin(angles)
    encoding[:, 1::2] = torch.cos(angles[:, : dim // 2])
    return encoding


class TransformerEncoder(Encoder):
    """Linear projection to ``d_model``, positions, then pre-norm self-attention layers.

    Padded positions are excluded from attention by a key padding mask, so outputs at real
    positions do not depend on them.

    Args:
        input_dim: size of the token features.
        d_model: size of the attention layers; ``output_dim``.
        num_heads: attention heads (must divide ``d_model``).
        num_layers: number of layers.
        dim_feedforward: size of each layer's feed-forward block.
        dropout: dropout inside the layers and on the input.
        positions: ``"sinusoidal"`` (fixed) or ``"learned"`` (an embedding per position).
        max_len: longest sentence accepted with ``positions="learned"``.

    Raises:
        ValueError: for a size that is not positive, ``d_model`` not divisible by
            ``num_heads``, an unknown ``positions`` or a dropout outside [0, 1).
    """

    def __init__(
        self,
        input_dim: int,
        d_model: int = 256,
        num_heads: int = 4,
        num_layers: int = 2,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        positions: str = "sinusoidal",
        max_len: int = 512,
    ) -> None:
        super().__init__(input_dim)
        for name, value in [
            ("d_model", d_model),
            ("num_heads", num_heads),
            ("dim_feedforward", dim_feedforward),
            ("max_len", max_len),
        ]:
            if value <= 0:
                raise ValueError(f"{name} must be positive; got {value!r}")
        check_num_layers(num_layers)
        if d_model % num_heads != 0:
            raise ValueError(
                f"d_model must be divisible by num_heads; got d_model={d_model}, "
                f"num_heads={num_heads}"
            )
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}; got {positions!r}")
        check_dropout(dropout)
        self.d_model = d_model
        self.positions = positions
        self.max_len = max_len
        self.projection = nn.Linear(input_dim, d_model)
        self.position_embedding = nn.Embedding(max_len, d_model) if positions == "learned" else None
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            d_model,
            num_heads,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            batch_first=True,
            norm_first=True,
        )
        self.layers = nn.TransformerEncoder(
            layer, num_layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False
        )
        self.output_dim = d_model

    def forward(
        self, features: Tensor, mask: Tensor, tokens: list[list[str]] | None = None
    ) -> Tensor:
        """Encode a batch (see :meth:`Encoder.forward`).

        Returns:
            Float tensor (batch, seq_len, d_model); zero at padded positions.

        Raises:
            ValueError: with learned positions, for a sentence longer than ``max_len`` (padding
                past it is cut off and put back as zeros).
        """
        check_inputs(self, features, mask)
        seq_len = features.shape[1]
        if self.position_embedding is not None and seq_len > self.max_len:
            # padding past max_len (a length bucket) is cut off; a longer sentence is refused
            longest = int(mask.sum(1).max()) if mask.numel() else 0
            if longest > self.max_len:
                raise ValueError(
                    f"features has seq_len {seq_len}, longer than max_len={self.max_len} of the "
                    f"learned positions (its longest sentence: {longest} tokens)"
                )
            cut = self.forward(features[:, : self.max_len], mask[:, : self.max_len], tokens)
            return nn.functional.pad(cut, (0, 0, 0, seq_len - self.max_len))
        hidden = self.projection(features) * math.sqrt(self.d_model)  # (B, T, d)
        if self.position_embedding is not None:
            hidden = hidden + self.position_embedding.weight[:seq_len]
        else:
            hidden = hidden + sinusoidal_positions(seq_len, self.d_model, features.device).to(
                hidden.dtype
            )
        # A sentence with no real token would attend to nothing (NaN): let it see position 0.
        padding = ~mask
        padding[:, 0] &= mask.any(dim=1)
        hidden = self.layers(self.dropout(hidden), src_key_padding_mask=padding)  # (B, T, d)
        return hidden * mask.unsqueeze(-1).to(hidden.dtype)
