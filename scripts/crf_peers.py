"""chaincrf's peers (pytorch-crf, torch-struct) fed identical inputs, and the cross-check.

Shared by ``scripts/bench_crf.py`` (which cross-checks every cell before timing it) and
``tests/test_crf_peers.py`` (which runs the cross-check on small shapes in the fast lane).

Every library gets the same emissions, gold tags, left-aligned mask and transition parameters
(pytorch-crf's layout: ``start_transitions``, ``end_transitions``, ``transitions`` indexed
[from, to]). torch-struct is fed the standard log-potentials (B, T-1, K, K), indexed [to, from]:
``phi[b, n, j, i] = transitions[i, j] + emissions[b, n + 1, j]``, plus ``start[i] +
emissions[b, 0, i]`` at n = 0 and ``end[j]`` at n = length - 2, with ``lengths``; its
log-likelihood is the gold score gathered from ``phi`` minus ``partition``.

:func:`collect_outputs` gathers every library's answer to each quantity (log-likelihood,
log-partition, best paths and their scores, k-best scores, marginals, gradients), the first one
pytorch-crf's in float64; :func:`cross_check` lists the disagreements (none: they agree).
"""

from __future__ import annotations

import copy
import inspect
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

# torch-struct's distributions predate torch's arg_constraints check
warnings.filterwarnings("ignore", message=".*does not define `arg_constraints`")

LIBS = ("chaincrf", "pytorch-crf", "torch-struct")
PEERS = ("pytorch-crf", "torch-struct")
RTOL = 1e-4

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
    lengths = torch.randint(max(min(2, length), length // 2), length + 1, (batch,), generator=gen)
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


def chaincrf_class() -> tuple[type | None, str]:
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


def chaincrf_kwargs(models: Models, fn: Callable) -> dict:
    if models.validate is not None and _accepts(fn, "validate"):
        return {"validate": models.validate}
    return {}


def zero_grads(*tensors: torch.Tensor) -> None:
    for t in tensors:
        t.grad = None


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
            kw = chaincrf_kwargs(models, ours.forward)
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
            zero_grads(*model.parameters())
            call(leaf).backward()
            g_tr = model.transitions.grad  # None where no transition was used (T = 1)
            grads[lib] = (leaf.grad, torch.zeros_like(model.transitions) if g_tr is None else g_tr)
            zero_grads(*model.parameters())
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
