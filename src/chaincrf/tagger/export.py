"""The whole tagger as one graph: TorchScript and ONNX artefacts for serving.

:class:`ExportableTagger` holds a trained :class:`~chaincrf.tagger.network.TaggerModel`'s
weights (shared, not copied) and computes, from padded id tensors, what the predictor does:
word (and adapter), character (CNN or BiLSTM), casing and feature-column embeddings, the
encoder, the projection and the CRF's constrained Viterbi decode with each chosen tag's
marginal probability. Its code is written for graphs: no host synchronisation, no packed
sequences, no data-dependent shapes (every token of the padded batch is encoded, padding
masked out after); the LSTMs run as padded single-direction calls, the backward direction over
each row reversed within its length, which is exact (see
:class:`~chaincrf.encoders.bilstm.BiLSTMEncoder`). The CRF runs its export kernel (a loop under
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
from chaincrf.embeddings import PAD_ID, TokenEmbedder, _CharCNN, _CharLSTM
from chaincrf.encoders.bilstm import reverse_index, reversed_rows
from chaincrf.tagger.onnx_predictor import ARTEFACT_FORMAT

assert PAD_ID == 0, "the graph writes the padding id as the literal 0 (TorchScript)"

if TYPE_CHECKING:
    from chaincrf.tagger.predictor import Predictor

__all__ = ["ARTEFACT_FORMAT", "FORMATS", "ExportableTagger", "export_model", "graph_inputs"]

FORMATS = ("torchscript", "onnx")

ONNX_OPSET = 18


def _one_direction(lstm: nn.LSTM, layer: int, reverse: bool) -> nn.LSTM:
    """A single-direction, single-layer ``nn.LSTM`` holding (sharing) one direction of one
    layer of ``lstm``."""
    suffix = "_reverse" if reverse else ""
    in_size = lstm.input_size if layer == 0 else 2 * lstm.hidden_size
    single = nn.LSTM(in_size, lstm.hidden_size, batch_first=True)
    for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        setattr(single, f"{name}_l0", getattr(lstm, f"{name}_l{layer}{suffix}"))
    single.flatten_parameters()
    return single


class _BiLSTMGraph(nn.Module):
    """A bidirectional (stacked) LSTM as padded single-direction calls: exact over ragged
    batches without packing."""

    def __init__(self, lstm: nn.LSTM) -> None:
        super().__init__()
        if not lstm.bidirectional or not lstm.batch_first:
            raise ValueError("the BiLSTM to export must be bidirectional and batch-first")
        self.forwards = nn.ModuleList(
            _one_direction(lstm, layer, False) for layer in range(lstm.num_layers)
        )
        self.backwards = nn.ModuleList(
            _one_direction(lstm, layer, True) for layer in range(lstm.num_layers)
        )

    def forward(self, x: Tensor, mask: Tensor, index: Tensor) -> Tensor:
        """``x`` (B, T, D) -> (B, T, 2H), zero off the mask; ``index`` reverses rows within
        their lengths."""
        for forward, backward in zip(self.forwards, self.backwards):
            ahead, _ = forward(x)
            behind, _ = backward(reversed_rows(x, index))
            x = torch.cat([ahead, reversed_rows(behind, index)], dim=2)
        return torch.where(mask.unsqueeze(2), x, torch.zeros_like(x))


class _CharCNNGraph(nn.Module):
    """The character CNN over every token of the padded batch (N = B * T tokens)."""

    def __init__(self, encoder: _CharCNN) -> None:
        super().__init__()
        self.embedding = encoder.embedding
        self.conv = encoder.conv

    def forward(self, chars: Tensor) -> Tensor:
        """``chars`` (N, C) ids, 0-padded -> (N, filters): max over each token's characters."""
        C = chars.shape[1]
        lengths = (chars != 0).sum(1).clamp(min=1)  # (N,)
        conv = self.conv(self.embedding(chars).transpose(1, 2))  # (N, F, C)
        real = torch.arange(C, device=chars.device).unsqueeze(0) < lengths.unsqueeze(1)
        return conv.masked_fill(~real.unsqueeze(1), float("-inf")).amax(2)


class _CharLSTMGraph(nn.Module):
    """The character BiLSTM over every token of the padded batch: each direction's state at
    the token's last character (the backward one run over the reversed characters)."""

    def __init__(self, encoder: _CharLSTM) -> None:
        super().__init__()
        self.embedding = encoder.embedding
        self.ahead = _one_direction(encoder.lstm, 0, False)
        self.behind = _one_direction(encoder.lstm, 0, True)

    def forward(self, chars: Tensor) -> Tensor:
        """``chars`` (N, C) ids, 0-padded -> (N, 2H)."""
        N, C = chars.shape
        lengths = (chars != 0).sum(1).clamp(min=1)  # (N,)
        embedded = self.embedding(chars)  # (N, C, E)
        ahead, _ = self.ahead(embedded)  # (N, C, H)
        behind, _ = self.behind(reversed_rows(embedded, reverse_index(lengths, C)))
        last = (lengths - 1).view(N, 1, 1).expand(N, 1, ahead.shape[2])
        return torch.cat([ahead.gather(1, last).squeeze(1), behind.gather(1, last).squeeze(1)], 1)


