"""The character encoders of :class:`chaincrf.network.embeddings.TokenEmbedder`: a CNN with
max-pooling (Ma & Hovy, 2016) and a BiLSTM whose final states are concatenated (Lample et al.,
2016), each over a batch's tokens (N, C) of character ids with their lengths."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from chaincrf.network.encoders.bilstm import padded_direction, reverse_index, reversed_rows
from chaincrf.network.precision import rnn_precision

__all__ = [
    "CHAR_GROUPS",
    "CHAR_GROUP_MIN_TOKENS",
    "PAD_ID",
    "CharCNN",
    "CharLSTM",
    "real_token_features",
]

PAD_ID = 0
"""Id of padding in the word, character and casing vocabularies."""

CHAR_GROUPS = 4
"""The character CNN encodes a batch's tokens in up to this many groups of similar length, so
that short tokens are not padded to the longest (``benchmarks/encoders.md``: why, the command)."""
CHAR_GROUP_MIN_TOKENS = 64
"""... each of at least this many tokens (smaller batches: one group)."""


class CharCNN(nn.Module):
    """Character CNN (Ma & Hovy, 2016): embeddings -> dropout -> Conv1d -> max over characters."""

    def __init__(
        self, num_chars: int, char_dim: int, num_filters: int, kernel_size: int, dropout: float
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"char_kernel_size must be odd; got {kernel_size}")
        self.embedding = nn.Embedding(num_chars, char_dim, padding_idx=PAD_ID)
        self.dropout = nn.Dropout(dropout)
        self.conv = nn.Conv1d(char_dim, num_filters, kernel_size, padding=kernel_size // 2)
        self.output_dim = num_filters

    def forward(self, chars: Tensor, lengths: Tensor) -> Tensor:
        """Encode ``N`` tokens.

        The convolution's cost grows with the longest token: without autograd (evaluation,
        prediction), tokens are sorted by length and encoded in ``CHAR_GROUPS`` groups, each
        padded only to its own longest token (exact: the max-pool ignores positions past a
        token's end, and padding characters embed to zero).

        Args:
            chars: long tensor (N, C), character ids, 0-padded on the right.
            lengths: long tensor (N,), number of real characters of each token, at least 1.

        Returns:
            Float tensor (N, num_filters).
        """
        N = chars.shape[0]
        if torch.is_grad_enabled() or N < 2 * CHAR_GROUP_MIN_TOKENS:  # (pays only without
            # autograd, whose index operations cost what the shorter convolutions save)
            return self._encode(chars, lengths)
        order = torch.argsort(lengths)
        groups = min(CHAR_GROUPS, N // CHAR_GROUP_MIN_TOKENS)
        bounds = [N * g // groups for g in range(groups + 1)]
        longest = lengths[order[torch.tensor(bounds[1:]) - 1]].tolist()
        parts = []
        for lo, hi, width in zip(bounds[:-1], bounds[1:], longest):
            rows = order[lo:hi]
            parts.append(self._encode(chars[rows, :width], lengths[rows]))
        return torch.cat(parts).index_select(0, torch.argsort(order))

    def _encode(self, chars: Tensor, lengths: Tensor) -> Tensor:
        """Encode tokens (n, C) with lengths (n,) in one convolution -> (n, num_filters)."""
        C = chars.shape[1]
        embedded = self.dropout(self.embedding(chars))  # (N, C, E); padding rows are zero
        conv = self.conv(embedded.transpose(1, 2))  # (N, F, C)
        real = torch.arange(C, device=chars.device) < lengths.unsqueeze(1)  # (N, C)
        conv = conv.masked_fill(~real.unsqueeze(1), float("-inf"))
        return conv.max(dim=2).values  # (N, F)

    def export_graph(self) -> nn.Module:
        """This encoder for graphs: ``chars`` (N, C) -> (N, F), lengths read from the padding."""
        from chaincrf.network.graphs import CharCNNGraph

        return CharCNNGraph(self)


class CharLSTM(nn.Module):
    """Character BiLSTM (Lample et al., 2016): the final forward and backward states."""

    def __init__(self, num_chars: int, char_dim: int, hidden_size: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_chars, char_dim, padding_idx=PAD_ID)
        self.lstm = nn.LSTM(char_dim, hidden_size, batch_first=True, bidirectional=True)
        self.output_dim = 2 * hidden_size

    def forward(self, chars: Tensor, lengths: Tensor) -> Tensor:
        """Encode ``N`` tokens; arguments as in :meth:`CharCNN.forward`.

        Returns:
            Float tensor (N, 2 * hidden_size): last forward state, then last backward state.
        """
        embedded = self.embedding(chars)  # (N, C, E)
        packed = pack_padded_sequence(
            embedded, lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        with rnn_precision(embedded):
            _, (h_n, _) = self.lstm(packed)  # h_n: (2, N, H), in the original order
        return torch.cat([h_n[0], h_n[1]], dim=-1)  # (N, 2H)

    def padded(self, chars: Tensor, lengths: Tensor) -> Tensor:
        """:meth:`forward` with no host read (on an accelerator, and compiled): both directions
        run padded, the backward one over each token's characters reversed within its length;
        each direction's final state is its output at the token's last character. Exact. Run
        eagerly under ``torch.compile`` (:func:`chaincrf.network.encoders.base.eagerly`)."""
        embedded = self.embedding(chars)  # (N, C, E)
        N, C, _ = embedded.shape
        if N * C == 0:  # an empty batch (cuDNN takes no empty LSTM input)
            return embedded.new_zeros(N, self.output_dim)
        index = reverse_index(lengths, C)
        with rnn_precision(embedded):
            ahead = padded_direction(self.lstm, embedded, 0, reverse=False)
            behind = padded_direction(self.lstm, reversed_rows(embedded, index), 0, reverse=True)
        states = torch.cat([ahead, behind], dim=-1)  # (N, C, 2H)
        last = lengths - 1 + C * torch.arange(N, device=chars.device)  # each token's last char
        return states.reshape(N * C, self.output_dim).index_select(0, last)  # (N, 2H)

    def export_graph(self) -> nn.Module:
        """This encoder for graphs: ``chars`` (N, C) -> (N, 2H), without packed sequences."""
        from chaincrf.network.graphs import CharLSTMGraph

        return CharLSTMGraph(self)


def real_token_features(
    encoder: CharCNN | CharLSTM, chars: Tensor, mask: Tensor, dtype: torch.dtype
) -> Tensor:
    """The character features of a batch's real tokens only (the CPU's path: host reads, run
    eagerly under ``torch.compile``), float (B, T, F), zero at padding."""
    real_chars = chars[mask]  # (N, C)
    lengths = (real_chars != PAD_ID).sum(dim=1).clamp(min=1)  # (N,)
    char_features = chars.new_zeros(*mask.shape, encoder.output_dim, dtype=dtype)
    if lengths.numel() > 0:
        max_len = int(lengths.max())
        encoded = encoder(real_chars[:, :max_len], lengths)  # (N, F)
        char_features[mask] = encoded.to(dtype)  # bf16 under autocast
    return char_features
