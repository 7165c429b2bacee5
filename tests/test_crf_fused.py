"""The numba kernels of chaincrf.crf_fused against the eager CRF, the textbook reference and
brute force: values, gradients, paths, marginals, constraints, extreme inputs, torch.compile."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("numba")

import reference as ref
from chaincrf import CRF
from chaincrf.crf import plan
from chaincrf.crf.kernels.fused import custom_ops as crf_fused
from chaincrf.data.schemes import allowed_transitions
from crf_helpers import make_crf, params, ragged_batch, sentence

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad"),
]

NEG_INF = float("-inf")
BIOES = ["O"] + [f"{p}-{t}" for t in ("PER", "LOC") for p in "BIES"]  # K = 9


def scores(crf):
    """The CRF's effective (start, transitions, end), -inf where forbidden; differentiable."""
    start, trans, end = crf.start_transitions, crf.transitions, crf.end_transitions
    if crf.has_constraints:
        start = start.masked_fill(~crf.start_allowed, NEG_INF)
        trans = trans.masked_fill(~crf.transitions_allowed, NEG_INF)
        end = end.masked_fill(~crf.end_allowed, NEG_INF)
    return start, trans, end


def batch(B, T, K, seed, dtype=torch.float64):
    """Ragged emissions (garbage 1e4 past each length), mask and lengths, row 1 empty."""
    emissions, _tags, mask, lengths = ragged_batch(B, T, K, seed, dtype=dtype)
    if B > 1:
        lengths[1] = 0
        mask[1] = False
    return emissions, mask, lengths


def tolerances(dtype):
    return {"rtol": 1e-10, "atol": 1e-9} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-4}


