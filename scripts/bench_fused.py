"""Benchmark the fused numba CRF kernels (chaincrf.crf_fused) against pytorch-crf and the eager
chaincrf CRF on the CPU.

Every library gets identical float32 inputs (emissions, gold tags, a left-aligned mask with
lengths uniform in [T/2, T] and the first row full, and the same transition parameters). Before
any timing each cell is cross-checked: negative log-likelihoods agree to 1e-4 (relative), so do
the emission and transition gradients and the scores of the decoded paths; a disagreement exits
non-zero. Timing is ``scripts/benchtools.py``'s: a warm-up, then repetitions in which every
entry runs, in orders that cycle through all permutations of the entries; the median is
reported.

Workloads:
    nll+backward  summed negative log-likelihood, then ``backward()`` into the emissions and the
                  three transition parameters. pytorch-crf: ``-crf(em, tags, mask).backward()``;
                  eager: ``CRF.nll(em, tags, mask).backward()``; fused: ``crf_fused.log_partition``
                  minus the gold-path score computed with plain torch ops.
    decode        best paths: pytorch-crf ``decode`` (lists), eager ``CRF.viterbi`` and fused
                  ``crf_fused.viterbi`` (tensors).

Example::

    OMP_WAIT_POLICY=PASSIVE nice python3 scripts/bench_fused.py             # the full grid
    python3 scripts/bench_fused.py --batch 1 32 --length 32 --tags 5 --reps 5
    python3 scripts/bench_fused.py --first-call     # numba compile: cold, then from the cache

``--first-call`` runs two fresh processes sharing a new, empty ``NUMBA_CACHE_DIR``: the first
compiles every kernel (cold), the second loads them from the cache (warm). Each times numba's
import and the first call of every op, float64 then float32 (``marginals`` shares the backward
kernel); torch's own first-call cost of custom ops (importing ``torch._dynamo``) is timed apart.

``--tuning`` measures the fused kernels' thresholds (``chaincrf.crf.plan.FUSED``): the layer
with the fused kernels forced, each size with its rows split over the torch threads and not
(``split_min_btkk*``), and the emissions' exp by one compiled loop against torch's
(``numba_exp_max_btk``); the two settings of each pair are timed side by side (benchtools),
medians.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchtools: a sibling
import benchtools

WORKLOADS = ("nll+backward", "decode")
KERNEL_ENTRIES = ("eager", "fused", "auto")  # CRF(kernel=...)


def make_inputs(B: int, T: int, K: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random float32 inputs for one cell (emissions (B, T, K), tags and mask (B, T), lengths (B,),
    start and end (K,), transitions (K, K) indexed [from, to])."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + B * 10_007 + T * 101 + K)
    lengths = torch.randint(max(1, T // 2), T + 1, (B,), generator=gen)
    lengths[0] = T
    return {
        "emissions": torch.randn(B, T, K, generator=gen),
        "tags": torch.randint(0, K, (B, T), generator=gen),
        "mask": torch.arange(T)[None, :] < lengths[:, None],
        "lengths": lengths,
        "start": torch.randn(K, generator=gen) * 0.5,
        "end": torch.randn(K, generator=gen) * 0.5,
        "transitions": torch.randn(K, K, generator=gen) * 0.5,
    }


def gold_score(em, tags, mask, lengths, start, trans, end) -> torch.Tensor:
    """Score (B,) of the gold paths with plain torch ops; rows have length >= 1."""
    emit = em.gather(2, tags.unsqueeze(2)).squeeze(2).masked_fill(~mask, 0.0).sum(1)
    pair = trans[tags[:, :-1], tags[:, 1:]].masked_fill(~mask[:, 1:], 0.0).sum(1)
    last = tags.gather(1, (lengths - 1).unsqueeze(1)).squeeze(1)
    return emit + pair + start[tags[:, 0]] + end[last]


def path_scores(paths: torch.Tensor, x: dict[str, torch.Tensor]) -> torch.Tensor:
    """float64 score (B,) of paths (B, T) (-1 past each length) under the cell's parameters."""
    tags = paths.clamp(min=0)
    args = [x["emissions"].double(), tags, x["mask"], x["lengths"]]
    return gold_score(*args, x["start"].double(), x["transitions"].double(), x["end"].double())


