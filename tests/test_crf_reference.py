"""chaincrf.CRF against the textbook reference (tests/reference.py) and brute force."""

from __future__ import annotations

import math

import pytest
import torch

import reference as ref
from chaincrf.crf import plan
from crf_helpers import make_crf, params, ragged_batch, sentence

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")

CASES = [
    (B, T, K, seed)
    for seed, (B, T, K) in enumerate(
        [(1, 1, 1), (3, 4, 2), (5, 5, 3), (6, 5, 4), (4, 3, 4), (7, 2, 3)]
    )
]


def _both_layouts(emissions, tags, mask):
    yield True, emissions, tags, mask
    yield False, emissions.transpose(0, 1), tags.t(), mask.t()


@pytest.mark.parametrize(("B", "T", "K", "seed"), CASES)
@pytest.mark.parametrize("constrained", [False, True])
def test_against_reference_and_brute_force(B, T, K, seed, constrained):
    emissions, _tags, mask, lengths = ragged_batch(B, T, K, seed)
    constraints = None
    if constrained:
        g = torch.Generator().manual_seed(seed + 100)
        trans_ok = torch.rand(K, K, generator=g) > 0.3
        trans_ok[:, 0] = True  # tag 0 reachable from anywhere: every length has a path
        start_ok = torch.rand(K, generator=g) > 0.3
        start_ok[0] = True
        end_ok = torch.rand(K, generator=g) > 0.3
        end_ok[0] = True
        constraints = (start_ok, end_ok, trans_ok)
    crf = make_crf(K, seed, constraints=constraints)
    start, trans, end = params(crf)
    log_z = crf.log_partition(emissions, mask)
    k = 3
    paths, scores = crf.viterbi(emissions, mask)
    kpaths, kscores = crf.viterbi(emissions, mask, k=k)
    marg = crf.marginals(emissions, mask)
    for b in range(B):
        n = int(lengths[b])
        em = sentence(emissions, b, n)
        expected_z = ref.forward_algorithm(em, start, trans, end)
        assert math.isclose(float(log_z[b]), expected_z, rel_tol=1e-9, abs_tol=1e-9)
        assert math.isclose(
            expected_z, ref.brute_log_partition(em, start, trans, end), rel_tol=1e-9, abs_tol=1e-9
        )
        best_path, best_score = ref.viterbi(em, start, trans, end)
        assert paths[b, :n].tolist() == best_path
        assert (paths[b, n:] == -1).all()
        assert math.isclose(float(scores[b]), best_score, rel_tol=1e-9, abs_tol=1e-9)
        brute = ref.brute_kbest(em, start, trans, end, k)
        got_scores = kscores[b].tolist()
        for r, (_path, score) in enumerate(brute):
            assert math.isclose(got_scores[r], score, rel_tol=1e-9, abs_tol=1e-9)
            got = kpaths[b, r, :n].tolist()
            assert math.isclose(
                ref.path_score(em, got, start, trans, end), score, rel_tol=1e-9, abs_tol=1e-9
            )
        got_paths = [tuple(kpaths[b, r, :n].tolist()) for r in range(len(brute))]
        assert len(set(got_paths)) == len(got_paths), "k best paths must be distinct"
        for r in range(len(brute), k):
            assert got_scores[r] == float("-inf")
            assert (kpaths[b, r] == -1).all()
        if n:
            expected_m = torch.tensor(ref.marginals(em, start, trans, end), dtype=torch.float64)
            torch.testing.assert_close(marg[b, :n], expected_m, rtol=1e-7, atol=1e-9)
            torch.testing.assert_close(
                expected_m,
                torch.tensor(ref.brute_marginals(em, start, trans, end), dtype=torch.float64),
                rtol=1e-7,
                atol=1e-9,
            )
        assert (marg[b, n:] == 0).all()


