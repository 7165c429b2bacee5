"""Encoders run one after the other, e.g. frozen pretrained features under a BiLSTM."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from torch import Tensor, nn

from chaincrf.network.encoders.base import Encoder, check_inputs

__all__ = ["StackedEncoder"]


class StackedEncoder(Encoder):
    """Encoders applied in order, each built with the previous one's ``output_dim``.

    The usual use is the feature-based transfer of Devlin et al. (2019): a (frozen) pretrained
    encoder whose word states, concatenated with the embedder's features, feed a BiLSTM that is
    trained (``conf/encoder/pretrained_bilstm.yaml``).

    Args:
        input_dim: size of the token features from the embedder.
        layers: the encoders, in order, as factories that take ``input_dim`` (what a Hydra node
            with ``_partial_: true`` becomes); a mapping is taken in its order, its keys naming
            the layers (so that a config override can reach one: ``encoder.layers.bilstm.*``).

    Attributes:
        layers: the built encoders (``nn.ModuleList``).
        output_dim: the last layer's ``output_dim``.
        needs_tokens: whether any layer needs the token strings.

    Raises:
        ValueError: if ``layers`` is empty, or a layer is not an encoder taking ``input_dim``
            (an ``nn.Module`` with an integer ``output_dim``).
    """

    def __init__(
        self,
        input_dim: int,
        layers: Sequence[Callable[..., nn.Module]] | Mapping[str, Callable[..., nn.Module]],
    ) -> None:
        super().__init__(input_dim)
        named = list(layers.items()) if isinstance(layers, Mapping) else list(enumerate(layers))
        if not named:
            raise ValueError("layers must name at least one encoder; got none")
        built = []
        dim = input_dim
        for name, factory in named:
            if not callable(factory):
                raise ValueError(
                    f"layers[{name!r}] must be an encoder factory taking input_dim (a Hydra node "
                    f"with _partial_: true); got {type(factory).__name__}: {factory!r}"
                )
            layer = factory(input_dim=dim)
            out = getattr(layer, "output_dim", None)
            if not isinstance(layer, nn.Module) or not isinstance(out, int):
                raise ValueError(
                    f"layers[{name!r}] must build an nn.Module with an integer output_dim; got "
                    f"{type(layer).__name__}"
                )
            built.append(layer)
            dim = out
        self.layers = nn.ModuleList(built)
        self.output_dim = dim
        self.needs_tokens = any(getattr(layer, "needs_tokens", False) for layer in built)

    def forward(
        self, features: Tensor, mask: Tensor, tokens: list[list[str]] | None = None
    ) -> Tensor:
        """Encode a batch (see :meth:`Encoder.forward`); every layer gets ``mask`` and ``tokens``.

        Returns:
            Float tensor (batch, seq_len, output_dim), the last layer's output.
        """
        check_inputs(self, features, mask)
        for layer in self.layers:
            features = layer(features, mask, tokens=tokens)
        return features
