"""The CRF layer under torch.compile: a tagger-like module trains and decodes in one graph
(fullgraph, dynamic shapes), a new length profile does not recompile, results equal eager."""

from __future__ import annotations

import pytest
import torch

from chaincrf import CRF
from chaincrf.crf import plan

pytest.importorskip("numba")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad"),
]


class _Tagger(torch.nn.Module):
    def __init__(self, vocab: int = 20, dim: int = 8, tags: int = 5, constrained: bool = False):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.proj = torch.nn.Linear(dim, tags)
        constraints = None
        if constrained:
            trans_ok = torch.ones(tags, tags, dtype=torch.bool)
            trans_ok[0, 1] = False
            constraints = (torch.ones(tags, dtype=torch.bool),) * 2 + (trans_ok,)
        self.crf = CRF(tags, batch_first=True, constraints=constraints)

    def forward(self, words, tags, mask):
        emissions = self.proj(self.embed(words))
        loss = self.crf.nll(emissions, tags, mask, reduction="mean")
        paths, _scores = self.crf.viterbi(emissions.detach(), mask)
        return loss, paths, self.crf.marginals(emissions.detach(), mask)


def _batch(B: int, T: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    words = torch.randint(20, (B, T), generator=g)
    tags = torch.randint(2, 5, (B, T), generator=g)  # tags >= 2: no forbidden 0 -> 1 move
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    return words, tags, torch.arange(T) < lengths[:, None]


@pytest.mark.parametrize("constrained", [False, True])
def test_compiled_tagger_fullgraph_dynamic_one_graph_and_eager_results(constrained):
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    model = _Tagger(constrained=constrained)
    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    for i, (B, T) in enumerate([(3, 7), (5, 11), (2, 4)]):
        words, tags, mask = _batch(B, T, i)
        with torch._dynamo.config.patch(error_on_recompile=i > 0), plan.record() as ran:
            loss, paths, marginals = compiled(words, tags, mask)
            loss.backward()
        assert {kernel for _, kernel in ran} <= {"fused"}  # traced once: fused, never eager
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        want_loss, want_paths, want_marginals = model(words, tags, mask)
        want_loss.backward()
        torch.testing.assert_close(loss, want_loss)
        assert torch.equal(paths, want_paths)
        torch.testing.assert_close(marginals, want_marginals)
        for got, p in zip(grads, model.parameters()):
            torch.testing.assert_close(got, p.grad)
        model.zero_grad()
    assert counters["stats"]["unique_graphs"] == 1
    assert not counters["graph_break"]


def test_compiling_makes_the_planner_pick_the_fused_kernel_on_the_cpu(monkeypatch):
    """Whatever a table row prefers for speed, a traced CPU call must not take the eager
    kernels (their host synchronisations break the graph)."""
    monkeypatch.delenv(plan.ENV, raising=False)
    for operation in ("log_partition", "viterbi", "marginals"):
        for B, T, K in ((1, 1, 1), (1, 32, 5), (128, 128, 50), (4096, 512, 200)):
            for dtype in (torch.float32, torch.float64):
                traced = plan.Problem(
                    operation, B, T, K, dtype, "cpu", requires_grad=True, compiling=True
                )
                assert plan.choose(traced) == "fused", traced


def _ops_in_graphs(fn, *args):
    """Run ``fn`` compiled (fullgraph, AOT autograd without Inductor) and backward; return
    the ops called in its forward and backward graphs."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    seen: dict[str, list[str]] = {"forward": [], "backward": []}

    def keeper(stage):
        def compiler(gm, _inputs):
            seen[stage] += [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]
            return make_boxed_func(gm.forward)

        return compiler

    backend = aot_autograd(fw_compiler=keeper("forward"), bw_compiler=keeper("backward"))
    torch._dynamo.reset()
    out = torch.compile(fn, backend=backend, fullgraph=True)(*args)
    out.backward()
    return out, seen


@pytest.mark.parametrize("reduction", ["sum", "mean", "token_mean", "none"])
def test_a_compiled_reduced_loss_is_one_pass_and_equals_eager(reduction):
    """Compiled, a reduced loss computes its gradient in the forward pass's one kernel call
    (the backward only scales it: no second pass over the rows), and equals eager, value
    and gradients; a per-row loss keeps the forward + forward-backward pair."""
    torch.manual_seed(0)
    crf = CRF(7, batch_first=True)
    words_em = torch.randn(4, 9, 7)
    tags = torch.randint(7, (4, 9))
    mask = torch.arange(9) < torch.tensor([9, 5, 1, 7])[:, None]

    def loss(em):
        out = crf.nll(em, tags, mask, reduction=reduction)
        return out if reduction != "none" else (out * torch.arange(1.0, 5.0)).sum()

    em = words_em.clone().requires_grad_(True)
    got, seen = _ops_in_graphs(loss, em)
    got_grads = [em.grad.clone()] + [p.grad.clone() for p in crf.parameters()]
    crf.zero_grad()
    em_eager = words_em.clone().requires_grad_(True)
    want = loss(em_eager)
    want.backward()
    torch.testing.assert_close(got, want)
    want_grads = [em_eager.grad] + [p.grad for p in crf.parameters()]
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w)
    forward = " ".join(seen["forward"])
    backward = " ".join(seen["backward"])
    if reduction == "none":
        assert "chaincrf.log_likelihood" in forward and "chaincrf.forward_backward" in backward
    else:
        assert forward.count("chaincrf.log_likelihood_sum") == 1, forward
        assert "chaincrf." not in backward, backward