@pytest.mark.parametrize(("B", "T", "K", "seed"), CASES)
def test_log_likelihood_all_layouts_and_reductions(B, T, K, seed):
    emissions, tags, mask, lengths = ragged_batch(B, T, K, seed)
    crf = make_crf(K, seed)
    start, trans, end = params(crf)
    expected = torch.tensor(
        [
            ref.log_likelihood(
                sentence(emissions, b, int(lengths[b])),
                tags[b, : int(lengths[b])].tolist(),
                start,
                trans,
                end,
            )
            for b in range(B)
        ],
        dtype=torch.float64,
    )
    for batch_first, em, tg, mk in _both_layouts(emissions, tags, mask):
        crf.batch_first = batch_first
        torch.testing.assert_close(crf(em, tg, mk, reduction="none"), expected)
        torch.testing.assert_close(crf(em, tg, mk, reduction="sum"), expected.sum())
        torch.testing.assert_close(crf(em, tg, mk, reduction="mean"), expected.mean())
        torch.testing.assert_close(
            crf(em, tg, mk, reduction="token_mean"), expected.sum() / mask.sum()
        )
        torch.testing.assert_close(crf.nll(em, tg, mk, reduction="none"), -expected)


@pytest.mark.parametrize(("B", "T", "K", "seed"), CASES)
def test_partial_log_likelihood_brute_force(B, T, K, seed):
    emissions, tags, mask, lengths = ragged_batch(B, T, K, seed)
    crf = make_crf(K, seed)
    start, trans, end = params(crf)
    g = torch.Generator().manual_seed(seed)
    allowed = torch.rand(B, T, K, generator=g) > 0.5
    allowed[..., 0] = True
    got = crf.partial_log_likelihood(emissions, allowed, mask, reduction="none")
    for b in range(B):
        n = int(lengths[b])
        expected = ref.brute_partial_log_likelihood(
            sentence(emissions, b, n), allowed[b, :n].tolist(), start, trans, end
        )
        assert math.isclose(float(got[b]), expected, rel_tol=1e-9, abs_tol=1e-9)
    # exactly one allowed tag per position == the log-likelihood of that path
    one_hot = torch.nn.functional.one_hot(tags.clamp(min=0), K).bool()
    torch.testing.assert_close(
        crf.partial_log_likelihood(emissions, one_hot, mask, reduction="none"),
        crf(emissions, tags, mask, reduction="none"),
    )


def test_larger_ragged_batch_against_reference():
    """Bigger shapes than brute force allows: batch 16, T 40, K 7, fast path."""
    emissions, tags, mask, lengths = ragged_batch(16, 40, 7, seed=5)
    crf = make_crf(7, 5)
    start, trans, end = params(crf)
    llh = crf(emissions, tags, mask, reduction="none")
    paths, scores = crf.viterbi(emissions, mask)
    for b in range(16):
        n = int(lengths[b])
        em = sentence(emissions, b, n)
        assert math.isclose(
            float(llh[b]),
            ref.log_likelihood(em, tags[b, :n].tolist(), start, trans, end),
            rel_tol=1e-9,
            abs_tol=1e-8,
        )
        path, score = ref.viterbi(em, start, trans, end)
        assert paths[b, :n].tolist() == path
        assert math.isclose(float(scores[b]), score, rel_tol=1e-9, abs_tol=1e-8)


