"""Compile every Triton kernel launch of the CRF for a real GPU, on a machine without one.

Triton's interpreter (``TRITON_INTERPRET=1``, what the CPU-only CI runs) executes the kernels
in numpy: it never lowers them to PTX, so it cannot see what fails only on a device: a
loop-carried value that changes type, a ``tl.dot`` shape or dtype the hardware lacks, a tile
that needs more shared memory or registers than a block may have ("out of resource" at the
first launch). This script runs the kernel's operations (``chaincrf.crf.kernels.triton``:
likelihood and log-partition with their backward passes, atomic and deterministic, Viterbi,
marginals) on CPU tensors over a grid of batch sizes, tag counts and dtypes, with Triton's
launch path pointed at an offline CUDA target (``--arch``, 90: H100/H200). Each launch is
compiled, as the device would compile it, to a cubin by Triton and ptxas, and not run (the
outputs stay unwritten: only the compilation is checked). For each distinct compiled kernel
it reports the registers per thread, spilled bytes, shared memory and warps (from
``cuobjdump``, shipped with Triton), and fails when one does not compile or asks for more
than a block of that GPU gets (65,536 registers, 227 KiB of shared memory on sm_90).

    python scripts/check_triton_compile.py                 # sm_90, the default grid
    python scripts/check_triton_compile.py --arch 80 90 --json out.json

It needs Triton with its NVIDIA backend (the ``gpu`` extra: ptxas and cuobjdump come with
it), no GPU and no CUDA driver; it sets ``TRITON_INTERPRET=0`` for itself. The checks use
Triton's documented hooks (``knobs.runtime.jit_cache_hook``, ``JITFunction.preload``) and an
offline driver object answering the target; tested with Triton 3.6 (the GPU machines') and 3.9.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ["TRITON_INTERPRET"] = "0"  # real JIT functions: set before Triton is imported

import torch
import triton
import triton.backends.nvidia
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.runtime import driver

LIMITS = {  # per block: (registers, shared memory bytes) of the GPUs of each architecture
    80: (65536, 166912),  # A100: 163 KiB
    86: (65536, 101376),  # RTX 30x0, A10: 99 KiB
    89: (65536, 101376),  # L4, L40, RTX 40x0: 99 KiB
    90: (65536, 232448),  # H100, H200: 227 KiB
}
CUOBJDUMP = Path(triton.backends.nvidia.__file__).parent / "bin" / "cuobjdump"


class _OfflineCuda:
    """What Triton's launch path asks of the active driver before it compiles: a device, a
    stream and the target. Nothing here loads or launches anything."""

    def __init__(self, arch: int) -> None:
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_current_target(self) -> GPUTarget:
        return self.target

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")


class _Compiler:
    """The launch hook: compiles each new specialisation for the target and skips the launch."""

    def __init__(self) -> None:
        self.kernels: dict[str, Any] = {}  # specialisation -> compiled kernel
        self.cases: dict[str, set[str]] = {}  # -> the cases that launched it
        self.constants: dict[str, dict[str, Any]] = {}  # -> its constexpr arguments
        self.compile_s: dict[str, float] = {}  # -> seconds to compile it
        self.case = ""
        self.seconds = 0.0
        self._inside = False

    def __call__(self, *, key, repr, fn, compile, is_manual_warmup, already_compiled):
        if self._inside:  # preload's own pass through the hook: compile
            return False
        # one specialisation: the argument types, alignments, constexpr values and options
        name = f"{fn.name}{compile['key']!r}"
        if name not in self.kernels:
            self._inside = True
            began = time.perf_counter()
            try:
                self.kernels[name] = fn.jit_function.preload(compile["specialization_data"])
            finally:
                self._inside = False
                self.seconds += time.perf_counter() - began
            params = fn.jit_function.params
            self.constants[name] = {
                params[path[0]].name: getattr(value, "value", value)
                for path, value in compile["constants"].items()
                if len(path) == 1 and not isinstance(getattr(value, "value", value), type(None))
            }
            self.compile_s[name] = time.perf_counter() - began
        self.cases.setdefault(name, set()).add(self.case)
        return True  # no device: the launch is skipped


def _usage(cubin: bytes) -> dict[str, int]:
    """REG, STACK, SHARED, LOCAL of the cubin's one function (``cuobjdump --dump-resource-usage``)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run(
            [str(CUOBJDUMP), "--dump-resource-usage", f.name],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    line = next(line for line in text.splitlines() if "REG:" in line)
    return {key: int(value) for key, value in re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", line)}


def _cases(batches: list[int], tags: list[int], length: int, dtypes: list[torch.dtype]):
    """(name, function) for every way the operations launch the kernels."""
    for B in batches:
        for K in tags:
            for dtype in dtypes:
                for operation, run in _operations(B, length, K, dtype):
                    yield f"B={B} K={K} {str(dtype).removeprefix('torch.')} {operation}", run


def _operations(B: int, T: int, K: int, dtype: torch.dtype):
    """(operation, function) for one shape and dtype: the training passes (atomic and
    deterministic), the log-partition's, a likelihood without gradient, the likelihood and
    log-partition validated, and decoding."""
    from chaincrf.crf.kernels import triton as kernel

    ops = kernel.operations()
    score_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    em = torch.zeros(B, T, K, dtype=dtype)
    mask = torch.ones(B, T, dtype=torch.bool)
    gold = torch.zeros(B, T, dtype=torch.long)
    scores = [torch.zeros(K, dtype=score_dtype), torch.zeros(K, K, dtype=score_dtype),
              torch.zeros(K, dtype=score_dtype)]  # fmt: skip

    def nll(e, s, validate=False):
        return ops.negative_log_likelihood(e, mask, *s, tags=gold, validate=validate)

    def trained(loss_of, deterministic=False):
        def run():
            e = em.clone().requires_grad_(True)
            s = [x.clone().requires_grad_(True) for x in scores]
            with _deterministic(deterministic):
                loss_of(e, s).sum().backward()

        return run

    runs = [
        ("nll+backward", trained(nll)),
        ("nll+backward deterministic", trained(nll, deterministic=True)),
        ("log_partition+backward",
         trained(lambda e, s: ops.log_partition(e, mask, *s, validate=False))),
        ("log_likelihood no grad",
         lambda: ops.log_likelihood(em, mask, *scores, tags=gold, validate=False)),
        # validate: the forward kernels' value checks (CHECK; the forward only: its backward
        # is nll+backward's, compiled above, and a compiled kernel's second launch would
        # run); the flags they would write stay unwritten here, so the eager checks may run
        # after them and find nothing
        ("nll validated", lambda: nll(*_requiring_grad(em, scores), validate=True)),
        ("log_partition validated",
         lambda: ops.log_partition(em, mask, *scores, validate=True)),
    ]  # fmt: skip
    if dtype in (torch.float32, torch.float64):  # decoding: the planner's dtypes
        runs.append(("viterbi", lambda: ops.viterbi(em, mask, *scores, validate=False)))
        runs.append(("marginals", lambda: ops.marginals(em, mask, *scores, validate=False)))
    return runs


def _requiring_grad(em: torch.Tensor, scores: list[torch.Tensor]):
    """Copies of the emissions and scores that require a gradient (a training forward)."""
    return em.clone().requires_grad_(True), [x.clone().requires_grad_(True) for x in scores]


@contextlib.contextmanager
def _deterministic(on: bool):
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(on)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def check(
    arch: int, batches: list[int], tags: list[int], length: int, dtypes: list[torch.dtype]
) -> dict[str, Any]:
    """Compile every launch of the grid for ``sm_<arch>``; return the report."""
    driver.set_active(_OfflineCuda(arch))
    compiler = _Compiler()
    knobs.runtime.jit_cache_hook = compiler
    failures: list[str] = []
    try:
        for name, run in _cases(batches, tags, length, dtypes):
            compiler.case = name
            try:
                run()
            except Exception as error:  # a compile error: reported, the rest goes on
                first = str(error).strip().splitlines()[0] if str(error).strip() else ""
                failures.append(f"sm_{arch} {name}: {type(error).__name__}: {first}"[:400])
    finally:
        knobs.runtime.jit_cache_hook = None  # (the offline driver stays: no device here)
    regs_limit, shared_limit = LIMITS.get(arch, (65536, 101376))
    kernels = []
    for signature, compiled in compiler.kernels.items():
        usage = _usage(compiled.asm["cubin"])
        warps = compiled.metadata.num_warps
        shared = max(usage["SHARED"], compiled.metadata.shared)
        name = compiled.metadata.name
        row = {
            "kernel": name,
            "num_warps": warps,
            "registers": usage["REG"],
            "spilled_bytes": usage["LOCAL"] + usage["STACK"],
            "shared_bytes": shared,
            "constants": compiler.constants[signature],
            "compile_s": round(compiler.compile_s[signature], 1),
            "example": sorted(compiler.cases[signature])[0],
            "launches": len(compiler.cases[signature]),
        }
        kernels.append(row)
        if usage["REG"] * warps * 32 > regs_limit:
            failures.append(f"sm_{arch} {name} ({row['example']}): {usage['REG']} registers x "
                            f"{warps * 32} threads > {regs_limit}")  # fmt: skip
        if shared > shared_limit:
            failures.append(f"sm_{arch} {name} ({row['example']}): {shared} bytes of shared "
                            f"memory > {shared_limit}")  # fmt: skip
    return {
        "arch": arch,
        "triton": triton.__version__,
        "torch": torch.__version__,
        "compile_s": compiler.seconds,
        "kernels": kernels,
        "failures": failures,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", nargs="+", type=int, default=[90], help="compute capabilities (x10)")
    p.add_argument("--batch", nargs="+", type=int, default=[1, 64, 4096])
    p.add_argument("--tags", nargs="+", type=int, default=[1, 5, 9, 16, 32, 50, 128, 200, 512])
    p.add_argument("--length", type=int, default=4)
    p.add_argument("--dtypes", nargs="+", default=["float32", "float64", "bfloat16", "float16"])
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    reports = []
    status = 0
    for arch in args.arch:
        report = check(
            arch, args.batch, args.tags, args.length, [getattr(torch, d) for d in args.dtypes]
        )
        reports.append(report)
        print(f"# sm_{arch}: {len(report['kernels'])} kernels compiled in "
              f"{report['compile_s']:.0f} s (Triton {report['triton']}, torch {report['torch']})")  # fmt: skip
        print("| kernel | constexprs | warps | registers | spilled bytes | shared bytes "
              "| compile s | launched by (one of) |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|")
        for row in sorted(reports[-1]["kernels"], key=lambda r: (r["kernel"], r["example"])):
            consts = " ".join(f"{k}={v}" for k, v in row["constants"].items())
            print(f"| {row['kernel']} | {consts} | {row['num_warps']} | {row['registers']} | "
                  f"{row['spilled_bytes']} | {row['shared_bytes']} | {row['compile_s']} | "
                  f"{row['example']} |")  # fmt: skip
        for failure in report["failures"]:
            print("FAILED", failure)
            status = 1
    if args.json:
        args.json.write_text(json.dumps(reports, indent=1))
    return status


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    raise SystemExit(main())
