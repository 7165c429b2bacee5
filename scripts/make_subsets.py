"""Fixed random subsets of a corpus's training file, for learning curves over training-set size.

    CHAINCRF_DATA=../shared/data python scripts/make_subsets.py --data conll2003 \
        --sizes 1000 3500 --seed 1 --out benchmarks/subsets

writes ``benchmarks/subsets/conll2003_1000_seed1.json`` (and ``_3500_``): the seed, the size,
the training file's name, sentence count and sha256, and the sorted indices of the chosen
sentences (no text: the corpus itself is never copied). Train on one with
``chaincrf-train experiment=... data.train_subset=benchmarks/subsets/conll2003_3500_seed1.json``;
dev and test stay whole. The same arguments give the same indices on any machine.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hydra import compose, initialize_config_dir

from chaincrf.cli.common import CONFIG_DIR, build
from chaincrf.data.subsets import describe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="a data config (conf/data/<name>.yaml)")
    parser.add_argument("--sizes", type=int, nargs="+", required=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/subsets"))
    parser.add_argument("overrides", nargs="*", help="more data overrides, e.g. data.root=...")
    args = parser.parse_args()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"data={args.data}", *args.overrides, "run_dir=."])
    datamodule = build(cfg.data, "data")
    datamodule.prepare_data()
    source = datamodule.resolve("train")
    total = len(datamodule.read_split("train"))
    args.out.mkdir(parents=True, exist_ok=True)
    for size in args.sizes:
        path = args.out / f"{args.data}_{size}_seed{args.seed}.json"
        path.write_text(json.dumps(describe(source, total, size, args.seed)) + "\n")
        print(f"{path}: {size} of {total} sentences of {source.name}, seed {args.seed}")


if __name__ == "__main__":
    main()
