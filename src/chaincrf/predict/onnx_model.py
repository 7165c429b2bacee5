"""An exported ``model.onnx`` checked, opened and run, every failure one line naming the file:
the :class:`~chaincrf.predict.onnx_predictor.OnnxPredictor`'s access to onnxruntime (no torch).

:func:`check_model` reads the graph with the ``onnx`` package when it is installed, before
onnxruntime sees the file: every tensor stored as external data must name a file inside the
model's folder, and the embeddings' and the projection's sizes are returned for the
vocabularies to be checked against. Without ``onnx``, onnxruntime's own refusal of external
data outside the folder is reported as one line by :func:`open_session`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from chaincrf.files.model_checks import ModelFileError, confined

__all__ = ["INPUTS", "check_model", "check_signature", "open_session", "run_session"]

ROWS = {
    "words": ("embedder.word_embedding.weight", "word_embedding.weight"),
    "chars": ("embedder.chars.embedding.weight", "chars.embedding.weight"),
}
"""Initializers of an exported tagger whose first dimension bounds a vocabulary's ids: today's
name, then the name in models exported before 2026-12-05 (the embedder's graph had no name)."""
TAG_COUNT = "projection.bias"
"""Initializer of an exported tagger holding one number per tag."""
INPUTS = ("words", "chars", "casing", "mask", "features")
"""The inputs an exported tagger may take (``features``: feature-column models only)."""
OUTPUTS = 2
"""An exported tagger's outputs: the tags, then their confidences."""


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _tensors(graph: Any) -> Iterator[Any]:
    """Every TensorProto of an ONNX graph and its subgraphs (initializers, sparse ones,
    constant attributes)."""
    graphs = [graph]
    while graphs:
        g = graphs.pop()
        yield from g.initializer
        for sparse in g.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        for node in g.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
                for sparse in [*attribute.sparse_tensors] + (
                    [attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else []
                ):
                    yield sparse.values
                    yield sparse.indices
                if attribute.HasField("g"):
                    graphs.append(attribute.g)
                graphs.extend(attribute.graphs)


def check_model(path: Path, num_tags: int) -> dict[str, int | None]:
    """Check ``path`` (an exported ``model.onnx``) before onnxruntime reads it.

    Args:
        path: the model file, inside its model folder.
        num_tags: the number of labels ``tagger.json`` names.

    Returns:
        The rows of the ``"words"`` and ``"chars"`` embeddings (None where unknown: no ``onnx``
        package, or a graph without those initializers).

    Raises:
        ModelFileError: naming the file, when it is not an ONNX model, when a tensor's external
            data lies outside the folder, or when its projection does not give ``num_tags``
            scores.
    """
    rows: dict[str, int | None] = dict.fromkeys(ROWS)
    if importlib.util.find_spec("onnx") is None:
        return rows
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf's DecodeError and the like: not an ONNX model
        raise ModelFileError(f"{path}: not a readable ONNX model: {_first_line(error)}") from None
    for tensor in _tensors(proto.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {entry.key: entry.value for entry in tensor.external_data}
        confined(path.parent, entries.get("location"), str(path),
                 f"the external data of tensor {tensor.name!r}")  # fmt: skip
    initializers = {t.name: list(t.dims) for t in proto.graph.initializer}
    for name, candidates in ROWS.items():
        dims = next((initializers[c] for c in candidates if c in initializers), None)
        rows[name] = dims[0] if dims else None
    dims = initializers.get(TAG_COUNT)
    if dims and dims[0] != num_tags:
        raise ModelFileError(
            f"{path}: the model scores {dims[0]} tags ({TAG_COUNT} has shape {dims}), but "
            f"tagger.json's labels name {num_tags}"
        )
    return rows


def _runtime_errors() -> tuple[type[BaseException], ...]:
    """onnxruntime's exception classes (none derives from RuntimeError) and Python's own."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    own = [v for v in vars(state).values() if isinstance(v, type) and issubclass(v, Exception)]
    return (*own, RuntimeError, ValueError, OSError)


def open_session(path: Path, threads: int | None) -> Any:
    """An onnxruntime CPU session of ``path``.

    Raises:
        ImportError: when onnxruntime is not installed.
        ModelFileError: naming the file, when onnxruntime cannot load it (truncated, empty,
            foreign, an unknown operator, external data it refuses).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except _runtime_errors() as error:
        raise ModelFileError(f"{path}: onnxruntime cannot load it: {_first_line(error)}") from None


def check_signature(session: Any, path: Path) -> list[str]:
    """The input names of ``session`` (of ``path``), checked against what an exported tagger
    takes and gives: a foreign ONNX model is refused before it is run.

    Returns:
        The session's input names, in its order.

    Raises:
        ModelFileError: naming the file, the unknown inputs or the outputs it lacks.
    """
    names = [value.name for value in session.get_inputs()]
    unknown = [name for name in names if name not in INPUTS]
    outputs = [value.name for value in session.get_outputs()]
    if unknown or "words" not in names or len(outputs) < OUTPUTS:
        raise ModelFileError(
            f"{path}: not a chaincrf tagger: it takes {names} and gives {outputs}; an exported "
            f"tagger takes {list(INPUTS[:4])} (and 'features') and gives tags and confidences "
            "(export one with `chaincrf-export ... format=onnx`)"
        )
    return names


def run_session(session: Any, path: Path, inputs: Mapping[str, Any]) -> list[Any]:
    """``session.run`` for all outputs.

    Raises:
        ModelFileError: naming the model file, when onnxruntime fails running it.
    """
    try:
        return session.run(None, dict(inputs))
    except _runtime_errors() as error:
        raise ModelFileError(
            f"{path}: onnxruntime failed running it: {_first_line(error)}"
        ) from None
