"""Benchmark chaincrf's CRF layer against pytorch-crf and torch-struct, side by side.

All libraries get identical inputs (emissions, tags, left-aligned mask and the same transition
parameters) in one process. Before any timing, every cell is cross-checked: log-likelihoods,
log-partitions, best-path scores and marginals agree to 1e-4 (relative), best paths are identical,
and emission/transition gradients agree; any disagreement exits non-zero (the peers and the
cross-check: ``scripts/crf_peers.py``, also run by ``tests/test_crf_peers.py``). Timing is
``scripts/benchtools.py``'s: a warm-up, then repetitions in which every entry runs, in orders
balanced over which entry precedes which; the median is reported.

Throughput is in tokens per second of real (unpadded) tokens. Ratios are chaincrf's throughput
divided by pytorch-crf's (``x_pytorch_crf``) and by the fastest peer that ran the cell
(``x_fastest_peer``).

Examples::

    python scripts/bench_crf.py --grid target                       # the issue-3 target sub-grid
    python scripts/bench_crf.py --batch 1 32 --length 32 --tags 5 9 --workloads nll decode
    python scripts/bench_crf.py --grid full --memory --long-check \\
        --json benchmarks/crf.json --markdown benchmarks/crf.md
    python scripts/bench_crf.py --quick                              # seconds; smoke test

On a machine shared with other jobs, set ``OMP_WAIT_POLICY=PASSIVE``: with two OpenMP threads
on two busy cores, spinning barriers make every library 5-20x slower and the ratios meaningless
(the report records the load average and this variable).

Workloads (what is timed per library):
    nll           log-likelihood, reduction="sum", under ``torch.no_grad()``.
    nll+backward  the same with grad enabled, then ``backward()`` into emissions and the three
                  transition parameters.
    decode        best paths, each library's native output: chaincrf ``decode`` (lists) and
                  ``viterbi`` (tensors, entry ``chaincrf.viterbi``), pytorch-crf ``decode``
                  (lists), torch-struct ``LinearChainCRF.argmax`` (one-hot edge tensor).
    viterbi_k5    chaincrf ``viterbi(k=5)`` (no peer offers k-best paths as tensors).
    marginals     chaincrf ``marginals`` (B, T, K) vs torch-struct ``marginals`` (edge marginals).

torch-struct is fed the standard log-potentials (``crf_peers.StructCRF``); building them is timed.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchtools, crf_peers: siblings
import benchtools
from chaincrf.crf import kernels
from crf_peers import (
    LIBS,
    PEERS,
    RTOL,
    Models,
    chaincrf_class,
    chaincrf_kwargs,
    collect_outputs,
    cross_check,
    make_inputs,
    make_models,
    struct_bytes_estimate,
    zero_grads,
)

WORKLOADS = ("nll", "nll+backward", "decode", "viterbi_k5", "marginals")
# entries (timed callables) per workload; an entry is named after its library, plus a suffix
# where one library has several ways to produce the same thing.
# "chaincrf" is the layer as shipped (the planner's choice, kernel="auto"); "chaincrf[eager]",
# "chaincrf[fused]", "chaincrf[export]", "chaincrf[triton]" force one kernel (--kernels).
KERNELS = kernels.names()  # every registered kernel
_FORCED = tuple(f"chaincrf[{k}]" for k in KERNELS)
ENTRIES = {
    "nll": ("chaincrf", *_FORCED, "pytorch-crf", "torch-struct"),
    "nll+backward": ("chaincrf", *_FORCED, "pytorch-crf", "torch-struct"),
    "decode": ("chaincrf", *_FORCED, "chaincrf.viterbi", "pytorch-crf", "torch-struct"),
    "viterbi_k5": ("chaincrf",),
    "marginals": ("chaincrf", *_FORCED, "torch-struct"),
}
GRIDS = {
    "full": dict(
        batch=[1, 32, 128], length=[32, 128, 512], tags=[5, 9, 17, 50], workloads=list(WORKLOADS)
    ),
    "target": dict(
        batch=[1, 32, 128], length=[32, 128], tags=[5, 9, 50], workloads=["nll+backward", "decode"]
    ),
    "quick": dict(batch=[2], length=[8], tags=[3], workloads=list(WORKLOADS)),
}
TARGET_CELLS = {(b, t, k) for b in (1, 32, 128) for t in (32, 128) for k in (5, 9, 50)}


# ---------------------------------------------------------------------------------------------
# workloads


def workload_fns(models: Models, workload: str, libs: Sequence[str]) -> dict[str, Callable]:
    """The timed callables of one workload, keyed by entry name (only for libraries in `libs`)."""
    x = models.inputs
    em, tags, mask, lengths = x.emissions, x.tags, x.mask, x.lengths
    ours, ref, struct = models.chaincrf, models.torchcrf, models.struct
    fns: dict[str, Callable] = {}
    if workload == "nll":
        if ours is not None:
            kw = chaincrf_kwargs(models, ours.forward)

            def f():
                with torch.no_grad():
                    return ours(em, tags, mask, reduction="sum", **kw)

            fns["chaincrf"] = f

        def g():
            with torch.no_grad():
                return ref(em, tags, mask, reduction="sum")

        def h():
            with torch.no_grad():
                return struct.log_likelihood(em, tags, lengths).sum()

        fns["pytorch-crf"], fns["torch-struct"] = g, h
    elif workload == "nll+backward":
        leaf = em.detach().clone().requires_grad_(True)

        def make(call: Callable, params: Sequence[torch.Tensor]) -> Callable:
            def run():
                zero_grads(leaf, *params)
                loss = -call()
                loss.backward()
                return loss

            return run

        if ours is not None:
            kw = chaincrf_kwargs(models, ours.forward)
            fns["chaincrf"] = make(
                lambda: ours(leaf, tags, mask, reduction="sum", **kw), list(ours.parameters())
            )
        fns["pytorch-crf"] = make(
            lambda: ref(leaf, tags, mask, reduction="sum"), list(ref.parameters())
        )
        fns["torch-struct"] = make(
            lambda: struct.log_likelihood(leaf, tags, lengths).sum(), list(struct.parameters())
        )
    elif workload == "decode":
        if ours is not None:
            kw_d, kw_v = chaincrf_kwargs(models, ours.decode), chaincrf_kwargs(models, ours.viterbi)

            def f():
                with torch.no_grad():
                    return ours.decode(em, mask, **kw_d)

            def fv():
                with torch.no_grad():
                    return ours.viterbi(em, mask, **kw_v)

            fns["chaincrf"], fns["chaincrf.viterbi"] = f, fv

        def g():
            with torch.no_grad():
                return ref.decode(em, mask)

        def h():  # torch-struct's argmax runs autograd internally: grad mode is required
            return struct.dist(em.detach(), lengths).argmax.detach()

        fns["pytorch-crf"], fns["torch-struct"] = g, h
    elif workload == "viterbi_k5":
        if ours is not None:
            kw = chaincrf_kwargs(models, ours.viterbi)

            def f():
                with torch.no_grad():
                    return ours.viterbi(em, mask, k=5, **kw)

            fns["chaincrf"] = f
    elif workload == "marginals":
        if ours is not None:
            kw = chaincrf_kwargs(models, ours.marginals)

            def f():
                with torch.no_grad():
                    return ours.marginals(em, mask, **kw)

            fns["chaincrf"] = f

        def h():
            return struct.dist(em.detach(), lengths).marginals.detach()

        fns["torch-struct"] = h
    else:
        raise ValueError(f"workload must be one of {WORKLOADS}; got {workload!r}")
    if ours is not None and workload in ("nll", "nll+backward", "decode", "marginals"):
        for kernel in models.kernels:  # the same layer, one kernel forced
            forced = copy.deepcopy(ours)
            forced.kernel = kernel
            plain = dataclasses.replace(models, chaincrf=forced, kernels=())
            fns[f"chaincrf[{kernel}]"] = workload_fns(plain, workload, ["chaincrf"])["chaincrf"]
    return {name: fn for name, fn in fns.items() if _library(name) in libs}


def _library(entry: str) -> str:
    """The library an entry times: "chaincrf.viterbi" and "chaincrf[fused]" are chaincrf's."""
    return entry.split(".")[0].split("[")[0]


