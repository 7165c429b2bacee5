"""What a user does with a trained tagger besides training it: load it, save it, tag with it.

:class:`ServingMixin` gives :class:`~chaincrf.tagger.SequenceTagger` its inference API
(``SequenceTagger.load(path).predict(sentences)``) without making the training system do it:
each method hands over to the one module that does the job, model files to
:mod:`~chaincrf.predict.bundle` and :mod:`~chaincrf.predict.hub`, tagging to
:class:`~chaincrf.predict.predictor.Predictor`. It needs ``model`` (the network), ``tags`` (the
:class:`~chaincrf.data.schemes.TagScheme`) and ``vocab`` (the vocabularies as plain data).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from chaincrf.predict import bundle
from chaincrf.predict.outputs import TaggedSentence
from chaincrf.predict.predictor import Predictor

__all__ = ["ServingMixin"]


class ServingMixin:
    """Load, save and tag (see the module docstring)."""

    model: Any
    tags: Any
    vocab: dict[str, Any] | None

    @classmethod
    def load(
        cls,
        path: str | Path,
        map_location: str | torch.device = "cpu",
        allow_targets: Sequence[str] = (),
    ) -> Any:
        """Rebuild a trained tagger from a checkpoint, a bundle, or the name of an installed
        model package (``SequenceTagger.load("en_ewt_upos")``; :mod:`chaincrf.files.models`), as data
        (:func:`chaincrf.predict.bundle.load`: arguments, errors)."""
        return bundle.load(cls, path, map_location, allow_targets)

    def save_bundle(self, directory: str | Path) -> Path:
        """Write the tagger as a bundle directory (:func:`chaincrf.predict.bundle.save`)."""
        return bundle.save(self, directory)

    def save_pretrained(
        self, folder: str | Path, card: str | None = None, metadata: Mapping[str, Any] | None = None
    ) -> Path:
        """Write the tagger in the Hugging Face Hub layout, a bundle with a model card
        (:func:`chaincrf.predict.hub.save_pretrained`: arguments)."""
        from chaincrf.predict import hub

        return hub.save_pretrained(self, folder, card, metadata)

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | Path,
        revision: str | None = None,
        map_location: str | torch.device = "cpu",
        allow_targets: Sequence[str] = (),
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
    ) -> Any:
        """Load a folder written by :meth:`save_pretrained`, or a Hugging Face Hub repository
        id (the ``hub`` extra) (:func:`chaincrf.predict.hub.from_pretrained`: arguments,
        errors)."""
        from chaincrf.predict import hub

        return hub.from_pretrained(
            cls, path_or_repo_id, revision, map_location, allow_targets, cache_dir, local_files_only
        )

    @property
    def predictor(self) -> Predictor:
        """The :class:`~chaincrf.predict.predictor.Predictor` over this tagger's network, tags
        and vocabularies (a new one when the vocabularies were replaced)."""
        cached = self.__dict__.get("_predictor")
        precision = getattr(self, "trained_precision", None)
        if cached is None or cached.vocab is not self.vocab:
            cached = self.__dict__["_predictor"] = Predictor(self.model, self.tags, self.vocab)
        cached.precision = precision  # (the training precision, as the tagger holds it now)
        return cached

    def predict(
        self,
        sentences: Sequence[str] | Sequence[Sequence[str]] | Sequence[Any],
        batch_size: int = 128,
        top_k: int = 1,
    ) -> list[TaggedSentence]:
        """Tag sentences, results in input order (:meth:`Predictor.predict`; ``top_k`` > 1
        adds the k best taggings with their probabilities)."""
        return self.predictor.predict(sentences, batch_size, top_k=top_k)

    def predict_iter(
        self,
        sentences: Iterable[str] | Iterable[Sequence[str]] | Iterable[Any],
        batch_size: int = 128,
        chunk_size: int = 2048,
        top_k: int = 1,
    ) -> Iterator[TaggedSentence]:
        """Tag a stream lazily, in bounded memory (:meth:`Predictor.predict_iter`)."""
        return self.predictor.predict_iter(sentences, batch_size, chunk_size, top_k=top_k)

    def encode(
        self,
        token_lists: Sequence[Sequence[str]],
        feature_lists: Sequence[Sequence[Sequence[str]] | None] | None = None,
    ) -> dict[str, Any]:
        """A batch of token lists, as in training (:meth:`Predictor.encode`)."""
        return self.predictor.encode(token_lists, feature_lists)

    @property
    def sentence_encoder(self) -> Any:
        """The :class:`chaincrf.data.vocab.SentenceEncoder` of the stored vocabularies."""
        return self.predictor.sentence_encoder
