"""Stacked, dilated 1-D convolutions (in the spirit of Strubell et al. 2017's ID-CNN)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from chaincrf.network.encoders.base import Encoder, check_dropout, check_inputs

__all__ = ["CNNEncoder", "CNNGraph"]


class CNNEncoder(Encoder):
    """A linear projection, then residual blocks of dilated convolution -> ReLU -> dropout.

    Each layer sees ``(kernel_size - 1) * dilation`` more neighbours; with the default
    ``kernel_size=3`` and ``dilations=(1, 2, 4)`` a token sees 7 tokens on each side. Padded
    positions are zeroed before every convolution, so each sentence is convolved as if it stood
    alone (zero-padded at both ends).

    Args:
        input_dim: size of the token features.
        hidden_size: number of channels of every layer; ``output_dim``.
        kernel_size: width of the filters (odd, so that outputs stay centred).
        dilations: the dilation of each layer, one layer per entry.
        dropout: dropout after each layer.

    Raises:
        ValueError: for a size that is not positive, an even ``kernel_size``, an empty
            ``dilations`` or one that is not positive, or a dropout outside [0, 1).
    """

    def __init__(
        self,
        input_dim: int,
        hidden_size: int = 200,
        kernel_size: int = 3,
        dilations: Sequence[int] = (1, 2, 4),
        dropout: float = 0.5,
    ) -> None:
        super().__init__(input_dim)
        dilations = tuple(dilations)
        if hidden_size <= 0:
            raise ValueError(f"hidden_size must be positive; got {hidden_size!r}")
        if kernel_size <= 0 or kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be a positive odd int; got {kernel_size!r}")
        if not dilations or any(d <= 0 for d in dilations):
            raise ValueError(
                f"dilations must be a non-empty list of positive ints; got {dilations}"
            )
        check_dropout(dropout)
        self.projection = nn.Linear(input_dim, hidden_size)
        self.convolutions = nn.ModuleList(
            nn.Conv1d(
                hidden_size,
                hidden_size,
                kernel_size,
                dilation=dilation,
                padding=dilation * (kernel_size // 2),
            )
            for dilation in dilations
        )
        self.activation = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.output_dim = hidden_size

    def forward(
        self, features: Tensor, mask: Tensor, tokens: list[list[str]] | None = None
    ) -> Tensor:
        """Encode a batch (see :meth:`Encoder.forward`).

        Returns:
            Float tensor (batch, seq_len, hidden_size); zero at padded positions.
        """
        check_inputs(self, features, mask)
        keep = mask.unsqueeze(1).to(features.dtype)  # (B, 1, T)
        hidden = self.projection(features).transpose(1, 2) * keep  # (B, H, T)
        for convolution in self.convolutions:
            update = self.dropout(self.activation(convolution(hidden)))  # (B, H, T)
            hidden = (hidden + update) * keep
        return hidden.transpose(1, 2)  # (B, T, H)

    def export_graph(self) -> CNNGraph:
        """This encoder for TorchScript/ONNX graphs, sharing its weights (eval mode)."""
        return CNNGraph(self)


class CNNGraph(nn.Module):
    """The dilated CNN encoder (its own forward holds no host synchronisation)."""

    def __init__(self, encoder: CNNEncoder) -> None:
        super().__init__()
        self.projection = encoder.projection
        self.convolutions = encoder.convolutions

    def forward(self, x: Tensor, mask: Tensor, index: Tensor) -> Tensor:
        keep = mask.unsqueeze(1).to(x.dtype)  # (B, 1, T)
        hidden = self.projection(x).transpose(1, 2) * keep  # (B, H, T)
        for convolution in self.convolutions:
            hidden = (hidden + torch.relu(convolution(hidden))) * keep
        return hidden.transpose(1, 2)