@pytest.mark.usefixtures("eager_kernel")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_space_fallback_branch_matches_reference(dtype):
    """Transition scores spanning more than the exp path allows use the exact log-space path."""
    emissions, _tags, mask, lengths = ragged_batch(5, 6, 4, seed=9, dtype=dtype)
    crf = make_crf(4, 9).to(dtype)
    with torch.no_grad():
        crf.transitions[0, 1] = 400.0 if dtype == torch.float32 else 4000.0
        crf.transitions[2, 3] = -400.0 if dtype == torch.float32 else -4000.0
    start, trans, end = params(crf)
    with plan.record_paths() as paths:
        log_z = crf.log_partition(emissions, mask)
    assert _exact(paths) == [5], "the log-space branch was not taken for the whole batch"
    marg = crf.marginals(emissions, mask)
    tol = 1e-3 if dtype == torch.float32 else 1e-9  # scores of magnitude 400 in float32
    for b in range(5):
        n = int(lengths[b])
        em = sentence(emissions, b, n)
        assert math.isclose(
            float(log_z[b]), ref.forward_algorithm(em, start, trans, end), rel_tol=1e-5
        )
        if n:
            torch.testing.assert_close(
                marg[b, :n].double(),
                torch.tensor(ref.marginals(em, start, trans, end), dtype=torch.float64),
                rtol=tol,
                atol=tol,
            )


@pytest.mark.usefixtures("eager_kernel")
def test_underflow_guard_falls_back():
    """Constraints + huge emission spread: the scaled path must detect underflow, not return NaN/inf."""
    K = 3
    trans_ok = torch.tensor([[True, False, False], [False, True, False], [False, False, True]])
    crf = make_crf(
        K,
        0,
        constraints=(torch.ones(K, dtype=torch.bool), torch.ones(K, dtype=torch.bool), trans_ok),
    ).float()
    # row stays in its start tag; emissions push hard towards another tag at step 1
    emissions = torch.tensor([[[0.0, -200.0, -200.0], [-300.0, 0.0, -300.0], [0.0, 0.0, 0.0]]])
    start, trans, end = params(crf)
    with plan.record_paths() as paths:
        log_z = crf.log_partition(emissions)
    assert _exact(paths) == [1], "underflow not detected"
    assert math.isclose(
        float(log_z[0]),
        ref.forward_algorithm(emissions[0].tolist(), start, trans, end),
        rel_tol=1e-5,
    )


def _exact(paths: list[tuple[str, int]]) -> list[int]:
    """The row counts of every exact (log-space) forward-backward the eager kernel ran."""
    return [rows for path, rows in paths if path == "exact"]


@pytest.mark.usefixtures("eager_kernel")
def test_mixed_batch_recomputes_only_failing_rows_and_gradients_match():
    """One row underflows the scaled path; only it is recomputed, and all gradients are exact."""
    K = 3
    trans_ok = torch.eye(K, dtype=torch.bool)
    ones = torch.ones(K, dtype=torch.bool)
    crf = make_crf(K, 0, constraints=(ones, ones, trans_ok))
    g = torch.Generator().manual_seed(0)
    emissions = torch.randn(4, 5, K, generator=g, dtype=torch.float64)
    emissions[2, 0] = torch.tensor([0.0, -900.0, -900.0])
    emissions[2, 1] = torch.tensor([-900.0, 0.0, -900.0])  # row 2 must stay in tag 0: underflow
    mask = torch.tensor(
        [[1] * 5, [1] * 3 + [0] * 2, [1] * 4 + [0], [1] * 2 + [0] * 3], dtype=torch.bool
    )
    tags = torch.zeros(4, 5, dtype=torch.long)
    em = emissions.clone().requires_grad_(True)
    with plan.record_paths() as paths:
        crf(em, tags, mask).backward()
    assert _exact(paths) == [1]
    grads = [em.grad] + [
        p.grad.clone() for p in (crf.start_transitions, crf.transitions, crf.end_transitions)
    ]
    # the same in pure log space (float64 spread limit forced to 0)
    crf.zero_grad()
    em2 = emissions.clone().requires_grad_(True)
    with plan.eager_tuning(span_limit_float64=-1.0), plan.record_paths() as paths:
        crf(em2, tags, mask).backward()
    assert _exact(paths) == [4]
    expected = [em2.grad] + [
        p.grad for p in (crf.start_transitions, crf.transitions, crf.end_transitions)
    ]
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)
    start, trans, end = params(crf)
    for b in range(4):
        n = int(mask[b].sum())
        assert math.isclose(
            float(crf.log_partition(emissions, mask)[b]),
            ref.forward_algorithm(emissions[b, :n].tolist(), start, trans, end),
            rel_tol=1e-9,
        )


