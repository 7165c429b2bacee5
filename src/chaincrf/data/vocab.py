"""Vocabularies (words, characters, tags), casing classes, and the sentence encoder.

Everything here saves to plain JSON (no pickle), so prediction maps tokens exactly as training did.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # no torch at import: the ONNX Runtime predictor encodes with this module
    import torch


from chaincrf.atomic import atomic_file
from chaincrf.data import schemes as constraints
from chaincrf.data.casing import CASING_CLASSES
from chaincrf.data.casing import casing_id as casing_class

__all__ = [
    "CASING_CLASSES",
    "PAD",
    "UNK",
    "SentenceEncoder",
    "Vocabulary",
    "casing_class",
    "normalize_word",
]

PAD = "<pad>"
UNK = "<unk>"

_DIGITS = re.compile(r"\d")


def normalize_word(token: str, lowercase: bool = False, digits_to_zero: bool = False) -> str:
    """The form of a token that the word vocabulary stores."""
    if lowercase:
        token = token.lower()
    if digits_to_zero:
        token = _DIGITS.sub("0", token)
    return token


class Vocabulary:
    """A bijection between strings and ids.

    Word and character vocabularies reserve id 0 for ``"<pad>"`` and id 1 for ``"<unk>"``
    (unknown strings encode to 1). Tag vocabularies have neither: every id is a tag, and encoding
    an unknown tag raises ``KeyError``-free ``ValueError``.

    Args:
        itos: the strings in id order, specials included.
        unk: the string unknown entries map to (must be in ``itos``), or None to reject them.
        pad: the padding string (must be in ``itos``), or None.
    """

    def __init__(self, itos: Sequence[str], unk: str | None = None, pad: str | None = None) -> None:
        self.itos: list[str] = list(itos)
        self.stoi: dict[str, int] = {s: i for i, s in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            duplicates = [s for s, n in Counter(self.itos).items() if n > 1]
            raise ValueError(f"itos must not repeat entries; got duplicates {duplicates[:5]}")
        for name, special in (("unk", unk), ("pad", pad)):
            if special is not None and special not in self.stoi:
                raise ValueError(f"{name}={special!r} must be one of the entries of itos")
        self.unk = unk
        self.pad = pad
        self.unk_index: int | None = None if unk is None else self.stoi[unk]
        self.pad_index: int | None = None if pad is None else self.stoi[pad]

    @classmethod
    def build(
        cls,
        items: Iterable[str],
        min_freq: int = 1,
        specials: bool = True,
        keep: Iterable[str] = (),
        order: str = "frequency",
    ) -> Vocabulary:
        """Build a vocabulary from a stream of strings.

        Args:
            items: the strings, with repetitions (their counts decide ``min_freq``).
            min_freq: keep strings seen at least this often.
            specials: start with ``"<pad>"`` (0) and ``"<unk>"`` (1).
            keep: strings kept even when rarer than ``min_freq`` (if seen at least once), e.g.
                words with a pretrained vector.
            order: ``"frequency"`` (most frequent first, ties alphabetical) or ``"sorted"``.
        """
        if min_freq < 1:
            raise ValueError(f"min_freq must be >= 1; got {min_freq}")
        if order not in ("frequency", "sorted"):
            raise ValueError(f"order must be 'frequency' or 'sorted'; got {order!r}")
        counts = Counter(items)
        keep = set(keep)
        kept = [s for s, n in counts.items() if n >= min_freq or s in keep]
        if order == "frequency":
            kept.sort(key=lambda s: (-counts[s], s))
        else:
            kept.sort()
        if specials:
            kept = [PAD, UNK, *(s for s in kept if s not in (PAD, UNK))]
            return cls(kept, unk=UNK, pad=PAD)
        return cls(kept)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, item: object) -> bool:
        return item in self.stoi

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Vocabulary)
            and self.itos == other.itos
            and self.unk == other.unk
            and self.pad == other.pad
        )

    def __repr__(self) -> str:
        return f"Vocabulary(size={len(self)}, unk={self.unk!r}, pad={self.pad!r})"

    def encode(self, items: Iterable[str]) -> list[int]:
        """Map strings to ids; unknown ones to ``unk_index`` (or ``ValueError`` without unk)."""
        stoi = self.stoi
        if self.unk_index is not None:
            unk = self.unk_index
            return [stoi.get(s, unk) for s in items]
        ids = []
        for s in items:
            index = stoi.get(s)
            if index is None:
                raise ValueError(f"{s!r} is not in the vocabulary (it has no unknown entry)")
            ids.append(index)
        return ids

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Map ids (ints or a 1-d tensor) back to strings."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        try:
            return [self.itos[i] for i in ids]
        except (IndexError, TypeError):
            bad = [i for i in ids if not isinstance(i, int) or not 0 <= i < len(self.itos)]
            raise ValueError(
                f"ids must be integers in [0, {len(self.itos)}); got {bad[:5]}"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        return {"itos": self.itos, "unk": self.unk, "pad": self.pad}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Vocabulary:
        return cls(data["itos"], unk=data.get("unk"), pad=data.get("pad"))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the vocabulary as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Vocabulary:
        """Read a vocabulary written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


