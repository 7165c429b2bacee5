"""Bidirectional LSTM encoder: exact over ragged batches, packed or padded."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from chaincrf.network.encoders.base import (
    Encoder,
    check_dropout,
    check_inputs,
    check_num_layers,
    eagerly,
)
from chaincrf.network.precision import rnn_precision

__all__ = [
    "BiLSTMEncoder",
    "BiLSTMGraph",
    "one_direction",
    "padded_direction",
    "reverse_index",
    "reversed_rows",
]


def reverse_index(lengths: Tensor, T: int) -> Tensor:
    """(B * T,) rows of a flattened (B * T, D) tensor that reverse each row within its length.

    ``rev[b, t]`` is the position that ``t`` maps to when row ``b`` is reversed within its
    length: an involution that leaves the padding where it is. As rows of the flattened tensor,
    ``index_select`` copies whole rows (faster than ``gather`` with an index expanded over the
    features: ``benchmarks/encoders.md``). Written for graphs too (no host synchronisation).
    """
    B = lengths.shape[0]
    steps = torch.arange(T, device=lengths.device).unsqueeze(0)
    ends = lengths.unsqueeze(1)
    rev = torch.where(steps < ends, ends - 1 - steps, steps)
    return (rev + T * torch.arange(B, device=lengths.device).unsqueeze(1)).reshape(-1)


def reversed_rows(x: Tensor, index: Tensor) -> Tensor:
    """``x`` (B, T, D) with each row reversed within its length (``index`` from
    :func:`reverse_index`)."""
    B, T, D = x.shape
    return x.reshape(B * T, D).index_select(0, index).reshape(B, T, D)


def one_direction(lstm: nn.LSTM, layer: int, reverse: bool) -> nn.LSTM:
    """A single-direction, single-layer ``nn.LSTM`` holding (sharing) one direction of one
    layer of ``lstm``."""
    suffix = "_reverse" if reverse else ""
    in_size = lstm.input_size if layer == 0 else 2 * lstm.hidden_size
    single = nn.LSTM(in_size, lstm.hidden_size, batch_first=True)
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        setattr(single, f"{name}_l0", getattr(lstm, f"{name}_l{layer}{suffix}"))
    single.flatten_parameters()
    return single


def padded_direction(lstm: nn.LSTM, x: Tensor, layer: int, reverse: bool) -> Tensor:
    """One direction of one layer of a batch-first ``lstm`` over padded ``x`` (B, T, D) ->
    (B, T, hidden_size), from zero states: no packing, no host read. A row's outputs up to its
    length do not depend on its padding after it."""
    suffix = "_reverse" if reverse else ""
    weights = [
        getattr(lstm, f"{name}_l{layer}{suffix}")
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    ]
    h0 = x.new_zeros(1, x.shape[0], lstm.hidden_size)
    output, _, _ = torch.lstm(x, (h0, h0), weights, True, 1, 0.0, lstm.training, False, True)
    return output


class BiLSTMGraph(nn.Module):
    """A bidirectional (stacked) LSTM as padded single-direction calls: exact over ragged
    batches without packing."""

    def __init__(self, lstm: nn.LSTM) -> None:
        super().__init__()
        if not lstm.bidirectional or not lstm.batch_first:
            raise ValueError("the BiLSTM to export must be bidirectional and batch-first")
        self.forwards = nn.ModuleList(
            one_direction(lstm, layer, False) for layer in range(lstm.num_layers)
        )
        self.backwards = nn.ModuleList(
            one_direction(lstm, layer, True) for layer in range(lstm.num_layers)
        )

    def forward(self, x: Tensor, mask: Tensor, index: Tensor) -> Tensor:
        """``x`` (B, T, D) -> (B, T, 2H), zero off the mask; ``index`` reverses rows within
        their lengths."""
        for forward, backward in zip(self.forwards, self.backwards):
            ahead, _ = forward(x)
            behind, _ = backward(reversed_rows(x, index))
            x = torch.cat([ahead, reversed_rows(behind, index)], dim=2)
        return torch.where(mask.unsqueeze(2), x, torch.zeros_like(x))


# On the CPU, batches with at most this fraction of padding run each direction as one padded
# (oneDNN) LSTM call, the backward direction over each row reversed within its length: exact,
# and faster than packed sequences there. More ragged batches are packed (on an accelerator,
# never: see BiLSTMEncoder).
# Figures and the command: benchmarks/encoders.md.
PADDED_MAX_PADDING = 0.15


class BiLSTMEncoder(Encoder):
    """A bidirectional LSTM (Huang et al. 2015; Lample et al. 2016) over ragged batches.

    Padding never leaks into a real token's state: ragged batches are either packed, or each
    direction runs padded with every row's padding after its real tokens, the backward direction
    on rows reversed within their lengths: on an accelerator always (no host synchronisation),
    on the CPU when little of the batch is padding, as with length-bucketed batches (see
    ``PADDED_MAX_PADDING``).

    Args:
        input_dim: size of the token features.
        hidden_size: LSTM units per direction; ``output_dim`` is ``2 * hidden_size``.
        num_layers: number of stacked BiLSTM layers.
        dropout: dropout between stacked layers (none with one layer). The output is not
            dropped out here: the tagger's ``dropout`` (``model.dropout``, default 0) does that.

    Raises:
        ValueError: for a size that is not positive, num_layers outside 1..MAX_LAYERS or a
            dropout outside [0, 1).
    """

    def __init__(
        self, input_dim: int, hidden_size: int = 200, num_layers: int = 1, dropout: float = 0.5
    ) -> None:
        super().__init__(input_dim)
        if hidden_size <= 0:
            raise ValueError(f"hidden_size must be positive; got {hidden_size!r}")
        check_num_layers(num_layers)
        check_dropout(dropout)
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
        output = eagerly(self._recurrent)(features, mask.sum(dim=1))
        return torch.where(mask.unsqueeze(-1), output, output.new_zeros(()))

    def _recurrent(self, features: Tensor, real: Tensor) -> Tensor:
        """The LSTM's outputs (B, T, 2H), unspecified at padding, in the RNN's precision
        (:func:`rnn_precision`); run eagerly under ``torch.compile`` (:func:`eagerly`).

        On an accelerator: always padded, with no host synchronisation (packing needs the
        lengths on the host); exact, as on the CPU. On the CPU: padded or packed by the
        batch's padding (``PADDED_MAX_PADDING``).
        """
        B, T, _ = features.shape
        with rnn_precision(features):
            if not features.is_cpu:
                return self._padded(features, real)
            lengths = real.clamp(min=1)  # packing needs lengths on the CPU: they are
            padding = B * T - int(lengths.sum())
            if B * T > 0 and padding <= PADDED_MAX_PADDING * B * T:
                return self._padded(features, real)
            packed = pack_padded_sequence(features, lengths, batch_first=True, enforce_sorted=False)
            output, _ = self.lstm(packed)
        return pad_packed_sequence(output, batch_first=True, total_length=T)[0]  # (B, T, 2H)

    def _padded(self, features: Tensor, lengths: Tensor) -> Tensor:
        """Both directions as padded single-direction LSTM calls.

        Args:
            features: float (B, T, input_dim); lengths: long (B,) real tokens per row.

        Returns:
            float (B, T, 2 * hidden_size); unspecified at padded positions.
        """
        index = reverse_index(lengths, features.shape[1])
        x = features
        for layer in range(self.lstm.num_layers):
            if layer > 0 and self.lstm.dropout > 0:
                x = F.dropout(x, self.lstm.dropout, self.training)
            forward = padded_direction(self.lstm, x, layer, reverse=False)
            backward = reversed_rows(
                padded_direction(self.lstm, reversed_rows(x, index), layer, reverse=True), index
            )
            x = torch.cat([forward, backward], dim=2)
        return x

    def export_graph(self) -> BiLSTMGraph:
        """This encoder for TorchScript/ONNX graphs, sharing its weights (eval mode)."""
        return BiLSTMGraph(self.lstm)
