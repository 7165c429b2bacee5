"""Is a compiled CRF call cheaper than an eager one, and where does the difference go?

For each cell (B, T, K), side by side in one process (``scripts/benchtools.py``), NLL +
backward of:

* ``eager``: ``chaincrf.CRF.nll`` called eagerly;
* ``compiled``: the same function through ``torch.compile(fullgraph=True)``;
* ``compiled, guards skipped``: the compiled function under
  ``torch.compiler.set_stance("default", skip_guard_eval_unsafe=True)``: what Dynamo's guards
  on the layer cost (the context manager's own few µs included);
* ``floor eager`` / ``floor compiled``: an ``autograd.Function`` around a custom op with the
  CRF op's signature that does nothing (returns zeros), eager and compiled: what torch's
  compiled runtime (Dynamo's guards, AOTAutograd's forward and backward wrappers) costs a call
  of this shape whatever the op does;
* ``model eager`` / ``model compiled`` and ``plain eager`` / ``plain compiled``: an embedding
  and a projection under the CRF, or under a plain log-sum-exp loss, eager and compiled whole:
  the CRF's own cost inside a compiled model is ``model - plain``;
* ``viterbi eager`` / ``viterbi compiled``: ``chaincrf.CRF.viterbi`` (best paths and scores
  as tensors), eagerly and through ``torch.compile(fullgraph=True)``.

The report gives ``compiled / eager`` (above 1: the compiled call is slower), the guards'
cost, the floor's extra cost, and the CRF's marginal cost in a model, eager and compiled. Usage:
``python scripts/bench_compile.py --threads 1 --json out.json`` (about a minute on a CPU;
``--device cuda`` on a GPU).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchtools: a sibling
import benchtools
from chaincrf import CRF

_LIBRARY = torch.library.Library("chaincrf_bench", "DEF")
_LIBRARY.define(
    "noop(Tensor em, Tensor tags, Tensor mask, Tensor start, Tensor trans, Tensor end) "
    "-> (Tensor, Tensor, Tensor, Tensor, Tensor)"
)


def _noop(em, tags, mask, start, trans, end):
    zeros = torch.zeros_like
    return em.new_zeros(()), zeros(em), zeros(start), zeros(trans), zeros(end)


for _key in ("CPU", "CUDA"):
    _LIBRARY.impl("noop", _noop, _key)


@torch.library.register_fake("chaincrf_bench::noop", lib=_LIBRARY)
def _(em, tags, mask, start, trans, end):
    empty = torch.empty_like
    return em.new_empty(()), empty(em), empty(start), empty(trans), empty(end)


class _Floor(torch.autograd.Function):
    """The CRF op's shape of call (as ``chaincrf::log_likelihood_sum`` under torch.compile:
    value and gradient from one op, the backward scales them) around an op that does nothing."""

    @staticmethod
    def forward(em, start, trans, end, tags, mask):
        return torch.ops.chaincrf_bench.noop(em, tags, mask, start, trans, end)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*output[1:])
        ctx.mark_non_differentiable(*output[1:])

    @staticmethod
    def backward(ctx, grad, *_):
        a, b, c, d = ctx.saved_tensors
        return a * grad, b * grad, c * grad, d * grad, None, None


class _Model(torch.nn.Module):
    def __init__(self, K: int, crf: bool):
        super().__init__()
        self.embed = torch.nn.Embedding(1000, 64)
        self.proj = torch.nn.Linear(64, K)
        self.crf = CRF(K, batch_first=True) if crf else None

    def forward(self, words, tags, mask):
        em = self.proj(self.embed(words))
        if self.crf is None:
            return em.logsumexp(-1).sum()
        return self.crf.nll(em, tags, mask, validate=False)


def _cell(B: int, T: int, K: int, device: str, budget: float) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    em = (torch.randn(B, T, K, generator=g) * 2).to(device).requires_grad_(True)
    tags = torch.randint(K, (B, T), generator=g).to(device)
    words = torch.randint(1000, (B, T), generator=g).to(device)
    mask = (torch.arange(T) < torch.randint(max(1, T // 2), T + 1, (B, 1), generator=g)).to(device)
    mask[0] = True
    torch.manual_seed(0)
    crf = CRF(K, batch_first=True).to(device)
    scores = [p.detach().clone().requires_grad_(True) for p in crf.parameters()]
    model, plain = _Model(K, True).to(device), _Model(K, False).to(device)

    def nll(e):
        return crf.nll(e, tags, mask, validate=False)

    def floor(e):
        start, trans, end = scores
        return _Floor.apply(e, start, trans, end, tags, mask)[0]

    def stepped(fn, module=None):
        def run():
            if module is not None:
                module.zero_grad(set_to_none=True)
                fn(words, tags, mask).backward()
            else:
                em.grad = None
                fn(em).backward()

        return run

    compiled = stepped(torch.compile(nll, fullgraph=True))
    frozen = em.detach()

    def viterbi(e):
        return crf.viterbi(e, mask, validate=False)

    viterbi_compiled = torch.compile(viterbi, fullgraph=True)

    def unguarded():
        with torch.compiler.set_stance("default", skip_guard_eval_unsafe=True):
            compiled()

    entries = {
        "eager": stepped(nll),
        "compiled": compiled,
        "compiled, guards skipped": unguarded,
        "floor eager": stepped(floor),
        "floor compiled": stepped(torch.compile(floor, fullgraph=True)),
        "model eager": stepped(model, model),
        "model compiled": stepped(torch.compile(model, fullgraph=True), model),
        "plain eager": stepped(plain, plain),
        "plain compiled": stepped(torch.compile(plain, fullgraph=True), plain),
        "viterbi eager": lambda: viterbi(frozen),
        "viterbi compiled": lambda: viterbi_compiled(frozen),
    }
    # compile, then settle: a compiled call's first hundreds are slower
    for run in entries.values():
        for _ in range(200):
            run()
    times = benchtools.time_entries(entries, device=device, budget_s=budget, max_reps=16)
    us = {name: t["median_s"] * 1e6 for name, t in times.items()}
    return {
        "B": B,
        "T": T,
        "K": K,
        "us": us,
        "compiled_over_eager": us["compiled"] / us["eager"],
        "guards_us": us["compiled"] - us["compiled, guards skipped"],
        "floor_extra_us": us["floor compiled"] - us["floor eager"],
        "crf_in_model_eager_us": us["model eager"] - us["plain eager"],
        "crf_in_model_compiled_us": us["model compiled"] - us["plain compiled"],
        "viterbi_compiled_over_eager": us["viterbi compiled"] / us["viterbi eager"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", nargs="+", default=["1x32x9", "32x128x9", "512x32x50"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--budget", type=float, default=1.0, help="seconds per entry per cell")
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report: dict[str, Any] = {
        "machine": benchtools.machine(__file__, argv, args.device),
        "cells": [],
    }
    print(benchtools.machine_line(report["machine"]), flush=True)
    print("| B | T | K | eager µs | compiled µs | compiled / eager | guards µs "
          "| torch's floor, extra µs | CRF in a model µs: eager | compiled "
          "| Viterbi µs: eager | compiled | compiled / eager |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for cell in args.cells:
        B, T, K = (int(n) for n in cell.split("x"))
        row = _cell(B, T, K, args.device, args.budget)
        report["cells"].append(row)
        us = row["us"]
        print(
            f"| {B} | {T} | {K} | {us['eager']:.0f} | {us['compiled']:.0f} | "
            f"{row['compiled_over_eager']:.2f} | {row['guards_us']:.0f} | "
            f"{row['floor_extra_us']:.0f} | "
            f"{row['crf_in_model_eager_us']:.0f} | {row['crf_in_model_compiled_us']:.0f} | "
            f"{us['viterbi eager']:.0f} | {us['viterbi compiled']:.0f} | "
            f"{row['viterbi_compiled_over_eager']:.2f} |",
            flush=True,
        )
        if args.json:
            args.json.write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
