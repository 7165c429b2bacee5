"""The checks every model folder passes before anything is built: torch-free, shared by the
bundle loader (:mod:`chaincrf.files.model_files`) and the ONNX predictor
(:mod:`chaincrf.predict.onnx_predictor`).

A model folder is data from elsewhere. Each of its files is read through :func:`read_json`
(size and nesting bounded), each path it names must stay inside it (:func:`confined`, after
links), each field has its type checked (:func:`check_int`, :func:`check_bool`, ...), and the
sizes the files state must agree with each other and with the weights' shapes
(:func:`check_vocab_fits`, :func:`check_hparams_fit`) — all before a tensor is allocated. Every
problem is one :class:`ModelFileError` line naming the file, the field, what was expected and
what was found.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "MAX_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "ModelFileError",
    "check_bool",
    "check_hparams_fit",
    "check_int",
    "check_labels",
    "check_optional_str",
    "check_vocab",
    "check_vocab_fits",
    "confined",
    "read_json",
]

MAX_JSON_BYTES = 512 * 2**20
"""Largest JSON file of a model folder read (a vocabulary of millions of words is far below)."""
MAX_JSON_DEPTH = 32
"""Deepest nesting accepted in a model folder's JSON (the files chaincrf writes reach 4)."""

LAYER_KEYS = frozenset({"num_layers"})
"""Hyper-parameters counting layers: each layer holds at least one weight tensor."""
SIZE_KEYS = frozenset(
    {"hidden_size", "word_dim", "char_dim", "char_hidden", "casing_dim", "feature_dim",
     "d_model", "dim_feedforward", "num_heads", "num_filters", "kernel_size",
     "char_kernel_size"}
)  # fmt: skip
"""Hyper-parameters sizing a weight: none exceeds the largest dimension of the weights."""

WORD_ROWS = "embedder.word_embedding.weight"
CHAR_ROWS = "embedder.char_encoder.embedding.weight"
TAG_ROWS = ("projection.weight", "projection.bias", "crf.transitions")


class ModelFileError(ValueError):
    """A checkpoint, bundle or exported folder that cannot be used, naming the file."""


def _name(value: Any) -> str:
    return "bool" if isinstance(value, bool) else type(value).__name__


def _depth(data: Any) -> int:
    """The nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            deepest = max(deepest, depth)
            if depth <= MAX_JSON_DEPTH:
                children = value.values() if isinstance(value, dict) else value
                stack.extend((child, depth + 1) for child in children)
    return deepest


def read_json(path: str | os.PathLike[str]) -> Any:
    """A JSON file of a model folder, parsed with its size and nesting bounded.

    Raises:
        FileNotFoundError: naming the file, when it does not exist.
        ModelFileError: naming the file, when it is over :data:`MAX_JSON_BYTES`, nested deeper
            than :data:`MAX_JSON_DEPTH`, unreadable, not UTF-8 or not JSON.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise ModelFileError(
                f"{path}: {size} bytes; a model folder's JSON file must be at most "
                f"{MAX_JSON_BYTES} bytes"
            )
        text = path.read_bytes().decode("utf-8")
        data = json.loads(text)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing") from None
    except json.JSONDecodeError as error:
        raise ModelFileError(
            f"{path}:{error.lineno}:{error.colno}: invalid JSON: {error.msg}"
        ) from None
    except UnicodeDecodeError as error:
        raise ModelFileError(f"{path}: not UTF-8 text ({error.reason})") from None
    except RecursionError:
        raise ModelFileError(
            f"{path}: JSON nested too deeply; at most {MAX_JSON_DEPTH} levels are accepted"
        ) from None
    except OSError as error:
        raise ModelFileError(f"{path}: cannot be read: {error.strerror or error}") from None
    depth = _depth(data)
    if depth > MAX_JSON_DEPTH:
        raise ModelFileError(
            f"{path}: JSON nested {depth}+ levels deep; at most {MAX_JSON_DEPTH} are accepted"
        )
    return data


def confined(folder: str | os.PathLike[str], name: Any, source: str, field: str) -> Path:
    """The path ``name`` (a field of ``source``) inside the model folder ``folder``.

    Args:
        folder: the model folder.
        name: the file name the model folder gives, relative to ``folder``.
        source: the file that names it, for messages.
        field: the field that names it, for messages.

    Returns:
        ``folder / name``.

    Raises:
        ModelFileError: naming the file and field, when ``name`` is not a non-empty string or
            resolves (after links) outside ``folder``.
    """
    if not isinstance(name, str) or not name:
        raise ModelFileError(f"{source}: {field} must be a file name; got {name!r}")
    folder = Path(folder)
    path = folder / name
    try:
        inside = path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError) as error:  # a loop of links
        raise ModelFileError(f"{source}: {field} {name!r} cannot be resolved: {error}") from None
    if not inside:
        raise ModelFileError(
            f"{source}: {field} {name!r} resolves to {path.resolve()}, outside the model "
            f"folder {folder.resolve()}; a model folder's files must stay inside it"
        )
    return path


