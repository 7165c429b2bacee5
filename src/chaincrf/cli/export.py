"""``chaincrf-export``: a checkpoint as a self-contained bundle of plain files, and optionally
the whole tagger as one TorchScript or ONNX graph for serving.

Examples::

    chaincrf-export ckpt_path=outputs/train/<run>/checkpoints/best.ckpt output=exported/ner
    chaincrf-export ckpt_path=... output=exported/ner-onnx format=onnx
    chaincrf-export ckpt_path=... output=exported/ner-ts format=torchscript

writes ``exported/ner/`` with

- ``weights.pt``: the model's ``state_dict`` (tensors only; ``torch.load(..., weights_only=True)``);
- ``config.json``: the tagger's hyper-parameters (plain JSON: labels, sizes, module specs);
- ``vocab.json``: the vocabularies and word options (plain JSON).

``SequenceTagger.load(bundle_dir)`` rebuilds the tagger from them; nothing is pickled. With
``format=onnx`` or ``format=torchscript`` the folder also holds ``model.onnx`` (run by
:class:`chaincrf.tagger.onnx_predictor.OnnxPredictor` with onnxruntime and numpy, or
``chaincrf-predict ckpt_path=<folder>``) or ``model.pt`` (``torch.jit.load``), and
``tagger.json`` (inputs, outputs, tag names and schemes): see :mod:`chaincrf.tagger.export`.
The folder is written into a temporary folder and renamed when complete. A Hydra CLI like the
others (``conf/export.yaml``).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from chaincrf.cli.common import allow_targets, hydra_main, require, run_cli
from chaincrf.data.download import creation_mode
from chaincrf.model_files import check_local_path
from chaincrf.tagger import SequenceTagger

log = logging.getLogger("chaincrf.export")

FORMATS = ("bundle", "torchscript", "onnx")


def export(
    checkpoint: str | Path,
    out_dir: str | Path,
    allow_targets: Sequence[str] = (),
    fmt: str = "bundle",
    quantize: str | None = None,
) -> Path:
    """Write the bundle of ``checkpoint`` into ``out_dir`` (replaced if it exists).

    Args:
        checkpoint: a ``.ckpt`` written by training (or a bundle, to copy it).
        out_dir: the bundle folder to write.
        allow_targets: ``_target_`` names to trust beyond chaincrf's own (see
            :meth:`SequenceTagger.load`).
        fmt: ``"bundle"``, or ``"onnx"`` / ``"torchscript"`` for the bundle plus the graph
            (:func:`chaincrf.tagger.export.export_model`).
        quantize: None, or ``"int8"`` with ``fmt="onnx"``: int8 dynamic quantisation of the
            encoder and projection.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        OSError: naming the folder, when it cannot be written.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}; got {fmt!r}")
    if quantize not in (None, "int8") or (quantize is not None and fmt != "onnx"):
        raise ValueError(f"quantize must be null or int8 (with format=onnx); got {quantize!r}")
    tagger = SequenceTagger.load(checkpoint, allow_targets=allow_targets)
    out_dir = Path(out_dir)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    except OSError as error:
        raise OSError(
            error.errno, f"cannot write the bundle {out_dir}: {error.strerror or error}"
        ) from None
    try:
        tagger.save_bundle(tmp)
        if fmt != "bundle":
            from chaincrf.tagger.bundle import load_predictor
            from chaincrf.tagger.export import export_model

            export_model(load_predictor(tmp), tmp, fmt, quantize)
        tmp.chmod(creation_mode(directory=True))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def export_command(cfg: DictConfig) -> Path:
    """``chaincrf-export``: the bundle of ``cfg.ckpt_path`` written to ``cfg.output``."""
    ckpt = check_local_path(
        require(cfg, "ckpt_path", "pass ckpt_path=<path to a .ckpt>"), "ckpt_path"
    )
    output = require(cfg, "output", "pass output=<bundle directory to write>")
    path = export(
        ckpt,
        output,
        allow_targets=allow_targets(cfg),
        fmt=str(cfg.get("format")),
        quantize=cfg.get("quantize"),
    )
    log.info("wrote %s", path)
    return path


@hydra_main("export")
def main(cfg: DictConfig) -> None:
    """Entry point of ``chaincrf-export``."""
    run_cli(export_command, cfg)


if __name__ == "__main__":
    main()
