"""The tagger's hyper-parameters as plain data, and the network built from them.

Sub-modules are described by plain ``dict`` specifications with a ``_target_`` key (the dotted
path of a class) and its keyword arguments — the same shape as a Hydra node, but no Hydra
object reaches the tagger. :class:`TaggerConfig` validates them and gives the JSON-able
hyper-parameters a checkpoint stores (no pickled module: a model file is data);
:meth:`TaggerConfig.build_model` fills in the sizes only the data knows (``num_words``, ``num_chars``,
``feature_sizes``, ``input_dim``) and builds the :class:`~chaincrf.network.model.TaggerModel`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from math import inf
from typing import Any

from torch import Tensor

from chaincrf.data.schemes import TagScheme
from chaincrf.network.model import TaggerModel
from chaincrf.spec import build_from_spec, locate

__all__ = ["TaggerConfig", "as_plain"]


def as_plain(value: Any, what: str) -> Any:
    """Check that a specification is plain data (no modules, callables or tensors)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): as_plain(v, f"{what}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_plain(v, f"{what}[{i}]") for i, v in enumerate(value)]
    raise TypeError(
        f"{what} must be plain data (dict/list/str/number/bool/None) so that checkpoints hold no "
        f"pickled objects; got {type(value).__name__}"
    )


@dataclass
class TaggerConfig:
    """What a tagger is: the labels, the sizes the data fixes, the modules and the optimisation,
    as plain data (a checkpoint's ``hyper_parameters``, a bundle's ``config.json``). Checked and
    normalised at construction; :meth:`to_dict` gives the JSON-able form a model file stores and
    :meth:`build_model` the network it describes. Model files that predate a field load with its
    default.

    Args:
        labels: tag names in id order, in the training scheme (length K).
        num_words: size of the word vocabulary.
        num_chars: size of the character vocabulary.
        embeddings: spec of the token embedder, ``{"_target_": ..., **kwargs}``; ``num_words``,
            ``num_chars``, ``pretrained`` (and ``feature_sizes``) are filled in.
        encoder: spec of the encoder; ``input_dim`` is filled in.
        scheme: the training tag scheme (``"IOB1"``, ``"BIO"``, ``"BIOES"``), or None for tags
            without spans (POS).
        original_scheme: the scheme of the corpus files, used for span metrics and output;
            defaults to ``scheme``.
        use_crf: CRF output layer (True) or the softmax baseline (False).
        constrain: apply the scheme's transition constraints in the CRF (training and decoding).
        dropout: dropout on the encoder output, before the projection (the BiLSTM applies
            none of its own there; the cnn and transformer encoders drop out inside their layers).
        optimizer: spec of the optimiser, called with the parameters; default Adam, lr 1e-3.
        word_lr_scale: learning-rate multiplier of the word-embedding table (its own parameter
            group): 1.0 trains it like the rest, 0.0 keeps it fixed while every other weight
            trains.
        scheduler: spec of a learning-rate scheduler or None. ``ReduceLROnPlateau`` watches
            ``monitor``.
        scheduler_interval: ``"epoch"`` or ``"step"``.
        monitor: the metric a plateau scheduler watches.
        feature_sizes: vocabulary size of each feature column the data reads beside the token
            (``TaggingDataModule.feature_sizes``); empty for token-only models.

    Raises:
        ValueError/TypeError: naming the first inconsistent field.
    """

    labels: list[str]
    num_words: int
    num_chars: int
    embeddings: dict[str, Any]
    encoder: dict[str, Any]
    scheme: str | None = None
    original_scheme: str | None = None
    use_crf: bool = True
    constrain: bool = True
    dropout: float = 0.0
    optimizer: dict[str, Any] | None = None
    word_lr_scale: float = 1.0
    scheduler: dict[str, Any] | None = None
    scheduler_interval: str = "epoch"
    monitor: str = "val/score"
    feature_sizes: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        labels = self.labels
        if isinstance(labels, str) or not labels or not all(isinstance(x, str) for x in labels):
            raise ValueError(f"labels must be a non-empty list of tag strings; got {labels!r}")
        if len(set(labels)) != len(labels):
            raise ValueError(f"labels must be unique; got {list(labels)!r}")
        self.labels = list(labels)
        for name in ("num_words", "num_chars"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}")
        sizes = self.feature_sizes
        if isinstance(sizes, (str, int)) or not all(
            isinstance(size, int) and not isinstance(size, bool) and size > 0 for size in sizes
        ):
            raise ValueError(
                f"feature_sizes must be a list of positive ints (one per feature column); "
                f"got {sizes!r}"
            )
        self.feature_sizes = [int(size) for size in sizes]
        tags = self.tag_scheme()  # checks and normalises the schemes
        self.scheme, self.original_scheme = tags.scheme, tags.original
        if self.scheduler_interval not in ("epoch", "step"):
            raise ValueError(
                f"scheduler_interval must be 'epoch' or 'step'; got {self.scheduler_interval!r}"
            )
        scale = self.word_lr_scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 <= scale < inf:
            raise ValueError(f"word_lr_scale must be a number >= 0; got {scale!r}")
        self.word_lr_scale = float(scale)
        self.use_crf, self.constrain = bool(self.use_crf), bool(self.constrain)
        self.dropout = float(self.dropout)
        if self.optimizer is None:
            self.optimizer = {"_target_": "torch.optim.Adam", "lr": 1e-3}
        for name in ("embeddings", "encoder", "optimizer", "scheduler"):
            setattr(self, name, as_plain(getattr(self, name), name))
        for name in ("optimizer", "scheduler"):
            spec = getattr(self, name)
            if spec is not None and (not isinstance(spec, Mapping) or "_target_" not in spec):
                raise TypeError(
                    f"{name} must be a mapping with a '_target_' key or None; got {spec!r}"
                )
            if spec is not None:
                locate(str(spec["_target_"]), name)

    @classmethod
    def field_names(cls) -> list[str]:
        """The keys a model file's hyper-parameters may hold."""
        return [f.name for f in fields(cls)]

    def tag_scheme(self) -> TagScheme:
        """The labels with their training and original schemes."""
        return TagScheme(self.labels, self.scheme, self.original_scheme)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able hyper-parameters a model file stores."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def build_model(self, pretrained: Tensor | None = None) -> TaggerModel:
        """The network this config describes.

        Args:
            pretrained: float (num_words, word_dim) initial word vectors, or None.
        """
        if pretrained is not None and (
            not isinstance(pretrained, Tensor)
            or pretrained.dim() != 2
            or pretrained.shape[0] != self.num_words
        ):
            shape = (
                tuple(pretrained.shape)
                if isinstance(pretrained, Tensor)
                else type(pretrained).__name__
            )
            raise ValueError(
                f"pretrained must be a float tensor of shape ({self.num_words}, word_dim); "
                f"got {shape}"
            )
        embeddings, feature_sizes = self.embeddings, self.feature_sizes
        embedder = build_from_spec(
            embeddings,
            "embeddings",
            num_words=self.num_words,
            num_chars=self.num_chars,
            pretrained=pretrained,
            **({"feature_sizes": feature_sizes} if feature_sizes else {}),
        )
        if feature_sizes and len(getattr(embedder, "feature_embeddings", ())) != len(feature_sizes):
            raise ValueError(
                f"the data reads {len(feature_sizes)} feature column(s), but the embeddings "
                f"target {embeddings['_target_']!r} does not take feature_sizes"
            )
        embed_dim = getattr(embedder, "output_dim", None)
        if not isinstance(embed_dim, int):
            raise ValueError(
                f"embeddings must build a module with an int output_dim; got {embed_dim!r}"
            )
        encoder = build_from_spec(self.encoder, "encoder", input_dim=embed_dim)
        constraints = None
        if self.use_crf and self.constrain:
            constraints = TagScheme(self.labels, self.scheme).allowed_transitions()
        return TaggerModel(
            embedder,
            encoder,
            len(self.labels),
            use_crf=self.use_crf,
            constraints=constraints,
            dropout=self.dropout,
        )
