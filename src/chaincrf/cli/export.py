"""``chaincrf-export``: a checkpoint as a self-contained bundle of plain files.

Example::

    chaincrf-export ckpt_path=outputs/train/<run>/checkpoints/best.ckpt output=exported/ner

writes ``exported/ner/`` with

- ``weights.pt``: the model's ``state_dict`` (tensors only; ``torch.load(..., weights_only=True)``);
- ``config.json``: the tagger's hyper-parameters (plain JSON: labels, sizes, module specs);
- ``vocab.json``: the vocabularies and word options (plain JSON).

``SequenceTagger.load(bundle_dir)`` rebuilds the tagger from them; nothing is pickled. The bundle
is written into a temporary folder and renamed when complete. A Hydra CLI like the others
(``conf/export.yaml``).
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


def export(checkpoint: str | Path, out_dir: str | Path, allow_targets: Sequence[str] = ()) -> Path:
    """Write the bundle of ``checkpoint`` into ``out_dir`` (replaced if it exists).

    Args:
        checkpoint: a ``.ckpt`` written by training (or a bundle, to copy it).
        out_dir: the bundle folder to write.
        allow_targets: ``_target_`` names to trust beyond chaincrf's own (see
            :meth:`SequenceTagger.load`).

    Returns:
        ``out_dir`` as a Path.

    Raises:
        OSError: naming the folder, when it cannot be written.
    """
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
    path = export(ckpt, output, allow_targets=allow_targets(cfg))
    log.info("wrote %s", path)
    return path


@hydra_main("export")
def main(cfg: DictConfig) -> None:
    """Entry point of ``chaincrf-export``."""
    run_cli(export_command, cfg)


if __name__ == "__main__":
    main()