def make_entries(x: dict[str, torch.Tensor], workload: str) -> dict[str, Callable]:
    """The timed callables of one cell, each returning what the cross-check compares."""
    import torchcrf

    from chaincrf import CRF

    K = x["emissions"].shape[2]
    em, tags, mask = x["emissions"], x["tags"], x["mask"]
    models = {"pytorch-crf": torchcrf.CRF(K, batch_first=True)}
    for kernel in KERNEL_ENTRIES:
        models[kernel] = CRF(K, batch_first=True, kernel=kernel)
    for model in models.values():
        with torch.no_grad():
            model.start_transitions.copy_(x["start"])
            model.transitions.copy_(x["transitions"])
            model.end_transitions.copy_(x["end"])
    leaf = em.clone().requires_grad_(True)

    def backward_of(name: str) -> Callable:
        model = models[name]
        params = (model.start_transitions, model.transitions, model.end_transitions)

        def run():
            for p in (leaf, *params):
                p.grad = None
            if name == "pytorch-crf":
                value = -model(leaf, tags, mask, reduction="sum")
            else:
                value = model.nll(leaf, tags, mask, reduction="sum")
            value.backward()
            return value.detach(), leaf.grad, *(p.grad for p in params)

        return run

    def decode_of(name: str) -> Callable:
        def run():
            with torch.no_grad():
                return models[name].decode(em, mask)

        return run

    make = backward_of if workload == "nll+backward" else decode_of
    return {name: make(name) for name in models}


def planner_choice(x: dict[str, torch.Tensor], workload: str) -> str:
    """The kernel ``auto`` runs for this cell's workload."""
    from chaincrf import CRF
    from chaincrf.crf import plan as crf_plan

    K = x["emissions"].shape[2]
    crf = CRF(K, batch_first=True)
    with crf_plan.record() as ran:
        if workload == "nll+backward":
            crf.nll(x["emissions"].clone().requires_grad_(True), x["tags"], x["mask"]).backward()
        else:
            with torch.no_grad():
                crf.decode(x["emissions"], x["mask"])
    return "+".join(sorted({kernel for _, kernel in ran}))


def cross_check(x: dict[str, torch.Tensor], workload: str, outs: dict[str, object]) -> str:
    """Raises SystemExit on a disagreement beyond 1e-4; returns a note (differing paths)."""
    if workload == "nll+backward":
        ref = outs["pytorch-crf"]
        for name in KERNEL_ENTRIES:
            for what, a, b in zip(("nll", "d_em", "d_start", "d_trans", "d_end"), outs[name], ref):
                if not torch.allclose(a, b, rtol=1e-4, atol=1e-4 * max(1.0, float(b.abs().max()))):
                    sys.exit(f"{name} disagrees with pytorch-crf on {what}: {(a - b).abs().max()}")
        return ""
    B, T, _ = x["emissions"].shape

    def as_tensor(lists: list[list[int]]) -> torch.Tensor:
        out = torch.full((B, T), -1, dtype=torch.long)
        for b, path in enumerate(lists):
            out[b, : len(path)] = torch.tensor(path, dtype=torch.long)
        return out

    ref = as_tensor(outs["pytorch-crf"])
    ref_scores = path_scores(ref, x)
    differing = 0
    for name in KERNEL_ENTRIES:
        paths = as_tensor(outs[name])
        if not torch.allclose(path_scores(paths, x), ref_scores, rtol=1e-4, atol=1e-4):
            sys.exit(f"{name} decodes worse or better paths than pytorch-crf")
        differing += int((paths != ref).any(1).sum())
    return f"{differing} row(s) differ on float32 near-ties" if differing else ""


