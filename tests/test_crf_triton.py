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
    pytest.mark.usefixtures("one_thread"),
    # the interpreter computes log(0) = -inf (a sum of exp(-inf)) with numpy, which warns
    pytest.mark.filterwarnings("ignore:divide by zero encountered in log:RuntimeWarning"),
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


def test_forbidden_gold_path_is_refused_as_by_eager():
    eager, triton = layers(5, 2, torch.float64, "cpu", constrained=True)
    emissions, _tags, mask = batch(3, 4, 5, 2, torch.float64, "cpu")
    tags = torch.ones(3, 4, dtype=torch.long)
    tags[0, 1] = 3  # 1 -> 3 is forbidden (1 - 3 = 1 mod 3), 3 -> 1 allowed
    pattern = "tags at batch row 0 break the transition constraints"
    for validate in (True, False):
        with pytest.raises(ValueError, match=pattern):
            triton(emissions, tags, mask, validate=validate)
    assert _message(lambda: triton(emissions, tags, mask)) == _message(
        lambda: eager(emissions, tags, mask)
    )


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
    """Schemas, fake (shape-only) implementations and the log-partition's autograd formula, as
    torch.compile and torch.export use them (``torch.library.opcheck``)."""
    from chaincrf.crf.kernels import gpu_ops  # noqa: F401  (registers the ops)

    emissions, _tags, mask = batch(3, 4, 3, 5, torch.float64, "cpu")
    em = emissions.clone().requires_grad_(True)
    lengths = mask.sum(1)
    g = torch.Generator().manual_seed(5)
    scores = [torch.randn(s, dtype=torch.float64, generator=g) for s in ((3,), (3, 3), (3,))]
    scores = [s.requires_grad_(True) for s in scores]
    ops = torch.ops.chaincrf
    torch.library.opcheck(ops.triton_log_partition, (em, lengths, *scores, True))
    detached = [em.detach(), lengths, *(s.detach() for s in scores)]
    torch.library.opcheck(ops.triton_viterbi, detached)
    torch.library.opcheck(ops.triton_marginals, detached)


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
