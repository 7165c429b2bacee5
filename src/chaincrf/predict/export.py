"""The whole tagger as one graph: TorchScript and ONNX artefacts for serving.

:class:`ExportableTagger` holds a trained :class:`~chaincrf.network.model.TaggerModel`'s
weights (shared, not copied) and computes, from padded id tensors, what the predictor does:
word (and adapter), character (CNN or BiLSTM), casing and feature-column embeddings, the
encoder, the projection and the CRF's constrained Viterbi decode with each chosen tag's
marginal probability. Its code is written for graphs: no host synchronisation, no packed
sequences, no data-dependent shapes (every token of the padded batch is encoded, padding
masked out after); the LSTMs run as padded single-direction calls, the backward direction over
each row reversed within its length, which is exact (see
:class:`~chaincrf.network.encoders.bilstm.BiLSTMEncoder`). The CRF runs its export kernel (a loop under
TorchScript, a ``scan`` under torch.export and ONNX).

Inputs (batch B, length T, characters C, feature columns F; all dynamic)::

    words (B, T) int64, chars (B, T, C) int64, casing (B, T) int64, mask (B, T) bool
    [features (B, T, F) int64, for models trained with feature columns]

Outputs: ``tags`` (B, T) int64 (training-scheme tag ids, -1 off the mask) and ``confidences``
(B, T) float32 (the marginal probability of each chosen tag, 0 off the mask).

:func:`export_model` writes an artefact folder: ``model.pt`` (TorchScript) or ``model.onnx``,
with ``vocab.json`` (the vocabularies) and ``tagger.json`` (format, inputs, tag names and
schemes) beside it; :class:`chaincrf.onnx_predictor.OnnxPredictor` runs the ONNX one with
onnxruntime and numpy only.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from chaincrf.crf import plan
from chaincrf.network.encoders.bilstm import reverse_index
from chaincrf.predict.onnx_predictor import ARTEFACT_FORMAT

if TYPE_CHECKING:
    from chaincrf.predict.predictor import Predictor

__all__ = ["ARTEFACT_FORMAT", "FORMATS", "ExportableTagger", "export_model", "graph_inputs"]

FORMATS = ("torchscript", "onnx")

ONNX_OPSET = 18


class _CRFHead(nn.Module):
    """Constrained Viterbi and each chosen tag's marginal."""

    def __init__(self, crf: nn.Module) -> None:
        super().__init__()
        self.crf = crf

    def forward(self, emissions: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        paths, _ = self.crf.viterbi(emissions, mask)
        return paths, self.crf.marginals(emissions, mask)


class _SoftmaxHead(nn.Module):
    """Per-token argmax and softmax (a tagger trained without a CRF)."""

    def forward(self, emissions: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        paths = emissions.argmax(-1).masked_fill(~mask, -1)
        return paths, torch.softmax(emissions.float(), -1) * mask.unsqueeze(-1).float()


class ExportableTagger(nn.Module):
    """A trained network as one graph from id tensors to tags (see the module docstring).

    Each part brings its own graph: the embedder's and the encoder's ``export_graph()`` (the
    :class:`~chaincrf.network.embeddings.TokenEmbedder` with any character encoder, casing, feature
    columns and word adapter; the ``bilstm``, ``cnn`` and ``identity`` encoders), the CRF's
    export kernel or the softmax.

    Args:
        model: the trained :class:`~chaincrf.network.model.TaggerModel` (its weights are
            shared).

    Raises:
        ValueError: naming the part that cannot be exported (e.g. a pretrained-transformer
            encoder, which needs the token strings).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        parts = (("embedder", model.embedder, "TokenEmbedder"),
                 ("encoder", model.encoder, "bilstm, cnn, identity"))  # fmt: skip
        for role, module, supported in parts:
            if not callable(getattr(module, "export_graph", None)):
                raise ValueError(
                    f"the {type(module).__name__} {role} cannot be exported (supported: "
                    f"{supported})"
                )
        self.embedder = model.embedder.export_graph()
        self.encoder = model.encoder.export_graph()
        self.num_features: int = self.embedder.num_features
        self.projection = model.projection
        self.head = _CRFHead(model.crf) if model.crf is not None else _SoftmaxHead()
        self.eval()

    def forward(
        self,
        words: Tensor,
        chars: Tensor,
        casing: Tensor,
        mask: Tensor,
        features: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Tag a padded batch (see the module docstring).

        Returns:
            ``(tags (B, T) int64, confidences (B, T) float32)``.
        """
        emissions = self.emissions(words, chars, casing, mask, features)
        paths, marginals = self.head(emissions, mask)
        chosen = marginals.gather(2, paths.clamp(min=0).unsqueeze(2)).squeeze(2)
        return paths, torch.where(mask, chosen, torch.zeros_like(chosen)).float()

    def emissions(
        self,
        words: Tensor,
        chars: Tensor,
        casing: Tensor,
        mask: Tensor,
        features: Tensor | None = None,
    ) -> Tensor:
        """Per-token tag scores (B, T, K), as ``TaggerModel.emissions`` in eval mode."""
        x = self.embedder(words, chars, casing, mask, features)  # (B, T, D)
        x = self.encoder(x, mask, reverse_index(mask.sum(1), words.shape[1]))
        return self.projection(x)


def graph_inputs(batch: dict[str, Any], num_features: int) -> tuple[Tensor, ...]:
    """The artefact's inputs from a collated batch (:func:`chaincrf.data.batching.collate`)."""
    inputs = (batch["words"], batch["chars"], batch["casing"], batch["mask"])
    if num_features:
        return (*inputs, batch["features"])
    return inputs


def _example(num_features: int) -> tuple[Tensor, ...]:
    """A small batch of two rows of different lengths (the exporters trace with it)."""
    B, T, C = 2, 5, 4
    words = torch.full((B, T), 2, dtype=torch.long)
    chars = torch.full((B, T, C), 2, dtype=torch.long)
    chars[:, :, 3] = 0
    casing = torch.ones(B, T, dtype=torch.long)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    inputs = (words, chars, casing, mask)
    if num_features:
        return (*inputs, torch.full((B, T, num_features), 2, dtype=torch.long))
    return inputs


QUANTIZE = (None, "int8")
"""``quantize`` choices: none, or int8 dynamic quantisation of the ONNX model's encoder and
projection (onnxruntime's ``quantize_dynamic`` on its LSTM and MatMul nodes: int8 weights,
activations quantised per call)."""


def export_model(
    predictor: Predictor, out_dir: str | Path, fmt: str = "onnx", quantize: str | None = None
) -> Path:
    """Write the artefact folder of a predictor's network (see the module docstring).

    Args:
        predictor: a :class:`~chaincrf.predict.predictor.Predictor` (e.g. from
            :func:`chaincrf.predict.bundle.load_predictor`) with its vocabularies.
        out_dir: the folder to write into (created; files of the same names are replaced).
        fmt: ``"torchscript"`` (``model.pt``, ``torch.jit.load``) or ``"onnx"``
            (``model.onnx``, opset 18, for onnxruntime).
        quantize: None, or ``"int8"`` (ONNX only): the LSTMs and matrix products with int8
            weights (:data:`QUANTIZE`), for faster CPU prediction.

    Returns:
        The path of the model file.

    Raises:
        ValueError: for an unknown ``fmt``, a predictor without vocabularies, or a network
            that cannot be exported (naming the part).
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}; got {fmt!r}")
    if quantize not in QUANTIZE or (quantize is not None and fmt != "onnx"):
        raise ValueError(
            f"quantize must be one of {QUANTIZE} (int8: format onnx); got {quantize!r}"
        )
    if predictor.vocab is None:
        raise ValueError("the predictor has no vocabularies: load it from a trained model file")
    graph = ExportableTagger(predictor.model.cpu())
    num_features = graph.num_features
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = ["words", "chars", "casing", "mask"] + (["features"] if num_features else [])
    with torch.no_grad():
        if fmt == "torchscript":
            path = out_dir / "model.pt"
            torch.jit.save(torch.jit.script(graph), str(path))
        else:
            path = out_dir / "model.onnx"
            _export_onnx(graph, path, names, num_features)
            if quantize == "int8":
                _quantize_int8(path)
    tags = predictor.tags
    meta = {
        "format": ARTEFACT_FORMAT,
        "model": path.name,
        "engine": fmt,
        "quantize": quantize,
        "inputs": names,
        "outputs": ["tags", "confidences"],
        "labels": list(tags.labels),
        "scheme": tags.scheme,
        "original_scheme": tags.original,
    }
    (out_dir / "tagger.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    (out_dir / "vocab.json").write_text(
        json.dumps(dict(predictor.vocab), ensure_ascii=False), encoding="utf-8"
    )
    return path


def _export_onnx(graph: ExportableTagger, path: Path, names: list[str], num_features: int) -> None:
    """``torch.onnx.export`` (the torch.export-based exporter) with dynamic batch, length and
    characters per token."""
    from torch.export import Dim

    batch, length, width = Dim("batch", min=1), Dim("length", min=1), Dim("chars", min=1)
    shapes: list[dict[int, Any]] = [
        {0: batch, 1: length},
        {0: batch, 1: length, 2: width},
        {0: batch, 1: length},
        {0: batch, 1: length},
    ]
    if num_features:
        shapes.append({0: batch, 1: length})
    # torch's LSTM decomposition into a while loop keeps the length dynamic. torch 2.13's
    # exporter swaps it in for the call by itself, 2.11's does not (the length came out fixed):
    # it is registered here too (each registration restores what it found). The operator's
    # dispatch cache keeps the old decomposition's entry, so that a second export in a process
    # fixed the length (torch 2.13, measured): emptying the cache first makes every export see
    # the swap.
    from torch.export._patches import register_lstm_while_loop_decomposition

    for op in (torch.ops.aten.lstm.input, torch.ops.aten.lstm.data):
        getattr(op, "_dispatch_cache", {}).clear()
    with (
        warnings.catch_warnings(),  # the exporter's notes: not ours
        plan.exporting(),
        register_lstm_while_loop_decomposition(),
    ):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            graph,
            _example(num_features),
            str(path),
            input_names=names,
            output_names=["tags", "confidences"],
            dynamic_shapes=tuple(shapes),
            opset_version=ONNX_OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    fixed = [
        (value.name, axis)
        for value in program.model_proto.graph.input
        for axis, dim in enumerate(value.type.tensor_type.shape.dim)
        if axis < 2 and not dim.dim_param
    ]
    if fixed:  # a model that takes one batch shape only: not what was asked for
        path.unlink(missing_ok=True)
        raise RuntimeError(f"the ONNX exporter fixed dynamic axes (input, axis): {fixed}")


def _quantize_int8(path: Path) -> None:
    """Replace the ONNX model at ``path`` by its int8 dynamic quantisation (LSTM and MatMul
    nodes: the encoder and the projection; the character CNN, embeddings and CRF stay float)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # the float model moves to a temporary file of its own (never over a file of the folder's)
    handle, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".float.onnx", dir=path.parent)
    os.close(handle)
    float_path = Path(name)
    try:
        os.replace(path, float_path)
        quantize_dynamic(
            float_path, path, weight_type=QuantType.QInt8, op_types_to_quantize=["LSTM", "MatMul"]
        )
    finally:
        float_path.unlink(missing_ok=True)
