"""The Triton kernel (``kernel="triton"``) against the eager kernel through the public layer,
and against brute force: log-likelihoods and their gradients, log-partitions, Viterbi paths and
scores, decoding, marginals, rows with no allowed path, value errors and the planner's record.

On the CPU the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``, which
``conftest.py`` sets where there is no CUDA device); the ``cuda`` cases (marker ``gpu``) run
the same comparisons on a CUDA device when there is one.
"""

from __future__ import annotations

import os

import pytest

pytest.importorskip("triton")

import torch

import reference as ref
from chaincrf import CRF
from chaincrf.crf import plan
from crf_helpers import make_crf, params, ragged_batch, sentence

pytestmark = [
    pytest.mark.slow,
    pytest.mark.usefixtures("one_thread"),
    # the interpreter computes log(0) = -inf (a sum of exp(-inf)) with numpy, which warns
    pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning"),
    # ... and the exp-space kernels divide by a dead row's zero normaliser (then discarded)
    pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning"),
]

NEG_INF = float("-inf")
DTYPES = [torch.float64, torch.float32]
SIZES = [(6, 9, 5, 0), (4, 6, 17, 1)]  # (B, T, K, seed): K = 17 pads the tile to 32
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, CUDA])])
def device(request) -> str:
    """Where the tensors live: the CPU (Triton's interpreter) or a CUDA device."""
    if request.param == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("CPU tensors run the Triton kernels only with TRITON_INTERPRET=1")
    return request.param


def tolerances(dtype: torch.dtype) -> dict[str, float]:
    return {"rtol": 1e-9, "atol": 1e-9} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-4}