@pytest.mark.usefixtures("eager_kernel")
def test_tree_branch_matches_reference_and_sequential_gradients():
    """The log-depth tree (small unconstrained batches) equals the reference; its gradients and
    marginals equal those of the sequential forward-backward."""
    emissions, tags, mask, lengths = ragged_batch(3, 13, 4, seed=21, min_len=1)
    tags = tags.clamp(min=0)
    crf = make_crf(4, 21)
    em = emissions.clone().requires_grad_(True)
    with plan.record_paths() as paths:
        llh = crf(em, tags, mask, reduction="none")
        llh.sum().backward()
        marg = crf.marginals(emissions, mask)
    assert paths == [("tree", 3), ("tree", 3)], "the tree branch was not taken"
    start, trans, end = params(crf)
    for b in range(3):
        n = int(lengths[b])
        expected = ref.log_likelihood(
            sentence(emissions, b, n), tags[b, :n].tolist(), start, trans, end
        )
        assert math.isclose(float(llh[b]), expected, rel_tol=1e-9, abs_tol=1e-9)
    tree_grads = [em.grad] + [
        p.grad.clone() for p in (crf.start_transitions, crf.transitions, crf.end_transitions)
    ]
    crf.zero_grad()
    em2 = emissions.clone().requires_grad_(True)
    with plan.eager_tuning(tree_max_bkk=0), plan.record_paths() as paths:
        crf(em2, tags, mask, reduction="none").sum().backward()
        sequential_marg = crf.marginals(emissions, mask)
    assert {path for path, _ in paths} == {"scaled"}
    seq_grads = [em2.grad] + [
        p.grad for p in (crf.start_transitions, crf.transitions, crf.end_transitions)
    ]
    for got, want in zip(tree_grads, seq_grads):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(marg, sequential_marg)


@pytest.mark.usefixtures("eager_kernel")
@pytest.mark.parametrize("T", [1, 2, 9, 11])
@pytest.mark.parametrize("constrained", [False, True])
def test_tree_viterbi_branch_matches_reference(constrained, T):
    """Long sequences in small batches decode through the max-plus tree; it equals the textbook
    Viterbi (thresholds lowered so that a small batch takes it). T - 1 steps: none, one, a power
    of two, and padded up to one."""
    K = 4
    constraints = None
    if constrained:
        trans_ok = torch.ones(K, K, dtype=torch.bool)
        trans_ok[0, 1] = trans_ok[2, 3] = trans_ok[1, 1] = False
        constraints = (
            torch.ones(K, dtype=torch.bool),
            torch.tensor([True, True, False, True]),
            trans_ok,
        )
    emissions, _, mask, lengths = ragged_batch(4, T, K, seed=33)
    mask[3] = False  # an empty row
    lengths[3] = 0
    crf = make_crf(K, 33, constraints=constraints)
    tree = plan.eager_tuning(tree_viterbi_min_t=1, tree_viterbi_max_bkkk=256)
    with tree, plan.record_paths() as taken:
        paths, scores = crf.viterbi(emissions, mask)
        decoded = crf.decode(emissions, mask)
    assert taken == [("tree_viterbi", 4)] * 2, "the tree branch was not taken"
    assert decoded == [paths[b, : int(lengths[b])].tolist() for b in range(4)]
    start, trans, end = params(crf)
    for b in range(4):
        n = int(lengths[b])
        path, score = ref.viterbi(sentence(emissions, b, n), start, trans, end)
        assert paths[b, :n].tolist() == path and (paths[b, n:] == -1).all()
        assert math.isclose(float(scores[b]), score, rel_tol=1e-9, abs_tol=1e-9)
    with plan.record_paths() as taken:
        seq_paths, seq_scores = crf.viterbi(emissions, mask)
    assert taken == [("scan_viterbi", 4)] and torch.equal(seq_paths, paths)
    torch.testing.assert_close(seq_scores, scores)