def check_int(
    value: Any, source: str, field: str, minimum: int = 0, maximum: int | None = None
) -> int:
    """``value`` as an int in ``[minimum, maximum]`` (not a bool, float or string)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelFileError(f"{source}: {field} must be an int; got {_name(value)} {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ModelFileError(f"{source}: {field} must be an int {bound}; got {value!r}")
    return value


def check_bool(value: Any, source: str, field: str) -> bool:
    """``value``, which must be a JSON boolean (not ``"no"``, 0 or 1)."""
    if not isinstance(value, bool):
        raise ModelFileError(
            f"{source}: {field} must be a boolean (true or false); got {_name(value)} {value!r}"
        )
    return value


def check_optional_str(value: Any, source: str, field: str) -> str | None:
    """``value``, which must be a string or null."""
    if value is not None and not isinstance(value, str):
        raise ModelFileError(
            f"{source}: {field} must be a string or null; got {_name(value)} {value!r}"
        )
    return value


def _check_str_list(value: Any, source: str, field: str, unique: bool) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        shown = (
            _name(value)
            if not isinstance(value, list)
            else "a list holding "
            + ", ".join(sorted({_name(x) for x in value if not isinstance(x, str)}))
        )
        raise ModelFileError(f"{source}: {field} must be a list of strings; got {shown}")
    if unique and len(set(value)) != len(value):
        repeated = sorted(x for x, n in Counter(value).items() if n > 1)
        raise ModelFileError(
            f"{source}: {field} must not repeat entries; got {repeated[:5]} more than once"
        )
    return value


def check_labels(value: Any, source: str, field: str) -> list[str]:
    """The tag names: a non-empty list of distinct strings."""
    labels = _check_str_list(value, source, field, unique=True)
    if not labels:
        raise ModelFileError(f"{source}: {field} must name at least one tag; got []")
    return labels


def _check_mapping(value: Any, source: str, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ModelFileError(f"{source}: {field} must be a JSON object; got {_name(value)}")
    return value


def _check_vocabulary(value: Any, source: str, field: str) -> None:
    vocab = _check_mapping(value, source, field)
    itos = _check_str_list(vocab.get("itos"), source, f"{field}.itos", unique=True)
    for special in ("unk", "pad"):
        entry = check_optional_str(vocab.get(special), source, f"{field}.{special}")
        if entry is not None and entry not in itos:
            raise ModelFileError(
                f"{source}: {field}.{special} must be one of {field}.itos or null; got {entry!r}"
            )


def check_vocab(vocab: Any, source: str) -> dict[str, Any]:
    """A ``vocab.json`` (``SentenceEncoder.to_dict()``) with every field's type checked.

    Raises:
        ModelFileError: naming the file and the first bad field, its expected and found value.
    """
    vocab = _check_mapping(vocab, source, "the vocabularies")
    check_int(vocab.get("version"), source, "version", 1, 1)
    for name in ("words", "chars", "tags"):
        _check_vocabulary(vocab.get(name), source, name)
    for name in ("scheme", "original_scheme"):
        check_optional_str(vocab.get(name), source, name)
    for name in ("lowercase", "digits_to_zero"):
        check_bool(vocab.get(name), source, name)
    check_int(vocab.get("max_word_chars"), source, "max_word_chars", 1)
    features = vocab.get("features", [])
    if not isinstance(features, list):
        raise ModelFileError(f"{source}: features must be a list; got {_name(features)}")
    for i, feature in enumerate(features):
        _check_vocabulary(feature, source, f"features[{i}]")
    columns = vocab.get("feature_columns")
    if columns is not None and (
        not isinstance(columns, list)
        or len(columns) != len(features)
        or not all(isinstance(c, (int, str)) and not isinstance(c, bool) for c in columns)
    ):
        raise ModelFileError(
            f"{source}: feature_columns must be null or a list of {len(features)} column "
            f"index(es) or name(s); got {columns!r}"
        )
    return dict(vocab)


def check_vocab_fits(
    vocab: Mapping[str, Any],
    source: str,
    labels: Sequence[str],
    rows: Mapping[str, int | None],
    model: str,
) -> None:
    """The vocabularies of ``source`` agree with the model: the tag vocabulary is ``labels``,
    and no id can index past an embedding.

    Args:
        vocab: a checked ``vocab.json`` (:func:`check_vocab`).
        source: the vocabularies' file, for messages.
        labels: the model's tag names.
        rows: the rows of the model's ``"words"`` and ``"chars"`` embeddings and of each
            ``"feature<i>"`` embedding (None: not known, not checked).
        model: the file that states those sizes, for messages.

    Raises:
        ModelFileError: naming both files and the disagreeing sizes.
    """
    tags = vocab["tags"]["itos"]
    if list(tags) != list(labels):
        raise ModelFileError(
            f"{source}: tags.itos must be the model's {len(labels)} labels of {model}; got "
            f"{len(tags)} tag(s) {list(tags)[:5]}{' ...' if len(tags) > 5 else ''}"
        )
    sizes = {"words": len(vocab["words"]["itos"]), "chars": len(vocab["chars"]["itos"])}
    sizes.update({f"feature{i}": len(v["itos"]) for i, v in enumerate(vocab.get("features", []))})
    for name, size in sizes.items():
        limit = rows.get(name)
        if limit is not None and size > limit:
            raise ModelFileError(
                f"{source}: the {name} vocabulary has {size} entries, more than the {limit} "
                f"rows of the model's {name} embedding ({model}); its ids would index past it"
            )


def _spec_sizes(spec: Any, where: str) -> list[tuple[str, int]]:
    """Every (field, value) of ``spec`` (nested dicts and lists) named in LAYER/SIZE_KEYS."""
    found, stack = [], [(spec, where)]
    while stack:
        value, path = stack.pop()
        if isinstance(value, Mapping):
            for key, child in value.items():
                if key in LAYER_KEYS or key in SIZE_KEYS:
                    found.append((f"{path}.{key}", child))
                else:
                    stack.append((child, f"{path}.{key}"))
        elif isinstance(value, list):
            stack.extend((child, f"{path}[{i}]") for i, child in enumerate(value))
    return found


def _rows(shapes: Mapping[str, tuple[int, ...]], suffix: str) -> tuple[str, int] | None:
    for name, shape in shapes.items():
        if (name == suffix or name.endswith("." + suffix)) and shape:
            return name, shape[0]
    return None


def check_hparams_fit(
    hparams: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], source: str
) -> dict[str, int | None]:
    """The stored hyper-parameters agree with the stored weights' shapes, checked before the
    model is built (so a file cannot make it allocate more than its weights hold).

    Args:
        hparams: the stored hyper-parameters (labels, num_words, num_chars, feature_sizes,
            embeddings, encoder).
        shapes: each weight's name and shape, read without loading the tensors.
        source: the model file, for messages.

    Returns:
        The embeddings' rows (``"words"``, ``"chars"``, ``"feature<i>"``) for
        :func:`check_vocab_fits`.

    Raises:
        ModelFileError: naming the file, the field, its value and the weight it disagrees with.
    """
    labels = check_labels(hparams.get("labels"), source, "labels")
    num_words = check_int(hparams.get("num_words"), source, "num_words", 1)
    num_chars = check_int(hparams.get("num_chars"), source, "num_chars", 1)
    feature_sizes = hparams.get("feature_sizes", [])
    if not isinstance(feature_sizes, list):
        raise ModelFileError(
            f"{source}: feature_sizes must be a list of ints; got {_name(feature_sizes)}"
        )
    for i, size in enumerate(feature_sizes):
        check_int(size, source, f"feature_sizes[{i}]", 1)
    for field, value in (("num_words", num_words), ("num_chars", num_chars)):
        suffix = WORD_ROWS if field == "num_words" else CHAR_ROWS
        found = _rows(shapes, suffix)
        if found is not None and found[1] != value:
            raise ModelFileError(
                f"{source}: weights do not fit the model: {field} is {value}, but the weights' "
                f"{found[0]} has {found[1]} rows"
            )
    for suffix in TAG_ROWS:
        found = _rows(shapes, suffix)
        if found is not None and found[1] != len(labels):
            raise ModelFileError(
                f"{source}: weights do not fit the model: labels name {len(labels)} tags, but the "
                f"weights' {found[0]} has {found[1]} rows"
            )
    rows: dict[str, int | None] = {"words": num_words, "chars": num_chars}
    for i, size in enumerate(feature_sizes):
        found = _rows(shapes, f"embedder.feature_embeddings.{i}.weight")
        if found is not None and found[1] != size:
            raise ModelFileError(
                f"{source}: weights do not fit the model: feature_sizes[{i}] is {size}, but the "
                f"weights' {found[0]} has {found[1]} rows"
            )
        rows[f"feature{i}"] = size
    largest = max((d for shape in shapes.values() for d in shape), default=0)
    for where in ("embeddings", "encoder"):
        for field, value in _spec_sizes(hparams.get(where), where):
            if value is None:
                continue
            key = field.rsplit(".", 1)[-1]
            limit = len(shapes) if key in LAYER_KEYS else largest
            what = (
                f"the {len(shapes)} weight tensors stored"
                if key in LAYER_KEYS
                else f"the largest weight dimension stored ({largest})"
            )
            check_int(value, source, field, 0)
            if value > limit:
                raise ModelFileError(
                    f"{source}: weights do not fit the model: {field} is {value}, more than {what}"
                )
    return rows