def time_cell(entries: dict[str, Callable], args: argparse.Namespace) -> dict[str, float]:
    """Median seconds per call of each entry (benchtools.time_entries): at least 24
    repetitions (every order of the four entries once) unless ``--reps`` is fewer, more while
    ``--budget`` lasts."""
    times = benchtools.time_entries(
        entries,
        warmup=args.warmup,
        min_reps=min(24, args.reps),
        max_reps=args.reps,
        budget_s=args.budget / len(entries),
    )
    return {name: t["median_s"] for name, t in times.items()}


def markdown(workload: str, rows: list[tuple]) -> str:
    lines = [
        f"### {workload} (median ms; speed-ups over pytorch-crf)",
        "",
        "| B | T | K | pytorch-crf | eager | fused | auto | planner | eager × | fused × "
        "| auto × | auto ÷ best kernel | note |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|",
    ]
    for (B, T, K), t, choice, note in rows:
        ms = {k: v * 1e3 for k, v in t.items()}
        x = {k: t["pytorch-crf"] / t[k] for k in KERNEL_ENTRIES}
        best = min(t["eager"], t["fused"])
        lines.append(
            f"| {B} | {T} | {K} | {ms['pytorch-crf']:.3f} | {ms['eager']:.3f} | "
            f"{ms['fused']:.3f} | {ms['auto']:.3f} | {choice} | {x['eager']:.1f}× | "
            f"{x['fused']:.1f}× | {x['auto']:.1f}× | {t['auto'] / best:.2f} | {note} |"
        )
    for name in KERNEL_ENTRIES:
        gm = math.exp(statistics.mean(math.log(t["pytorch-crf"] / t[name]) for _, t, _, _ in rows))
        lines.append(f"\nGeometric mean speed-up of {name} over pytorch-crf: **{gm:.1f}×**")
    return "\n".join(lines)


def first_call_times() -> dict[str, float]:
    """Seconds of numba's import and of the first call of each op, in this process."""
    timings: dict[str, float] = {}

    def timed(name: str, call: Callable, *args):
        start = time.perf_counter()
        out = call(*args)
        timings[name] = time.perf_counter() - start
        return out

    timed("import torch._dynamo", importlib.import_module, "torch._dynamo")  # custom ops need it
    from chaincrf.crf.kernels.fused import custom_ops as crf_fused

    timed("import numba", crf_fused.available)
    x = make_inputs(4, 6, 3)
    scores = (x["lengths"], x["start"], x["transitions"], x["end"])
    for dtype in (torch.float64, torch.float32):
        name = str(dtype).split(".")[1]
        em = x["emissions"].to(dtype).requires_grad_(True)
        log_z = timed(f"log_partition {name}", crf_fused.log_partition, em, *scores)
        timed(f"log_partition backward {name}", log_z.sum().backward)
        timed(f"viterbi {name}", crf_fused.viterbi, em.detach(), *scores)
        timed(f"marginals {name}", crf_fused.marginals, em.detach(), *scores)
    return timings


TUNING_SIZES = ((8, 32, 9), (32, 32, 5), (128, 32, 5), (32, 128, 5), (32, 128, 9), (128, 32, 9),
                (128, 128, 9), (32, 32, 50), (32, 128, 50), (128, 32, 50), (128, 128, 50))  # fmt: skip
EXP_SIZES = ((1, 32, 5), (1, 128, 9), (8, 32, 9), (1, 128, 50), (32, 32, 9), (4, 128, 50))


def _pair(a: Callable, b: Callable) -> tuple[float, float]:
    """Median microseconds per call of a and b, timed side by side (benchtools)."""
    t = benchtools.time_entries({"a": a, "b": b}, min_reps=10, max_reps=40, budget_s=0.3)
    return t["a"]["median_s"] * 1e6, t["b"]["median_s"] * 1e6