# ---------------------------------------------------------------------------------------------
# memory and long sequences


def _current_rss_kib() -> int:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


def _vm_hwm_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise OSError("no VmHWM in /proc/self/status")


def memory_child(lib: str, batch: int, length: int, num_tags: int, device: str) -> dict:
    """Peak extra memory of one nll+backward call, measured in this (fresh) process."""
    x = make_inputs(batch, length, num_tags, device=device)
    cls, _ = chaincrf_class()
    models = make_models(x, cls if lib == "chaincrf" else None, None)
    fn = workload_fns(models, "nll+backward", [lib])[lib]
    dev = torch.device(device)
    result: dict[str, Any] = {"lib": lib}
    if dev.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        result["peak_extra_mib"] = (torch.cuda.max_memory_allocated() - before) / 2**20
        result["method"] = "torch.cuda.max_memory_allocated - memory_allocated before the call"
    else:
        try:  # Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) of this process
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            reset = True
        except OSError:
            reset = False
        before_rss = _current_rss_kib()
        before_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        after_max = _vm_hwm_kib() if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result["peak_extra_mib"] = (after_max - before_rss) / 1024
        result["peak_not_reached"] = not reset and after_max <= before_max  # then an upper bound
        result["method"] = (
            "VmHWM after the call (peak reset via /proc/self/clear_refs) - RSS before it"
            if reset
            else "ru_maxrss after the call - RSS before it (fresh process)"
        )
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    leaf = x.emissions.detach().clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        if lib == "chaincrf":
            loss = models.chaincrf(leaf, x.tags, x.mask, reduction="sum")
        elif lib == "pytorch-crf":
            loss = models.torchcrf(leaf, x.tags, x.mask, reduction="sum")
        else:
            loss = models.struct.log_likelihood(leaf, x.tags, x.lengths).sum()
    loss.backward()
    result["saved_for_backward_mib"] = sum(saved.values()) / 2**20
    return result


