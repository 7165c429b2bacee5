"""The CRF on a CUDA device: speed against the peers and the hardware floor, exactness against
float64, kernel launches and host synchronisations per call, torch.compile and CUDA graphs.

Every section writes its rows to one JSON report (``--json``) and prints a Markdown table:

* ``grid``: NLL + backward and decode (``viterbi``, tensors) over B x T x K, chaincrf (the
  planner's choice: the Triton kernels) against pytorch-crf and torch-struct in the same
  process, float32. Each library's log-likelihood and gradients are first checked against a
  float64 reference (chaincrf's eager kernel in float64 where T <= 128, its Triton kernels in
  float64 beyond: both tested against brute force), so a failure names the wrong side. Times
  are wall-clock per call (host included: what a training loop sees), the libraries timed
  side by side by ``scripts/benchtools.py`` (warm-up, then blocks of calls synchronised at
  their ends, in balanced orders; the median). Each cell prints its floor: bytes moved / 4.8 TB/s, and the
  serial-step floor T x ``--step-ns``. Where 16 <= K <= 128 the Triton likelihood also runs
  with each step forced (``--steps log dot``: ``chaincrf[log]``, ``chaincrf[dot]``, each
  checked against float64 too: the tensor cores' TF32x3 accuracy), and ``x_log_over_dot``
  is the exp-space kernels' speed-up.
* ``long``: float32 against float64 (eager kernel) at T = 512, 4,096 and 10,000: log Z, the
  log-likelihood, the emissions' and transitions' gradients and the marginals.
* ``scan``: few long rows (``--scan-cells``: B = 1 and 4, T = 512 to 10,000, K = 9): NLL + backward and Viterbi
  by the tree kernel (log2(T) levels over every SM) against the Triton kernels (T serial
  steps), side by side, each checked against float64 (``nll_rel``, ``em_grad_abs``): the
  crossover that ``chaincrf.crf.tuning.TREE`` (``min_length``, ``max_rows``) should hold.
* ``launches``: torch.profiler's kernel launches and ``torch.cuda.set_sync_debug_mode``'s
  synchronisations per NLL + backward, with and without ``validate`` (and with bfloat16
  emissions, as autocast gives them: no conversion launch expected), and the host's time per
  call (50 calls queued without a wait: the floor of a small batch's step).
* ``compile``: ``torch.compile(fullgraph=True)`` of a module holding the CRF against eager
  (results and time), and pytorch-crf under ``torch.compile(mode="reduce-overhead")``.
* ``graph``: a whole training step (embedding, linear, CRF NLL, backward, Adam) captured in a
  CUDA graph and replayed equals eager.
* ``host`` (CPU only, not in the default list): the host's time per NLL + backward of the
  Triton path with its launches replaced by no-ops (``TRITON_INTERPRET=1``; the forward
  stub zeroes ``aux``, the flags a validated call reads), against a bare autograd step
  ``(e * 2).sum().backward()`` in the same run, and the tensor operations each call
  dispatches besides the kernels (each one a launch on a GPU): what chaincrf's own Python
  costs a small batch, measurable without a GPU; and a Viterbi call's. Triton's own launch
  cost is not in it.

Usage: ``python scripts/bench_crf_gpu.py --json out.json`` (about 3 minutes on one H200).
"""

# ruff: noqa: B023 (each closure is timed in the iteration that defines it)
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchtools, crf_peers: siblings
import benchtools
from chaincrf import CRF

BANDWIDTH = 4.8e12  # bytes/s, the H200's HBM3e
DEVICE = (
    "cuda"  # --device cpu (with TRITON_INTERPRET=1 and tiny sizes): a smoke test of this script
)


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def side_by_side(
    fns: dict[str, Callable[[], object]], budget: float = 0.15, min_reps: int = 3
) -> dict[str, float]:
    """Median seconds per call of each callable, timed side by side (benchtools.time_entries:
    blocks of about 20 ms, synchronised at their ends; ``budget`` seconds per callable)."""
    times = benchtools.time_entries(
        fns, device=DEVICE, min_reps=min_reps, max_reps=15, budget_s=budget, min_sample_s=0.02
    )
    return {name: t["median_s"] for name, t in times.items()}