@pytest.mark.usefixtures("eager_kernel")
@pytest.mark.parametrize("broadcast", [False, True])
def test_matrix_product_branches_match_reference(broadcast):
    """The scaled recursion's products by BLAS and by broadcasting agree with the reference."""
    emissions, tags, mask, lengths = ragged_batch(6, 9, 5, seed=44, min_len=1)
    tags = tags.clamp(min=0)
    crf = make_crf(5, 44)
    em = emissions.clone().requires_grad_(True)
    tuning = {"broadcast_max": 1 << 30, "broadcast_min_threads": 1} if broadcast else {}
    with plan.eager_tuning(tree_max_bkk=0, **tuning):
        llh = crf(em, tags, mask, reduction="none")
        llh.sum().backward()
        marg = crf.marginals(emissions, mask)
    start, trans, end = params(crf)
    for b in range(6):
        n = int(lengths[b])
        s = sentence(emissions, b, n)
        assert math.isclose(
            float(llh[b]),
            ref.log_likelihood(s, tags[b, :n].tolist(), start, trans, end),
            rel_tol=1e-9,
            abs_tol=1e-9,
        )
        expected = torch.tensor(ref.marginals(s, start, trans, end), dtype=torch.float64)
        torch.testing.assert_close(marg[b, :n], expected)
    gold = torch.nn.functional.one_hot(tags, 5).double() * mask.unsqueeze(2)
    torch.testing.assert_close(em.grad, gold - marg)  # d llh / d emissions


@pytest.mark.parametrize("sliced", [True, False])
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.usefixtures("eager_kernel")
def test_backtrace_branches_match_reference(batched, sliced):
    """Back-pointers batched after the forward pass and followed by pointer doubling, or argmax
    per chosen tag; forward steps over the whole batch or sliced to the running rows: same paths.
    """
    emissions, _, mask, lengths = ragged_batch(7, 13, 4, seed=55)
    emissions[~mask] = float("nan")  # padding is never read, whatever it holds
    crf = make_crf(4, 55)
    tuning = plan.eager_tuning(
        batched_backpointers_max=1 << 30 if batched else 0,
        slice_min_saved=0 if sliced else 1 << 30,
        tree_viterbi_max_bkkk=0,
        tree_viterbi_long_max_bkkk=0,
    )
    with tuning, plan.record_paths() as taken:
        paths, scores = crf.viterbi(emissions, mask)
    assert taken == [("scan_viterbi", 7)]
    start, trans, end = params(crf)
    for b in range(7):
        n = int(lengths[b])
        path, score = ref.viterbi(sentence(emissions, b, n), start, trans, end)
        assert paths[b, :n].tolist() == path and (paths[b, n:] == -1).all()
        assert math.isclose(float(scores[b]), score, rel_tol=1e-9, abs_tol=1e-9)


@pytest.mark.parametrize("kernel", ["eager", "fused"])
@pytest.mark.parametrize("T", [5, 12])
def test_a_forced_path_through_a_tag_far_below_the_best_is_kept(kernel, T):
    """Rows whose only good path runs through a tag 110 nats below its step's best (forward
    and backward mirrors) or past an unreachable tag far above the rest: the float32 scaled
    exp-space paths flag them (a reachable tag's weight under the floor) and recompute them in
    log space, so log Z, marginals and the likelihood's gradients are the float64 reference's
    (a scaled recursion that drops the tag returns about -160 for -110)."""
    from crf_helpers import forced_paths

    if kernel == "fused":
        pytest.importorskip("numba")
    reference, em = forced_paths(T=T, kernel="eager")
    want_z = reference.log_partition(em)
    assert want_z[:2].tolist() == pytest.approx([-110.0, -110.0], abs=1e-6)
    tags = reference.viterbi(em)[0]
    em64 = em.clone().requires_grad_(True)
    reference(em64, tags, reduction="sum").backward()
    want = [em64.grad] + [p.grad for p in params_of(reference)]
    crf = make_kernel_copy(reference, kernel)
    em32 = em.float().requires_grad_(True)
    crf(em32, tags, reduction="sum").backward()
    got = [em32.grad] + [p.grad for p in params_of(crf)]
    close = {"rtol": 1e-4, "atol": 1e-4}
    torch.testing.assert_close(crf.log_partition(em.float()).double(), want_z, **close)
    torch.testing.assert_close(crf.marginals(em.float()).double(), reference.marginals(em), **close)
    for name, g, w in zip(("emissions", "start", "transitions", "end"), got, want):
        torch.testing.assert_close(g.double(), w, **close, msg=name)