def constraints(K: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """No start in the last tag, no end in tag 0, no move i -> j with i - j = 1 (mod 3): about a
    third of the transitions forbidden; staying in a tag is always allowed."""
    start_ok = torch.ones(K, dtype=torch.bool)
    start_ok[-1] = False
    end_ok = torch.ones(K, dtype=torch.bool)
    end_ok[0] = False
    tags = torch.arange(K)
    return start_ok, end_ok, (tags[:, None] - tags[None, :]) % 3 != 1


def layers(K: int, seed: int, dtype: torch.dtype, device: str, constrained: bool):
    """(eager CRF, triton CRF) with the same random parameters and constraints."""
    cons = constraints(K) if constrained else None
    eager = make_crf(K, seed, constraints=cons).to(device=device, dtype=dtype)
    eager.kernel = "eager"
    triton = CRF(K, batch_first=True, constraints=cons, kernel="triton")
    triton = triton.to(device=device, dtype=dtype)
    triton.load_state_dict(eager.state_dict())
    return eager, triton


def batch(B: int, T: int, K: int, seed: int, dtype: torch.dtype, device: str):
    """Ragged emissions (1e4 garbage past each length), tags and mask: row 1 empty, row 2 of
    length 1, row 0 full."""
    emissions, tags, mask, _ = ragged_batch(B, T, K, seed, dtype=dtype)
    mask[1] = False
    mask[2] = False
    mask[2, 0] = True
    emissions = emissions.masked_fill(~mask.unsqueeze(2), 1e4)
    return emissions.to(device), tags.to(device), mask.to(device)


def llh_and_grads(crf: CRF, emissions, tags, mask, weights):
    """Per-row log-likelihood and the gradients of its weighted sum (emissions, then the start,
    transition and end scores)."""
    crf.zero_grad()
    em = emissions.clone().requires_grad_(True)
    llh = crf(em, tags, mask, reduction="none")
    (llh * weights).sum().backward()
    grads = [em.grad, crf.start_transitions.grad, crf.transitions.grad, crf.end_transitions.grad]
    return [llh.detach().cpu()] + [g.cpu() for g in grads]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("constrained", [False, True])
@pytest.mark.parametrize(("B", "T", "K", "seed"), SIZES)
def test_log_likelihood_and_gradients_match_eager(device, dtype, constrained, B, T, K, seed):
    eager, triton = layers(K, seed, dtype, device, constrained)
    emissions, tags, mask = batch(B, T, K, seed, dtype, device)
    if constrained:  # gold paths the constraints allow: the best ones
        tags = torch.where(mask, eager.viterbi(emissions, mask)[0], -100)
        assert bool((tags[mask] >= 0).all())
    weights = torch.randn(B, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    weights = weights.to(device)
    expected = llh_and_grads(eager, emissions, tags, mask, weights)
    with plan.record() as ran:
        got = llh_and_grads(triton, emissions, tags, mask, weights)
    assert ran == [("log_partition", "triton")]
    names = ("log-likelihood", "emissions", "start", "transitions", "end")
    for name, g, e in zip(names, got, expected):
        assert g.dtype == dtype, name
        torch.testing.assert_close(g, e, **tolerances(dtype), msg=name)
    assert got[0][1] == 0 and bool((got[1][1] == 0).all())  # the empty row
    assert bool((got[1][~mask.cpu()] == 0).all())  # no gradient past each length
    with torch.no_grad(), plan.record() as ran:
        log_z = triton.log_partition(emissions, mask)
    assert ran == [("log_partition", "triton")]
    torch.testing.assert_close(log_z, eager.log_partition(emissions, mask), **tolerances(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("constrained", [False, True])
@pytest.mark.parametrize(("B", "T", "K", "seed"), SIZES)
def test_viterbi_decode_and_marginals_match_eager(device, dtype, constrained, B, T, K, seed):
    eager, triton = layers(K, seed, dtype, device, constrained)
    emissions, _tags, mask = batch(B, T, K, seed, dtype, device)
    with plan.record() as ran:
        paths, scores = triton.viterbi(emissions, mask)
        decoded = triton.decode(emissions, mask)
        marginals = triton.marginals(emissions, mask)
    assert ran == [("viterbi", "triton"), ("viterbi", "triton"), ("marginals", "triton")]
    eager_paths, eager_scores = eager.viterbi(emissions, mask)
    assert paths.dtype == torch.long and scores.dtype == dtype
    assert torch.equal(paths, eager_paths)
    assert torch.equal(scores, eager_scores)  # the same sums in the same order
    assert decoded == eager.decode(emissions, mask)
    assert [len(p) for p in decoded] == mask.sum(1).tolist()
    torch.testing.assert_close(marginals, eager.marginals(emissions, mask), **tolerances(dtype))
    sums = marginals.sum(-1)
    torch.testing.assert_close(sums[mask], torch.ones_like(sums[mask]), **tolerances(dtype))
    assert bool((marginals[~mask] == 0).all())
    assert bool((scores <= triton.log_partition(emissions, mask) + 1e-4).all())


@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_without_an_allowed_path(device, dtype):
    """A position whose emissions are all -inf leaves its row no path: log Z and the Viterbi
    score are -inf and the path all -1, as the eager kernel's; its gradients and marginals are
    0 (the eager kernel's are NaN) and the other rows are untouched."""
    B, T, K, seed = 5, 6, 4, 3
    eager, triton = layers(K, seed, dtype, device, constrained=True)
    emissions, _tags, mask = batch(B, T, K, seed, dtype, device)
    emissions[0, 2] = NEG_INF  # row 0: full length, no path
    emissions[3, 0, :] = NEG_INF  # row 3: nothing at its first position
    dead = torch.tensor([True, False, False, bool(mask[3, 0]), False])
    live = ~dead
    log_z = triton.log_partition(emissions, mask)
    assert bool(torch.isneginf(log_z[dead]).all())
    torch.testing.assert_close(log_z, eager.log_partition(emissions, mask), **tolerances(dtype))
    paths, scores = triton.viterbi(emissions, mask)
    eager_paths, eager_scores = eager.viterbi(emissions, mask)
    assert torch.equal(paths, eager_paths) and torch.equal(scores, eager_scores)
    assert bool((paths[dead] == -1).all()) and bool(torch.isneginf(scores[dead]).all())
    assert triton.decode(emissions, mask) == eager.decode(emissions, mask)
    marginals = triton.marginals(emissions, mask)
    assert bool((marginals[dead] == 0).all())
    expected = eager.marginals(emissions, mask)
    torch.testing.assert_close(marginals[live], expected[live], **tolerances(dtype))
    em = emissions.clone().requires_grad_(True)
    triton.log_partition(em, mask).sum().backward()
    assert bool(torch.isfinite(em.grad).all()) and bool((em.grad[dead] == 0).all())
    torch.testing.assert_close(em.grad[live], marginals[live], **tolerances(dtype))


def test_empty_sequences_and_k_best_go_to_eager():
    """T == 0: log Z 0, empty paths, score 0; k > 1 is not the Triton kernel's (eager runs)."""
    eager, triton = layers(3, 0, torch.float64, "cpu", constrained=False)
    emissions = torch.zeros(2, 0, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(2, 0, dtype=torch.bool)
    log_z = triton.log_partition(emissions, mask)
    assert torch.equal(log_z.detach(), torch.zeros(2, dtype=torch.float64))
    log_z.sum().backward()
    assert emissions.grad is not None and emissions.grad.shape == (2, 0, 3)
    paths, scores = triton.viterbi(emissions, mask)
    assert paths.shape == (2, 0) and torch.equal(scores, torch.zeros(2, dtype=torch.float64))
    assert triton.decode(emissions, mask) == [[], []]
    assert triton.marginals(emissions, mask).shape == (2, 0, 3)
    llh = triton(emissions, torch.zeros(2, 0, dtype=torch.long), mask, reduction="none")
    assert torch.equal(llh.detach(), torch.zeros(2, dtype=torch.float64))
    em, _tags, mask = batch(3, 4, 3, 0, torch.float64, "cpu")
    with plan.record() as ran:
        paths, scores = triton.viterbi(em, mask, k=2)
    assert ran == [("viterbi", "eager")]
    expected = eager.viterbi(em, mask, k=2)
    assert torch.equal(paths, expected[0]) and torch.equal(scores, expected[1])


def _message(call) -> str:
    with pytest.raises(ValueError) as caught:
        call()
    return str(caught.value)


@pytest.mark.parametrize("case", ["nan emissions", "+inf emissions", "bad tag"])
def test_value_errors_are_the_eager_kernels(case):
    eager, triton = layers(4, 1, torch.float64, "cpu", constrained=False)
    emissions, tags, mask = batch(4, 5, 4, 1, torch.float64, "cpu")
    tags = torch.where(mask, tags, 0)
    if case == "nan emissions":
        emissions[2, 0, 1] = float("nan")
        pattern = "row 2, position 0 holds NaN"
    elif case == "+inf emissions":
        emissions[0, 3, 0] = float("inf")
        pattern = r"row 0, position 3 holds \+inf"
    else:
        tags[0, 4] = 4
        pattern = r"tags must be in \[0, 4\).*got 4 at batch row 0, position 4"
    calls = [lambda crf: crf(emissions, tags, mask)]
    if case != "bad tag":
        calls += [
            lambda crf: crf.log_partition(emissions, mask),
            lambda crf: crf.viterbi(emissions, mask),
            lambda crf: crf.decode(emissions, mask),
            lambda crf: crf.marginals(emissions, mask),
        ]
    for call in calls:
        with pytest.raises(ValueError, match=pattern):
            call(triton)
        assert _message(lambda c=call: c(triton)) == _message(lambda c=call: c(eager))


@pytest.mark.parametrize("K", [5, 17], ids=["log space", "exp space"])
def test_validate_checks_the_values_in_the_forward_launch(device, K):
    """With ``validate`` the likelihood and log-partition check the values in their forward
    launch (per-row flags, read once): a clean call dispatches no value-check tensor operation
    and one host read, and a NaN or +inf emission, a bad tag or a NaN score where it matters
    gives the eager kernel's error; a masked one gives none (K = 17 with ``dot_min_tags=16``:
    the exp-space forward)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from chaincrf.crf.tuning import triton_tuning

    eager, triton = layers(K, 3, torch.float32, device, constrained=False)
    emissions, tags, mask = batch(4, 5, K, 3, torch.float32, device)
    tags = torch.where(mask, tags, K)  # out of range where masked: never read
    emissions = torch.where(mask[..., None], emissions, float("nan"))  # likewise
    ran = []

    class Ops(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            ran.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    with triton_tuning(dot_min_tags=16):
        with Ops():
            em = emissions.clone().requires_grad_(True)
            triton.nll(em, tags, mask).backward()
            triton.log_partition(emissions, mask)
        checks = {"isnan", "isinf", "isposinf", "cat", "lt", "ge", "eq"}
        assert checks.isdisjoint(ran), sorted(checks.intersection(ran))
        assert ran.count("_local_scalar_dense") == 2  # one read per validated call
        torch.testing.assert_close(
            triton.nll(emissions, tags, mask),
            eager.nll(emissions, torch.where(mask, tags, 0), mask),
            rtol=1e-4,
            atol=1e-4,
        )
        bad_em = emissions.clone()
        bad_em[3, 1, 2] = float("inf")
        bad_tags = tags.clone()
        bad_tags[0, 4] = -1
        for call in (
            lambda crf: crf.nll(bad_em, torch.where(mask, tags, 0), mask),
            lambda crf: crf.log_partition(bad_em, mask),
            lambda crf: crf.nll(emissions.nan_to_num(), bad_tags.clamp(max=K - 1), mask),
        ):
            assert _message(lambda c=call: c(triton)) == _message(lambda c=call: c(eager))
        with torch.no_grad():
            for crf in (triton, eager):
                crf.transitions[2, 1] = float("nan")
        clean = emissions.nan_to_num()
        assert _message(lambda: triton.log_partition(clean, mask)) == _message(
            lambda: eager.log_partition(clean, mask)
        )


@pytest.mark.parametrize("B", [1, 4])
def test_a_reduced_loss_is_summed_in_the_call(device, B):
    """A reduced (negative) log-likelihood on the Triton kernel is the call's own output: the
    loss's autograd node is the kernel's (no sum or negation node, host time per step), and
    its value and gradients are eager's for every reduction and both signs."""
    eager, triton = layers(5, 2, torch.float64, device, constrained=False)
    emissions, tags, mask = batch(4, 6, 5, 2, torch.float64, device)
    emissions, tags, mask = emissions[:B], torch.where(mask, tags, 0)[:B], mask[:B]
    for reduction in ("sum", "mean", "token_mean"):
        for negate in (True, False):
            results = []
            for crf in (triton, eager):
                crf.zero_grad()
                em = emissions.clone().requires_grad_(True)
                loss = (crf.nll if negate else crf)(em, tags, mask, reduction=reduction)
                loss.backward()
                grads = [em.grad, crf.start_transitions.grad, crf.transitions.grad]
                results.append((loss.grad_fn.name(), [loss.detach(), *grads]))
            (node, got), (_, want) = results
            if reduction == "sum":
                assert "Sum" not in node and "Neg" not in node, node
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w, **tolerances(torch.float64))


def test_forbidden_gold_path_is_refused_under_validate_as_by_eager():
    eager, triton = layers(5, 2, torch.float64, "cpu", constrained=True)
    emissions, _tags, mask = batch(3, 4, 5, 2, torch.float64, "cpu")
    tags = torch.ones(3, 4, dtype=torch.long)
    tags[0, 1] = 3  # 1 -> 3 is forbidden (1 - 3 = 1 mod 3), 3 -> 1 allowed
    pattern = "tags at batch row 0 break the transition constraints"
    with pytest.raises(ValueError, match=pattern):
        triton(emissions, tags, mask, validate=True)
    assert _message(lambda: triton(emissions, tags, mask)) == _message(
        lambda: eager(emissions, tags, mask)
    )
    # without validate nothing is read back: the forbidden path's log-likelihood is -inf
    llh = triton(emissions, tags, mask, reduction="none", validate=False)
    assert bool(torch.isneginf(llh[0])) and bool(torch.isfinite(llh[1:]).all())


@pytest.mark.parametrize("constrained", [False, True])
def test_against_brute_force(constrained):
    """Every path enumerated (K = 3, T <= 4): log Z, marginals, the best path and its score."""
    K, seed = 3, 7
    _eager, triton = layers(K, seed, torch.float64, "cpu", constrained)
    emissions, _tags, mask = batch(4, 4, K, seed, torch.float64, "cpu")
    start, trans, end = params(triton)
    log_z = triton.log_partition(emissions, mask)
    marginals = triton.marginals(emissions, mask)
    paths, scores = triton.viterbi(emissions, mask)
    for b, n in enumerate(mask.sum(1).tolist()):
        x = sentence(emissions, b, n)
        assert log_z[b].item() == pytest.approx(ref.brute_log_partition(x, start, trans, end))
        if n == 0:
            assert scores[b].item() == 0.0 and bool((paths[b] == -1).all())
            continue
        expected = torch.tensor(ref.brute_marginals(x, start, trans, end), dtype=torch.float64)
        torch.testing.assert_close(marginals[b, :n], expected, rtol=1e-9, atol=1e-9)
        ((best_path, best_score),) = ref.brute_kbest(x, start, trans, end, 1)
        assert paths[b, :n].tolist() == best_path
        assert scores[b].item() == pytest.approx(best_score)


def test_custom_ops_pass_opcheck():
    """Schemas and fake (shape-only) implementations, eager against AOT tracing, as
    torch.compile and torch.export use them (``torch.library.opcheck``); the ops have no
    autograd kernel of their own (the traced ``CompiledLikelihood`` carries the gradient):
    called on tensors that need a gradient, they raise rather than silently give none."""
    from chaincrf.crf.kernels.triton import custom_ops  # noqa: F401  (registers the ops)

    emissions, tags, mask = batch(3, 4, 3, 5, torch.float64, "cpu")
    mask[0, 1] = False  # a gap: the kernels skip it
    em = emissions.clone()
    mask8 = mask.to(torch.uint8)
    g = torch.Generator().manual_seed(5)
    scores = [torch.randn(s, dtype=torch.float64, generator=g) for s in ((3,), (3, 3), (3,))]
    ops = torch.ops.chaincrf
    tags = tags.clamp(0, 2)
    for row_tags, scale in ((tags, -1.0), (None, 1.0)):
        for check in (False, True):  # with check, the value flags: a fourth row of aux
            args = (em, row_tags, mask8, *scores, scale, True, check)
            torch.library.opcheck(ops.triton_forward, args)
        out, aux, alpha, _empty = ops.triton_forward(
            em, row_tags, mask8, *scores, scale, True, False
        )
        log_z = aux[0] if row_tags is not None else out
        grad = torch.randn(3, dtype=torch.float64, generator=g)
        for kept in (alpha, alpha.new_empty(0, 0, 0)):  # (not kept: recomputed)
            back = (grad, em, row_tags, mask8, *scores, kept, log_z, aux[2], scale)
            torch.library.opcheck(ops.triton_backward, back)
    torch.library.opcheck(ops.triton_viterbi, [em, mask8, *scores])
    torch.library.opcheck(ops.triton_marginals, [em, mask8, *scores])
    needing = em.clone().requires_grad_(True)
    calls = {
        "triton_forward": lambda: ops.triton_forward(
            needing, tags, mask8, *scores, 1.0, True, False
        ),
        "triton_viterbi": lambda: ops.triton_viterbi(needing, mask8, *scores),
        "triton_marginals": lambda: ops.triton_marginals(needing, mask8, *scores),
    }
    for name, call in calls.items():
        with pytest.raises(RuntimeError, match=f"chaincrf::{name} has no autograd formula"):
            call()


def test_the_exp_space_kernels_pass_opcheck():
    """The likelihood's ops on the exp-space kernels (float32, 17 tags): fakes, and eager
    against AOT tracing, as torch.compile runs them (the gradient through a compiled call:
    the tests below)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("CPU tensors run the Triton kernels only with TRITON_INTERPRET=1")
    from chaincrf.crf import tracing
    from chaincrf.crf.kernels.triton import custom_ops  # noqa: F401  (registers the ops)
    from chaincrf.crf.tuning import triton_tuning

    emissions, tags, mask = batch(17, 4, 17, 5, torch.float32, "cpu")
    mask8 = mask.to(torch.uint8)
    g = torch.Generator().manual_seed(5)
    scores = [torch.randn(s, generator=g) for s in ((17,), (17, 17), (17,))]
    ops = torch.ops.chaincrf
    with triton_tuning(dot_min_tags=16), tracing.record_paths() as paths:
        for row_tags, scale in ((tags, -1.0), (None, 1.0)):
            args = (emissions, row_tags, mask8, *scores, scale, True, False)
            torch.library.opcheck(ops.triton_forward, args)
            out, aux, alpha, _empty = ops.triton_forward(*args)
            log_z = aux[0] if row_tags is not None else out
            grad = torch.randn(17, generator=g)
            back = (grad, emissions, row_tags, mask8, *scores, alpha, log_z, aux[2], scale)
            torch.library.opcheck(ops.triton_backward, back)
    assert paths and {path for path, _ in paths} == {"triton_dot"}


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_scores_tie_everywhere(device, dtype):
    """All scores 0: log Z = length * log K, marginals 1 / K, and every path ties: the best is
    all tag 0 (ties go to the smallest index, as torch.argmax and the eager kernel)."""
    B, T, K = 3, 5, 6
    eager, triton = layers(K, 0, dtype, device, constrained=False)
    with torch.no_grad():
        for crf in (eager, triton):
            for p in crf.parameters():
                p.zero_()
    emissions, _tags, mask = batch(B, T, K, 0, dtype, device)
    emissions = emissions.masked_fill(mask.unsqueeze(2), 0.0)
    lengths = mask.sum(1).to(dtype)
    log_z = triton.log_partition(emissions, mask)
    torch.testing.assert_close(log_z, lengths * torch.log(torch.tensor(K, dtype=dtype)))
    paths, scores = triton.viterbi(emissions, mask)
    assert torch.equal(paths, torch.where(mask, 0, -1)) and bool((scores == 0).all())
    assert torch.equal(paths, eager.viterbi(emissions, mask)[0])
    marginals = triton.marginals(emissions, mask)
    torch.testing.assert_close(marginals[mask], torch.full_like(marginals[mask], 1 / K))


def test_log_partition_compiles_to_one_graph_with_its_gradient():
    """torch.compile (fullgraph) traces the layer's call through the custom op and its
    autograd formula: the same log Z and emission gradients as the eager kernel."""
    eager, triton = layers(4, 4, torch.float64, "cpu", constrained=True)
    emissions, _tags, mask = batch(3, 5, 4, 4, torch.float64, "cpu")

    def log_z(crf: CRF, em: torch.Tensor) -> torch.Tensor:
        return crf.log_partition(em, mask, validate=False)

    log_z(triton, emissions)  # imports the kernel's module: an import inside a graph breaks it
    compiled = torch.compile(log_z, backend="aot_eager", fullgraph=True)
    grads = []
    for crf, run in ((triton, compiled), (eager, log_z)):
        em = emissions.clone().requires_grad_(True)
        out = run(crf, em)
        (out * torch.arange(1.0, 4.0, dtype=torch.float64)).sum().backward()
        grads.append((out.detach(), em.grad))
    for got, expected in zip(*grads):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_nll_viterbi_and_marginals_compile_to_one_graph_without_host_reads(backend):
    """The whole CUDA path of a training and a decoding call (NLL with its gradient, Viterbi,
    marginals), mask gaps included, traced with ``fullgraph=True``: any read back to the host
    (``.item()``, ``bool(tensor)``, ``nonzero``) would break the graph and fail here. Inductor
    lowers what surrounds the ops, as on a GPU (torch 2.11's could not lower a bool mask
    viewed as uint8)."""
    eager, triton = layers(5, 6, torch.float64, "cpu", constrained=True)
    emissions, tags, mask = batch(4, 6, 5, 6, torch.float64, "cpu")
    mask[0, 2] = False  # a gap: the kernels skip it without a compaction
    tags = torch.full_like(tags, 2)  # staying in a tag is always allowed

    def step(crf: CRF, em: torch.Tensor):
        loss = crf.nll(em, tags, mask, reduction="sum", validate=False)
        paths, scores = crf.viterbi(em.detach(), mask, validate=False)
        return loss, paths, scores, crf.marginals(em.detach(), mask, validate=False)

    step(triton, emissions)
    torch._dynamo.reset()
    compiled = torch.compile(step, backend=backend, fullgraph=True)
    results = []
    for crf, run in ((triton, compiled), (eager, step)):
        crf.zero_grad()
        em = emissions.clone().requires_grad_(True)
        loss, paths, scores, marginals = run(crf, em)
        loss.backward()
        results.append((loss.detach(), paths, scores, marginals, em.grad, crf.transitions.grad))
    for got, expected in zip(*results):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.gpu
@CUDA
def test_a_training_step_replays_in_a_cuda_graph_as_eager():
    """Embedding, projection, CRF NLL, backward and an Adam step captured in one CUDA graph
    (no host synchronisation may happen inside a capture), replayed: the same losses and
    weights as the same steps run eagerly."""
    B, T, K = 8, 12, 5
    g = torch.Generator().manual_seed(0)
    words = torch.randint(50, (B, T), generator=g).cuda()
    tags = torch.randint(K, (B, T), generator=g).cuda()
    mask = (torch.arange(T) < torch.randint(1, T + 1, (B,), generator=g)[:, None]).cuda()

    def build():
        torch.manual_seed(0)
        model = torch.nn.ModuleDict(
            {"embed": torch.nn.Embedding(50, 16), "proj": torch.nn.Linear(16, K),
             "crf": CRF(K, batch_first=True)}
        ).cuda()  # fmt: skip
        return model, torch.optim.Adam(model.parameters(), lr=0.05, capturable=True)

    def train_step(model, opt):
        opt.zero_grad(set_to_none=False)
        emissions = model["proj"](model["embed"](words))
        loss = model["crf"].nll(emissions, tags, mask, validate=False)
        loss.backward()
        opt.step()
        return loss

    reference, ref_opt = build()
    expected = [float(train_step(reference, ref_opt)) for _ in range(5)]
    model, opt = build()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        losses = [float(train_step(model, opt)) for _ in range(2)]
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = train_step(model, opt)
    for _ in range(3):
        graph.replay()
        losses.append(float(static_loss))
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(expected), rtol=1e-4, atol=1e-4)
    for got, want in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@CUDA
def test_torch_compile_fullgraph_on_cuda_equals_eager():
    """torch.compile (Inductor, fullgraph) of a module holding the CRF on CUDA: the planner
    keeps the Triton kernels (not the export kernel, whatever ``is_exporting`` says), forward
    and backward equal eager."""
    B, T, K = 6, 10, 7
    torch.manual_seed(0)
    proj = torch.nn.Linear(8, K).cuda()
    crf = CRF(K, batch_first=True).cuda()
    x = torch.randn(B, T, 8, device="cuda")
    tags = torch.randint(K, (B, T), device="cuda")
    mask = torch.arange(T, device="cuda") < torch.randint(1, T + 1, (B, 1), device="cuda")

    def loss_fn(x):
        return crf.nll(proj(x), tags, mask, validate=False)

    compiled = torch.compile(loss_fn, fullgraph=True)
    results = []
    for run in (compiled, loss_fn):
        for p in (*proj.parameters(), *crf.parameters()):
            p.grad = None
        with plan.record() as ran:
            loss = run(x)
        loss.backward()
        results.append([loss.detach(), *(p.grad for p in (*proj.parameters(), *crf.parameters()))])
        assert {kernel for _, kernel in ran} <= {"triton"}
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@CUDA
def test_torch_compile_reduce_overhead_replays_cuda_graphs_as_eager():
    """``torch.compile(mode="reduce-overhead")`` (Inductor's CUDA graphs, what a GPU user picks
    against host overhead) of an NLL + backward through a module holding the CRF: Inductor
    records CUDA graphs and skips none (it skips a graph holding a host read, a CPU tensor or
    a mutated input, and counts it), and each replay, with new inputs, equals eager."""
    from torch._dynamo.utils import counters  # Inductor's only record of a skipped capture

    B, T, K = 6, 10, 7
    torch.manual_seed(0)
    proj = torch.nn.Linear(8, K).cuda()
    crf = CRF(K, batch_first=True).cuda()
    params = (*proj.parameters(), *crf.parameters())
    tags = torch.randint(K, (B, T), device="cuda")
    mask = torch.arange(T, device="cuda") < torch.randint(1, T + 1, (B, 1), device="cuda")

    def loss_fn(x):
        return crf.nll(proj(x), tags, mask, validate=False)

    compiled = torch.compile(loss_fn, mode="reduce-overhead", fullgraph=True)
    counters.clear()
    for i in range(4):  # warm-up, capture, then replays
        x = torch.randn(B, T, 8, device="cuda") * (1 + i)
        results = []
        for run in (compiled, loss_fn):
            torch.compiler.cudagraph_mark_step_begin()
            for p in params:
                p.grad = None
            loss = run(x)
            loss.backward()  # (the backward graph: captured too)
            # a graph's outputs are overwritten by its next replay: copies
            results.append([loss.detach().clone(), *(p.grad.clone() for p in params)])
        for got, want in zip(*results):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert not counters["inductor"]["cudagraph_skips"], dict(counters["inductor"])
    assert "cudagraph_recorded_non_static_inputs" in counters["inductor"]  # a graph recorded


def test_a_retained_graph_gives_the_same_gradients_twice():
    """The score gradients are added into a buffer the forward launch zeroed: a second
    backward through a retained graph starts the sums again (not twice the gradient)."""
    eager, triton = layers(5, 8, torch.float64, "cpu", constrained=False)
    emissions, tags, mask = batch(6, 5, 5, 8, torch.float64, "cpu")
    loss = triton.nll(emissions, tags, mask)
    loss.backward(retain_graph=True)
    first = [p.grad.clone() for p in triton.parameters()]
    triton.zero_grad()
    loss.backward()
    eager.nll(emissions, tags, mask).backward()
    for once, twice, want in zip(first, triton.parameters(), eager.parameters()):
        torch.testing.assert_close(twice.grad, once, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(once, want.grad, **tolerances(torch.float64))


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_backwards_through_a_retained_graph_accumulate_as_eager(reduction):
    """Three backwards through one retained graph, with no zero_grad between, leave three
    times the gradient in every .grad (the eager kernel's): a later backward's buffer is not
    the one an earlier backward's .grad may hold."""
    eager, triton = layers(5, 8, torch.float64, "cpu", constrained=False)
    emissions, tags, mask = batch(6, 5, 5, 8, torch.float64, "cpu")
    for crf in (eager, triton):
        loss = crf.nll(emissions, tags, mask, reduction=reduction).sum()
        for _ in range(3):
            loss.backward(retain_graph=True)
    for got, want in zip(triton.parameters(), eager.parameters()):
        torch.testing.assert_close(got.grad, want.grad, **tolerances(torch.float64))


def _dot_case(B: int, T: int, K: int, seed: int, constrained: bool, device: str = "cpu"):
    """float32 Triton and float64 eager layers with the same scores, and a ragged batch."""
    eager, triton = layers(K, seed, torch.float64, device, constrained)
    triton = triton.to(torch.float32)
    emissions, tags, mask = batch(B, T, K, seed, torch.float64, device)
    if constrained:
        tags = torch.where(mask, eager.viterbi(emissions, mask)[0], -100)
    return eager, triton, emissions, tags, mask


def _close32(got, want, msg):
    got = got.cpu()
    torch.testing.assert_close(got, want.to(got), rtol=2e-4, atol=2e-4, msg=msg)


@pytest.mark.parametrize("constrained", [False, True])
def test_the_exp_space_kernel_matches_eager(device, constrained):
    """From ``tuning.TRITON.dot_min_tags`` tags the float32 likelihood takes the exp-space
    kernels (16 rows per program; here two programs, the second half empty): likelihood,
    gradients, log-partition and marginals as eager's in float64 (on a GPU: the tensor cores'
    TF32x3 products); float64 keeps log space."""
    from chaincrf.crf import tracing
    from chaincrf.crf.tuning import triton_tuning

    B, T, K = 20, 6, 17
    eager, triton, emissions, tags, mask = _dot_case(B, T, K, 7, constrained, device)
    weights = torch.randn(B, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    weights = weights.to(device)
    expected = llh_and_grads(eager, emissions, tags, mask, weights)
    names = ("log-likelihood", "emissions", "start", "transitions", "end")
    with triton_tuning(dot_min_tags=16), tracing.record_paths() as paths:
        got = llh_and_grads(triton, emissions.float(), tags, mask, weights.float())
        log_z = triton.log_partition(emissions.float(), mask)
        marginals = triton.marginals(emissions.float(), mask)
    assert ("triton_dot", B) in paths and ("triton_log", B) not in paths, paths
    for name, g, e in zip(names, got, expected):
        _close32(g, e, name)
    assert bool((got[1][~mask.cpu()] == 0).all())  # no gradient past each length
    _close32(log_z, eager.log_partition(emissions, mask), "log Z")
    _close32(marginals, eager.marginals(emissions, mask), "marginals")
    with triton_tuning(dot_min_tags=16), tracing.record_paths() as paths:
        triton.to(torch.float64).log_partition(emissions, mask)
    assert paths == [("triton_log", B)]


@pytest.mark.parametrize(
    ("span_limit", "floor"),
    [(60.0, 1e-30), (1e9, 1e-30), (60.0, 0.0)],
    ids=["both checks", "floor check", "spread check"],
)
def test_the_exp_space_kernel_recomputes_underflowing_and_dead_rows_in_log_space(
    device, span_limit, floor
):
    """Transition scores from one tag 100 nats below the rest (a product of exps would
    underflow: either check, the spread of the scores or a reachable tag's weight under the
    floor, flags the rows) and rows with no allowed path are recomputed in log space by the
    same launches: eager's values (with both checks off the error is about 0.03), dead rows at -inf with zero
    gradients."""
    from chaincrf.crf.tuning import triton_tuning

    B, T, K = 18, 5, 17
    eager, triton, emissions, _tags, mask = _dot_case(B, T, K, 11, False, device)
    with torch.no_grad():
        eager.transitions[2, :] -= 100.0
        triton.transitions.copy_(eager.transitions)
    emissions[:8, 0, :] = -50.0  # rows 0-7 start in tag 2
    emissions[:8, 0, 2] = 50.0
    emissions[9, 1] = NEG_INF  # row 9: no path
    dead = torch.zeros(B, dtype=torch.bool, device=device)
    dead[9] = True
    want = eager.log_partition(emissions, mask)
    em = emissions.float().requires_grad_(True)
    with triton_tuning(dot_min_tags=16, span_limit=span_limit, floor=floor):
        got = triton.log_partition(em, mask)
        got.sum().backward()
    assert bool(torch.isneginf(got[dead]).all())
    _close32(got[~dead], want[~dead], "log Z")
    assert bool((em.grad[dead] == 0).all()) and bool(torch.isfinite(em.grad).all())
    _close32(em.grad[~dead], eager.marginals(emissions, mask)[~dead], "gradient")


@pytest.mark.parametrize("forward_dot", [False, True])
def test_a_tuning_changed_between_forward_and_backward_keeps_the_gradients(forward_dot):
    """The backward reads the forward's row flags: a forward in one space and a backward
    under the other choice still give eager's gradients."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("CPU tensors run the Triton kernels only with TRITON_INTERPRET=1")
    from chaincrf.crf.tuning import triton_tuning

    eager, triton, emissions, tags, mask = _dot_case(17, 4, 17, 3, constrained=False)
    want = llh_and_grads(eager, emissions, tags, mask, torch.ones(17, dtype=torch.float64))
    em = emissions.float().requires_grad_(True)
    with triton_tuning(dot_min_tags=16 if forward_dot else 64):
        llh = triton(em, tags, mask, reduction="sum")
    with triton_tuning(dot_min_tags=64 if forward_dot else 16):
        llh.backward()
    _close32(llh, want[0].sum(), "log-likelihood")
    _close32(em.grad, want[1], "emissions")
    _close32(triton.transitions.grad, want[3], "transitions")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("K", [5, 17])
def test_half_precision_emissions_are_read_as_they_are(device, dtype, K):
    """float16/bfloat16 emissions (what autocast's linear layers give) go to the kernels as
    they are: no conversion pass forward or backward, the loss in float32 equal to eager's on
    the upcast emissions, the emissions' gradient in their dtype (within one rounding); both
    steps (K = 5: log space; K = 17 with ``dot_min_tags=16``: the exp-space kernels)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from chaincrf.crf import tracing
    from chaincrf.crf.tuning import triton_tuning

    eager, triton = layers(K, 4, torch.float32, device, constrained=False)
    emissions, tags, mask = batch(17, 5, K, 4, torch.float32, device)
    emissions = emissions.clamp(max=30.0).to(dtype)
    em = emissions.clone().requires_grad_(True)
    aten = torch.ops.aten
    conversions = []

    class Conversions(TorchDispatchMode):
        """Records every dtype conversion of an emissions-sized tensor."""

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func in (aten._to_copy.default, aten.copy_.default):
                src, dst = (args[0], out) if func is aten._to_copy.default else (args[1], args[0])
                if src.dtype != dst.dtype and src.numel() == em.numel():
                    conversions.append((str(func), src.dtype, dst.dtype))
            return out

    with triton_tuning(dot_min_tags=16), tracing.record_paths() as paths, Conversions():
        loss = triton.nll(em, tags, mask, validate=False)
        loss.backward()
    assert paths == [("triton_dot" if K >= 16 else "triton_log", 17)]
    assert conversions == []
    assert loss.dtype == torch.float32 and em.grad.dtype == dtype
    em_eager = emissions.clone().requires_grad_(True)
    want = eager.nll(em_eager, tags, mask)
    want.backward()
    torch.testing.assert_close(loss, want, rtol=2e-4, atol=2e-4)
    torch.testing.assert_close(em.grad, em_eager.grad, rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(
        triton.transitions.grad, eager.transitions.grad, rtol=2e-4, atol=2e-4
    )


@pytest.mark.parametrize("dot", [False, True], ids=["log space", "exp space"])
def test_a_forced_path_through_a_tag_far_below_the_best_is_kept(device, dot):
    """A tag 110 nats below its step's best that alone carries the good paths later (the
    forward's case, row 0) or earlier (row 1), an unreachable tag far above the rest and a
    backward sum under the floor (the backward's cases, rows 2 and 3): float32 log Z, likelihood and
    gradients as float64 eager's (the exp-space kernels flag the rows and recompute them in log
    space: the forward's whole row, the backward's from the lost position down)."""
    from chaincrf.crf import tracing
    from chaincrf.crf.tuning import triton_tuning
    from crf_helpers import forced_paths

    eager, em = forced_paths(kernel="eager")
    triton = CRF(eager.num_tags, batch_first=True, kernel="triton").to(device)
    triton.load_state_dict(eager.state_dict())
    em = em.to(device)
    mask = torch.ones(em.shape[:2], dtype=torch.bool, device=device)
    tags = eager.viterbi(em, mask)[0]
    weights = torch.tensor([1.0, 0.5, 2.0, 1.5], dtype=torch.float64, device=device)
    want = llh_and_grads(eager.to(device), em, tags, mask, weights)
    want_z = eager.log_partition(em, mask)
    assert want_z[:2].cpu().tolist() == pytest.approx([-110.0, -110.0], abs=1e-6)
    with triton_tuning(dot_min_tags=16 if dot else 64), tracing.record_paths() as paths:
        got = llh_and_grads(triton.float(), em.float(), tags, mask, weights.float())
        z = triton.log_partition(em.float(), mask)
        marginals = triton.marginals(em.float(), mask)
    assert (("triton_dot", 4) in paths) == dot, paths
    _close32(z, want_z, "log Z")
    for name, g, e in zip(
        ("log-likelihood", "emissions", "start", "transitions", "end"), got, want
    ):
        _close32(g, e, name)
    _close32(marginals, eager.marginals(em, mask), "marginals")