def timed(fn: Callable[[], object], budget: float = 0.15, min_reps: int = 3) -> float:
    """Median seconds per call of one callable (:func:`side_by_side`)."""
    return side_by_side({"fn": fn}, budget, min_reps)["fn"]


def inputs(B: int, T: int, K: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    em = torch.randn(B, T, K, generator=g) * 2
    tags = torch.randint(K, (B, T), generator=g)
    lengths = torch.randint(max(1, T // 2), T + 1, (B,), generator=g)
    lengths[0] = T
    mask = torch.arange(T) < lengths[:, None]
    return em.to(DEVICE), tags.to(DEVICE), mask.to(DEVICE), int(lengths.sum())


def make_crf(K: int, seed: int, kernel: str = "auto", dtype=torch.float32) -> CRF:
    torch.manual_seed(seed)
    return CRF(K, batch_first=True, kernel=kernel).to(device=DEVICE, dtype=dtype)


# ---------------------------------------------------------------------------- libraries


def chaincrf_nll(crf: CRF, em, tags, mask, validate: bool = False):
    def run():
        e = em.detach().requires_grad_(True)
        crf.zero_grad(set_to_none=True)
        loss = crf.nll(e, tags, mask, reduction="sum", validate=validate)
        loss.backward()
        return loss, e

    return run


def under_step(step: str, run: Callable[[], object]) -> Callable[[], object]:
    """``run`` with the Triton likelihood's step forced: ``"dot"`` (the exp-space kernels on
    the tensor cores) or ``"log"`` (the log-space ones), whatever ``tuning.TRITON`` says."""
    from chaincrf.crf.tuning import triton_tuning

    least = 1 if step == "dot" else 1 << 30

    def forced():
        with triton_tuning(dot_min_tags=least):
            return run()

    return forced


def grads_of(run, crf_params):
    loss, e = run()
    return float(loss), e.grad.double(), [p.grad.double() for p in crf_params()]


def torchcrf_layer(crf: CRF):
    import torchcrf

    peer = torchcrf.CRF(crf.num_tags, batch_first=True).to(DEVICE)
    peer.load_state_dict({k: v.float() for k, v in crf.state_dict().items()})
    return peer


def torchcrf_nll(peer, em, tags, mask):
    def run():
        e = em.detach().requires_grad_(True)
        peer.zero_grad(set_to_none=True)
        loss = -peer(e, tags, mask, reduction="sum")
        loss.backward()
        return loss, e

    return run


def torchstruct_nll(crf: CRF, em, tags, mask):
    """torch-struct's LinearChainCRF on the standard potentials (built inside the timed call,
    :class:`crf_peers.StructCRF`)."""
    from crf_peers import StructCRF

    peer = StructCRF(crf.num_tags).to(DEVICE)
    peer.load_state_dict({k: v.float() for k, v in crf.state_dict().items()})
    lengths = mask.sum(1)

    def run():
        e = em.detach().requires_grad_(True)
        peer.zero_grad(set_to_none=True)
        loss = -peer.log_likelihood(e, tags, lengths).sum()
        loss.backward()
        return loss, e

    return run, peer.parameters


# ---------------------------------------------------------------------------- sections


def section_grid(args, report: dict) -> None:
    rows = []
    peers = set(args.peers)
    for B in args.batch:
        for T in args.length:
            for K in args.tags:
                em, tags, mask, tokens = inputs(B, T, K, seed=B * 1000 + T + K)
                crf = make_crf(K, seed=K)
                ref_kernel = "eager" if T <= 128 else "triton"
                ref = make_crf(K, seed=K, kernel=ref_kernel, dtype=torch.float64)
                ref.load_state_dict({k: v.double() for k, v in crf.state_dict().items()})
                want = grads_of(chaincrf_nll(ref, em.double(), tags, mask), ref.parameters)
                row = {"B": B, "T": T, "K": K, "tokens": tokens}
                runs = {"chaincrf": (chaincrf_nll(crf, em, tags, mask), crf.parameters)}
                if 16 <= K <= 128:  # the Triton likelihood's two steps, each forced
                    for step in args.steps:
                        forced = under_step(step, chaincrf_nll(crf, em, tags, mask))
                        runs[f"chaincrf[{step}]"] = (forced, crf.parameters)
                if "pytorch-crf" in peers:
                    peer = torchcrf_layer(crf)
                    runs["pytorch-crf"] = (torchcrf_nll(peer, em, tags, mask), peer.parameters)
                if "torch-struct" in peers and T >= 2:
                    try:
                        runs["torch-struct"] = torchstruct_nll(crf, em, tags, mask)
                    except Exception as error:
                        row["torch-struct_error"] = type(error).__name__
                checked = {}
                for name, (run, params) in runs.items():
                    try:
                        got = grads_of(run, params)
                    except torch.OutOfMemoryError:
                        row[f"{name}_error"] = "OOM"
                        torch.cuda.empty_cache()
                        continue
                    row[f"{name}_check"] = _compare(got, want, tokens)
                    checked[name] = run
                for name, seconds in side_by_side(checked).items():
                    row[f"{name}_nll_us"] = seconds * 1e6
                with torch.no_grad():
                    decoders = {"chaincrf": lambda: crf.viterbi(em, mask, validate=False)}
                    if "pytorch-crf" in peers and args.max_peer_decode >= B * T:
                        peer = torchcrf_layer(crf)
                        decoders["pytorch-crf"] = lambda: peer.decode(em, mask)
                    decode_s = side_by_side(decoders, budget=0.1, min_reps=1)
                    row["chaincrf_viterbi_us"] = decode_s["chaincrf"] * 1e6
                    if "pytorch-crf" in decoders:
                        row["pytorch-crf_decode_us"] = decode_s["pytorch-crf"] * 1e6
                        want_paths = peer.decode(em, mask)
                        got = crf.decode(em, mask)
                        row["decode_equal"] = got == want_paths
                bytes_moved = (
                    em.numel() * 4 * 2 + tags.numel() * 8 + mask.numel()
                )  # em read + grad written
                row["floor_bytes_us"] = bytes_moved / BANDWIDTH * 1e6
                row["floor_serial_us"] = 2 * T * args.step_ns / 1e3  # forward + backward steps
                row["chaincrf_tokens_per_s"] = tokens / (row["chaincrf_nll_us"] / 1e6)
                if "chaincrf[log]_nll_us" in row and "chaincrf[dot]_nll_us" in row:
                    row["x_log_over_dot"] = (
                        row["chaincrf[log]_nll_us"] / row["chaincrf[dot]_nll_us"]
                    )
                for peer_name in ("pytorch-crf", "torch-struct"):
                    if f"{peer_name}_nll_us" in row:
                        row[f"x_{peer_name}"] = row[f"{peer_name}_nll_us"] / row["chaincrf_nll_us"]
                if "pytorch-crf_decode_us" in row:
                    row["x_pytorch-crf_decode"] = (
                        row["pytorch-crf_decode_us"] / row["chaincrf_viterbi_us"]
                    )
                rows.append(row)
                print(json.dumps(row), flush=True)
    report["grid"] = rows
    _table(rows)


def _compare(got, want, tokens: int) -> dict:
    loss, d_em, d_par = got
    want_loss, want_em, want_par = want
    out = {
        "loss_rel": abs(loss - want_loss) / max(1.0, abs(want_loss)),
        "em_grad_abs": float((d_em - want_em).abs().max()),
    }
    trans = d_par[2]  # every library orders its parameters start, end, transitions
    # per token: the transitions' gradient is a sum over the B * T positions
    out["trans_grad_abs_per_token"] = float((trans - want_par[2]).abs().max()) / tokens
    out["ok"] = (
        out["loss_rel"] <= 1e-4
        and out["em_grad_abs"] <= 1e-4
        and out.get("trans_grad_abs_per_token", 0) <= 1e-4
    )
    return out


def _table(rows) -> None:
    head = "| B | T | K | chaincrf NLL+bwd us | Mtok/s | x pytorch-crf | x torch-struct | floor bytes us | floor serial us | viterbi us | x pytorch-crf decode | checks |"
    print(head)
    print("|---" * 12 + "|")
    for r in rows:
        checks = all(v["ok"] for k, v in r.items() if k.endswith("_check"))
        print(
            f"| {r['B']} | {r['T']} | {r['K']} | {r['chaincrf_nll_us']:.0f} | "
            f"{r['chaincrf_tokens_per_s'] / 1e6:.1f} | {r.get('x_pytorch-crf', float('nan')):.1f} | "
            f"{r.get('x_torch-struct', float('nan')):.1f} | {r['floor_bytes_us']:.1f} | "
            f"{r['floor_serial_us']:.1f} | {r['chaincrf_viterbi_us']:.0f} | "
            f"{r.get('x_pytorch-crf_decode', float('nan')):.0f} | {'ok' if checks else 'FAIL'} |"
        )


def section_long(args, report: dict) -> None:
    rows = []
    for T in (512, 4096, 10000):
        B, K = 4, 9
        em, tags, mask, tokens = inputs(B, T, K, seed=T)
        crf = make_crf(K, seed=1)
        ref = make_crf(K, seed=1, kernel="eager", dtype=torch.float64)
        ref.load_state_dict({k: v.double() for k, v in crf.state_dict().items()})
        got = grads_of(chaincrf_nll(crf, em, tags, mask), crf.parameters)
        want = grads_of(chaincrf_nll(ref, em.double(), tags, mask), ref.parameters)
        with torch.no_grad():
            log_z = crf.log_partition(em, mask).double()
            want_z = ref.log_partition(em.double(), mask)
            marg = crf.marginals(em, mask).double()
            want_m = ref.marginals(em.double(), mask)
        row = {
            "T": T,
            "log_z_rel": float(((log_z - want_z).abs() / want_z.abs()).max()),
            "nll_rel": abs(got[0] - want[0]) / abs(want[0]),
            "em_grad_abs": float((got[1] - want[1]).abs().max()),
            "trans_grad_sum_rel": float(
                (got[2][1].sum() - want[2][1].sum()).abs() / want[2][1].abs().sum()
            ),
            "trans_grad_abs_per_token": float((got[2][1] - want[2][1]).abs().max()) / tokens,
            "marginals_abs": float((marg - want_m).abs().max()),
        }
        row["ok"] = all(v <= 1e-4 for k, v in row.items() if k != "T")
        rows.append(row)
        print(json.dumps(row), flush=True)
    report["long"] = rows


def section_scan(args, report: dict) -> None:
    rows = []
    for cell in args.scan_cells:
        B, T = (int(n) for n in cell.split("x"))
        K = 9
        em, tags, mask, tokens = inputs(B, T, K, seed=T)
        ref = make_crf(K, seed=1, kernel="eager", dtype=torch.float64)
        want = grads_of(chaincrf_nll(ref, em.double(), tags, mask), ref.parameters)
        row: dict = {"B": B, "T": T, "K": K, "tokens": tokens}
        nll, vit = {}, {}
        for kernel in ("tree", "triton"):
            crf = make_crf(K, seed=1, kernel=kernel)
            got = grads_of(chaincrf_nll(crf, em, tags, mask), crf.parameters)
            row[f"{kernel}_nll_rel"] = abs(got[0] - want[0]) / abs(want[0])
            row[f"{kernel}_em_grad_abs"] = float((got[1] - want[1]).abs().max())
            nll[kernel] = chaincrf_nll(crf, em, tags, mask)
            vit[kernel] = lambda crf=crf: crf.viterbi(em, mask, validate=False)
        times = side_by_side({**{f"{k}_nll": f for k, f in nll.items()},
                              **{f"{k}_viterbi": f for k, f in vit.items()}})  # fmt: skip
        for name, seconds in times.items():
            row[f"{name}_us"] = seconds * 1e6
        row["x_tree_over_triton_nll"] = times["triton_nll"] / times["tree_nll"]
        row["x_tree_over_triton_viterbi"] = times["triton_viterbi"] / times["tree_viterbi"]
        row["ok"] = all(row[f"{k}_nll_rel"] <= 1e-4 and row[f"{k}_em_grad_abs"] <= 1e-4
                        for k in ("tree", "triton"))  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
    report["scan"] = rows


def section_launches(args, report: dict) -> None:
    from torch.profiler import ProfilerActivity, profile

    rows = []
    for B, T, K in ((1, 32, 9), (512, 128, 50)):
        em, tags, mask, _ = inputs(B, T, K, seed=3)
        crf = make_crf(K, seed=3)
        runs = ((False, torch.float32), (True, torch.float32), (False, torch.bfloat16))
        for validate, dtype in runs:  # bfloat16: autocast's emissions, read as they are
            run = chaincrf_nll(crf, em.to(dtype), tags, mask, validate)
            run()
            _sync()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                run()
                _sync()
            names = [e.name for e in prof.events()]
            launches = sum(
                n
                in ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx", "cudaLaunchKernelExC")
                for n in names
            )
            memsets = sum(n.startswith("cudaMemset") for n in names)
            copies = sum(n.startswith("cudaMemcpy") for n in names)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if DEVICE == "cuda":
                    torch.cuda.set_sync_debug_mode("warn")
                try:
                    run()
                finally:
                    if DEVICE == "cuda":
                        torch.cuda.set_sync_debug_mode("default")
            syncs = sum("synchroniz" in str(w.message) for w in caught)
            _sync()
            reps = 50
            t0 = time.perf_counter()
            for _ in range(reps):  # the host's time per call: launches queue, nothing waits
                run()
            host_us = (time.perf_counter() - t0) / reps * 1e6
            _sync()
            row = {"B": B, "T": T, "K": K, "dtype": str(dtype).removeprefix("torch."),
                   "validate": validate, "launches": launches,
                   "memsets": memsets, "memcpys": copies, "syncs": syncs, "host_us": host_us,
                   "kernels": sorted({e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA})}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    report["launches"] = rows


class _Tagger(torch.nn.Module):
    def __init__(self, vocab: int, dim: int, K: int):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.proj = torch.nn.Linear(dim, K)
        self.crf = CRF(K, batch_first=True)

    def forward(self, words, tags, mask):
        return self.crf.nll(self.proj(self.embed(words)), tags, mask, validate=False)


def section_compile(args, report: dict) -> None:
    rows = []
    for B, T, K in ((1, 32, 9), (32, 128, 9), (512, 32, 50)):
        g = torch.Generator().manual_seed(0)
        words = torch.randint(1000, (B, T), generator=g).to(DEVICE)
        _em, tags, mask, _tokens = inputs(B, T, K, seed=4)
        torch.manual_seed(0)
        model = _Tagger(1000, 64, K).to(DEVICE)
        compiled = torch.compile(model, fullgraph=True)

        def step(m):
            def run():
                model.zero_grad(set_to_none=True)
                loss = m(words, tags, mask)
                loss.backward()
                return loss

            return run

        row = {"B": B, "T": T, "K": K}
        t0 = time.perf_counter()
        loss_c = float(step(compiled)())
        row["compile_s"] = time.perf_counter() - t0
        grads_c = [p.grad.clone() for p in model.parameters()]
        loss_e = float(step(model)())
        grads_e = [p.grad.clone() for p in model.parameters()]
        row["equal"] = abs(loss_c - loss_e) <= 1e-4 * max(1, abs(loss_e)) and all(
            torch.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in zip(grads_c, grads_e)
        )
        row["eager_us"] = timed(step(model)) * 1e6
        row["compiled_us"] = timed(step(compiled)) * 1e6
        if DEVICE == "cuda" and B == 1:  # Inductor's CUDA graphs, where the host's time is
            # the call's (one more compile: the check's time budget)
            graphed = torch.compile(model, mode="reduce-overhead", fullgraph=True)

            def replayed():
                torch.compiler.cudagraph_mark_step_begin()
                return step(graphed)()

            try:  # (a failure is this row's figure, not the end of the check)
                for _ in range(3):  # warm-up, recording, a first replay
                    replayed()
                loss_g = float(replayed())
                equal = abs(loss_g - loss_e) <= 1e-4 * max(1, abs(loss_e))
                row["reduce_overhead_equal"] = equal
                row["reduce_overhead_us"] = timed(replayed) * 1e6
                row["eager_over_reduce_overhead"] = row["eager_us"] / row["reduce_overhead_us"]
            except Exception as error:  # reported in the row
                row["reduce_overhead_error"] = f"{type(error).__name__}: {error}"[:300]
        if "pytorch-crf" in args.peers and T <= 32:  # its loop is unrolled: minutes beyond
            import torchcrf

            peer = torchcrf.CRF(K, batch_first=True).to(DEVICE)
            em = _em.detach().requires_grad_(True)
            fn = torch.compile(
                lambda e: -peer(e, tags, mask, reduction="sum"), mode="reduce-overhead"
            )

            def peer_run():
                peer.zero_grad(set_to_none=True)
                e = em.detach().requires_grad_(True)
                loss = fn(e)
                loss.backward()
                return loss

            t0 = time.perf_counter()
            for _ in range(3):
                peer_run()
            row["pytorch-crf_compile_s"] = time.perf_counter() - t0
            row["pytorch-crf_reduce_overhead_crf_only_us"] = timed(peer_run) * 1e6
            crf = make_crf(K, seed=0)
            row["chaincrf_crf_only_us"] = timed(chaincrf_nll(crf, _em, tags, mask)) * 1e6
            row["x_pytorch-crf_reduce_overhead"] = (
                row["pytorch-crf_reduce_overhead_crf_only_us"] / row["chaincrf_crf_only_us"]
            )
        rows.append(row)
        print(json.dumps(row), flush=True)
    report["compile"] = rows


def section_graph(args, report: dict) -> None:
    B, T, K = 32, 64, 9
    g = torch.Generator().manual_seed(1)
    words = torch.randint(500, (B, T), generator=g).to(DEVICE)
    _em, tags, mask, _ = inputs(B, T, K, seed=5)

    def build():
        torch.manual_seed(1)
        model = _Tagger(500, 32, K).to(DEVICE)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2, capturable=True)
        return model, opt

    def train_step(model, opt):
        opt.zero_grad(set_to_none=False)
        loss = model(words, tags, mask)
        loss.backward()
        opt.step()
        return loss

    eager_model, eager_opt = build()
    eager_losses = [float(train_step(eager_model, eager_opt)) for _ in range(6)]
    model, opt = build()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        losses = [float(train_step(model, opt)) for _ in range(3)]  # warm-up, also state
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = train_step(model, opt)
    for _ in range(3):
        graph.replay()
        losses.append(float(static_loss))
    ok = all(abs(a - b) <= 1e-4 * max(1, abs(b)) for a, b in zip(losses, eager_losses))
    params_ok = all(
        torch.allclose(a, b, rtol=1e-4, atol=1e-5)
        for a, b in zip(model.parameters(), eager_model.parameters())
    )
    row = {
        "B": B,
        "T": T,
        "K": K,
        "eager": eager_losses,
        "graph": losses,
        "equal": ok and params_ok,
    }
    row["replay_us"] = timed(graph.replay) * 1e6
    row["eager_step_us"] = timed(lambda: train_step(eager_model, eager_opt)) * 1e6
    print(json.dumps(row), flush=True)
    report["graph"] = row


def section_host(args, report: dict) -> None:
    if DEVICE != "cpu" or os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("the host section runs on the CPU under TRITON_INTERPRET=1")
    from torch.utils._python_dispatch import TorchDispatchMode

    from chaincrf.crf.kernels.triton import launch

    class Ops(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.names: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(str(func.overloadpacket.__name__))
            return func(*args, **(kwargs or {}))

    def no_op(grid):
        def launch_(*a, **kw):
            if kw.get("CHECK"):  # the flags a validated call reads: none found
                a[7].zero_()

        return launch_

    kernels = ("_forward_kernel", "_backward_kernel", "_dot_forward_kernel", "_dot_backward_kernel")
    saved = {name: getattr(launch, name) for name in kernels}
    for name in kernels:
        setattr(launch, name, type("Stub", (), {"__getitem__": staticmethod(no_op)})())
    rows = []
    try:
        for B, T, K in ((1, 32, 9), (1, 32, 50), (32, 32, 9)):
            em, tags, mask, _ = inputs(B, T, K, seed=5)
            crf = make_crf(K, seed=5, kernel="triton")
            leaf = em.detach().requires_grad_(True)

            def bare():
                e = leaf.detach().requires_grad_(True)
                (e * 2).sum().backward()

            runs = {"bare": bare}
            for validate in (False, True):
                runs[f"chaincrf validate={validate}"] = chaincrf_nll(crf, em, tags, mask, validate)
            runs["chaincrf viterbi"] = lambda crf=crf, em=em, mask=mask: crf.viterbi(
                em, mask, validate=False
            )
            times = side_by_side(runs, budget=args.host_budget)
            counted = {}
            for name, run in runs.items():
                run()
                with Ops() as ops:
                    run()
                counted[name] = ops.names
            for name in runs:
                row = {"B": B, "T": T, "K": K, "run": name, "host_us": times[name] * 1e6,
                       "x_bare": times[name] / times["bare"], "ops": len(counted[name]),
                       "op_names": counted[name]}  # fmt: skip
                rows.append(row)
                print(json.dumps({k: v for k, v in row.items() if k != "op_names"}), flush=True)
    finally:
        for name, kernel in saved.items():
            setattr(launch, name, kernel)
    report["host"] = rows


SECTIONS = {
    "grid": section_grid,
    "long": section_long,
    "scan": section_scan,
    "launches": section_launches,
    "compile": section_compile,
    "graph": section_graph,
    "host": section_host,
}
DEFAULT_SECTIONS = ["grid", "long", "scan", "launches", "compile", "graph"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=DEFAULT_SECTIONS)
    p.add_argument(
        "--host-budget", type=float, default=1.0, help="host: seconds per entry and cell"
    )
    p.add_argument("--batch", type=int, nargs="+", default=[1, 32, 128, 512])
    p.add_argument("--length", type=int, nargs="+", default=[32, 128, 512])
    p.add_argument("--tags", type=int, nargs="+", default=[9, 50])
    p.add_argument("--peers", nargs="*", default=["pytorch-crf", "torch-struct"])
    p.add_argument(
        "--steps",
        nargs="*",
        choices=["log", "dot"],
        default=["log", "dot"],
        help="grid: also time (and check) the Triton likelihood with each step forced, "
        "where 16 <= K <= 128 (x_log_over_dot: the exp-space kernels' speed-up)",
    )
    p.add_argument(
        "--step-ns", type=float, default=500.0, help="assumed latency of one serial step (ns)"
    )
    p.add_argument(
        "--scan-cells",
        nargs="+",
        default=["1x512", "1x4096", "1x10000", "4x4096"],
        help="scan: the BxT cells (K = 9)",
    )
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument(
        "--max-peer-decode",
        type=int,
        default=16384,
        help="pytorch-crf's decode (one .item() per tag) only where B * T is at most this",
    )
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    report: dict = {
        "device": torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu",
        "torch": torch.__version__,
        "command": benchtools.command_line(__file__, argv),
        "machine": benchtools.machine(__file__, argv, DEVICE),
    }
    print(benchtools.machine_line(report["machine"]), flush=True)
    failed = []
    for name in args.sections:
        t0 = time.perf_counter()
        try:
            SECTIONS[name](args, report)
        except Exception as error:
            import traceback

            traceback.print_exc()
            report[f"{name}_error"] = f"{type(error).__name__}: {error}"[:2000]
            failed.append(name)
        report[f"{name}_seconds"] = time.perf_counter() - t0
        print(f"# section {name}: {report[f'{name}_seconds']:.1f} s", flush=True)
        if args.json:
            args.json.write_text(json.dumps(report, indent=1, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