def eager_and_fused_grads(crf, emissions, mask, lengths, weights):
    """log Z and d(weights . log Z)/d(emissions, start, transitions, end), eager then fused."""
    out = []
    for fused in (False, True):
        crf.zero_grad()
        em = emissions.clone().requires_grad_(True)
        if fused:
            log_z = crf_fused.log_partition(em, lengths, *scores(crf))
        else:
            log_z = crf.log_partition(em, mask)
        (log_z * weights).sum().backward()
        grads = (
            em.grad,
            crf.start_transitions.grad,
            crf.transitions.grad,
            crf.end_transitions.grad,
        )
        out.append((log_z.detach(), *(g.clone() for g in grads)))
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("constrained", [False, True])
@pytest.mark.parametrize(("B", "T", "seed"), [(6, 9, 0), (1, 1, 1), (5, 40, 2), (3, 70, 3)])
def test_log_partition_and_gradients_match_eager(dtype, constrained, B, T, seed):
    constraints = allowed_transitions("BIOES", BIOES) if constrained else None
    crf = make_crf(len(BIOES), seed, constraints=constraints).to(dtype)
    emissions, mask, lengths = batch(B, T, len(BIOES), seed, dtype)
    weights = torch.randn(B, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    eager, fused = eager_and_fused_grads(crf, emissions, mask, lengths, weights)
    assert fused[0].dtype == dtype and fused[1].dtype == dtype
    for name, e, f in zip(("log_z", "emissions", "start", "transitions", "end"), eager, fused):
        torch.testing.assert_close(f, e, **tolerances(dtype), msg=name)
    if B > 1:
        assert fused[0][1] == 0 and (fused[1][1] == 0).all()  # the empty row


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("constrained", [False, True])
@pytest.mark.parametrize(("B", "T", "seed"), [(6, 9, 0), (1, 1, 1), (5, 40, 2), (3, 70, 3)])
def test_viterbi_and_marginals_match_eager(dtype, constrained, B, T, seed):
    constraints = allowed_transitions("BIOES", BIOES) if constrained else None
    crf = make_crf(len(BIOES), seed, constraints=constraints).to(dtype)
    emissions, mask, lengths = batch(B, T, len(BIOES), seed, dtype)
    start, trans, end = (x.detach() for x in scores(crf))
    paths, best = crf_fused.viterbi(emissions, lengths, start, trans, end)
    crf.kernel = "eager"
    with plan.record_paths() as taken:
        eager_paths, eager_best = crf.viterbi(emissions, mask)
    assert paths.dtype == torch.long and best.dtype == dtype
    assert torch.equal(paths, eager_paths)
    torch.testing.assert_close(best, eager_best, **tolerances(dtype))
    if B > 1 and not any(path == "tree_viterbi" for path, _ in taken):
        # the sequential eager recursion in the same dtype: the same sums, the same bits
        assert torch.equal(best, eager_best)
    marg = crf_fused.marginals(emissions, lengths, start, trans, end)
    torch.testing.assert_close(marg, crf.marginals(emissions, mask), **tolerances(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("K", [17, 50])
def test_viterbi_with_many_tags_equals_eager_bit_for_bit(dtype, K):
    """From K = 16 the fused max-plus step takes two source tags per pass: still the eager
    kernel's sums in the emissions' dtype, so the same paths and scores."""
    crf = make_crf(K, 5).to(dtype)
    emissions, mask, _ = batch(9, 37, K, 5, dtype)
    with plan.record() as ran:
        paths, best = crf.viterbi(emissions, mask)
    crf.kernel = "eager"
    with plan.record() as ran_eager:
        eager_paths, eager_best = crf.viterbi(emissions, mask)
    assert ran == [("viterbi", "fused")] and ran_eager == [("viterbi", "eager")]
    assert torch.equal(paths, eager_paths) and torch.equal(best, eager_best)


@pytest.mark.parametrize(("B", "T", "K", "seed"), [(3, 4, 2, 0), (5, 5, 3, 1), (6, 5, 4, 2)])
@pytest.mark.parametrize("constrained", [False, True])
def test_against_reference_and_brute_force(B, T, K, seed, constrained):
    constraints = None
    if constrained:
        g = torch.Generator().manual_seed(seed + 100)
        trans_ok, start_ok, end_ok = (
            torch.rand(K, K, generator=g) > 0.3,
            torch.rand(K) > 0.3,
            torch.rand(K) > 0.3,
        )
        trans_ok[:, 0] = start_ok[0] = end_ok[0] = True  # every length has a path
        constraints = (start_ok, end_ok, trans_ok)
    crf = make_crf(K, seed, constraints=constraints)
    emissions, _mask, lengths = batch(B, T, K, seed)
    effective = [x.detach() for x in scores(crf)]
    log_z = crf_fused.log_partition(emissions, lengths, *effective)
    paths, best = crf_fused.viterbi(emissions, lengths, *effective)
    marg = crf_fused.marginals(emissions, lengths, *effective)
    start, trans, end = params(crf)
    for b in range(B):
        n = int(lengths[b])
        em = sentence(emissions, b, n)
        assert math.isclose(
            float(log_z[b]),
            ref.forward_algorithm(em, start, trans, end),
            rel_tol=1e-12,
            abs_tol=1e-12,
        )
        assert math.isclose(
            float(log_z[b]),
            ref.brute_log_partition(em, start, trans, end),
            rel_tol=1e-12,
            abs_tol=1e-12,
        )
        ref_path, ref_score = ref.viterbi(em, start, trans, end)
        assert paths[b, :n].tolist() == ref_path and (paths[b, n:] == -1).all()
        (_, brute_score), *_ = ref.brute_kbest(em, start, trans, end, 1)
        assert math.isclose(float(best[b]), brute_score, rel_tol=1e-12, abs_tol=1e-12)
        assert math.isclose(ref_score, brute_score, rel_tol=1e-12, abs_tol=1e-12)
        if n:
            torch.testing.assert_close(
                marg[b, :n],
                torch.tensor(ref.brute_marginals(em, start, trans, end), dtype=torch.float64),
                rtol=0,
                atol=1e-12,
            )
        assert (marg[b, n:] == 0).all()


@given(
    lengths=st.lists(st.integers(0, 6), min_size=1, max_size=5),
    K=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_batched_equals_per_sentence_reference(lengths, K, seed):
    """Any ragged batch: every row equals the textbook forward algorithm and Viterbi."""
    g = torch.Generator().manual_seed(seed)
    B, T = len(lengths), max(lengths)
    emissions = torch.randn(B, T, K, generator=g, dtype=torch.float64) * 3
    start, trans, end = (
        torch.randn(*s, generator=g, dtype=torch.float64) for s in ((K,), (K, K), (K,))
    )
    lengths_t = torch.tensor(lengths)
    log_z = crf_fused.log_partition(emissions, lengths_t, start, trans, end)
    paths, best = crf_fused.viterbi(emissions, lengths_t, start, trans, end)
    for b, n in enumerate(lengths):
        em = emissions[b, :n].tolist()
        expected = ref.forward_algorithm(em, start.tolist(), trans.tolist(), end.tolist())
        assert math.isclose(float(log_z[b]), expected, rel_tol=1e-12, abs_tol=1e-12)
        path, score = ref.viterbi(em, start.tolist(), trans.tolist(), end.tolist())
        assert paths[b, :n].tolist() == path
        assert math.isclose(float(best[b]), score, rel_tol=1e-12, abs_tol=1e-12)
        assert float(best[b]) <= float(log_z[b]) + 1e-12


def test_ties_go_to_the_lowest_tag_like_the_sequential_eager_viterbi():
    """Integer scores in {-1, 0, 1} tie everywhere; both follow the lowest-index back-pointer.

    (The eager CRF's log-depth tree Viterbi, used for T >= 64 with few rows and tags, breaks
    ties differently, so the eager comparison stays below T = 64.)"""
    g = torch.Generator().manual_seed(0)
    for B, T, K in [(4, 10, 3), (8, 40, 9), (2, 80, 3)]:
        crf = make_crf(K, 0)
        with torch.no_grad():
            for p in crf.parameters():
                p.copy_(torch.randint(-1, 2, p.shape, generator=g))
        emissions = torch.randint(-1, 2, (B, T, K), generator=g).double()
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        mask = torch.arange(T) < lengths.unsqueeze(1)
        effective = [x.detach() for x in scores(crf)]
        paths, _ = crf_fused.viterbi(emissions, lengths, *effective)
        paths32, _ = crf_fused.viterbi(emissions.float(), lengths, *effective)
        assert torch.equal(paths, paths32)
        start, trans, end = params(crf)
        for b in range(B):
            n = int(lengths[b])
            assert (
                paths[b, :n].tolist()
                == ref.viterbi(sentence(emissions, b, n), start, trans, end)[0]
            )
        if T < 64:
            assert torch.equal(paths, crf.viterbi(emissions, mask)[0])
    zero = torch.zeros(3)
    paths, _ = crf_fused.viterbi(
        torch.zeros(1, 5, 3), torch.tensor([5]), zero, torch.zeros(3, 3), zero
    )
    assert paths.tolist() == [[0] * 5]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_huge_emissions_with_constraints_stay_exact(dtype):
    """|emissions| up to 1e4 against -inf constraints: no NaN, exact values and gradients."""
    crf = make_crf(len(BIOES), 5, constraints=allowed_transitions("BIOES", BIOES)).to(dtype)
    emissions, mask, lengths = batch(7, 30, len(BIOES), 5, dtype)
    emissions = torch.where(
        mask.unsqueeze(2), (torch.rand_like(emissions) * 2 - 1) * 1e4, emissions
    )
    emissions[0, 3, 2] = NEG_INF  # a forbidden tag through the emissions
    weights = torch.ones(7, dtype=dtype)
    eager, fused = eager_and_fused_grads(crf, emissions, mask, lengths, weights)
    for name, e, f in zip(("log_z", "emissions", "start", "transitions", "end"), eager, fused):
        assert not f.isnan().any(), name
        torch.testing.assert_close(
            f,
            e,
            rtol=1e-9 if dtype == torch.float64 else 1e-4,
            atol=1e-8 if dtype == torch.float64 else 1e-3,
            msg=name,
        )
    effective = [x.detach() for x in scores(crf)]
    paths, best = crf_fused.viterbi(emissions, lengths, *effective)
    eager_paths, eager_best = crf.viterbi(emissions, mask)
    assert torch.equal(paths, eager_paths)
    torch.testing.assert_close(
        best, eager_best, rtol=1e-12 if dtype == torch.float64 else 1e-6, atol=0
    )
    marg = crf_fused.marginals(emissions, lengths, *effective)
    assert not marg.isnan().any() and marg[0, 3, 2] == 0
    torch.testing.assert_close(
        marg.sum(2), mask.to(dtype), rtol=0, atol=1e-9 if dtype == torch.float64 else 1e-5
    )


def test_one_row_of_ten_thousand_steps():
    T, K = 10_000, 5
    crf = make_crf(K, 7)
    g = torch.Generator().manual_seed(7)
    emissions = (torch.rand(1, T, K, generator=g, dtype=torch.float64) * 2 - 1) * 1e4
    emissions[0, ::3] *= 1e-4  # some steps with competing tags
    mask = torch.ones(1, T, dtype=torch.bool)
    lengths = torch.tensor([T])
    eager, fused = eager_and_fused_grads(
        crf, emissions, mask, lengths, torch.ones(1, dtype=torch.float64)
    )
    torch.testing.assert_close(fused[0], eager[0], rtol=1e-13, atol=0)
    for name, e, f in zip(("emissions", "start", "transitions", "end"), eager[1:], fused[1:]):
        torch.testing.assert_close(f, e, rtol=1e-6, atol=1e-6, msg=name)
    effective = [x.detach() for x in scores(crf)]
    paths, best = crf_fused.viterbi(emissions, lengths, *effective)
    eager_paths, eager_best = crf.viterbi(emissions, mask)
    assert torch.equal(paths, eager_paths)
    torch.testing.assert_close(best, eager_best, rtol=1e-14, atol=0)
    marg = crf_fused.marginals(emissions, lengths, *effective)
    torch.testing.assert_close(
        marg.sum(2), torch.ones(1, T, dtype=torch.float64), rtol=0, atol=1e-12
    )


def test_gradcheck():
    g = torch.Generator().manual_seed(0)
    emissions = torch.randn(3, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([4, 2, 0])
    start, trans, end = (
        torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)
        for s in ((3,), (3, 3), (3,))
    )

    def f(em, s, tr, e):
        return crf_fused.log_partition(em, lengths, s, tr, e)

    assert torch.autograd.gradcheck(f, (emissions, start, trans, end))


def test_no_allowed_path_gives_minus_inf_and_zero_gradients():
    K = 3
    start = torch.tensor([0.0, NEG_INF, NEG_INF], dtype=torch.float64, requires_grad=True)
    end = torch.tensor([NEG_INF, 0.0, 0.0], dtype=torch.float64, requires_grad=True)
    trans = (
        torch.full((K, K), NEG_INF, dtype=torch.float64).fill_diagonal_(0.0).requires_grad_(True)
    )
    emissions = torch.randn(2, 4, K, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([4, 0])
    log_z = crf_fused.log_partition(emissions, lengths, start, trans, end)
    assert log_z.tolist() == [NEG_INF, 0.0]
    log_z.sum().backward()
    for x in (emissions, start, trans, end):
        assert (x.grad == 0).all()
    paths, best = crf_fused.viterbi(
        emissions.detach(), lengths, start.detach(), trans.detach(), end.detach()
    )
    assert paths.tolist() == [[-1] * 4] * 2 and best.tolist() == [NEG_INF, 0.0]
    marg = crf_fused.marginals(
        emissions.detach(), lengths, start.detach(), trans.detach(), end.detach()
    )
    assert (marg == 0).all()


def test_properties_zero_scores_padding_and_permutation():
    B, T, K = 5, 8, 4
    emissions, mask, lengths = batch(B, T, K, 11)
    zero_k, zero_kk = torch.zeros(K, dtype=torch.float64), torch.zeros(K, K, dtype=torch.float64)
    log_z = crf_fused.log_partition(torch.zeros_like(emissions), lengths, zero_k, zero_kk, zero_k)
    torch.testing.assert_close(log_z, lengths.double() * math.log(K), rtol=1e-14, atol=1e-14)
    crf = make_crf(K, 11)
    effective = [x.detach() for x in scores(crf)]
    nan_padded = emissions.masked_fill(~mask.unsqueeze(2), float("nan"))
    for op in (crf_fused.log_partition, crf_fused.marginals):
        assert torch.equal(op(nan_padded, lengths, *effective), op(emissions, lengths, *effective))
    assert torch.equal(
        crf_fused.viterbi(nan_padded, lengths, *effective)[0],
        crf_fused.viterbi(emissions, lengths, *effective)[0],
    )
    perm = torch.randperm(B, generator=torch.Generator().manual_seed(0))
    for op in (crf_fused.log_partition, crf_fused.marginals):
        assert torch.equal(
            op(emissions[perm], lengths[perm], *effective), op(emissions, lengths, *effective)[perm]
        )
    # non-contiguous inputs: time-major storage, viewed batch-first
    strided = emissions.transpose(0, 1).contiguous().transpose(0, 1)
    assert torch.equal(
        crf_fused.marginals(strided, lengths, *effective),
        crf_fused.marginals(emissions, lengths, *effective),
    )


def test_two_threads_give_the_same_bits_as_one():
    """Splitting a call's rows over torch's threads (forced here for every size) changes no
    bit of the fused results, and leaves torch's thread count as it was; a problem found by
    either thread is the same error."""
    crf = make_crf(len(BIOES), 3, constraints=allowed_transitions("BIOES", BIOES))
    emissions, mask, lengths = batch(96, 64, len(BIOES), 3)
    tags = crf.viterbi(emissions, mask)[0].clamp(min=0)
    results = {}
    threads = torch.get_num_threads()
    everything = {"split_min_btkk": 0, "split_min_btkk_viterbi": 0}
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            em = emissions.clone().requires_grad_(True)
            crf.zero_grad()
            effective = scores(crf)
            with plan.fused_tuning(**everything), plan.record_paths() as paths:
                log_z = crf_fused.log_partition(em, lengths, *effective)
                log_z.sum().backward()
                llh = crf_fused.log_likelihood(em, tags, lengths, *effective)
                decoded = crf_fused.viterbi(emissions, lengths, *[x.detach() for x in effective])
            assert torch.get_num_threads() == n
            assert (("fused_threads", 2) in paths) == (n == 2)
            results[n] = (log_z, em.grad, crf.transitions.grad.clone(), llh, *decoded)
        with plan.fused_tuning(**everything):
            bad = emissions.clone()
            bad[90, 5, 2] = float("nan")
            with pytest.raises(ValueError, match="batch row 90, position 5"):
                crf_fused.log_partition_masked(bad, mask, *[x.detach() for x in scores(crf)], True)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(results[1], results[2]):
        assert torch.equal(a, b)
    torch.testing.assert_close(
        results[2][0], crf.log_partition(emissions, mask).detach(), rtol=1e-10, atol=1e-9
    )


def test_opcheck():
    """torch.library.opcheck: schema, fake (meta) functions, autograd registration, AOT dispatch."""
    g = torch.Generator().manual_seed(0)
    K = 3
    emissions = torch.randn(3, 5, K, generator=g, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([5, 2, 0])
    start, trans, end = (
        torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)
        for s in ((K,), (K, K), (K,))
    )
    mask = torch.arange(5) < lengths[:, None]
    tags = torch.randint(K, (3, 5), generator=g)
    for validate in (True, False):
        args = (emissions, mask, start, trans, end, validate)
        detached = tuple(x.detach() if isinstance(x, torch.Tensor) else x for x in args)
        torch.library.opcheck(torch.ops.chaincrf.log_partition.default, args)
        ll_args = (emissions, tags, mask, start, trans, end, False, validate)
        torch.library.opcheck(torch.ops.chaincrf.log_likelihood.default, ll_args)
        torch.library.opcheck(torch.ops.chaincrf.viterbi.default, detached)
        torch.library.opcheck(torch.ops.chaincrf.marginals.default, detached)
        # the compiled step's ops: no autograd kernel of their own (tested below)
        sum_args = (detached[0], tags, *detached[1:5], False, validate)
        for weight, with_gradient in ((1.0, False), (-1.0, True)):
            op = torch.ops.chaincrf.log_likelihood_sum.default
            torch.library.opcheck(op, (*sum_args, weight, with_gradient))
    grad = torch.randn(3, generator=g, dtype=torch.float64)
    no_tags = torch.empty(0, 0, dtype=torch.long)
    fb = torch.ops.chaincrf.forward_backward.default
    em, scores = emissions.detach(), [x.detach() for x in (start, trans, end)]
    for t in (no_tags, tags):
        torch.library.opcheck(fb, (grad, em, t, lengths, *scores))


def test_ops_without_an_autograd_kernel_refuse_a_gradient():
    """The ops a compiled step calls (the dispatcher runs them with no Python autograd layer:
    the layer carries their gradients) raise when called directly on tensors that need a
    gradient, rather than silently give none; without one they run, and the summed
    likelihood's value and gradient are those of the layer."""
    torch.manual_seed(0)
    crf = CRF(4, batch_first=True)
    em = torch.randn(2, 5, 4, requires_grad=True)
    tags = torch.randint(4, (2, 5))
    mask = torch.arange(5) < torch.tensor([5, 3])[:, None]
    scores = (crf.start_transitions, crf.transitions, crf.end_transitions)
    ops = torch.ops.chaincrf
    calls = {
        "log_likelihood_sum": lambda *x: ops.log_likelihood_sum(
            x[0], tags, mask, *x[1:], False, True, -1.0, True
        ),
        "viterbi": lambda *x: ops.viterbi(x[0], mask, *x[1:], True),
        "marginals": lambda *x: ops.marginals(x[0], mask, *x[1:], True),
    }
    for name, call in calls.items():
        with pytest.raises(RuntimeError, match=f"chaincrf::{name} has no autograd formula"):
            call(em, *scores)
    total, d_em, d_start, d_trans, d_end = calls["log_likelihood_sum"](
        em.detach(), *(s.detach() for s in scores)
    )
    want = crf.nll(em, tags, mask)
    want.backward()
    torch.testing.assert_close(total, want.detach())
    for got, param in zip((d_em, d_start, d_trans, d_end), (em, *scores)):
        torch.testing.assert_close(got, param.grad)


def test_errors_name_the_argument():
    em, lengths = torch.zeros(2, 3, 4), torch.tensor([3, 1])
    s, tr = torch.zeros(4), torch.zeros(4, 4)
    with pytest.raises(ValueError, match=r"emissions must have shape \(batch, seq_len, num_tags\)"):
        crf_fused.log_partition(em[0], lengths, s, tr, s)
    with pytest.raises(
        TypeError, match=r"emissions must be float32 or float64; got dtype torch\.float16"
    ):
        crf_fused.viterbi(em.half(), lengths, s, tr, s)
    with pytest.raises(TypeError, match=r"lengths must be an int64 tensor; got dtype torch\.int32"):
        crf_fused.marginals(em, lengths.int(), s, tr, s)
    with pytest.raises(ValueError, match=r"lengths must have shape \(2,\) \(batch,\); got \(3,\)"):
        crf_fused.log_partition(em, torch.tensor([3, 1, 1]), s, tr, s)
    with pytest.raises(
        ValueError, match=r"transitions must have shape \(4, 4\) \(num_tags = 4\); got \(4, 3\)"
    ):
        crf_fused.log_partition(em, lengths, s, tr[:, :3], s)
    with pytest.raises(TypeError, match=r"start must be a torch\.Tensor; got list"):
        crf_fused.log_partition(em, lengths, [0.0] * 4, tr, s)
    for bad in (torch.tensor([4, 1]), torch.tensor([3, -1])):
        with pytest.raises(
            ValueError, match=r"lengths must lie in \[0, seq_len = 3\]; got -?\d at batch row \d"
        ):
            crf_fused.log_partition(em, bad, s, tr, s)


def test_import_loads_no_numba_and_missing_numba_is_a_clear_error():
    code = (
        "import sys, torch\n"
        "import chaincrf.crf.kernels.fused.custom_ops as f\n"
        "assert 'numba' not in sys.modules, 'numba imported eagerly'\n"
        "sys.modules['numba'] = None\n"  # numba now fails to import
        "assert not f.available()\n"
        "try:\n"
        "    f.log_partition(torch.zeros(1, 2, 3), torch.tensor([2]), torch.zeros(3), torch.zeros(3, 3), torch.zeros(3))\n"
        "except RuntimeError as err:\n"
        "    assert 'needs numba' in str(err), err\n"
        "else:\n"
        "    raise AssertionError('no RuntimeError')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    assert crf_fused.available()


@pytest.mark.slow  # 10-20 s cold: inductor compiles forward and backward
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated")  # inductor's
def test_torch_compile_fullgraph_dynamic_without_recompiling():
    """log_partition (+ backward) and viterbi under torch.compile, two (B, T) profiles, one graph."""
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    K = 4
    crf = make_crf(K, 0)

    def loss_and_paths(em, lengths, start, trans, end):
        log_z = crf_fused.log_partition(em, lengths, start, trans, end)
        paths, best = crf_fused.viterbi(
            em.detach(), lengths, start.detach(), trans.detach(), end.detach()
        )
        return (log_z - best).sum(), paths

    compiled = torch.compile(loss_and_paths, fullgraph=True, dynamic=True)
    for i, (B, T) in enumerate([(3, 7), (5, 11)]):
        emissions, _mask, lengths = batch(B, T, K, i)
        results = []
        for fn in (loss_and_paths, compiled):
            crf.zero_grad()
            em = emissions.clone().requires_grad_(True)
            with torch._dynamo.config.patch(error_on_recompile=i > 0):
                loss, paths = fn(em, lengths, *scores(crf))
                loss.backward()
            results.append((loss.detach(), paths, em.grad, crf.transitions.grad.clone()))
        for a, b in zip(*results):
            torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.parametrize("weighting", ["uniform", "per_row"])
@pytest.mark.parametrize("constrained", [False, True])
def test_log_likelihood_gradients_for_any_row_weights_match_eager(weighting, constrained):
    """The fused log-likelihood computes its gradient in the forward pass for a unit weight and
    scales it; rows weighted differently take the forward-backward kernel again: both equal the
    eager kernel's gradients."""
    constraints = allowed_transitions("BIOES", BIOES) if constrained else None
    K = len(BIOES)
    emissions, mask, _lengths = batch(5, 12, K, 7)
    tags = torch.zeros(5, 12, dtype=torch.long)  # all O: allowed by BIOES
    g = torch.Generator().manual_seed(7)
    weights = torch.full((5,), 0.7) if weighting == "uniform" else torch.rand(5, generator=g)
    grads = []
    for kernel in ("eager", "fused"):
        crf = make_crf(K, 7, constraints=constraints).double()
        crf.kernel = kernel
        em = emissions.clone().requires_grad_(True)
        with plan.record() as ran:
            llh = crf(em, tags, mask, reduction="none")
        assert ran == [("log_partition", kernel)]
        (llh * weights.double()).sum().backward()
        grads.append((llh.detach(), em.grad, *(p.grad for p in crf.parameters())))
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("weighting", ["sum", "mean", "token_mean", "per_row"])
@pytest.mark.parametrize("B", [1, 5])
def test_the_negative_log_likelihood_carries_its_sign_and_sum_in_the_pass(weighting, B):
    """A (negative) log-likelihood on the fused kernel computes its sign, and for a reduced
    loss its sum, in the kernel's own call: a summed loss's autograd node is the kernel's (no
    sum or negation node: host time per step); values and gradients equal the eager kernel's
    for every reduction and both signs (per_row: rows weighted differently, the backward's
    second pass)."""
    K = len(BIOES)
    emissions, mask, _lengths = batch(5, 12, K, 9)
    emissions, mask = emissions[:B], mask[:B]
    tags = torch.randint(0, K, (B, 12), generator=torch.Generator().manual_seed(9))
    weights = torch.rand(B, generator=torch.Generator().manual_seed(3)).double() + 0.5
    for negate in (True, False):
        results = []
        for kernel in ("eager", "fused"):
            crf = make_crf(K, 9).double()
            crf.kernel = kernel
            em = emissions.clone().requires_grad_(True)
            call = crf.nll if negate else crf
            with plan.record() as ran:
                if weighting == "per_row":
                    loss = (call(em, tags, mask, reduction="none") * weights).sum()
                else:
                    loss = call(em, tags, mask, reduction=weighting)
            assert ran == [("log_partition", kernel)]
            loss.backward()
            results.append(
                (loss.grad_fn.name(), [loss, em.grad, *(p.grad for p in crf.parameters())])
            )
        (_, want), (node, got) = results
        if weighting == "sum":
            assert "Sum" not in node and "Neg" not in node, node
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-9)