class _CNNEncoderGraph(nn.Module):
    """The dilated CNN encoder (its own forward holds no host synchronisation)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.projection = encoder.projection
        self.convolutions = encoder.convolutions

    def forward(self, x: Tensor, mask: Tensor, index: Tensor) -> Tensor:
        keep = mask.unsqueeze(1).to(x.dtype)  # (B, 1, T)
        hidden = self.projection(x).transpose(1, 2) * keep  # (B, H, T)
        for convolution in self.convolutions:
            hidden = (hidden + torch.relu(convolution(hidden))) * keep
        return hidden.transpose(1, 2)


class _IdentityGraph(nn.Module):
    def forward(self, x: Tensor, mask: Tensor, index: Tensor) -> Tensor:
        return x


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

    Args:
        model: the trained :class:`~chaincrf.tagger.network.TaggerModel` (its weights are
            shared). Supported: the :class:`~chaincrf.embeddings.TokenEmbedder` (any
            character encoder, casing, feature columns, word adapter) and the ``bilstm``,
            ``cnn`` and ``identity`` encoders, with a CRF or the softmax output.

    Raises:
        ValueError: naming the part that cannot be exported (e.g. a pretrained-transformer
            encoder, which needs the token strings).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        from chaincrf.encoders.bilstm import BiLSTMEncoder
        from chaincrf.encoders.cnn import CNNEncoder
        from chaincrf.encoders.identity import IdentityEncoder

        embedder = model.embedder
        if not isinstance(embedder, TokenEmbedder):
            raise ValueError(
                f"only the TokenEmbedder can be exported; got {type(embedder).__name__}"
            )
        self.word_embedding = embedder.word_embedding
        self.has_adapter = embedder.word_map is not None and embedder.word_residual is not None
        self.word_map = embedder.word_map if self.has_adapter else nn.Identity()
        self.word_residual = embedder.word_residual if self.has_adapter else nn.Identity()
        chars = embedder.char_encoder
        self.has_chars = chars is not None
        self.chars = (
            _CharCNNGraph(chars)
            if isinstance(chars, _CharCNN)
            else _CharLSTMGraph(chars)
            if isinstance(chars, _CharLSTM)
            else nn.Identity()
        )
        self.has_casing = embedder.casing_embedding is not None
        self.casing_embedding = embedder.casing_embedding or nn.Identity()
        self.feature_embeddings = embedder.feature_embeddings
        self.num_features: int = len(embedder.feature_embeddings)

        encoder = model.encoder
        if isinstance(encoder, BiLSTMEncoder):
            self.encoder: nn.Module = _BiLSTMGraph(encoder.lstm)
        elif isinstance(encoder, CNNEncoder):
            self.encoder = _CNNEncoderGraph(encoder)
        elif isinstance(encoder, IdentityEncoder):
            self.encoder = _IdentityGraph()
        else:
            raise ValueError(
                f"the {type(encoder).__name__} encoder cannot be exported (supported: bilstm, "
                "cnn, identity)"
            )
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
        B, T = words.shape
        keep = mask.unsqueeze(2)
        words = words.masked_fill(~mask, 0)
        feats = self.word_embedding(words)
        if self.has_adapter:
            feats = self.word_map(feats) + self.word_residual(words)
        parts = [feats]
        if self.has_chars:
            encoded = self.chars(chars.reshape(B * T, chars.shape[2])).reshape(B, T, -1)
            parts.append(torch.where(keep, encoded, torch.zeros_like(encoded)))
        if self.has_casing:
            parts.append(self.casing_embedding(casing.masked_fill(~mask, 0)))
        if features is not None:
            columns = features.masked_fill(~keep, 0)
            for k, embedding in enumerate(self.feature_embeddings):
                parts.append(embedding(columns[:, :, k]))
        x = torch.cat(parts, dim=2) * keep.to(feats.dtype)
        x = self.encoder(x, mask, reverse_index(mask.sum(1), T))
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
        predictor: a :class:`~chaincrf.tagger.predictor.Predictor` (e.g. from
            :func:`chaincrf.tagger.bundle.load_predictor`) with its vocabularies.
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
    # The exporter swaps in an LSTM decomposition that keeps the length dynamic (a while loop)
    # for the call and restores the old one after, but the operator's dispatch cache keeps the
    # old one's entry: a second export in a process then fixes the length (torch 2.13,
    # measured). Emptying the cache first makes every export see the swap.
    for op in (torch.ops.aten.lstm.input, torch.ops.aten.lstm.data):
        getattr(op, "_dispatch_cache", {}).clear()
    with warnings.catch_warnings(), plan.exporting():  # the exporter's notes: not ours
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
