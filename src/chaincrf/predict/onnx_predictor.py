"""Tagging with an exported ONNX artefact: onnxruntime and numpy, no torch.

``chaincrf-export ... format=onnx`` (or :func:`chaincrf.predict.export.export_model`) writes a
folder with ``model.onnx`` (the whole tagger: embeddings, encoder, projection, constrained
Viterbi and marginals), ``vocab.json`` and ``tagger.json``. :class:`OnnxPredictor` reads it and
tags as :class:`~chaincrf.predict.predictor.Predictor` does — the same tokenizers, chunks,
length-sorted batches, input order and output records — importing onnxruntime, numpy, the
tokenizer and chaincrf's torch-free modules (vocabularies, tag schemes, outputs) only::

    from chaincrf.predict.onnx_predictor import OnnxPredictor

    predictor = OnnxPredictor("exported/ner")
    for tagged in predictor.predict(["EU rejects German call to boycott British lamb."]):
        print(tagged.tags, tagged.spans)

Tags equal the PyTorch tagger's, and each token's confidence is its tag's marginal as there;
a span's confidence is the product of its tokens' marginals (the PyTorch predictor computes
the exact span probability, which needs a constrained forward pass the graph does not hold),
and ``top_k`` alternatives are not available.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from chaincrf.data.layout import pad
from chaincrf.data.schemes import TagScheme
from chaincrf.files.model_checks import (
    ModelFileError,
    check_labels,
    check_optional_str,
    check_vocab,
    check_vocab_fits,
    confined,
    read_json,
)
from chaincrf.predict.onnx_model import check_model, check_signature, open_session, run_session
from chaincrf.predict.outputs import TaggedSentence
from chaincrf.predict.streaming import StreamPredictor

__all__ = ["ARTEFACT_FORMAT", "OnnxPredictor", "is_artefact"]

ARTEFACT_FORMAT = "chaincrf-artefact-1"
"""``format`` in an artefact's ``tagger.json``."""


def is_artefact(path: str | Path, engine: str = "onnx") -> bool:
    """Whether ``path`` is a folder exported for ``engine`` (its ``tagger.json`` says so).

    Raises:
        ModelFileError: naming the file, when ``tagger.json`` exists but cannot be read or is
            not a JSON object with a string ``engine``: a broken export is an error, never a
            reason to try another engine.
    """
    meta = Path(path) / "tagger.json"
    if not meta.exists() and not meta.is_symlink():
        return False  # a folder, a link or anything else there is read (and refused if broken)
    data = read_json(meta)
    if not isinstance(data, dict):
        raise ModelFileError(f"{meta}: must be a JSON object; got {type(data).__name__}")
    found = data.get("engine")
    if not isinstance(found, str):
        raise ModelFileError(f"{meta}: engine must be a string; got {found!r}")
    return found == engine


def _check_meta(meta: Any, source: str) -> dict[str, Any]:
    """``tagger.json`` with every field's type checked."""
    if not isinstance(meta, dict):
        raise ModelFileError(f"{source}: must be a JSON object; got {type(meta).__name__}")
    if meta.get("format") != ARTEFACT_FORMAT or meta.get("engine") != "onnx":
        raise ModelFileError(
            f"{source}: not an ONNX tagger artefact (format {meta.get('format')!r}, engine "
            f"{meta.get('engine')!r}; expected {ARTEFACT_FORMAT!r}, 'onnx')"
        )
    check_labels(meta.get("labels"), source, "labels")
    for name in ("scheme", "original_scheme", "quantize"):
        check_optional_str(meta.get(name), source, name)
    for name in ("inputs", "outputs"):
        value = meta.get(name, [])
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise ModelFileError(f"{source}: {name} must be a list of strings; got {value!r}")
    return meta


