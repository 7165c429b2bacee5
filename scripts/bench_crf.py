"""Benchmark chaincrf's CRF layer against pytorch-crf and torch-struct, side by side.

All libraries get identical inputs (emissions, tags, left-aligned mask and the same transition
parameters) in one process. Before any timing, every cell is cross-checked: log-likelihoods,
log-partitions, best-path scores and marginals agree to 1e-4 (relative), best paths are identical,
and emission/transition gradients agree; any disagreement exits non-zero. Timing is interleaved
(the library order rotates each repetition), follows a warm-up, and reports the median.

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

torch-struct is fed the standard log-potentials (B, T-1, K, K), indexed [to, from]:
``phi[b, n, j, i] = transitions[i, j] + emissions[b, n + 1, j]``, plus ``start[i] + emissions[b,
0, i]`` at n = 0 and ``end[j]`` at n = length - 2, with ``lengths``; building them is timed.
Its log-likelihood is the gold score gathered from ``phi`` minus ``partition``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.metadata
import inspect
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from chaincrf.crf import kernels

# torch-struct's distributions predate torch's arg_constraints check
warnings.filterwarnings("ignore", message=".*does not define `arg_constraints`")

LIBS = ("chaincrf", "pytorch-crf", "torch-struct")
PEERS = ("pytorch-crf", "torch-struct")
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
RTOL = 1e-4


class CrossCheckError(RuntimeError):
    """Raised when the libraries disagree on a cell."""


# ---------------------------------------------------------------------------------------------
# inputs and models


@dataclass
class Inputs:
    """One benchmark cell's data, shared by every library.

    Attributes:
        emissions: float tensor (batch, seq_len, num_tags).
        tags: long tensor (batch, seq_len), gold tags (valid indices in padding too).
        mask: bool tensor (batch, seq_len), left-aligned; row 0 has full length.
        lengths: long tensor (batch,).
        start: float tensor (num_tags,).
        end: float tensor (num_tags,).
        transitions: float tensor (num_tags, num_tags), indexed [from, to].
    """

    emissions: torch.Tensor
    tags: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor
    start: torch.Tensor
    end: torch.Tensor
    transitions: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.sum())


def make_inputs(
    batch: int, length: int, num_tags: int, seed: int = 0, device: str = "cpu"
) -> Inputs:
    """Random inputs for one cell; lengths uniform in [length/2, length], the first one = length."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + batch * 10_007 + length * 101 + num_tags)
    lengths = torch.randint(max(2, length // 2), length + 1, (batch,), generator=gen)
    lengths[0] = length  # the padded width is exactly `length` (torch-struct needs max == width)
    mask = torch.arange(length)[None, :] < lengths[:, None]
    emissions = torch.randn(batch, length, num_tags, generator=gen)
    tags = torch.randint(0, num_tags, (batch, length), generator=gen)
    start = torch.randn(num_tags, generator=gen) * 0.5
    end = torch.randn(num_tags, generator=gen) * 0.5
    transitions = torch.randn(num_tags, num_tags, generator=gen) * 0.5
    return Inputs(
        *(x.to(device) for x in (emissions, tags, mask, lengths, start, end, transitions))
    )


def _chaincrf_class() -> tuple[type | None, str]:
    try:
        from chaincrf.crf import CRF
    except Exception as err:  # the layer may not exist yet, or fail to import
        return None, f"{type(err).__name__}: {err}"
    return CRF, ""


class StructCRF(torch.nn.Module):
    """torch-struct's LinearChainCRF fed from emissions + pytorch-crf-style parameters."""

    def __init__(self, num_tags: int) -> None:
        super().__init__()
        self.start_transitions = torch.nn.Parameter(torch.zeros(num_tags))
        self.end_transitions = torch.nn.Parameter(torch.zeros(num_tags))
        self.transitions = torch.nn.Parameter(torch.zeros(num_tags, num_tags))

    def potentials(self, emissions: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Log-potentials (B, T-1, K, K) indexed [batch, step, to, from]."""
        T = emissions.shape[1]
        steps = torch.arange(T - 1, device=emissions.device)
        first = (steps == 0).to(emissions.dtype)[None, :, None, None]  # (1, T-1, 1, 1)
        last = (steps[None, :] == (lengths - 2)[:, None]).to(emissions.dtype)  # (B, T-1)
        phi = emissions[:, 1:, :, None] + self.transitions.t()[None, None]  # (B, T-1, K, K)
        phi = phi + first * (self.start_transitions + emissions[:, 0])[:, None, None, :]
        return phi + last[:, :, None, None] * self.end_transitions[None, None, :, None]

    def dist(self, emissions: torch.Tensor, lengths: torch.Tensor):
        import torch_struct

        return torch_struct.LinearChainCRF(self.potentials(emissions, lengths), lengths=lengths)

    def log_likelihood(
        self, emissions: torch.Tensor, tags: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """Per-sequence log-likelihood (B,)."""
        import torch_struct

        B, T, K = emissions.shape
        phi = self.potentials(emissions, lengths)
        edge_on = torch.arange(1, T, device=emissions.device)[None, :] < lengths[:, None]
        index = (tags[:, 1:] * K + tags[:, :-1])[..., None]  # (B, T-1, 1): [to, from] flattened
        gold = (phi.reshape(B, T - 1, K * K).gather(2, index).squeeze(2) * edge_on).sum(1)
        return gold - torch_struct.LinearChainCRF(phi, lengths=lengths).partition


@dataclass
class Models:
    chaincrf: Any
    torchcrf: Any
    struct: StructCRF
    inputs: Inputs
    validate: bool | None = None  # passed to chaincrf calls when not None
    kernels: tuple[str, ...] = ()  # chaincrf kernels also timed forced (entries chaincrf[k])


def _accepts(fn: Callable, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def make_models(inputs: Inputs, chaincrf_cls: type | None, validate: bool | None) -> Models:
    import torchcrf

    K = inputs.emissions.shape[-1]
    device = inputs.emissions.device
    ref = torchcrf.CRF(K, batch_first=True).to(device)
    with torch.no_grad():
        ref.start_transitions.copy_(inputs.start)
        ref.end_transitions.copy_(inputs.end)
        ref.transitions.copy_(inputs.transitions)
    struct = StructCRF(K).to(device)
    struct.load_state_dict(ref.state_dict())
    ours = None
    if chaincrf_cls is not None:
        kwargs = {}
        if validate is not None and _accepts(chaincrf_cls.__init__, "validate"):
            kwargs["validate"] = validate
            validate = None  # set once at construction
        ours = chaincrf_cls(K, batch_first=True, **kwargs).to(device)
        ours.load_state_dict(ref.state_dict())  # drop-in: pytorch-crf checkpoints load
    return Models(ours, ref, struct, inputs, validate)


def _ckw(models: Models, fn: Callable) -> dict:
    if models.validate is not None and _accepts(fn, "validate"):
        return {"validate": models.validate}
    return {}


# ---------------------------------------------------------------------------------------------
# workloads


def _zero_grads(*tensors: torch.Tensor) -> None:
    for t in tensors:
        t.grad = None


def workload_fns(models: Models, workload: str, libs: Sequence[str]) -> dict[str, Callable]:
    """The timed callables of one workload, keyed by entry name (only for libraries in `libs`)."""
    x = models.inputs
    em, tags, mask, lengths = x.emissions, x.tags, x.mask, x.lengths
    ours, ref, struct = models.chaincrf, models.torchcrf, models.struct
    fns: dict[str, Callable] = {}
    if workload == "nll":
        if ours is not None:
            kw = _ckw(models, ours.forward)

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
                _zero_grads(leaf, *params)
                loss = -call()
                loss.backward()
                return loss

            return run

        if ours is not None:
            kw = _ckw(models, ours.forward)
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
            kw_d, kw_v = _ckw(models, ours.decode), _ckw(models, ours.viterbi)

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
            kw = _ckw(models, ours.viterbi)

            def f():
                with torch.no_grad():
                    return ours.viterbi(em, mask, k=5, **kw)

            fns["chaincrf"] = f
    elif workload == "marginals":
        if ours is not None:
            kw = _ckw(models, ours.marginals)

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


def struct_bytes_estimate(batch: int, length: int, num_tags: int) -> int:
    """Rough peak bytes of torch-struct's log-depth scan (the (B, T/2, K, K, K) first merge)."""
    bin_n = 2 ** math.ceil(math.log2(max(length - 1, 2)))
    merge = batch * (bin_n // 2) * num_tags**3 * 4
    charts = batch * bin_n * num_tags**2 * 4
    return 3 * merge + 6 * charts


# ---------------------------------------------------------------------------------------------
# cross-check


def _node_marginals(edge: torch.Tensor) -> torch.Tensor:
    """(B, T-1, K, K) [to, from] edge marginals -> (B, T, K) node marginals."""
    return torch.cat([edge[:, :1].sum(-2), edge.sum(-1)], dim=1)


def _struct_paths(parts: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, T-1, K, K) one-hot argmax edges -> (B, T) tags, -1 past each length."""
    path = torch.cat([parts[:, :1].sum(-2).argmax(-1), parts.sum(-1).argmax(-1)], dim=1)
    T = path.shape[1]
    on = torch.arange(T, device=path.device)[None, :] < lengths[:, None]
    return path.masked_fill(~on, -1)


def _lists_to_tensor(paths: list[list[int]], length: int) -> torch.Tensor:
    out = torch.full((len(paths), length), -1, dtype=torch.long)
    for i, p in enumerate(paths):
        out[i, : len(p)] = torch.tensor(p, dtype=torch.long)
    return out


def collect_outputs(
    models: Models, libs: Sequence[str], workloads: Sequence[str], with_struct: bool = True
) -> dict[str, dict[str, Any]]:
    """Every library's answer, keyed by quantity then library, for `cross_check`.

    The first answer of each quantity, the reference, is pytorch-crf's computed in float64.

    Quantities: ``log_likelihood`` (B,), ``log_partition`` (B,), ``paths`` (B, T) long with -1
    past each length, ``best_score`` (B,), ``marginals`` (B, T, K), ``grad_emissions`` (B, T, K),
    ``grad_transitions`` (K, K), ``kbest_scores`` (B, 5) and ``kbest_rescored`` (B, 5).
    """
    x = models.inputs
    em, tags, mask, lengths = x.emissions, x.tags, x.mask, x.lengths
    _, T, K = em.shape
    ours, struct = models.chaincrf, models.struct
    # pytorch-crf in float64 is the reference: its float32 forward drifts on long sequences
    # (at T=10,000 its transition gradients are off by ~2% where chaincrf's agree to 1e-7)
    ref = copy.deepcopy(models.torchcrf).double()
    use = {lib: lib in libs for lib in LIBS}
    use["chaincrf"] = use["chaincrf"] and ours is not None
    use["torch-struct"] = use["torch-struct"] and with_struct
    out: dict[str, dict[str, Any]] = {}

    em64 = em.double()

    def put(quantity: str, lib: str, value: Any) -> None:
        out.setdefault(quantity, {})[lib] = (
            value.detach().cpu() if torch.is_tensor(value) else value
        )

    def ref_score(paths: torch.Tensor) -> torch.Tensor:
        """pytorch-crf's unnormalised score of given paths (B,) (padding -1 -> 0)."""
        with torch.no_grad():
            norm = ref._compute_normalizer(em64.transpose(0, 1), mask.transpose(0, 1))
            return ref(em64, paths.clamp(min=0).to(em.device), mask, reduction="none") + norm

    with torch.no_grad():
        put("log_likelihood", "pytorch-crf", ref(em64, tags, mask, reduction="none"))
        put(
            "log_partition",
            "pytorch-crf",
            ref._compute_normalizer(em64.transpose(0, 1), mask.transpose(0, 1)),
        )
        ref_paths = _lists_to_tensor(models.torchcrf.decode(em, mask), T)  # native float32
        put("paths", "pytorch-crf", ref_paths)
        put("best_score", "pytorch-crf", ref_score(ref_paths))
        if use["chaincrf"]:
            kw = _ckw(models, ours.forward)
            put("log_likelihood", "chaincrf", ours(em, tags, mask, reduction="none", **kw))
            put("log_partition", "chaincrf", ours.log_partition(em, mask))
            put("paths", "chaincrf", _lists_to_tensor(ours.decode(em, mask), T))
            paths, scores = ours.viterbi(em, mask)
            put("paths", "chaincrf.viterbi", paths)
            put("best_score", "chaincrf.viterbi", scores)
            put("best_score", "chaincrf path rescored in float64", ref_score(paths))
            if "viterbi_k5" in workloads:
                kpaths, kscores = ours.viterbi(em, mask, k=5)
                put("kbest_scores", "chaincrf", kscores)
                # where the two best scores tie in float32, either tied path is the best one
                top = kpaths[:, 0].clone()
                tied = (kscores[:, 0] == kscores[:, 1]) & (kpaths[:, 1] == ref_paths).all(1)
                top[tied] = kpaths[tied, 1]
                put("paths", "chaincrf.viterbi_k5[0] (float32 ties accepted)", top)
                put("best_score", "chaincrf.viterbi_k5[0]", kscores[:, 0])
                finite = torch.isfinite(kscores.cpu())
                rescored = torch.stack([ref_score(kpaths[:, j]).cpu() for j in range(5)], 1)
                put(
                    "kbest_scores",
                    "chaincrf (paths rescored by pytorch-crf)",
                    torch.where(finite, rescored, kscores.cpu()),
                )
            if "marginals" in workloads:
                put("marginals", "chaincrf", ours.marginals(em, mask))
    if use["torch-struct"]:
        put("log_likelihood", "torch-struct", struct.log_likelihood(em, tags, lengths))
        dist = struct.dist(em.detach(), lengths)
        put("log_partition", "torch-struct", dist.partition)
        put("best_score", "torch-struct", dist.max)
        put("paths", "torch-struct", _struct_paths(dist.argmax, lengths))
        put(
            "best_score",
            "torch-struct path rescored in float64",
            ref_score(_struct_paths(dist.argmax, lengths)),
        )
        if "marginals" in workloads:
            put("marginals", "torch-struct", _node_marginals(dist.marginals))
        B_, T_, K_ = em.shape
        small = struct_bytes_estimate(B_, T_, K_) * 25 <= 2**30  # k-max costs k^2 more memory
        if "viterbi_k5" in workloads and use["chaincrf"] and K**2 >= 5 and small:
            # torch-struct's k-max returns the 5 best scores; rows with < 5 paths are skipped
            put("kbest_scores", "torch-struct", dist.kmax(5).transpose(0, 1))
    if "nll+backward" in workloads:
        grads = {}
        for lib, model, call in (
            ("pytorch-crf", ref, lambda e: ref(e.double(), tags, mask, reduction="sum")),
            ("chaincrf", ours, lambda e: ours(e, tags, mask, reduction="sum")),
            ("torch-struct", struct, lambda e: struct.log_likelihood(e, tags, lengths).sum()),
        ):
            if not use[lib]:
                continue
            leaf = em.detach().clone().requires_grad_(True)
            _zero_grads(*model.parameters())
            call(leaf).backward()
            grads[lib] = (leaf.grad, model.transitions.grad)
            _zero_grads(*model.parameters())
        for lib, (g_em, g_tr) in grads.items():
            put("grad_emissions", lib, g_em)
            put("grad_transitions", lib, g_tr)
    out["_lengths"] = {"": lengths.cpu()}
    return out


def cross_check(outputs: dict[str, dict[str, Any]], rtol: float = RTOL) -> list[str]:
    """Compare every library's answer with the first one listed; return the disagreements.

    Real numbers agree when ``|a - b| <= rtol * max(1, |b|)`` elementwise (marginals and
    gradients: ``rtol`` absolute, scaled by the largest magnitude); paths must be identical.
    An empty list means all agree.
    """
    problems: list[str] = []
    lengths = outputs.get("_lengths", {}).get("")
    for quantity, by_lib in outputs.items():
        if quantity.startswith("_") or len(by_lib) < 1:
            continue
        names = list(by_lib)
        base_name, base = names[0], by_lib[names[0]]
        for name in names:
            value = by_lib[name]
            if quantity == "paths":
                if lengths is not None and value.shape == base.shape:
                    T = value.shape[1]
                    on = torch.arange(T)[None, :] < lengths[:, None]
                    bad_pad = (value[~on] != -1).any()
                    if bad_pad:
                        problems.append(f"paths: {name} has non -1 entries past the lengths")
                if value.shape != base.shape or not torch.equal(value, base):
                    rows = (
                        (value != base).any(1).nonzero().flatten().tolist()
                        if value.shape == base.shape
                        else "shape"
                    )
                    problems.append(f"paths: {name} differs from {base_name} (rows {rows})")
                continue
            if quantity == "kbest_scores":
                other = by_lib[name]
                if name != base_name:
                    fin = torch.isfinite(base) & torch.isfinite(other)
                    if (
                        not torch.equal(torch.isfinite(base), torch.isfinite(other))
                        and name != "torch-struct"
                    ):
                        problems.append(f"kbest_scores: {name} -inf pattern differs")
                    base_f, other_f = base[fin], other[fin]
                else:
                    sorted_ok = (
                        base[:, :-1] >= base[:, 1:] - 1e-4 * base.abs()[:, 1:].clamp(min=1)
                    ) | ~torch.isfinite(base[:, 1:])
                    if not bool(sorted_ok.all()):
                        problems.append(f"kbest_scores: {name} not in descending order")
                    continue
            else:
                base_f, other_f = base.double(), value.double()
                if base_f.shape != other_f.shape:
                    problems.append(
                        f"{quantity}: {name} shape {tuple(other_f.shape)} != "
                        f"{base_name} shape {tuple(base_f.shape)}"
                    )
                    continue
            base_f, other_f = base_f.double(), other_f.double()
            if quantity in ("marginals", "grad_emissions", "grad_transitions"):
                scale = max(1.0, float(base_f.abs().max())) if base_f.numel() else 1.0
                tol = rtol * scale
                err = (base_f - other_f).abs()
            else:
                tol = rtol * base_f.abs().clamp(min=1.0)
                err = (base_f - other_f).abs()
            if (err.numel() and not bool((err <= tol).all())) or bool(other_f.isnan().any()):
                worst = float(err.max()) if err.numel() else float("nan")
                problems.append(
                    f"{quantity}: {name} differs from {base_name} (max abs diff {worst:.3g})"
                )
    if "marginals" in outputs and lengths is not None:
        for name, m in outputs["marginals"].items():
            T = m.shape[1]
            on = torch.arange(T)[None, :] < lengths[:, None]
            sums = m.double().sum(-1)
            if not bool(((sums - on.double()).abs() <= 1e-4).all()):
                problems.append(f"marginals: {name} rows do not sum to 1 on / 0 off the mask")
    return problems


# ---------------------------------------------------------------------------------------------
# timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    fns: dict[str, Callable],
    device: torch.device,
    min_reps: int,
    max_reps: int,
    budget_s: float,
    min_sample_s: float = 0.005,
) -> dict[str, dict[str, float]]:
    """Median seconds per call of each callable, timed interleaved with a rotating order.

    Each callable is warmed up, then repeated in samples of ``inner`` calls (chosen so a
    sample lasts ``min_sample_s``) until it has ``min_reps`` samples and ``budget_s`` seconds,
    or ``max_reps`` samples.
    """
    names = list(fns)
    inner, spent, samples = {}, dict.fromkeys(names, 0.0), {n: [] for n in names}
    for name in names:  # warm-up, then one timed call to size the samples
        t0 = time.perf_counter()
        fns[name]()
        _sync(device)
        once = time.perf_counter() - t0
        if once < budget_s / 4:  # cheap enough for a second, warmer calibration call
            t0 = time.perf_counter()
            fns[name]()
            _sync(device)
            once = time.perf_counter() - t0
        inner[name] = max(1, min(1000, math.ceil(min_sample_s / max(once, 1e-7))))
        spent[name] += once
    for rep in range(max_reps):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        active = [n for n in order if len(samples[n]) < min_reps or spent[n] < budget_s]
        if not active:
            break
        for name in active:
            fn, n = fns[name], inner[name]
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            _sync(device)
            dt = time.perf_counter() - t0
            spent[name] += dt
            samples[name].append(dt / n)
    return {
        n: {"median_s": statistics.median(s), "min_s": min(s), "reps": len(s), "inner": inner[n]}
        for n, s in samples.items()
    }


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
    cls, _ = _chaincrf_class()
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
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--memory-child",
            lib,
            "--batch",
            str(batch),
            "--length",
            str(length),
            "--tags",
            str(num_tags),
            "--device",
            device,
            "--threads",
            str(torch.get_num_threads()),
        ]
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
            t = time_interleaved(fns, torch.device(device), 1, 1, 0.0)
            res[wl] = {n: round(v["median_s"], 4) for n, v in t.items()}
    except Exception as err:  # report, do not hide
        res["error"] = f"{type(err).__name__}: {err}"
    return res


# ---------------------------------------------------------------------------------------------
# report


def machine_info(threads: int) -> dict:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass

    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "chaincrf": version("chaincrf"),
        "pytorch-crf": version("pytorch-crf"),
        "torch-struct": version("torch-struct"),
        "platform": platform.platform(),
        "load_average_1_5_15": [round(v, 2) for v in os.getloadavg()],
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "unset"),
    }
    try:
        info["chaincrf_git"] = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                cwd=Path(__file__).resolve().parent,
                check=False,
            ).stdout.strip()
            or "none"
        )
    except OSError:
        info["chaincrf_git"] = "unknown"
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


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
    m = report["machine"]
    lines = ["# CRF benchmark: chaincrf vs pytorch-crf vs torch-struct", ""]
    lines += [
        f"- Machine: {m['cpu']}, {m['cores']} cores visible, torch threads {m['torch_threads']}"
        + (f", GPU {m['cuda_device']}" if "cuda_device" in m else ""),
        f"- Versions: python {m['python']}, torch {m['torch']}, chaincrf {m['chaincrf']} "
        f"(git {m.get('chaincrf_git')}), pytorch-crf {m['pytorch-crf']}, "
        f"torch-struct {m['torch-struct']}",
        f"- Load average (1/5/15 min) when the report was written: "
        f"{m['load_average_1_5_15']}; OMP_WAIT_POLICY={m['OMP_WAIT_POLICY']}",
        f"- Command: `{report['command']}`",
        f"- Settings: float32, lengths uniform in [T/2, T] (first row = T), seed "
        f"{report['settings']['seed']}, warm-up then median of {report['settings']['min_reps']}–"
        f"{report['settings']['max_reps']} interleaved repetitions (budget "
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
        timings = time_interleaved(fns, torch.device(device), args.min_reps, args.reps, args.budget)
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
    chaincrf_cls, why = _chaincrf_class()
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
        "command": (
            "OMP_WAIT_POLICY=" + os.environ["OMP_WAIT_POLICY"] + " "
            if "OMP_WAIT_POLICY" in os.environ
            else ""
        )
        + "python "
        + " ".join([os.path.relpath(__file__), *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine_info(torch.get_num_threads()),
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
