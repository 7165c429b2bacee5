"""The benchmarks' shared timing method and machine report (``scripts/bench_*.py`` import it).

One timing method, :func:`time_entries`, for every benchmark that compares entries (libraries,
kernels, engines) side by side in one process:

1. warm-up: each entry runs ``warmup`` times, interleaved (compilation, caches, thread pools);
2. calibration: each entry gets an inner count of calls per sample, so that a sample lasts at
   least ``min_sample_s`` (the timer's and the loop's overhead stay negligible), from one more
   call where it costs under a quarter of ``budget_s`` (a first call may include compiling);
3. repetitions: every repetition times one sample of *every* entry (none stops early on a
   budget of its own: that would change the others' neighbours), in the order :func:`orders`
   gives it, until ``max_reps``, or until ``min_reps`` ran and ``budget_s`` per entry is spent;
4. the result per entry: the median seconds per call, the minimum, the interquartile range.

Why the orders: an entry's time depends on what ran just before it (caches left cold by a large
peer, OpenMP workers still spinning after a 2-thread torch operation). A rotation of one order
(``scripts/bench_crf.py`` before) keeps the same neighbours forever: B always follows A, so B
always pays for A. A random order per repetition balances that only on average.
``scripts/bench_fused.py``'s method is the sounder one, and is kept: orders that cycle through
all permutations, so that every entry follows every other one equally often. Its limit is size:
n! orders (720 for six entries) need more repetitions than a benchmark runs, so the cycle starts
with a balanced Latin square (Williams' design: n orders for an even n, 2n for an odd n, in which
each entry holds each position equally often and follows each other entry equally often) and,
up to four entries, continues through the remaining permutations in a seeded order. A run whose
repetitions are a multiple of the square's size (n or 2n) is exactly balanced; a shorter one is
as close as its length allows.
On a CUDA device each sample is bracketed by ``torch.cuda.synchronize()``; nothing CUDA-specific
is touched (or imported) unless the device is ``cuda``.

One machine report, :func:`machine`: a flat dict (date, command line, platform, CPU model,
cores, torch threads, load average, ``OMP_WAIT_POLICY``, the device and GPU name, the versions
of Python, torch, chaincrf and the peers), written into each script's JSON report and rendered
by :func:`machine_markdown` (report headers) or :func:`machine_line` (one printed line).
"""

from __future__ import annotations

import datetime
import importlib.metadata
import itertools
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ALL_PERMUTATIONS_UP_TO = 4  # 24 orders; five entries would need 120 repetitions
PACKAGES = ("chaincrf", "pytorch-crf", "torch-struct", "numba")


