"""The planner: one table picks the kernel, the choice can be forced by CHAINCRF_KERNEL or the
``kernel`` argument, and every kernel gives the eager kernel's results through the public API."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from chaincrf import CRF
from chaincrf.crf import kernels, tuning
from chaincrf.crf import plan as crf_plan
from chaincrf.crf.kernels.fused import custom_ops as crf_fused
from chaincrf.data.schemes import allowed_transitions

LABELS = ["O", "B-PER", "I-PER", "E-PER", "S-PER", "B-LOC", "I-LOC", "E-LOC", "S-LOC"]
needs_numba = pytest.mark.skipif(not crf_fused.available(), reason="numba is not installed")


def _batch(dtype=torch.float32, B=5, T=7, K=9):
    torch.manual_seed(0)
    emissions = (torch.randn(B, T, K) * 3).to(dtype)
    lengths = torch.tensor([T, 0, 3, 1, T - 1][:B])
    mask = torch.arange(T)[None] < lengths[:, None]
    tags = torch.randint(0, K, (B, T))
    return emissions, mask, tags


def _run_all(crf, emissions, mask, tags):
    """Every operation through the public API; (results, gradients of the NLL)."""
    emissions = emissions.clone().requires_grad_(True)
    crf.zero_grad()
    nll = crf.nll(emissions, torch.where(mask, tags, 0), mask, reduction="sum")
    nll.backward()
    grads = [emissions.grad] + [p.grad for p in crf.parameters()]
    with torch.no_grad():
        results = [
            nll.detach(),
            crf.log_partition(emissions, mask),
            *crf.viterbi(emissions, mask),
            crf.marginals(emissions, mask),
        ]
    return results, grads, crf.decode(emissions.detach(), mask)


@needs_numba
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forcing_each_kernel_runs_it_and_both_kernels_agree(dtype, monkeypatch):
    emissions, mask, tags = _batch(dtype)
    crf = CRF(len(LABELS), batch_first=True).to(dtype)
    with torch.no_grad():
        crf.transitions.normal_()
    outputs = {}
    for kernel in kernels.names():
        monkeypatch.setenv(crf_plan.ENV, kernel)
        with crf_plan.record() as ran:
            outputs[kernel] = _run_all(crf, emissions, mask, tags)
        for operation, chosen in ran:  # the forced kernel wherever it can run, else eager
            problem = crf_plan.Problem(operation, 5, 7, len(LABELS), dtype, "cpu")
            assert chosen == (kernel if kernels.get(kernel).can_run(problem) else "eager"), ran
        assert {op for op, _ in ran} == {"log_partition", "viterbi", "marginals"}
    monkeypatch.delenv(crf_plan.ENV)
    with crf_plan.record() as ran:
        crf.viterbi(emissions, mask)
    assert ran == [("viterbi", "fused")]  # auto: the table's first row that can run
    tol = {"rtol": 1e-4, "atol": 1e-4} if dtype == torch.float32 else {"rtol": 1e-9, "atol": 1e-9}
    res_e, grad_e, dec_e = outputs["eager"]
    for kernel in kernels.names():
        res_f, grad_f, dec_f = outputs[kernel]
        for a, b in zip(res_e, res_f):
            if a.is_floating_point():
                torch.testing.assert_close(a, b, **tol)
        assert torch.equal(res_e[2], res_f[2]) and dec_e == dec_f, kernel
        if kernel != "tree":  # the serial kernels add in one order: the same bits (the tree
            assert torch.equal(res_e[3], res_f[3]), kernel  # pairs products: checked above)
        for a, b in zip(grad_e, grad_f):
            torch.testing.assert_close(a, b, **tol)


@needs_numba
def test_constraints_and_impossible_rows_agree():
    emissions, mask, _ = _batch(torch.float64)
    emissions[2, 1, :] = float("-inf")  # row 2 has no allowed path
    results = {}
    for kernel in kernels.names():
        crf = CRF(
            len(LABELS),
            batch_first=True,
            constraints=allowed_transitions("BIOES", LABELS),
            kernel=kernel,
        ).double()
        torch.manual_seed(1)
        crf.reset_parameters()
        with crf_plan.record() as ran, torch.no_grad():
            results[kernel] = (
                crf.log_partition(emissions, mask),
                *crf.viterbi(emissions, mask),
                crf.marginals(emissions, mask),
                crf.decode(emissions, mask),
            )
        assert kernel in {k for _, k in ran} or kernel == "triton", ran
    eager = results["eager"]
    possible = [0, 1, 3, 4]  # row 2 has no allowed path: eager marginals are NaN there
    for kernel, other in results.items():
        torch.testing.assert_close(eager[0], other[0])
        assert torch.equal(eager[1], other[1]) and eager[4] == other[4], kernel
        if kernel == "tree":  # pairs its products: the same score within rounding
            torch.testing.assert_close(eager[2], other[2])
        else:  # the serial kernels add in one order: the same bits
            assert torch.equal(eager[2], other[2]), kernel
        torch.testing.assert_close(eager[3][possible], other[3][possible])
        assert torch.isneginf(other[0][2]) and (other[1][2] == -1).all(), kernel
    assert (results["fused"][3][2] == 0).all()


def test_k_best_and_other_devices_stay_eager(monkeypatch):
    monkeypatch.delenv(crf_plan.ENV, raising=False)  # the table's own choice
    problem = crf_plan.Problem("viterbi", 2, 5, 3, torch.float32, "cpu", k=5)
    assert crf_plan.choose(problem, "fused") == "eager"
    problem = crf_plan.Problem("log_partition", 2, 5, 3, torch.float32, "cuda")
    assert crf_plan.choose(problem, "fused") == "eager"
    problem = crf_plan.Problem("log_partition", 2, 5, 3, torch.float16, "cuda")
    assert crf_plan.choose(problem) == "eager"  # no kernel but eager computes half precision
    problem = crf_plan.Problem("log_partition", 2, 5, 3, torch.float32, "cpu")
    assert crf_plan.choose(problem, "eager") == "eager"


def test_many_tags_on_cuda_leave_triton_unless_traced(monkeypatch):
    """Triton's (K, K) tiles live in registers: beyond ``tuning.TRITON.max_tags`` they spill
    and take minutes to compile (scripts/check_triton_compile.py), so eager runs them."""
    pytest.importorskip("triton")
    monkeypatch.delenv(crf_plan.ENV, raising=False)

    def chosen(K: int, compiling: bool = False, operation: str = "log_partition") -> str:
        problem = crf_plan.Problem(operation, 64, 32, K, torch.float32, "cuda", compiling=compiling)
        return crf_plan.choose(problem)

    assert chosen(128) == "triton" and chosen(128, operation="viterbi") == "triton"
    assert chosen(129) == "eager" and chosen(512, operation="viterbi") == "eager"
    assert chosen(512, compiling=True) == "triton"  # eager's host reads would break the graph
    assert (
        crf_plan.choose(
            crf_plan.Problem("log_partition", 64, 32, 129, torch.float32, "cuda"), "triton"
        )
        == "eager"
    )  # fmt: skip  (forced: only what it can run)
    with tuning.triton_tuning(max_tags=256):
        assert chosen(129) == "triton"
    assert chosen(129) == "eager"


def test_a_forced_kernel_runs_what_auto_would_not_pick(monkeypatch):
    monkeypatch.delenv(crf_plan.ENV, raising=False)
    monkeypatch.setattr(crf_plan, "AUTO_KERNELS", ("eager",))  # public: what auto may pick
    problem = crf_plan.Problem("log_partition", 2, 5, 3, torch.float32, "cpu", requires_grad=True)
    assert crf_plan.choose(problem) == "eager"
    assert crf_plan.choose(problem, "fused") == "fused"
    assert kernels.get("fused").can_run(problem)
    assert not kernels.get("fused").can_run(dataclasses.replace(problem, device="cuda"))


def test_unknown_kernel_names_are_refused(monkeypatch):
    with pytest.raises(ValueError, match="kernel must be one of"):
        CRF(3, kernel="numba")
    monkeypatch.setenv(crf_plan.ENV, "fast")
    with pytest.raises(ValueError, match="CHAINCRF_KERNEL must be one of"):
        CRF(3).log_partition(torch.zeros(2, 1, 3))


def test_every_table_row_names_its_measurement():
    for rule in crf_plan.TABLE:
        assert rule.kernel in kernels.REGISTRY and rule.why and rule.operations


def test_eager_tuning_is_scoped_and_refuses_unknown_thresholds():
    before = crf_plan.EAGER
    with crf_plan.eager_tuning(tree_max_bkk=0) as tuning:
        assert crf_plan.EAGER is tuning and tuning.tree_max_bkk == 0
    assert crf_plan.EAGER is before and before.tree_max_bkk == 512
    with pytest.raises(TypeError, match="tree_max"), crf_plan.eager_tuning(tree_max=0):
        pass
    assert crf_plan.EAGER is before
