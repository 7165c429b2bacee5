"""The host's time per eager CRF call on the Triton path, Triton's own launch code included,
on a machine without a GPU.

At one sentence a CUDA call's wall time is the host's: its two kernels take microseconds. The
issue's target is at most 100 us per NLL + backward at B=1 T=32 K=9 on one H200.
``bench_crf_gpu.py --sections host`` measures chaincrf's share under Triton's interpreter with
the launches replaced by no-ops. This script adds what a launch costs in Triton's Python: the
kernels are compiled for an offline CUDA target (``check_triton_compile.py``'s driver: Triton
and ptxas, no device), and each launch then runs Triton's real launch path (the argument
binder, the specialisation key, the kernel cache, the launch metadata) up to its compiled C
launcher, which is replaced by a no-op. Not counted: the C launcher (it reads each tensor's
pointer) and the CUDA driver's ``cuLaunchKernel``, a few microseconds per launch.

Entries, timed side by side (``benchtools.time_entries``), µs per call:

* ``bare``: ``(e * 2).sum().backward()``, an autograd step of the same shape;
* ``chaincrf, launches stubbed``: ``crf.nll(e, tags, mask, reduction="sum",
  validate=False).backward()`` with the launches as no-ops (``bench_crf_gpu.py``'s host
  section);
* ``chaincrf, Triton's launch path``: the same call through Triton's launch path;
* ``viterbi`` in both forms;
* ``compiled``: the NLL + backward through ``torch.compile(fullgraph=True)`` (Inductor's CPU
  code calling the Triton ops), in both forms: what a compiled call costs the host against
  an eager one (``compiled_over_eager``).

The difference of the two chaincrf entries is Triton's Python per call (two launches for the
likelihood, one for Viterbi). Usage, with Triton and its NVIDIA backend installed (the ``gpu``
extra; CI's torch 2.11 venv has Triton 3.6, the GPU machines' version)::

    python scripts/bench_triton_host.py --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "0"  # real JIT functions: set before Triton is imported

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent / "src"))

import torch  # noqa: E402
import triton  # noqa: E402
from triton import knobs  # noqa: E402
from triton.compiler import compiler as triton_compiler  # noqa: E402
from triton.runtime import driver  # noqa: E402

import benchtools  # noqa: E402
import check_triton_compile  # noqa: E402
from chaincrf import CRF  # noqa: E402
from chaincrf.crf.kernels.triton import launch  # noqa: E402  (real JIT functions)

os.environ["TRITON_INTERPRET"] = "1"  # the planner runs the Triton kernel on CPU tensors
KERNELS = ("_forward_kernel", "_backward_kernel", "_dot_forward_kernel", "_dot_backward_kernel")


def _no_launcher(kernel: triton_compiler.CompiledKernel) -> None:
    """A compiled kernel's handles: its C launcher a no-op (nothing is loaded: no device)."""
    kernel._run = lambda *args: None
    kernel.module = kernel.function = 0


class _Stub:
    """A kernel whose launch does nothing (``kernel[grid](...)``)."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def _cell(B: int, T: int, K: int, budget: float) -> dict:
    """The entries' µs per call for one (B, T, K), side by side."""
    g = torch.Generator().manual_seed(0)
    em = torch.randn(B, T, K, generator=g)
    tags = torch.randint(K, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    torch.manual_seed(0)
    crf = CRF(K, batch_first=True, kernel="triton")
    params = list(crf.parameters())

    def nll():
        e = em.detach().requires_grad_(True)
        for q in params:
            q.grad = None
        crf.nll(e, tags, mask, reduction="sum", validate=False).backward()

    def viterbi():
        crf.viterbi(em, mask, validate=False)

    def loss(e):
        return crf.nll(e, tags, mask, reduction="sum", validate=False)

    compiled_loss = torch.compile(loss, fullgraph=True)

    def compiled():
        e = em.detach().requires_grad_(True)
        for q in params:
            q.grad = None
        compiled_loss(e).backward()

    def bare():
        e = em.detach().requires_grad_(True)
        (e * 2).sum().backward()

    compiler = check_triton_compile._Compiler()  # compiles each launch once, skips it
    knobs.runtime.jit_cache_hook = compiler
    try:
        nll()
        viterbi()
        compiled()
    finally:
        knobs.runtime.jit_cache_hook = None
    entries = {
        "bare": bare,
        "chaincrf, launches stubbed": _stubbed(nll),
        "chaincrf, Triton's launch path": nll,
        "compiled, launches stubbed": _stubbed(compiled),
        "compiled, Triton's launch path": compiled,
        "viterbi, launch stubbed": _stubbed(viterbi),
        "viterbi, Triton's launch path": viterbi,
    }
    times = benchtools.time_entries(entries, device="cpu", budget_s=budget, warmup=50)
    us = {name: t["median_s"] * 1e6 for name, t in times.items()}
    return {"B": B, "T": T, "K": K, "kernels_compiled": len(compiler.kernels), **us,
            "triton_launch_path_us": us["chaincrf, Triton's launch path"]
            - us["chaincrf, launches stubbed"],
            "x_bare": us["chaincrf, Triton's launch path"] / us["bare"],
            "compiled_over_eager": us["compiled, Triton's launch path"]
            / us["chaincrf, Triton's launch path"]}  # fmt: skip


def _stubbed(run: Callable[[], None]) -> Callable[[], None]:
    """``run`` with the launches as no-ops (swapping them in and out costs well under a µs)."""

    def call() -> None:
        real = {name: getattr(launch, name) for name in KERNELS}
        for name in KERNELS:
            setattr(launch, name, _Stub())
        try:
            run()
        finally:
            for name, kernel in real.items():
                setattr(launch, name, kernel)

    return call


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--budget", type=float, default=1.0, help="seconds per entry and cell")
    p.add_argument("--cells", nargs="+", default=["1x32x9", "1x32x50", "32x32x9"], help="BxTxK")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = benchtools.machine(__file__, argv)
    print(benchtools.machine_line(info), f"Triton {triton.__version__}", flush=True)

    driver.set_active(check_triton_compile._OfflineCuda(args.arch))
    triton_compiler.CompiledKernel._init_handles = _no_launcher  # type: ignore[method-assign]
    rows = []
    for cell in args.cells:
        B, T, K = (int(x) for x in cell.split("x"))
        row = _cell(B, T, K, args.budget)
        if row["kernels_compiled"] < 2:  # the calls did not take the Triton path: no figure
            raise SystemExit(f"B={B} T={T} K={K}: the Triton kernels were not launched")
        rows.append(row)
        print(json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()}))
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