span_tag_inventory = constraints.tag_inventory
"""All tags of a scheme for some span types (:func:`chaincrf.data.schemes.tag_inventory`)."""


class SentenceEncoder:
    """Turns tokens and labels into the id lists that batches are made of.

    Holds the word, character and tag vocabularies and the word options; ``save`` / ``load``
    round-trip all of it through one JSON file.

    Args:
        words: word vocabulary (with ``<pad>``/``<unk>``) over normalised words.
        chars: character vocabulary (with ``<pad>``/``<unk>``) over raw tokens.
        tags: tag vocabulary in the training scheme (no specials).
        scheme: the training scheme, or None when labels are not spans (e.g. UPOS).
        original_scheme: the scheme of the files, or None.
        lowercase: lowercase words before looking them up.
        digits_to_zero: replace every digit by 0 before looking words up.
        max_word_chars: characters kept per token (longer tokens are cut).
        features: one vocabulary (with ``<pad>``/``<unk>``) per feature column (e.g. the POS
            column of CoNLL-2000); empty for models that read tokens only.
        feature_columns: the columns those features were read from, kept so that prediction
            reads the same columns of its input (documentation only: nothing here reads files).
    """

    VERSION = 1

    def __init__(
        self,
        words: Vocabulary,
        chars: Vocabulary,
        tags: Vocabulary,
        scheme: str | None = None,
        original_scheme: str | None = None,
        lowercase: bool = False,
        digits_to_zero: bool = False,
        max_word_chars: int = 50,
        features: Sequence[Vocabulary] = (),
        feature_columns: Sequence[int | str] | None = None,
    ) -> None:
        if isinstance(max_word_chars, bool) or not isinstance(max_word_chars, int):
            raise TypeError(
                f"max_word_chars must be an int >= 1; got {type(max_word_chars).__name__} "
                f"{max_word_chars!r}"
            )
        if max_word_chars < 1:
            raise ValueError(f"max_word_chars must be >= 1; got {max_word_chars}")
        features = list(features)
        for i, vocab in enumerate(features):
            if not isinstance(vocab, Vocabulary) or vocab.unk_index is None:
                raise ValueError(
                    f"features[{i}] must be a Vocabulary with an <unk> entry; got {vocab!r}"
                )
        if feature_columns is not None and len(feature_columns) != len(features):
            raise ValueError(
                f"feature_columns must name one column per feature vocabulary ({len(features)}); "
                f"got {list(feature_columns)!r}"
            )
        self.words = words
        self.chars = chars
        self.tags = tags
        self.scheme = None if scheme is None else constraints.normalize_scheme(scheme)
        self.original_scheme = (
            None if original_scheme is None else constraints.normalize_scheme(original_scheme)
        )
        if (self.scheme is None) != (self.original_scheme is None):
            raise ValueError(
                "scheme and original_scheme must both be set (span labels) or both be None; "
                f"got scheme={scheme!r}, original_scheme={original_scheme!r}"
            )
        self.lowercase = lowercase
        self.digits_to_zero = digits_to_zero
        self.max_word_chars = max_word_chars
        self.features = features
        self.feature_columns = None if feature_columns is None else list(feature_columns)
        self._token_cache: dict[str, tuple[int, list[int], int]] = {}

    @property
    def vocabs(self) -> dict[str, Vocabulary]:
        vocabs = {"words": self.words, "chars": self.chars, "tags": self.tags}
        vocabs.update({f"feature{i}": vocab for i, vocab in enumerate(self.features)})
        return vocabs

    def normalize(self, token: str) -> str:
        return normalize_word(token, self.lowercase, self.digits_to_zero)

    @functools.cached_property
    def tag_scheme(self) -> constraints.TagScheme:
        """The tag set and its schemes (:class:`chaincrf.data.schemes.TagScheme`): ids to
        labels, conversion between the training and the original scheme, spans (built once:
        an encoder's tags and schemes are fixed at construction)."""
        return constraints.TagScheme(self.tags.itos, self.scheme, self.original_scheme)

    def to_training_scheme(self, labels: Sequence[str]) -> list[str]:
        """Convert one sentence's labels from the original to the training scheme."""
        return self.tag_scheme.to_training(labels)

    def to_original_scheme(self, labels: Sequence[str]) -> list[str]:
        """Convert one sentence's labels from the training scheme back to the original one."""
        return self.tag_scheme.to_original(labels)

    def decode_tags(self, ids: Iterable[int] | torch.Tensor, original: bool = True) -> list[str]:
        """Tag ids of one sentence (no padding) to labels, in the original scheme by default."""
        return self.tag_scheme.decode(ids, original)

    def encode_labels(self, labels: Sequence[str]) -> list[int]:
        """Original-scheme labels to training-scheme tag ids (``ValueError`` for unknown ones)."""
        return self.tags.encode(self.to_training_scheme(labels))

    def encode(
        self,
        tokens: Sequence[str],
        labels: Sequence[str] | None = None,
        features: Sequence[Sequence[str]] | None = None,
    ) -> dict[str, Any]:
        """Encode one sentence.

        Args:
            tokens: the words.
            labels: the labels (original scheme), or None.
            features: the feature-column values, one list of ``len(tokens)`` strings per feature
                vocabulary (unseen values encode to ``<unk>``); required when the encoder has
                feature vocabularies, ignored otherwise.

        Returns:
            ``{"words": list[int], "chars": list[list[int]], "casing": list[int]}``, plus
            ``"features": list[list[int]]`` (one list per feature column) when the encoder has
            feature vocabularies, and ``"tags": list[int]`` when ``labels`` are given.

        Raises:
            ValueError: for missing or misshapen features, or unknown labels.
        """
        cache = self._token_cache
        per_token = []
        for token in tokens:
            feature = cache.get(token)
            if feature is None:
                feature = (
                    self.words.encode([self.normalize(token)])[0],
                    self.chars.encode(token[: self.max_word_chars]),
                    casing_class(token),
                )
                if len(cache) < 1_000_000:
                    cache[token] = feature
            per_token.append(feature)
        example: dict[str, Any] = {
            "words": [f[0] for f in per_token],
            "chars": [f[1] for f in per_token],
            "casing": [f[2] for f in per_token],
        }
        if self.features:
            example["features"] = self.encode_features(features, len(tokens))
        if labels:
            example["tags"] = self.encode_labels(labels)
        return example

    def encode_features(
        self, features: Sequence[Sequence[str]] | None, length: int
    ) -> list[list[int]]:
        """Encode one sentence's feature-column values (see :meth:`encode`)."""
        if not features or len(features) != len(self.features):
            columns = f" (columns {self.feature_columns})" if self.feature_columns else ""
            got = 0 if not features else len(features)
            raise ValueError(
                f"this model reads {len(self.features)} feature column(s){columns} beside the "
                f"tokens; got {got} for a sentence of {length} tokens (give it column input, "
                "e.g. a CoNLL file with the training file's columns, not raw text)"
            )
        encoded = []
        for i, (vocab, values) in enumerate(zip(self.features, features)):
            if len(values) != length:
                raise ValueError(f"feature column {i} has {len(values)} values for {length} tokens")
            encoded.append(vocab.encode(values))
        return encoded

    def allowed_transitions(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The CRF constraints for the tag vocabulary, or None when labels are not spans."""
        if self.scheme is None:
            return None
        return constraints.allowed_transitions(self.scheme, self.tags.itos)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.VERSION,
            "words": self.words.to_dict(),
            "chars": self.chars.to_dict(),
            "tags": self.tags.to_dict(),
            "scheme": self.scheme,
            "original_scheme": self.original_scheme,
            "lowercase": self.lowercase,
            "digits_to_zero": self.digits_to_zero,
            "max_word_chars": self.max_word_chars,
            "features": [vocab.to_dict() for vocab in self.features],
            "feature_columns": self.feature_columns,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SentenceEncoder:
        if data.get("version") != cls.VERSION:
            raise ValueError(f"encoder version must be {cls.VERSION}; got {data.get('version')!r}")
        return cls(
            Vocabulary.from_dict(data["words"]),
            Vocabulary.from_dict(data["chars"]),
            Vocabulary.from_dict(data["tags"]),
            scheme=data["scheme"],
            original_scheme=data["original_scheme"],
            lowercase=data["lowercase"],
            digits_to_zero=data["digits_to_zero"],
            max_word_chars=data["max_word_chars"],
            features=[Vocabulary.from_dict(v) for v in data.get("features", [])],
            feature_columns=data.get("feature_columns"),
        )

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the encoder (vocabularies and options) as one JSON file, atomically (a reader, or
        a run folder whose resume fails, sees the old file or the new one)."""
        with atomic_file(path) as stream:
            stream.write(json.dumps(self.to_dict(), ensure_ascii=False))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SentenceEncoder:
        """Read an encoder written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
