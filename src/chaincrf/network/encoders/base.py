"""The contract every encoder follows."""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

import torch
from torch import Tensor, nn

P = ParamSpec("P")
R = TypeVar("R")

__all__ = [
    "MAX_LAYERS",
    "Encoder",
    "check_dropout",
    "check_inputs",
    "check_num_layers",
    "eagerly",
]

MAX_LAYERS = 64
"""The most stacked layers an encoder accepts (``num_layers``): deep enough for any tagger
(published BiLSTM-CRF and small Transformer taggers use 1 to 12); ``num_layers=10000`` took
56 s to build before failing."""


class Encoder(nn.Module):
    """Base class of the encoders: maps token features to contextual token features.

    A subclass takes ``input_dim`` as its first ``__init__`` argument, sets ``self.output_dim``
    and implements :meth:`forward`. Outputs at padded positions are unspecified (the tagger never
    reads them); outputs at real positions must not depend on what the padded positions hold.

    Attributes:
        input_dim: size of the features ``forward`` takes.
        output_dim: size of the features ``forward`` returns.
        needs_tokens: whether ``forward`` needs the token strings (``tokens``); class attribute.
    """

    needs_tokens: bool = False

    def __init__(self, input_dim: int) -> None:
        super().__init__()
        if not isinstance(input_dim, int) or isinstance(input_dim, bool) or input_dim <= 0:
            raise ValueError(f"input_dim must be a positive int; got {input_dim!r}")
        self.input_dim = input_dim
        self.output_dim = input_dim

    def forward(
        self, features: Tensor, mask: Tensor, tokens: list[list[str]] | None = None
    ) -> Tensor:
        """Encode a batch.

        Args:
            features: float tensor (batch, seq_len, input_dim), token features.
            mask: bool tensor (batch, seq_len), True at real tokens; left-aligned (each row is
                ``True`` for its first ``length`` positions, then ``False``).
            tokens: the token strings of each sentence (read only when ``needs_tokens``).

        Returns:
            Float tensor (batch, seq_len, output_dim).
        """
        raise NotImplementedError


def check_inputs(encoder: Encoder, features: Tensor, mask: Tensor) -> None:
    """Raise ``ValueError`` unless ``features`` is (B, T, encoder.input_dim) and ``mask`` (B, T)."""
    if features.dim() != 3 or features.shape[-1] != encoder.input_dim:
        raise ValueError(
            f"features must have shape (batch, seq_len, {encoder.input_dim}); "
            f"got {tuple(features.shape)}"
        )
    if mask.shape != features.shape[:2]:
        raise ValueError(
            f"mask must have shape (batch, seq_len) = {tuple(features.shape[:2])}; "
            f"got {tuple(mask.shape)}"
        )


def check_dropout(dropout: float) -> None:
    """Raise ``ValueError`` unless ``dropout`` is a probability in [0, 1)."""
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1); got {dropout!r}")


def check_num_layers(num_layers: int) -> None:
    """Raise a ValueError naming ``num_layers`` unless it is an int in 1..:data:`MAX_LAYERS`."""
    if (
        not isinstance(num_layers, int)
        or isinstance(num_layers, bool)
        or not 1 <= num_layers <= MAX_LAYERS
    ):
        raise ValueError(f"num_layers must be an int in 1..{MAX_LAYERS}; got {num_layers!r}")


def eagerly(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` to call: itself, or, while ``torch.compile`` traces, ``fn`` run eagerly between
    the graphs (``torch.compiler.disable``, applied only then: importing ``torch._dynamo``
    costs about a second, which eager use, prediction included, does not pay).

    For a layer's part that reads the host (the CPU paths: packing's lengths, selecting the
    real tokens; a read would break a graph at an unplanned place) or runs an LSTM, which,
    traced, torch (2.11 and 2.13, at least) replaces by its Python decomposition, a set of
    operations per time step: graphs that grow with the length, compiled anew for each shape,
    many times slower than cuDNN's or oneDNN's kernels with their own backward
    (``benchmarks/train_gpu.md``, "Compiled")."""
    if torch.compiler.is_compiling():
        return torch.compiler.disable(fn, recursive=True)
    return fn
