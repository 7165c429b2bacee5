"""Training throughput of 1 process against N data-parallel processes (torchrun, gloo on the CPU
or NCCL on GPUs), one after the other in the same script, and what N does to the dev score.

    CHAINCRF_DATA=../shared/data python scripts/bench_scaling.py --epochs 5 --procs 1 2 \
        -- experiment=conll2003_ner_glove

Each configuration is a real ``chaincrf-train`` run (torchrun for N > 1, ``trainer=torchrun``);
the table gives training tokens/s over all processes (fit, dev evaluation and checkpointing
included: ``metrics.json``'s ``train_tokens_per_s``), the ratio to 1 process and the best dev
score after the same number of epochs. Each process has one intra-op thread. The runs are whole
trainings one after the other, not timed side by side; the machine report
(``scripts/benchtools.py``) heads the table and the JSON (``{"machine": ..., "runs": [...]}``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchtools: a sibling
import benchtools


def run(procs: int, epochs: int, overrides: list[str], out: Path, port: int) -> dict:
    folder = out / f"procs{procs}"
    command = [sys.executable, "-m", "chaincrf.cli.train"]
    if procs > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1",
                   f"--nproc_per_node={procs}", f"--master_port={port}", "-m",
                   "chaincrf.cli.train", "trainer=torchrun"]  # fmt: skip
    command += [*overrides, f"trainer.max_epochs={epochs}", "test=false", "report=false",
                "trainer.enable_progress_bar=false",
                "threads=1", f"task_name=procs{procs}"]  # fmt: skip
    env = {**os.environ, "CHAINCRF_OUTPUT": str(out), "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    [metrics_file] = (folder).glob("*/metrics.json")
    metrics = json.loads(metrics_file.read_text())
    return {"procs": procs, "wall_s": wall, **metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--out", type=Path, default=None, help="run folders (default: temporary)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("overrides", nargs="*", help="chaincrf-train overrides")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="chaincrf-scaling-"))
    results = [run(p, args.epochs, args.overrides, out, 29600 + p) for p in args.procs]
    base = results[0]["train_tokens_per_s"]
    machine = benchtools.machine(__file__)
    print(benchtools.machine_line(machine))
    print(f"{' '.join(args.overrides)}, {args.epochs} epochs; run folders in {out}")
    print("| processes | train tokens/s | ratio | fit s | dev score |")
    print("|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['procs']} | {r['train_tokens_per_s']:,.0f} | "
            f"{r['train_tokens_per_s'] / base:.2f}x | {r['fit_seconds']:.0f} | "
            f"{100 * r['val/score']:.2f} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "runs": results}, indent=2))


if __name__ == "__main__":
    main()