def params_of(crf):
    return crf.start_transitions, crf.transitions, crf.end_transitions


def make_kernel_copy(crf, kernel: str):
    """A float32 copy of ``crf`` on ``kernel``."""
    from chaincrf import CRF

    copy = CRF(crf.num_tags, batch_first=True, kernel=kernel)
    copy.load_state_dict(crf.state_dict())
    return copy.float()


@pytest.mark.parametrize("kernel", ["eager", "fused"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scores_spread_wider_than_exp_space_reaches_go_to_log_space(kernel, dtype):
    """A start score 1,000 nats below the other (its exp underflows even in float64, so an exp-
    space recursion reads the allowed start as forbidden): the only good path starts there.
    log Z (900, not 0) and the marginals are the float64 reference's."""
    if kernel == "fused":
        pytest.importorskip("numba")
    from chaincrf import CRF

    ref = CRF(2, batch_first=True, kernel="eager").double()
    with torch.no_grad():
        ref.transitions.copy_(torch.tensor([[0.0, -math.inf], [-math.inf, 0.0]]))
        ref.start_transitions.copy_(torch.tensor([0.0, -1000.0]))
        ref.end_transitions.zero_()
    em = torch.zeros(1, 20, 2, dtype=torch.float64)
    em[0, 1:, 1] = 100.0
    assert ref.log_partition(em).item() == pytest.approx(900.0)
    crf = make_kernel_copy(ref, kernel).to(dtype)
    close = {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(crf.log_partition(em.to(dtype)).double(), ref.log_partition(em),
                               **close)  # fmt: skip
    torch.testing.assert_close(crf.marginals(em.to(dtype)).double(), ref.marginals(em), **close)


@pytest.mark.parametrize("kernel", ["eager", "fused"])
@pytest.mark.parametrize(
    ("dtype", "T", "lead"), [(torch.float32, 6, 30.0), (torch.float64, 30, 30.0)]
)
def test_an_unreachable_tag_far_above_the_rest_gives_finite_gradients(kernel, dtype, T, lead):
    """Tag 1 can neither start nor be entered, and scores ``lead`` above tag 0 everywhere: the
    scaled backward's messages of an unreachable tag grew until they overflowed (0 * inf: NaN
    gradients). The gradient is the reference's marginals (all on tag 0)."""
    if kernel == "fused":
        pytest.importorskip("numba")
    from chaincrf import CRF

    ref = CRF(2, batch_first=True, kernel="eager").double()
    with torch.no_grad():
        ref.transitions.copy_(torch.tensor([[0.0, -math.inf], [-math.inf, 0.0]]))
        ref.start_transitions.copy_(torch.tensor([0.0, -math.inf]))
        ref.end_transitions.zero_()
    em = torch.zeros(1, T, 2, dtype=torch.float64)
    em[0, :, 1] = lead
    crf = make_kernel_copy(ref, kernel).to(dtype)
    em_k = em.to(dtype).requires_grad_(True)
    crf.log_partition(em_k).sum().backward()
    torch.testing.assert_close(em_k.grad.double(), ref.marginals(em), rtol=1e-6, atol=1e-6)