def report_tuning() -> None:
    from chaincrf import CRF
    from chaincrf.crf import plan
    from chaincrf.crf.kernels.fused import impl as cpu_impl

    never, always = 10**18, 0
    print("### rows split over the torch threads (fused kernels forced)\n")
    print(
        "| B | T | K | B*T*K^2 | NLL+bwd 1 thread us | 2 threads us | 1/2 | decode 1 us | 2 us | 1/2 |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for B, T, K in TUNING_SIZES:
        x = make_inputs(B, T, K)
        crf = CRF(K, batch_first=True, kernel="fused")
        leaf = x["emissions"].clone().requires_grad_(True)

        def nll(crf=crf, leaf=leaf, x=x):
            leaf.grad = None
            crf.nll(leaf, x["tags"], x["mask"], reduction="sum").backward()

        def decode(crf=crf, x=x):
            with torch.no_grad():
                crf.decode(x["emissions"], x["mask"])

        row = [str(B), str(T), str(K), f"{B * T * K * K:,}"]
        for fn in (nll, decode):

            def setting(value: int, fn: Callable = fn) -> Callable:
                def run() -> None:
                    with plan.fused_tuning(split_min_btkk=value, split_min_btkk_viterbi=value):
                        fn()

                return run

            one, two = _pair(setting(never), setting(always))
            row += [f"{one:.0f}", f"{two:.0f}", f"{one / two:.2f}"]
        print("| " + " | ".join(row) + " |", flush=True)
    print("\n### the emissions' exp: one compiled loop against torch's vectorised exp\n")
    print("| B | T | K | B*T*K | loop us | torch us |\n|---:|---:|---:|---:|---:|---:|")
    for B, T, K in EXP_SIZES:
        em = make_inputs(B, T, K)["emissions"]

        def exp_with(value: int, em: torch.Tensor = em) -> Callable:
            def run() -> None:
                with plan.fused_tuning(numba_exp_max_btk=value):
                    cpu_impl._exp_emissions(em)

            return run

        loop, vectorised = _pair(exp_with(never), exp_with(always))
        print(f"| {B} | {T} | {K} | {B * T * K:,} | {loop:.1f} | {vectorised:.1f} |", flush=True)


def report_first_calls() -> None:
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        runs = {}
        for phase in ("cold", "warm"):
            out = subprocess.run(
                [sys.executable, __file__, "--first-call-child"],
                env=env, check=True, capture_output=True, text=True,
            ).stdout  # fmt: skip
            runs[phase] = json.loads(out.strip().splitlines()[-1])
    print(benchtools.machine_line(benchtools.machine(__file__)))
    print("\n### first call (s), fresh NUMBA_CACHE_DIR\n")
    print("| call | cold (compile) | warm (cache) |\n|---|---:|---:|")
    for name in runs["cold"]:
        print(f"| {name} | {runs['cold'][name]:.2f} | {runs['warm'][name]:.2f} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32, 128])
    parser.add_argument("--length", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--tags", type=int, nargs="+", default=[5, 9, 50])
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--reps", type=int, default=24, help="most repetitions per cell (24: every order once)"
    )
    parser.add_argument("--budget", type=float, default=3.0, help="seconds of timing per cell")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--first-call", action="store_true", help="time numba compilation")
    parser.add_argument("--tuning", action="store_true", help="measure plan.FUSED's thresholds")
    parser.add_argument("--first-call-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.first_call_child:
        print(json.dumps(first_call_times()))
        return
    if args.first_call:
        report_first_calls()
        return
    if args.tuning:
        torch.set_num_threads(args.threads)
        print(benchtools.machine_line(benchtools.machine(__file__, argv)) + "\n")
        report_tuning()
        return

    torch.set_num_threads(args.threads)
    from chaincrf.crf.kernels.fused import custom_ops as crf_fused

    if not crf_fused.available():
        sys.exit("numba is not importable: pip install numba")
    print(benchtools.machine_line(benchtools.machine(__file__, argv)) + "\n")
    for workload in args.workloads:
        rows = []
        for B in args.batch:
            for T in args.length:
                for K in args.tags:
                    x = make_inputs(B, T, K)
                    entries = make_entries(x, workload)
                    note = cross_check(x, workload, {n: fn() for n, fn in entries.items()})
                    times = time_cell(entries, args)
                    rows.append(((B, T, K), times, planner_choice(x, workload), note))
        print(markdown(workload, rows) + "\n", flush=True)
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
