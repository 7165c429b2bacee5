"""Tagging with an exported ONNX artefact: onnxruntime and numpy, no torch.

``chaincrf-export ... format=onnx`` (or :func:`chaincrf.tagger.export.export_model`) writes a
folder with ``model.onnx`` (the whole tagger: embeddings, encoder, projection, constrained
Viterbi and marginals), ``vocab.json`` and ``tagger.json``. :class:`OnnxPredictor` reads it and
tags as :class:`~chaincrf.tagger.predictor.Predictor` does — the same tokenizers, chunks,
length-sorted batches, input order and output records — importing onnxruntime, numpy, the
tokenizer and chaincrf's torch-free modules (vocabularies, tag schemes, outputs) only::

    from chaincrf.tagger.onnx_predictor import OnnxPredictor

    predictor = OnnxPredictor("exported/ner")
    for tagged in predictor.predict(["EU rejects German call to boycott British lamb."]):
        print(tagged.tags, tagged.spans)

Tags equal the PyTorch tagger's, and each token's confidence is its tag's marginal as there;
a span's confidence is the product of its tokens' marginals (the PyTorch predictor computes
the exact span probability, which needs a constrained forward pass the graph does not hold),
and ``top_k`` alternatives are not available.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from chaincrf.constraints import TagScheme
from chaincrf.tagger.outputs import TaggedSentence
from chaincrf.tagger.streaming import StreamPredictor

__all__ = ["ARTEFACT_FORMAT", "OnnxPredictor", "is_artefact"]

ARTEFACT_FORMAT = "chaincrf-artefact-1"
"""``format`` in an artefact's ``tagger.json``."""


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (not an exported tagger folder?)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not readable JSON: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def is_artefact(path: str | Path, engine: str = "onnx") -> bool:
    """Whether ``path`` is a folder exported for ``engine`` (its ``tagger.json`` says so)."""
    meta = Path(path) / "tagger.json"
    if not meta.is_file():
        return False
    try:
        return _read_json(meta).get("engine") == engine
    except ValueError:
        return False


class OnnxPredictor(StreamPredictor):
    """Tag with ``model.onnx`` of an exported folder (see the module docstring).

    Args:
        folder: the folder ``chaincrf-export format=onnx`` wrote.
        tokenizer: for raw strings: ``"spacy"`` or ``"whitespace"``.
        threads: onnxruntime's intra-op threads (None: its default, all cores).

    Raises:
        FileNotFoundError: naming a missing file.
        ValueError: naming the file, for one that is not what the exporter writes.
        ImportError: when onnxruntime is not installed (``pip install chaincrf[export]``).
    """

    def __init__(self, folder: str | Path, tokenizer: str = "spacy", threads: int | None = None):
        folder = Path(folder)
        meta = _read_json(folder / "tagger.json")
        if meta.get("format") != ARTEFACT_FORMAT or meta.get("engine") != "onnx":
            raise ValueError(
                f"{folder / 'tagger.json'}: not an ONNX tagger artefact (format "
                f"{meta.get('format')!r}, engine {meta.get('engine')!r}; expected "
                f"{ARTEFACT_FORMAT!r}, 'onnx')"
            )
        vocab = _read_json(folder / "vocab.json")
        try:
            tags = TagScheme(meta["labels"], meta["scheme"], meta["original_scheme"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{folder / 'tagger.json'}: bad tag set: {error}") from None
        super().__init__(tags, vocab, tokenizer)
        try:
            self.sentence_encoder  # noqa: B018 - checks the vocabularies now
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{folder / 'vocab.json'}: bad vocabularies: {error}") from None
        model = folder / str(meta.get("model", "model.onnx"))
        if not model.is_file():
            raise FileNotFoundError(f"{model}: missing")
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        self.input_names = [value.name for value in self.session.get_inputs()]

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
            ``words``, ``casing`` int64 (B, T), ``chars`` int64 (B, T, C), ``mask`` bool (B, T)
            and, for feature-column models, ``features`` int64 (B, T, F).

        Raises:
            ValueError: naming the sentence, when a feature-column model gets no features.
        """
        encoder = self.sentence_encoder
        items = self.encode_ids(token_lists, feature_lists)
        B = len(items)
        T = max(len(item["words"]) for item in items)
        C = max(max(len(ids) for ids in item["chars"]) for item in items)
        arrays = {
            "words": np.zeros((B, T), np.int64),
            "chars": np.zeros((B, T, max(C, 1)), np.int64),
            "casing": np.zeros((B, T), np.int64),
            "mask": np.zeros((B, T), np.bool_),
        }
        if encoder.features:
            arrays["features"] = np.zeros((B, T, len(encoder.features)), np.int64)
        for row, item in enumerate(items):
            n = len(item["words"])
            arrays["words"][row, :n] = item["words"]
            arrays["casing"][row, :n] = item["casing"]
            arrays["mask"][row, :n] = True
            chars = arrays["chars"][row]
            for t, ids in enumerate(item["chars"]):
                chars[t, : len(ids)] = ids
            if "features" in arrays:
                arrays["features"][row, :n] = np.asarray(item["features"], np.int64).T
        return arrays

    def tag_tokens(
        self, token_lists: list[list[str]], feature_lists: list[Any], top_k: int
    ) -> list[TaggedSentence]:
        """Tag one batch of non-empty token lists with the ONNX model."""
        self.check_top_k(top_k)
        arrays = self.encode(token_lists, feature_lists)
        tags, confidences = self.session.run(
            None, {name: arrays[name] for name in self.input_names}
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
