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
:class:`chaincrf.predict.onnx_predictor.OnnxPredictor` with onnxruntime and numpy, or
``chaincrf-predict ckpt_path=<folder>``) or ``model.pt`` (``torch.jit.load``), and
``tagger.json`` (inputs, outputs, tag names and schemes): see :mod:`chaincrf.predict.export`.
The folder is written into a temporary folder and renamed when complete, with a manifest
(``.chaincrf-export.json``) naming the files written. An existing ``output`` is used only when it
is empty or holds nothing but the files its manifest names (a previous export, then replaced);
any other folder (a run folder, the working directory, a folder of your own files) is refused,
and nothing in it is touched. A Hydra CLI like the others (``conf/export.yaml``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from chaincrf.atomic import creation_mode, deferred_signals
from chaincrf.cli.common import allow_targets, hydra_main, require, run_cli
from chaincrf.extras import require as require_extra
from chaincrf.files.model_files import check_local_path
from chaincrf.tagger import SequenceTagger

log = logging.getLogger("chaincrf.export")

FORMATS = ("bundle", "torchscript", "onnx")

MANIFEST = ".chaincrf-export.json"
"""The file in every export folder that lists the files the export wrote: only those (and the
manifest) are ever deleted when the folder is exported into again."""


def export(
    checkpoint: str | Path,
    out_dir: str | Path,
    allow_targets: Sequence[str] = (),
    fmt: str = "bundle",
    quantize: str | None = None,
) -> Path:
    """Write the bundle of ``checkpoint`` into ``out_dir``, a new folder, an empty one, or the
    folder of a previous export (replaced).

    The files are written into a temporary folder beside ``out_dir``, listed in its manifest
    (:data:`MANIFEST`) and renamed to ``out_dir`` when complete. A previous export's folder is
    moved aside first and only the files its manifest lists are deleted from it.

    Args:
        checkpoint: a ``.ckpt`` written by training (or a bundle, to copy it).
        out_dir: the bundle folder to write.
        allow_targets: ``_target_`` names to trust beyond chaincrf's own (see
            :meth:`SequenceTagger.load`).
        fmt: ``"bundle"``, or ``"onnx"`` / ``"torchscript"`` for the bundle plus the graph
            (:func:`chaincrf.predict.export.export_model`).
        quantize: None, or ``"int8"`` with ``fmt="onnx"``: int8 dynamic quantisation of the
            encoder and projection.

    Returns:
        ``out_dir`` as a Path.

    Raises:
        FileExistsError: naming the folder, when ``out_dir`` exists and holds anything that its
            manifest does not list (nothing in it is touched), or is not a folder.
        OSError: naming the folder, when it cannot be written.
        MissingExtra: (an ``ImportError``) for ``fmt="onnx"`` without the ``export`` extra.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}; got {fmt!r}")
    if quantize not in (None, "int8") or (quantize is not None and fmt != "onnx"):
        raise ValueError(f"quantize must be null or int8 (with format=onnx); got {quantize!r}")
    if fmt == "onnx":  # torch.onnx's exporter imports them; missing: one line naming the extra
        feature = "chaincrf-export format=onnx" + (f" quantize={quantize}" if quantize else "")
        for module in ("onnx", "onnxscript", *(["onnxruntime"] if quantize else [])):
            require_extra(module, "export", feature)
    out_dir = Path(out_dir)
    target = Path(os.path.realpath(out_dir))  # a link to a folder: the folder it names
    _previous_export(target, out_dir)  # refused before the model is even loaded
    tagger = SequenceTagger.load(checkpoint, allow_targets=allow_targets)
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with deferred_signals():  # an interrupt cannot fall between creating and naming it
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as error:
        raise OSError(
            error.errno, f"cannot write the bundle {out_dir}: {error.strerror or error}"
        ) from None
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        tagger.save_bundle(tmp)
        if fmt != "bundle":
            from chaincrf.predict.bundle import load_predictor
            from chaincrf.predict.export import export_model

            export_model(load_predictor(tmp), tmp, fmt, quantize)
        written = sorted(p.name for p in tmp.iterdir())
        assert not any((tmp / name).is_dir() for name in written), written  # flat, as listed
        (tmp / MANIFEST).write_text(
            json.dumps({"format": "chaincrf-export", "files": written}, indent=2) + "\n",
            encoding="utf-8",
        )
        tmp.chmod(creation_mode(directory=True))
        _put_in_place(tmp, target, _previous_export(target, out_dir))
    except BaseException:
        with deferred_signals():  # a second interrupt waits for the removal
            shutil.rmtree(tmp, ignore_errors=True)  # the temporary folder this call made
        raise
    return out_dir


def _previous_export(folder: Path, shown: str | Path | None = None) -> list[str] | None:
    """What an export may replace in ``folder``: None when it does not exist, else the names in
    it, all written by a previous export (its manifest and the files it lists; none for an
    empty folder).

    Args:
        folder: the export folder.
        shown: how to name the folder in messages (default ``folder``).

    Raises:
        FileExistsError: naming the folder and the fix, when it is not a folder, or holds an
            entry its manifest (:data:`MANIFEST`) does not list.
    """
    shown = folder if shown is None else shown
    if not os.path.lexists(folder):
        return None
    if not folder.is_dir():
        raise FileExistsError(
            f"cannot export into {shown}: it exists and is not a folder; "
            "choose a new or empty folder for output"
        )
    names = sorted(os.listdir(folder))
    listed = _manifest_files(folder / MANIFEST)
    foreign = [
        name
        for name in names
        if name != MANIFEST and (name not in listed or (folder / name).is_dir())
    ]
    if foreign:
        shown_names = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise FileExistsError(
            f"cannot export into {shown}: it holds {len(foreign)} "
            f"{'entry' if len(foreign) == 1 else 'entries'} that no export wrote "
            f"({shown_names}); nothing was changed; choose a new or empty folder for output"
        )
    return names


def _manifest_files(path: Path) -> set[str]:
    """The file names an export's manifest lists (none when it is missing or not one)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    if not isinstance(data, dict) or data.get("format") != "chaincrf-export":
        return set()
    files = data.get("files")
    if not isinstance(files, list):
        return set()
    return {f for f in files if isinstance(f, str) and f and f == Path(f).name and f != ".."}


def _put_in_place(tmp: Path, target: Path, previous: list[str] | None) -> None:
    """Rename the finished folder ``tmp`` to ``target``; a previous export there (``previous``:
    its manifest and listed files) is moved aside first, and only those names are deleted."""
    if not previous:  # absent, or an empty folder (which a rename replaces)
        os.replace(tmp, target)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
    os.replace(target, aside)  # onto the empty folder just made
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(aside, target)
        raise
    for name in previous:
        entry = aside / name
        if entry.is_symlink() or entry.is_file():  # a link itself, never what it points to
            entry.unlink()
    try:
        aside.rmdir()
    except OSError:  # something arrived meanwhile: kept, never deleted
        log.warning("kept %s: it holds files the previous export did not write", aside)


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