def orders(names: Sequence[str], seed: int = 0) -> list[tuple[str, ...]]:
    """The cycle of run orders: a balanced Latin square, then (n <= 4) the other permutations.

    Args:
        names: the entries, in their listed order.
        seed: shuffles the permutations after the square.

    Returns:
        One order (a tuple of all ``names``) per repetition; repetition r uses
        ``orders[r % len(orders)]``.
    """
    n = len(names)
    first = [(k + 1) // 2 if k % 2 else (n - k // 2) % n for k in range(n)]  # 0, 1, n-1, 2, ...
    square = [tuple((i + r) % n for i in first) for r in range(n)]
    if n % 2:  # an odd n needs the mirrored rows too for each pair to be adjacent equally often
        square += [row[::-1] for row in square]
    cycle = list(dict.fromkeys(square))  # n = 1: one order
    if n <= ALL_PERMUTATIONS_UP_TO:
        seen = set(cycle)
        rest = [p for p in itertools.permutations(range(n)) if p not in seen]
        random.Random(seed).shuffle(rest)
        cycle += rest
    return [tuple(names[i] for i in row) for row in cycle]


def _sync(device: Any) -> None:
    if device is not None and str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def time_entries(
    fns: dict[str, Callable[[], object]],
    *,
    device: Any = None,
    warmup: int = 1,
    min_reps: int = 3,
    max_reps: int = 24,
    budget_s: float = 1.0,
    min_sample_s: float = 0.005,
    inner: int | None = None,
) -> dict[str, dict[str, float]]:
    """Time callables side by side: warm-up, calibration, interleaved repetitions (see above).

    Args:
        fns: the entries, name -> callable without arguments.
        device: ``"cuda"`` (or a CUDA ``torch.device``) to synchronise around each sample;
            anything else (``None``, ``"cpu"``) does not.
        warmup: untimed calls of each entry before anything is timed (interleaved).
        min_reps, max_reps: the fewest and the most repetitions.
        budget_s: repetitions stop (after ``min_reps``) once the timed seconds reach this
            times the number of entries; ``math.inf`` runs ``max_reps``.
        min_sample_s: the shortest sample the calibration aims at.
        inner: calls per sample for every entry (no calibration); ``None`` calibrates.

    Returns:
        Per entry: ``median_s`` (seconds per call, the figure to report), ``min_s``, ``iqr_s``
        (the interquartile range of the samples), ``total_s`` (all timed seconds), ``reps``
        and ``inner``.
    """
    names = list(fns)

    def sample(name: str, calls: int) -> float:
        """Seconds per call of ``calls`` calls in a row, synchronised at both ends."""
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(calls):
            fns[name]()
        _sync(device)
        return (time.perf_counter() - t0) / calls

    once = dict.fromkeys(names, math.inf)
    for _ in range(warmup):
        for name in names:
            once[name] = min(once[name], sample(name, 1))
    calls = dict.fromkeys(names, inner or 1)
    for name in names if inner is None else ():
        if warmup == 0 or once[name] < max(min_sample_s, budget_s / 4):  # one warm call more
            once[name] = min(once[name], sample(name, 1))
        calls[name] = max(1, min(1000, math.ceil(min_sample_s / max(once[name], 1e-7))))
    samples: dict[str, list[float]] = {n: [] for n in names}
    cycle, spent = orders(names), 0.0
    for rep in range(max(1, max_reps)):
        if rep >= min_reps and spent >= budget_s * len(names):
            break
        for name in cycle[rep % len(cycle)]:
            samples[name].append(sample(name, calls[name]))
            spent += samples[name][-1] * calls[name]
    out = {}
    for name, s in samples.items():
        q1, _, q3 = statistics.quantiles(s, n=4) if len(s) > 1 else (s[0],) * 3
        stats = {"median_s": statistics.median(s), "min_s": min(s), "iqr_s": q3 - q1}
        n = calls[name]
        out[name] = {**stats, "total_s": sum(s) * n, "reps": len(s), "inner": n}
    return out


def command_line(script: str, argv: Sequence[str] | None = None) -> str:
    """The command that reproduces this run: ``OMP_WAIT_POLICY=... python scripts/x.py args``."""
    args = sys.argv[1:] if argv is None else list(argv)
    policy = os.environ.get("OMP_WAIT_POLICY")
    prefix = f"OMP_WAIT_POLICY={policy} " if policy else ""
    return prefix + " ".join(["python", os.path.relpath(script), *args])


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git_head() -> str:
    try:
        cwd = Path(__file__).resolve().parent
        cmd = ["git", "rev-parse", "--short", "HEAD"]
        return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd).stdout.strip() or "none"
    except OSError:
        return "unknown"


def machine(
    script: str, argv: Sequence[str] | None = None, device: Any = "cpu", packages=PACKAGES
) -> dict[str, Any]:
    """The machine report: where, when and with what a benchmark ran (the module docstring).

    ``script`` is the benchmark's ``__file__`` and ``argv`` its arguments (default
    ``sys.argv[1:]``); a ``cuda`` device adds the GPU's name (``cuda_device``); ``packages``
    are the distributions whose versions are listed besides Python's and torch's.
    """
    import torch

    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command_line(script, argv),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "device": str(device),
        "python": platform.python_version(),
        "torch": torch.__version__,
        **{p: _version(p) for p in packages},  # "not installed" where absent
        "chaincrf_git": _git_head(),
    }
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(torch.device(device))
    return info


def machine_markdown(info: dict[str, Any]) -> str:
    """The report as Markdown list items (machine, versions, load, date, command)."""
    gpu = f", GPU {info['cuda_device']}" if "cuda_device" in info else ""
    versions = ", ".join(
        f"{k} {info[k]}" + (f" (git {info['chaincrf_git']})" if k == "chaincrf" else "")
        for k in ("python", "torch", *PACKAGES)
        if k in info
    )
    return "\n".join(
        [
            f"- Machine: {info['cpu']}, {info['cores']} cores visible, torch threads "
            f"{info['torch_threads']}{gpu}; {info.get('platform', '')}",
            f"- Versions: {versions}",
            f"- Load average (1/5/15 min) when the report was written: "
            f"{info['load_average_1_5_15']}; OMP_WAIT_POLICY={info['OMP_WAIT_POLICY']}",
            f"- Date: {info.get('date', 'unknown')}; command: `{info['command']}`",
        ]
    )


def machine_line(info: dict[str, Any]) -> str:
    """The report on one line, for scripts that print rather than write a report."""
    gpu = f", GPU {info['cuda_device']}" if "cuda_device" in info else ""
    return (
        f"# {info['cpu']}{gpu}, {info['cores']} CPUs, {info['torch_threads']} torch threads; "
        f"python {info['python']}, torch {info['torch']}, chaincrf {info.get('chaincrf')} "
        f"(git {info.get('chaincrf_git')}); load {info['load_average_1_5_15']}, "
        f"OMP_WAIT_POLICY={info['OMP_WAIT_POLICY']}; {info['date']}; `{info['command']}`"
    )