def measure_memory(
    libs: Sequence[str], batch: int, length: int, num_tags: int, device: str, struct_cap_bytes: int
) -> list[dict]:
    rows = []
    for lib in libs:
        est = struct_bytes_estimate(batch, length, num_tags)
        if lib == "torch-struct" and est > struct_cap_bytes:
            rows.append(
                {
                    "lib": lib,
                    "skipped": f"estimated {est / 2**30:.1f} GiB > cap "
                    f"{struct_cap_bytes / 2**30:.1f} GiB (--struct-mem-cap-gb)",
                }
            )
            continue
        sizes = f"--batch {batch} --length {length} --tags {num_tags} --device {device}"
        cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", lib, *sizes.split()]
        cmd += ["--threads", str(torch.get_num_threads())]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            rows.append({"lib": lib, "error": proc.stderr.strip().splitlines()[-1:]})
        else:
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return rows


def long_check(
    chaincrf_cls: type | None, device: str, length: int = 10_000, batch: int = 4, num_tags: int = 9
) -> dict:
    """chaincrf at T = `length`: finite results, equal to pytorch-crf, and how long it takes."""
    if chaincrf_cls is None:
        return {"skipped": "chaincrf not importable"}
    x = make_inputs(batch, length, num_tags, seed=1, device=device)
    models = make_models(x, chaincrf_cls, None)
    res: dict[str, Any] = {
        "batch": batch,
        "length": length,
        "tags": num_tags,
        "tokens": x.num_tokens,
    }
    try:
        outs = collect_outputs(models, ["chaincrf", "pytorch-crf"], ["nll+backward"])
        # float32 paths of 10,000 steps have near-ties below float32 resolution: require the
        # path to be optimal (its float64 score equals the best to rtol), report identity
        paths = outs.pop("paths")
        res["paths_differing_rows_vs_pytorch_crf"] = (
            (paths["chaincrf"] != paths["pytorch-crf"]).any(1).nonzero().flatten().tolist()
        )
        res["problems"] = cross_check(outs)
        res["finite"] = bool(
            torch.isfinite(outs["log_likelihood"]["chaincrf"]).all()
            and torch.isfinite(outs["grad_emissions"]["chaincrf"]).all()
        )
        for wl in ("nll+backward", "decode"):
            fns = workload_fns(models, wl, ["chaincrf", "pytorch-crf"])
            t = benchtools.time_entries(fns, device=device, min_reps=1, max_reps=1, inner=1)
            res[wl] = {n: round(v["median_s"], 4) for n, v in t.items()}
    except Exception as err:  # report, do not hide
        res["error"] = f"{type(err).__name__}: {err}"
    return res


