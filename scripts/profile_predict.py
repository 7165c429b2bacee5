"""The host's share of ``SequenceTagger.predict``: a tiny network (random weights, a few
thousand parameters: its arithmetic is small), CoNLL-2003 dev, profiled with cProfile.

On a GPU the arithmetic is fast and the host's Python per sentence (encoding, spans,
confidences, the result records) bounds prediction; this measures that part on any machine.
Prints tokens/s of two unprofiled passes, then the profiled pass's time outside torch's and
numpy's operations and the CRF's kernels ("Python-side"), and its 25 costliest functions.

Usage::

    CHAINCRF_DATA=../shared/data python scripts/profile_predict.py --batch-size 1024
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import data_root
from chaincrf.cli.train import build_datamodule, build_tagger
from chaincrf.data.readers import read_columns

CONF = Path(__file__).resolve().parents[1] / "conf"
TINY = ["embeddings.word_dim=16", "embeddings.char_dim=8", "embeddings.char_hidden=8",
        "encoder.hidden_size=16"]  # fmt: skip
NOT_PYTHON = ("/torch/", "structure.py", "/kernels/")


def python_side(stats: pstats.Stats) -> float:
    """Seconds spent in Python functions (not torch's or numpy's built-ins, not the kernels)."""
    total = 0.0
    for (filename, _, name), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        builtin = filename == "~" and any(k in name for k in ("torch", "numpy", "TensorBase"))
        if not builtin and not any(part in filename for part in NOT_PYTHON):
            total += tottime
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data-root", default=None, help="default: $CHAINCRF_DATA or ../shared/data"
    )
    parser.add_argument("--batch-size", type=int, default=1024)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    corpus = data_root(args.data_root) / "conll2003"
    data = [
        f"data.train={corpus / 'eng.train'}",
        f"data.dev={corpus / 'eng.testa'}",
        "data.test=null",
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=conll2003_ner", *data, *TINY])
    datamodule = build_datamodule(cfg.data)
    tagger = build_tagger(cfg, datamodule).eval()
    sentences = [s.tokens for s in read_columns(corpus / "eng.testa")]
    tokens = sum(map(len, sentences))
    tagger.predict(sentences[:2000], batch_size=args.batch_size)  # warm-up
    for _ in range(2):
        start = time.perf_counter()
        tagger.predict(sentences, batch_size=args.batch_size)
        seconds = time.perf_counter() - start
        print(f"{tokens} tokens, {len(sentences)} sentences, batches of {args.batch_size}: "
              f"{seconds * 1e3:.0f} ms, {tokens / seconds:,.0f} tokens/s")  # fmt: skip
    profile = cProfile.Profile()
    profile.enable()
    tagger.predict(sentences, batch_size=args.batch_size)
    profile.disable()
    stats = pstats.Stats(profile)
    print(
        f"Python-side: {python_side(stats) * 1e3:.0f} ms of {stats.total_tt * 1e3:.0f} ms profiled"
    )  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
