"""The tagger's hyper-parameters as plain data, and the network built from them.

Sub-modules are described by plain ``dict`` specifications with a ``_target_`` key (the dotted
path of a class) and its keyword arguments — the same shape as a Hydra node, but no Hydra
object reaches the tagger. :func:`checked` validates the constructor's arguments and returns
the JSON-able hyper-parameters a checkpoint stores (no pickled module: a model file is data);
:func:`build_model` fills in the sizes only the data knows (``num_words``, ``num_chars``,
``feature_sizes``, ``input_dim``) and builds the :class:`~chaincrf.tagger.network.TaggerModel`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from chaincrf.constraints import TagScheme
from chaincrf.spec import build_from_spec, locate
from chaincrf.tagger.network import TaggerModel

__all__ = ["as_plain", "build_model", "checked"]


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


def checked(
    labels: Sequence[str],
    num_words: int,
    num_chars: int,
    embeddings: Mapping[str, Any],
    encoder: Mapping[str, Any],
    scheme: str | None = None,
    original_scheme: str | None = None,
    use_crf: bool = True,
    constrain: bool = True,
    dropout: float = 0.0,
    optimizer: Mapping[str, Any] | None = None,
    word_lr_scale: float = 1.0,
    scheduler: Mapping[str, Any] | None = None,
    scheduler_interval: str = "epoch",
    monitor: str = "val/score",
    pretrained: Tensor | None = None,
    feature_sizes: Sequence[int] = (),
) -> dict[str, Any]:
    """:class:`~chaincrf.tagger.SequenceTagger`'s arguments checked and normalised (schemes'
    names, the default optimiser), as the plain hyper-parameters it saves. The defaults are
    SequenceTagger's (a test keeps them equal): model files that predate a key load as before.

    Raises:
        ValueError/TypeError: naming the first inconsistent argument.
    """
    if isinstance(labels, str) or not labels or not all(isinstance(x, str) for x in labels):
        raise ValueError(f"labels must be a non-empty list of tag strings; got {labels!r}")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must be unique; got {list(labels)!r}")
    for name, value in (("num_words", num_words), ("num_chars", num_chars)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {value!r}")
    if isinstance(feature_sizes, (str, int)) or not all(
        isinstance(size, int) and not isinstance(size, bool) and size > 0 for size in feature_sizes
    ):
        raise ValueError(
            f"feature_sizes must be a list of positive ints (one per feature column); "
            f"got {feature_sizes!r}"
        )
    tags = TagScheme(labels, scheme, original_scheme)  # checks and normalises the schemes
    scheme, original_scheme = tags.scheme, tags.original
    if scheduler_interval not in ("epoch", "step"):
        raise ValueError(
            f"scheduler_interval must be 'epoch' or 'step'; got {scheduler_interval!r}"
        )
    if optimizer is None:
        optimizer = {"_target_": "torch.optim.Adam", "lr": 1e-3}
    if (
        isinstance(word_lr_scale, bool)
        or not isinstance(word_lr_scale, (int, float))
        or not 0.0 <= word_lr_scale < float("inf")
    ):
        raise ValueError(f"word_lr_scale must be a number >= 0; got {word_lr_scale!r}")
    if pretrained is not None and (
        not isinstance(pretrained, Tensor)
        or pretrained.dim() != 2
        or pretrained.shape[0] != num_words
    ):
        shape = (
            tuple(pretrained.shape) if isinstance(pretrained, Tensor) else type(pretrained).__name__
        )
        raise ValueError(
            f"pretrained must be a float tensor of shape ({num_words}, word_dim); got {shape}"
        )
    embeddings = as_plain(embeddings, "embeddings")
    encoder = as_plain(encoder, "encoder")
    optimizer = as_plain(optimizer, "optimizer")
    scheduler = as_plain(scheduler, "scheduler")
    for name, spec in (("optimizer", optimizer), ("scheduler", scheduler)):
        if spec is not None and (not isinstance(spec, Mapping) or "_target_" not in spec):
            raise TypeError(f"{name} must be a mapping with a '_target_' key or None; got {spec!r}")
        if spec is not None:
            locate(str(spec["_target_"]), name)
    return {
        "labels": list(labels),
        "num_words": num_words,
        "num_chars": num_chars,
        "feature_sizes": [int(size) for size in feature_sizes],
        "embeddings": embeddings,
        "encoder": encoder,
        "scheme": scheme,
        "original_scheme": original_scheme,
        "use_crf": bool(use_crf),
        "constrain": bool(constrain),
        "dropout": float(dropout),
        "optimizer": optimizer,
        "word_lr_scale": float(word_lr_scale),
        "scheduler": scheduler,
        "scheduler_interval": scheduler_interval,
        "monitor": monitor,
    }


def build_model(hparams: Mapping[str, Any], pretrained: Tensor | None) -> TaggerModel:
    """The network the hyper-parameters describe (``pretrained``: initial word vectors)."""
    embeddings, feature_sizes = hparams["embeddings"], hparams["feature_sizes"]
    embedder = build_from_spec(
        embeddings,
        "embeddings",
        num_words=hparams["num_words"],
        num_chars=hparams["num_chars"],
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
    encoder = build_from_spec(hparams["encoder"], "encoder", input_dim=embed_dim)
    constraints = None
    if hparams["use_crf"] and hparams["constrain"]:
        constraints = TagScheme(hparams["labels"], hparams["scheme"]).allowed_transitions()
    return TaggerModel(
        embedder,
        encoder,
        len(hparams["labels"]),
        use_crf=hparams["use_crf"],
        constraints=constraints,
        dropout=hparams["dropout"],
    )