# ---------------------------------------------------------------------------------------------
# report


def add_ratios(cell: dict) -> None:
    for res in cell["workloads"].values():
        tps = {n: v["tokens_per_s"] for n, v in res["entries"].items()}
        peers = {p: tps[p] for p in PEERS if p in tps}
        fastest = max(peers.values()) if peers else None
        res["ratios"] = {}
        for name, v in tps.items():
            if not name.startswith("chaincrf"):
                continue
            r = {}
            if "pytorch-crf" in tps:
                r["x_pytorch_crf"] = v / tps["pytorch-crf"]
            if "torch-struct" in tps:
                r["x_torch_struct"] = v / tps["torch-struct"]
            if fastest:
                r["x_fastest_peer"] = v / fastest
            res["ratios"][name] = r


def summarize(cells: list[dict]) -> dict:
    summary: dict[str, Any] = {}
    for device in sorted({c["device"] for c in cells}):
        dev_cells = [c for c in cells if c["device"] == device]
        out: dict[str, Any] = {}
        for wl in WORKLOADS:
            for entry in ENTRIES[wl]:
                if not entry.startswith("chaincrf"):
                    continue
                key = wl if entry == "chaincrf" else f"{wl} ({entry})"
                target, mins = [], []
                for c in dev_cells:
                    r = c["workloads"].get(wl, {}).get("ratios", {}).get(entry)
                    if not r:
                        continue
                    if (
                        "x_pytorch_crf" in r
                        and (c["batch"], c["length"], c["tags"]) in TARGET_CELLS
                    ):
                        target.append(r["x_pytorch_crf"])
                    if "x_fastest_peer" in r:
                        mins.append((r["x_fastest_peer"], c["batch"], c["length"], c["tags"]))
                item: dict[str, Any] = {}
                if target:
                    item["geomean_x_pytorch_crf_target"] = math.exp(
                        sum(map(math.log, target)) / len(target)
                    )
                    item["target_cells"] = f"{len(target)}/{len(TARGET_CELLS)}"
                if mins:
                    worst = min(mins)
                    item["min_x_fastest_peer"] = worst[0]
                    item["min_cell"] = f"B={worst[1]} T={worst[2]} K={worst[3]}"
                    item["cells_slower_than_fastest_peer"] = sum(m[0] < 1 for m in mins)
                    item["cells"] = len(mins)
                if item:
                    out[key] = item
        summary[device] = out
    return summary


def _fmt_tps(v: float | None) -> str:
    if v is None:
        return "–"
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e3:
        return f"{v / 1e3:.1f}k"
    return f"{v:.0f}"


