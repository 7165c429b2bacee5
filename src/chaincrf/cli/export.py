"""``chaincrf-export``: a checkpoint as a self-contained bundle of plain files.

Example::

    chaincrf-export outputs/train/<run>/checkpoints/best.ckpt exported/ner

writes ``exported/ner/`` with

- ``weights.pt``: the model's ``state_dict`` (tensors only; ``torch.load(..., weights_only=True)``);
- ``config.json``: the tagger's hyper-parameters (plain JSON: labels, sizes, module specs);
- ``vocab.json``: the vocabularies and word options (plain JSON).

``SequenceTagger.load(bundle_dir)`` rebuilds the tagger from them; nothing is pickled. The bundle
is written into a temporary folder and renamed when complete. No Hydra here: plain ``argparse``.

There is deliberately no TorchScript export: tracing bakes the batch's sentence and word lengths
into the graph (packed LSTM, character widths), so a traced tagger gives wrong scores on other
batches, and ``torch.jit`` is deprecated in favour of ``torch.export``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from chaincrf.data.download import creation_mode
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``chaincrf-export``."""
    parser = argparse.ArgumentParser(prog="chaincrf-export", description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="a .ckpt written by chaincrf-train")
    parser.add_argument("out_dir", help="the bundle directory to write (replaced if it exists)")
    parser.add_argument(
        "--allow-target",
        action="append",
        default=[],
        metavar="NAME",
        help="trust this _target_ of the checkpoint beyond chaincrf's own classes (it will be "
        "imported and called with arguments from the file: only for files you trust); repeatable",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        path = export(args.checkpoint, args.out_dir, allow_targets=args.allow_target)
    except (ValueError, OSError) as error:
        if os.environ.get("CHAINCRF_TRACEBACK") == "1":
            raise
        log.error("chaincrf-export: %s: %s", type(error).__name__, error)
        return 1
    log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
