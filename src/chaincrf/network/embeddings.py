"""Token features: word embeddings, a character encoder, casing and feature columns -> (B, T, D).

:class:`TokenEmbedder` reads the batch dictionary built by :mod:`chaincrf.data` and returns one
vector per token, the concatenation of

- a word embedding (random, or initialised from pretrained vectors such as GloVe; frozen or
  fine-tuned), with optional word dropout (ids replaced by the unknown id at training time);
- a character encoder over the token's characters: a CNN with max-pooling as in Ma & Hovy (2016),
  or a BiLSTM whose final states are concatenated as in Lample et al. (2016);
- an optional casing feature (Reimers & Gurevych, 2017): one of the casing classes per token
  (:mod:`chaincrf.data.casing`, computed by the data), embedded;
- optional feature columns of the corpus (e.g. the POS column the CoNLL-2000 shared task gives as
  input), one embedding table per column.

On the CPU the character encoder runs over the real tokens only, each cut to the longest one;
on an accelerator over every padded position, with no host read.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from chaincrf.network.chars import PAD_ID, CharCNN, CharLSTM, real_token_features
from chaincrf.network.encoders.base import eagerly

__all__ = [
    "CHAR_ENCODERS",
    "NUM_CASING",
    "PAD_ID",
    "UNK_ID",
    "LockedDropout",
    "TokenEmbedder",
]

UNK_ID = 1
"""Id of the unknown word in the word vocabulary (word dropout replaces ids by it)."""

NUM_CASING = 8
"""Number of casing ids, padding included (``len(chaincrf.data.casing.CASING_CLASSES)``, which
the data computes): the ``num_casing`` that enables the casing feature."""

CHAR_ENCODERS: tuple[str, ...] = ("cnn", "lstm", "none")
"""Accepted values of ``TokenEmbedder(char_encoder=...)``."""


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive int; got {value!r}")


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1); got {value!r}")


class LockedDropout(nn.Module):
    """Dropout with one mask per sequence, shared by all its positions (variational dropout).

    Args:
        p: probability of zeroing a feature, in [0, 1).
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        _check_probability("p", p)
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        """Drop out ``x`` (batch, seq_len, dim) with a (batch, 1, dim) mask, scaled by 1/(1-p)."""
        if not self.training or self.p == 0:
            return x
        keep = torch.empty(x.shape[0], 1, x.shape[2], device=x.device, dtype=x.dtype)
        keep.bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class TokenEmbedder(nn.Module):
    """Word, character, casing and feature-column embeddings of each token.

    Args:
        num_words: size of the word vocabulary, padding (id 0) and unknown (id 1) included.
        word_dim: size of the word embeddings.
        num_chars: size of the character vocabulary, padding (id 0) included; 0 disables the
            character encoder (as does ``char_encoder="none"``).
        char_encoder: ``"cnn"`` (Ma & Hovy 2016: 30-d character embeddings, 30 filters of width 3,
            max-pooled), ``"lstm"`` (Lample et al. 2016: 25-d character embeddings, a BiLSTM with
            25 units each way) or ``"none"``.
        char_dim: size of the character embeddings; ``None``: 30 for ``cnn``, 25 for ``lstm``.
        char_hidden: number of CNN filters, or LSTM units per direction; ``None``: 30 for
            ``cnn``, 25 for ``lstm``.
        char_kernel_size: width of the character CNN's filters (odd).
        num_casing: size of the casing vocabulary (:data:`NUM_CASING` for the data's
            classes); 0 disables the casing feature.
        casing_dim: size of the casing embeddings.
        feature_sizes: vocabulary size (padding and unknown included) of each extra feature
            column the data reads beside the token (e.g. ``[47]`` for CoNLL-2000's POS column);
            each gets an embedding table of ``feature_dim``. Empty: no feature columns.
        feature_dim: size of each feature column's embeddings.
        pretrained: float tensor (num_words, word_dim), initial word vectors (row ``i`` for word
            id ``i``); ``None``: random initialisation.
        freeze: keep the word embeddings fixed during training.
        word_adapter: with ``pretrained``: keep the pretrained vectors fixed, pass them through
            a trainable linear map (identity at the start) and add a trainable per-word
            correction (zero at the start). Words seen in training move as when fine-tuning the
            table, and words never seen in training (e.g. dev/test words added for their
            pretrained vector) still move with the shared map instead of keeping vectors from
            another space than the fine-tuned ones. Ignored with ``freeze``; without
            ``pretrained`` the fixed table is a random one.
        word_dropout: at training time, each real token's word id is replaced by the unknown id
            1 with this probability.
        dropout: dropout on the concatenated features (and, for ``cnn``, on the character
            embeddings, as in Ma & Hovy).
        locked_dropout: drop the same features at every token of a sentence (one mask per
            sentence: variational dropout, Gal & Ghahramani 2016, recommended for BiLSTM taggers
            by Reimers & Gurevych 2017) instead of a new mask per token.

    Attributes:
        output_dim: size of the features ``forward`` returns: ``word_dim`` plus the character
            encoder's and the casing embedding's sizes and ``feature_dim`` per feature column.

    Raises:
        ValueError: at construction, for a size that is not positive, an unknown
            ``char_encoder``, a probability outside [0, 1), or ``pretrained`` of another shape
            than (num_words, word_dim).
        TypeError: if ``pretrained`` is neither ``None`` nor a floating-point tensor.
    """

    def __init__(
        self,
        num_words: int,
        word_dim: int = 100,
        num_chars: int = 0,
        char_encoder: str = "cnn",
        char_dim: int | None = None,
        char_hidden: int | None = None,
        char_kernel_size: int = 3,
        num_casing: int = 0,
        casing_dim: int = 8,
        feature_sizes: Sequence[int] = (),
        feature_dim: int = 20,
        pretrained: Tensor | None = None,
        freeze: bool = False,
        word_adapter: bool = False,
        word_dropout: float = 0.0,
        dropout: float = 0.5,
        locked_dropout: bool = False,
    ) -> None:
        super().__init__()
        _check_positive("num_words", num_words)
        _check_positive("word_dim", word_dim)
        if char_encoder not in CHAR_ENCODERS:
            raise ValueError(f"char_encoder must be one of {CHAR_ENCODERS}; got {char_encoder!r}")
        if num_chars < 0:
            raise ValueError(f"num_chars must be >= 0; got {num_chars!r}")
        if num_casing < 0:
            raise ValueError(f"num_casing must be >= 0; got {num_casing!r}")
        _check_probability("word_dropout", word_dropout)
        _check_probability("dropout", dropout)

        if pretrained is None:
            self.word_embedding = nn.Embedding(num_words, word_dim, padding_idx=PAD_ID)
        else:
            if not isinstance(pretrained, Tensor) or not pretrained.is_floating_point():
                raise TypeError(
                    f"pretrained must be a floating-point torch.Tensor or None; got "
                    f"{type(pretrained).__name__}"
                    + (f" of dtype {pretrained.dtype}" if isinstance(pretrained, Tensor) else "")
                )
            if tuple(pretrained.shape) != (num_words, word_dim):
                raise ValueError(
                    f"pretrained must have shape (num_words, word_dim) = ({num_words}, {word_dim}); "
                    f"got {tuple(pretrained.shape)}"
                )
            self.word_embedding = nn.Embedding.from_pretrained(
                pretrained.detach().clone().float(), freeze=freeze, padding_idx=PAD_ID
            )
        self.word_map: nn.Linear | None = None
        self.word_residual: nn.Embedding | None = None
        if word_adapter and not freeze:
            # (without ``pretrained``, as when a trained model is rebuilt before its state dict
            # is loaded, the fixed table is the random one above)
            freeze = True  # the pretrained table itself stays fixed
            self.word_map = nn.Linear(word_dim, word_dim)
            self.word_residual = nn.Embedding(num_words, word_dim, padding_idx=PAD_ID)
            with torch.no_grad():
                self.word_map.weight.copy_(torch.eye(word_dim))
                self.word_map.bias.zero_()
                self.word_residual.weight.zero_()
        self.word_embedding.weight.requires_grad_(not freeze)
        self.word_dropout = word_dropout

        self.char_encoder: CharCNN | CharLSTM | None = None
        if char_encoder == "cnn" and num_chars > 0:
            char_dim = 30 if char_dim is None else char_dim
            char_hidden = 30 if char_hidden is None else char_hidden
            _check_positive("char_dim", char_dim)
            _check_positive("char_hidden", char_hidden)
            _check_positive("char_kernel_size", char_kernel_size)
            self.char_encoder = CharCNN(num_chars, char_dim, char_hidden, char_kernel_size, dropout)
        elif char_encoder == "lstm" and num_chars > 0:
            char_dim = 25 if char_dim is None else char_dim
            char_hidden = 25 if char_hidden is None else char_hidden
            _check_positive("char_dim", char_dim)
            _check_positive("char_hidden", char_hidden)
            self.char_encoder = CharLSTM(num_chars, char_dim, char_hidden)

        self.casing_embedding: nn.Embedding | None = None
        if num_casing > 0:
            _check_positive("casing_dim", casing_dim)
            self.casing_embedding = nn.Embedding(num_casing, casing_dim, padding_idx=PAD_ID)

        if isinstance(feature_sizes, (int, str)):
            raise ValueError(f"feature_sizes must be a list of sizes; got {feature_sizes!r}")
        feature_sizes = list(feature_sizes)
        for i, size in enumerate(feature_sizes):
            _check_positive(f"feature_sizes[{i}]", size)
        if feature_sizes:
            _check_positive("feature_dim", feature_dim)
        self.feature_embeddings = nn.ModuleList(
            nn.Embedding(size, feature_dim, padding_idx=PAD_ID) for size in feature_sizes
        )

        self.dropout = LockedDropout(dropout) if locked_dropout else nn.Dropout(dropout)
        self.output_dim = (
            word_dim
            + (self.char_encoder.output_dim if self.char_encoder is not None else 0)
            + (casing_dim if self.casing_embedding is not None else 0)
            + feature_dim * len(feature_sizes)
        )

    def forward(self, batch: dict) -> Tensor:
        """Embed a batch.

        Args:
            batch: the data layer's batch; reads ``"words"`` (long tensor (B, T), word ids),
                ``"mask"`` (bool tensor (B, T), True at real tokens), and, when enabled,
                ``"chars"`` (long tensor (B, T, C), character ids, 0-padded), ``"casing"``
                (long tensor (B, T), casing ids) and ``"features"`` (long tensor (B, T, K),
                ids of the K feature columns).

        Returns:
            Float tensor (B, T, output_dim); zero at padded positions.

        Raises:
            ValueError: if a tensor the embedder needs is missing or has the wrong shape.
        """
        words, mask = batch["words"], batch["mask"]
        if words.dim() != 2 or mask.shape != words.shape:
            raise ValueError(
                f"batch['words'] and batch['mask'] must have the same shape (batch, seq_len); got "
                f"{tuple(words.shape)} and {tuple(mask.shape)}"
            )
        B, T = words.shape
        if self.training and self.word_dropout > 0:
            drop = torch.rand(words.shape, device=words.device) < self.word_dropout
            words = words.masked_fill(drop & mask, UNK_ID)
        words = words.masked_fill(~mask, PAD_ID)
        word_features = self.word_embedding(words)  # (B, T, W)
        if self.word_map is not None and self.word_residual is not None:
            word_features = self.word_map(word_features) + self.word_residual(words)
        features = [word_features]

        if self.char_encoder is not None:
            chars = batch.get("chars")
            if chars is None or chars.dim() != 3 or chars.shape[:2] != words.shape:
                got = None if chars is None else tuple(chars.shape)
                raise ValueError(
                    f"batch['chars'] must be a long tensor of shape ({B}, {T}, max_chars); got {got}"
                )
            # (computed before the append: torch 2.11's Dynamo cannot resume inside a call of
            # list.append after the graph break of the character path's eager part)
            char_features = self._char_features(chars, mask, word_features.dtype)  # (B, T, F)
            features.append(char_features)

        if self.casing_embedding is not None:
            casing = batch.get("casing")
            if casing is None or casing.shape != words.shape:
                got = None if casing is None else tuple(casing.shape)
                raise ValueError(
                    f"batch['casing'] must be a long tensor of shape ({B}, {T}); got {got}"
                )
            features.append(self.casing_embedding(casing.masked_fill(~mask, PAD_ID)))

        if len(self.feature_embeddings):
            K = len(self.feature_embeddings)
            columns = batch.get("features")
            if columns is None or tuple(columns.shape) != (B, T, K):
                got = None if columns is None else tuple(columns.shape)
                raise ValueError(
                    f"batch['features'] must be a long tensor of shape ({B}, {T}, {K}) (one id "
                    f"per feature column); got {got}"
                )
            columns = columns.masked_fill(~mask.unsqueeze(-1), PAD_ID)
            for k, embedding in enumerate(self.feature_embeddings):
                features.append(embedding(columns[..., k]))  # (B, T, feature_dim)

        output = self.dropout(torch.cat(features, dim=-1))  # (B, T, D)
        return output * mask.unsqueeze(-1)

    def _char_features(self, chars: Tensor, mask: Tensor, dtype: torch.dtype) -> Tensor:
        """The character encoder's features of a batch, float (B, T, F), zero at padding.

        On an accelerator the character encoder encodes every position of the padded batch
        (padding zeroed after): no host synchronisation, one shape per batch shape. On the CPU
        only the real tokens, cut to the longest one (:func:`chaincrf.network.chars.real_token_features`).
        """
        encoder = self.char_encoder
        assert encoder is not None
        if chars.is_cpu:
            return eagerly(real_token_features)(encoder, chars, mask, dtype)
        B, T = mask.shape
        flat = chars.reshape(B * T, chars.shape[2])  # (B*T, C)
        lengths = (flat != PAD_ID).sum(dim=1).clamp(min=1)
        encode = encoder._encode if isinstance(encoder, CharCNN) else eagerly(encoder.padded)
        encoded = encode(flat, lengths).view(B, T, encoder.output_dim)
        return encoded.to(dtype) * mask.unsqueeze(-1)

    def export_graph(self) -> nn.Module:
        """This embedder for TorchScript/ONNX graphs, sharing its weights (eval mode):
        :class:`chaincrf.network.graphs.TokenEmbedderGraph`."""
        from chaincrf.network.graphs import TokenEmbedderGraph

        return TokenEmbedderGraph(self)
