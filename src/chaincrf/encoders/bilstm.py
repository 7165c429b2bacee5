"""Bidirectional LSTM encoder over packed (unpadded) sequences."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from chaincrf.encoders.base import Encoder, check_inputs

__all__ = ["BiLSTMEncoder"]


class BiLSTMEncoder(Encoder):
    """A bidirectional LSTM (Huang et al. 2015; Lample et al. 2016), run on packed sequences.

    Args:
        input_dim: size of the token features.
        hidden_size: LSTM units per direction; ``output_dim`` is ``2 * hidden_size``.
        num_layers: number of stacked BiLSTM layers.
        dropout: dropout between stacked layers (none with one layer). The output is not
            dropped out here: the tagger applies its own dropout to every encoder's output.

    Raises:
        ValueError: for a size that is not positive or a dropout outside [0, 1).
    """

    def __init__(
        self, input_dim: int, hidden_size: int = 200, num_layers: int = 1, dropout: float = 0.5
    ) -> None:
        super().__init__(input_dim)
        if hidden_size <= 0:
            raise ValueError(f"hidden_size must be positive; got {hidden_size!r}")
        if num_layers <= 0:
            raise ValueError(f"num_layers must be positive; got {num_layers!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {dropout!r}")
        self.lstm = nn.LSTM(
            input_dim,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.output_dim = 2 * hidden_size

    def forward(
        self, features: Tensor, mask: Tensor, tokens: list[list[str]] | None = None
    ) -> Tensor:
        """Encode a batch (see :meth:`Encoder.forward`).

        Returns:
            Float tensor (batch, seq_len, 2 * hidden_size); zero at padded positions.
        """
        check_inputs(self, features, mask)
        T = features.shape[1]
        lengths = mask.sum(dim=1).clamp(min=1).cpu()  # (B,); packing needs lengths on the CPU
        packed = pack_padded_sequence(features, lengths, batch_first=True, enforce_sorted=False)
        output, _ = self.lstm(packed)
        output, _ = pad_packed_sequence(output, batch_first=True, total_length=T)  # (B, T, 2H)
        return torch.where(mask.unsqueeze(-1), output, output.new_zeros(()))
