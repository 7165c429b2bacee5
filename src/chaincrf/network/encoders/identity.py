"""The identity encoder: token features pass through unchanged (a CRF over embeddings alone)."""

from __future__ import annotations

from torch import Tensor, nn

from chaincrf.network.encoders.base import Encoder, check_inputs

__all__ = ["IdentityEncoder", "IdentityGraph"]


class IdentityEncoder(Encoder):
    """Returns its input: ``output_dim == input_dim``.

    Args:
        input_dim: size of the token features.
    """

    def forward(
        self, features: Tensor, mask: Tensor, tokens: list[list[str]] | None = None
    ) -> Tensor:
        """Return ``features`` (float tensor (batch, seq_len, input_dim)) unchanged."""
        check_inputs(self, features, mask)
        return features

    def export_graph(self) -> IdentityGraph:
        """This encoder for TorchScript/ONNX graphs."""
        return IdentityGraph()


class IdentityGraph(nn.Module):
    """The identity in the graphs' encoder signature ``(x, mask, index)``."""

    def forward(self, x: Tensor, mask: Tensor, index: Tensor) -> Tensor:
        return x