class OnnxPredictor(StreamPredictor):
    """Tag with ``model.onnx`` of an exported folder (see the module docstring).

    Args:
        folder: the folder ``chaincrf-export format=onnx`` wrote.
        tokenizer: for raw strings: ``"spacy"`` or ``"whitespace"``.
        threads: onnxruntime's intra-op threads (None: its default, all cores).

    Every file is checked before onnxruntime reads the model (:mod:`chaincrf.files.model_checks`,
    :func:`chaincrf.predict.onnx_model.check_model`): the paths stay inside ``folder``, every
    field has its type, the labels are distinct, and the vocabularies fit the model's
    embeddings and tag count.

    Raises:
        FileNotFoundError: naming a missing file.
        chaincrf.files.model_checks.ModelFileError: (a ``ValueError``) naming the file and field, for
            one that is not what the exporter writes, a path leading outside ``folder``, or a
            model onnxruntime cannot load or run.
        ImportError: when onnxruntime is not installed (``pip install chaincrf[export]``).
    """

    def __init__(self, folder: str | Path, tokenizer: str = "spacy", threads: int | None = None):
        folder = Path(folder)
        meta_path, vocab_path = folder / "tagger.json", folder / "vocab.json"
        meta = _check_meta(read_json(meta_path), str(meta_path))
        vocab = check_vocab(read_json(confined(folder, "vocab.json", str(vocab_path), "the file")),
                            str(vocab_path))  # fmt: skip
        model = confined(folder, meta.get("model", "model.onnx"), str(meta_path), "model")
        if not model.is_file():
            raise FileNotFoundError(f"{model}: missing (named by {meta_path}'s model)")
        try:
            tags = TagScheme(meta["labels"], meta["scheme"], meta["original_scheme"])
        except (KeyError, TypeError, ValueError) as error:
            raise ModelFileError(f"{meta_path}: bad tag set: {error}") from None
        rows = check_model(model, len(tags.labels))  # before onnxruntime reads it
        check_vocab_fits(vocab, str(vocab_path), tags.labels, rows, str(model))
        super().__init__(tags, vocab, tokenizer)
        try:
            self.sentence_encoder  # noqa: B018 - checks the vocabularies now
        except (KeyError, TypeError, ValueError) as error:
            raise ModelFileError(f"{vocab_path}: bad vocabularies: {error}") from None
        self.model_path = model
        self.session = open_session(model, threads)
        self.input_names = check_signature(self.session, model)

    def check_top_k(self, top_k: int) -> None:
        if top_k > 1:
            raise ValueError(
                f"the ONNX artefact gives the best tagging only; got top_k={top_k!r} (use the "
                "PyTorch predictor for alternatives: engine=torch)"
            )

    def encode(
        self,
        token_lists: Sequence[Sequence[str]],
        feature_lists: Sequence[Any] | None = None,
    ) -> dict[str, np.ndarray]:
        """The model's inputs for a batch of non-empty token lists (ids as in training).

        Returns:
            :func:`chaincrf.data.layout.pad`'s arrays, the layout training batches have:
            ``words``, ``casing`` int64 (B, T), ``chars`` int64 (B, T, C), ``mask`` bool (B, T)
            and, for feature-column models, ``features`` int64 (B, T, F).

        Raises:
            ValueError: naming the sentence, when a feature-column model gets no features.
        """
        return pad(self.encode_ids(token_lists, feature_lists))

    def tag_tokens(
        self, token_lists: list[list[str]], feature_lists: list[Any], top_k: int
    ) -> list[TaggedSentence]:
        """Tag one batch of non-empty token lists with the ONNX model."""
        self.check_top_k(top_k)
        arrays = self.encode(token_lists, feature_lists)
        tags, confidences = run_session(
            self.session, self.model_path, {name: arrays[name] for name in self.input_names}
        )
        chosen_ids = tags[arrays["mask"]]
        if chosen_ids.size and not 0 <= chosen_ids.min() <= chosen_ids.max() < len(
            self.tags.labels
        ):
            raise ModelFileError(
                f"{self.model_path}: the model gave tag ids outside [0, {len(self.tags.labels)}) "
                f"(the labels of tagger.json): {int(chosen_ids.min())}..{int(chosen_ids.max())}"
            )
        out = []
        for row, tokens in enumerate(token_lists):
            n = len(tokens)
            chosen = confidences[row, :n].astype(np.float64)
            train_tags = self.tags.decode(tags[row, :n].tolist())
            spans = self.tags.spans(train_tags)
            products = [round(float(np.prod(chosen[start:end])), 6) for _, start, end in spans]
            out.append(self.tagged(tokens, train_tags, chosen, spans, products))
        return out