def to_markdown(report: dict) -> str:
    lines = ["# CRF benchmark: chaincrf vs pytorch-crf vs torch-struct", ""]
    lines += [
        benchtools.machine_markdown(report["machine"]),
        f"- Settings: float32, lengths uniform in [T/2, T] (first row = T), seed "
        f"{report['settings']['seed']}, warm-up then median of {report['settings']['min_reps']}–"
        f"{report['settings']['max_reps']} repetitions of every entry, orders balanced "
        f"(scripts/benchtools.py; budget "
        f"{report['settings']['budget_s']} s per entry per cell); tokens/s counts real tokens.",
        f"- Cross-check before timing: {report['cross_check']}",
        "",
    ]
    if report.get("notes"):
        lines += ["Notes:", ""] + [f"- {n}" for n in report["notes"]] + [""]
    for device, summ in report["summary"].items():
        lines += [
            f"## Summary ({device})",
            "",
            "| workload | geomean × pytorch-crf (target grid) | min × fastest peer | at | "
            "cells < 1× fastest peer |",
            "|---|---|---|---|---|",
        ]
        for key, item in summ.items():
            gm = item.get("geomean_x_pytorch_crf_target")
            gm_s = f"{gm:.2f}× ({item['target_cells']} cells)" if gm else "–"
            mn = item.get("min_x_fastest_peer")
            mn_s = f"{mn:.2f}×" if mn is not None else "–"
            slow = item.get("cells_slower_than_fastest_peer", "–")
            lines.append(
                f"| {key} | {gm_s} | {mn_s} | {item.get('min_cell', '–')} | "
                f"{slow}/{item.get('cells', '–')} |"
            )
        lines.append("")
    for device in sorted({c["device"] for c in report["cells"]}):
        for wl in report["settings"]["workloads"]:
            entries = ENTRIES[wl]
            ours = [e for e in entries if e.startswith("chaincrf")]
            head = ["B", "T", "K", "tokens", "planner"] + [f"{e} tok/s" for e in entries]
            head += [f"{e} × pytorch-crf" for e in ours if "pytorch-crf" in entries]
            head += [f"{e} × fastest peer" for e in ours if len(entries) > len(ours)]
            lines += [
                f"## {wl} ({device})",
                "",
                "| " + " | ".join(head) + " |",
                "|" + "---|" * len(head),
            ]
            for c in report["cells"]:
                if c["device"] != device or wl not in c["workloads"]:
                    continue
                res = c["workloads"][wl]
                row = [str(c["batch"]), str(c["length"]), str(c["tags"]), str(c["tokens"])]
                row.append(res.get("planner", "–"))
                for e in entries:
                    if e in res["entries"]:
                        row.append(_fmt_tps(res["entries"][e]["tokens_per_s"]))
                    else:
                        row.append(res.get("skipped", {}).get(e, "–"))
                for key in (["x_pytorch_crf"] if "pytorch-crf" in entries else []) + (
                    ["x_fastest_peer"] if len(entries) > len(ours) else []
                ):
                    for e in ours:
                        r = res.get("ratios", {}).get(e, {}).get(key)
                        row.append(f"{r:.2f}×" if r is not None else "–")
                lines.append("| " + " | ".join(row) + " |")
            lines.append("")
    if report.get("memory"):
        mem = report["memory"]
        lines += [
            f"## Peak memory, nll+backward, B={mem['batch']} T={mem['length']} "
            f"K={mem['tags']} ({mem['device']})",
            "",
            "`peak extra`: " + mem["method"] + ". `saved for backward`: bytes of the "
            "distinct storages autograd saved for backward (saved_tensors_hooks).",
            "",
            "| library | peak extra MiB | saved for backward MiB | note |",
            "|---|---|---|---|",
        ]
        for r in mem["rows"]:
            note = r.get("skipped") or (str(r["error"]) if "error" in r else "")
            if r.get("peak_not_reached"):
                note = "did not exceed earlier process peak: upper bound"
            pk = f"{r['peak_extra_mib']:.0f}" if "peak_extra_mib" in r else "–"
            sv = f"{r['saved_for_backward_mib']:.0f}" if "saved_for_backward_mib" in r else "–"
            lines.append(f"| {r['lib']} | {pk} | {sv} | {note} |")
        lines.append("")
    if report.get("long_check"):
        lc = report["long_check"]
        lines += ["## Long sequences (chaincrf)", "", "```", json.dumps(lc, indent=1), "```", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--grid",
        choices=sorted(GRIDS),
        default="target",
        help="preset grid; --batch/--length/--tags/--workloads override parts of it",
    )
    p.add_argument("--quick", action="store_true", help="same as --grid quick with tiny budgets")
    p.add_argument("--batch", type=int, nargs="+")
    p.add_argument("--length", type=int, nargs="+")
    p.add_argument("--tags", type=int, nargs="+")
    p.add_argument("--workloads", nargs="+", choices=WORKLOADS)
    p.add_argument("--libs", nargs="+", choices=LIBS, default=list(LIBS))
    p.add_argument(
        "--device",
        nargs="+",
        default=None,
        help="devices to run (default: cpu, plus cuda when available)",
    )
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--reps", type=int, default=15, help="max repetitions per entry per cell")
    p.add_argument("--min-reps", type=int, default=3)
    p.add_argument(
        "--budget",
        type=float,
        default=1.0,
        help="seconds per entry per cell before repetitions stop (after --min-reps)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--struct-mem-cap-gb",
        type=float,
        default=4.0,
        help="skip torch-struct where its estimated scan memory exceeds this",
    )
    p.add_argument(
        "--no-validate",
        action="store_true",
        help="pass validate=False to chaincrf (default: the library's default)",
    )
    p.add_argument("--no-cross-check", action="store_true", help="time without cross-checking")
    p.add_argument(
        "--memory",
        action="store_true",
        help="peak memory of nll+backward at B=32 T=512 K=50, one subprocess per lib",
    )
    p.add_argument("--long-check", action="store_true", help="check chaincrf at T=10,000")
    p.add_argument(
        "--kernels",
        nargs="*",
        choices=KERNELS,
        default=["eager", "fused"],
        help="also time chaincrf with each of these kernels forced (entries chaincrf[kernel]; "
        "the entry chaincrf is the planner's choice)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="time chaincrf's and pytorch-crf's entries through torch.compile (both sides; "
        "torch-struct stays eager); the warm-up call compiles",
    )
    p.add_argument(
        "--first-call",
        action="store_true",
        help="time the fused kernels' first calls, cold (empty numba cache) and warm, and exit "
        "(scripts/bench_fused.py --first-call)",
    )
    p.add_argument("--json", type=Path, help="write the JSON report here")
    p.add_argument("--markdown", type=Path, help="write the Markdown report here")
    p.add_argument("--memory-child", choices=LIBS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    grid = GRIDS["quick" if args.quick else args.grid]
    for key in ("batch", "length", "tags", "workloads"):
        if getattr(args, key) is None:
            setattr(args, key, list(grid[key]))
    if args.quick:
        args.reps, args.min_reps, args.budget = min(args.reps, 3), 1, 0.0
    if args.device is None:
        args.device = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return args


def run_cell(
    models: Models, args: argparse.Namespace, device: str, libs: list[str], notes: list[str]
) -> dict:
    x = models.inputs
    B, T, K = x.emissions.shape
    cell: dict[str, Any] = {
        "device": device,
        "batch": B,
        "length": T,
        "tags": K,
        "tokens": x.num_tokens,
        "workloads": {},
    }
    est = struct_bytes_estimate(B, T, K)
    struct_ok = "torch-struct" in libs and est <= args.struct_mem_cap_gb * 2**30
    cell_libs = [lib for lib in libs if lib != "torch-struct" or struct_ok]
    skipped = {}
    if "torch-struct" in libs and not struct_ok:
        skipped["torch-struct"] = f"skipped (~{est / 2**30:.0f} GiB)"
    for wl in args.workloads:
        fns = workload_fns(models, wl, cell_libs)
        if not fns:
            continue
        planner = _planner_choice(fns.get("chaincrf"))
        if args.compile:
            fns = {
                n: torch.compile(f) if _library(n) in ("chaincrf", "pytorch-crf") else f
                for n, f in fns.items()
            }
        timings = benchtools.time_entries(
            fns, device=device, min_reps=args.min_reps, max_reps=args.reps, budget_s=args.budget
        )
        cell["workloads"][wl] = {
            "entries": {
                n: {**t, "tokens_per_s": x.num_tokens / t["median_s"]} for n, t in timings.items()
            },
            "skipped": {e: s for e, s in skipped.items() if e in ENTRIES[wl]},
        }
        if planner:
            cell["workloads"][wl]["planner"] = planner
    add_ratios(cell)
    return cell


def _planner_choice(fn: Callable | None) -> str | None:
    """The kernel(s) chaincrf's planner picks for one call of ``fn`` (None without it)."""
    try:
        from chaincrf.crf import plan
    except ImportError:
        return None
    if fn is None or not hasattr(plan, "record"):
        return None
    with plan.record() as ran:
        fn()
    return "+".join(sorted({kernel for _, kernel in ran})) or None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        print(
            json.dumps(
                memory_child(
                    args.memory_child, args.batch[0], args.length[0], args.tags[0], args.device[0]
                )
            )
        )
        return 0
    if args.first_call:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import bench_fused

        bench_fused.report_first_calls()
        return 0
    chaincrf_cls, why = chaincrf_class()
    notes = []
    if args.compile:
        notes.append(
            "--compile: chaincrf's and pytorch-crf's entries are torch.compile'd functions "
            "(default mode, one compile per cell in the warm-up, not timed); torch-struct eager"
        )
    libs = list(args.libs)
    if chaincrf_cls is None and "chaincrf" in libs:
        notes.append(f"chaincrf.crf.CRF not importable ({why}); peers only")
        libs.remove("chaincrf")
    validate = False if args.no_validate else None
    cells, failures = [], []
    t_start = time.perf_counter()
    for device in args.device:
        for B in args.batch:
            for T in args.length:
                for K in args.tags:
                    x = make_inputs(B, T, K, seed=args.seed, device=device)
                    models = make_models(x, chaincrf_cls, validate)
                    if models.chaincrf is not None and hasattr(models.chaincrf, "kernel"):
                        models.kernels = tuple(args.kernels)
                    struct_ok = struct_bytes_estimate(B, T, K) <= args.struct_mem_cap_gb * 2**30
                    if not args.no_cross_check:
                        outs = collect_outputs(models, libs, args.workloads, with_struct=struct_ok)
                        problems = cross_check(outs)
                        if problems:
                            failures.append((device, B, T, K, problems))
                            print(
                                f"CROSS-CHECK FAILED {device} B={B} T={T} K={K}:",
                                *problems,
                                sep="\n  ",
                                file=sys.stderr,
                            )
                            continue
                    cell = run_cell(models, args, device, libs, notes)
                    cells.append(cell)
                    print(_progress_line(cell), file=sys.stderr, flush=True)
    report: dict[str, Any] = {
        "command": benchtools.command_line(__file__, argv),
        "machine": benchtools.machine(__file__, argv, "cuda" if "cuda" in args.device else "cpu"),
        "settings": {
            "seed": args.seed,
            "min_reps": args.min_reps,
            "max_reps": args.reps,
            "budget_s": args.budget,
            "workloads": args.workloads,
            "validate": "library default" if validate is None else validate,
            "struct_mem_cap_gb": args.struct_mem_cap_gb,
            "compile": args.compile,
        },
        "cross_check": (
            "skipped (--no-cross-check)"
            if args.no_cross_check
            else f"{'FAILED' if failures else 'passed'} in {len(cells) + len(failures)} "
            f"cells (rtol {RTOL}, identical paths, gradients)"
        ),
        "notes": notes,
        "cells": cells,
        "summary": summarize(cells),
    }
    if args.memory:
        report["memory"] = {
            "batch": 32,
            "length": 512,
            "tags": 50,
            "device": args.device[-1],
            "method": (
                "torch.cuda.max_memory_allocated minus memory_allocated before the call"
                if args.device[-1] == "cuda"
                else "peak RSS during one call (VmHWM, reset just before it) minus RSS before "
                "it, in a fresh process per library (inputs and model already built)"
            ),
            "rows": measure_memory(
                libs, 32, 512, 50, args.device[-1], int(args.struct_mem_cap_gb * 2**30)
            ),
        }
    if args.long_check:
        report["long_check"] = long_check(chaincrf_cls, args.device[0])
        if report["long_check"].get("problems") or report["long_check"].get("error"):
            failures.append(("long_check", report["long_check"]))
    report["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    md = to_markdown(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(md + "\n")
    print(md)
    if failures:
        print(f"cross-check failed in {len(failures)} cell(s); see stderr", file=sys.stderr)
        return 1
    return 0


def _progress_line(cell: dict) -> str:
    parts = [f"{cell['device']} B={cell['batch']} T={cell['length']} K={cell['tags']}:"]
    for wl, res in cell["workloads"].items():
        tps = " ".join(f"{n}={_fmt_tps(v['tokens_per_s'])}" for n, v in res["entries"].items())
        rat = " ".join(
            f"{n}:{r['x_pytorch_crf']:.2f}x"
            for n, r in res.get("ratios", {}).items()
            if "x_pytorch_crf" in r
        )
        parts.append(f"  {wl}: {tps} {rat}")
    return "\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
