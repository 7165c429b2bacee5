"""Hypothesis properties of chaincrf.CRF, gradcheck, dtypes and extreme inputs."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import reference as ref
from chaincrf import CRF
from chaincrf.data.schemes import allowed_transitions
from crf_helpers import make_crf, params, ragged_batch, sentence

pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")

shapes = st.tuples(
    st.integers(1, 6),  # B
    st.integers(1, 8),  # T
    st.integers(1, 6),  # K
    st.integers(0, 10_000),  # seed
)


@given(shapes)
def test_garbage_in_padding_changes_nothing(shape):
    B, T, K, seed = shape
    emissions, tags, mask, _ = ragged_batch(B, T, K, seed)
    crf = make_crf(K, seed)
    g = torch.Generator().manual_seed(seed + 1)
    noisy = torch.where(
        mask.unsqueeze(2), emissions, torch.randn(B, T, K, generator=g, dtype=torch.float64) * 1e3
    )
    noisy_tags = torch.where(mask, tags, torch.randint(-100, 100, (B, T), generator=g))
    clean_tags = tags.clamp(min=0)
    torch.testing.assert_close(
        crf(emissions, clean_tags, mask, "none"),
        crf(noisy, noisy_tags, mask, "none", validate=True),
    )
    torch.testing.assert_close(crf.log_partition(emissions, mask), crf.log_partition(noisy, mask))
    torch.testing.assert_close(crf.marginals(emissions, mask), crf.marginals(noisy, mask))
    for k in (1, 3):
        p1, s1 = crf.viterbi(emissions, mask, k=k)
        p2, s2 = crf.viterbi(noisy, mask, k=k)
        assert torch.equal(p1, p2)
        torch.testing.assert_close(s1, s2)


@given(shapes)
def test_permuting_the_batch_permutes_the_outputs(shape):
    B, T, K, seed = shape
    emissions, tags, mask, _ = ragged_batch(B, T, K, seed)
    crf = make_crf(K, seed)
    perm = torch.randperm(B, generator=torch.Generator().manual_seed(seed))
    tags = tags.clamp(min=0)
    torch.testing.assert_close(
        crf(emissions, tags, mask, "none")[perm],
        crf(emissions[perm], tags[perm], mask[perm], "none"),
    )
    torch.testing.assert_close(
        crf.marginals(emissions, mask)[perm], crf.marginals(emissions[perm], mask[perm])
    )
    p1, s1 = crf.viterbi(emissions, mask, k=2)
    p2, s2 = crf.viterbi(emissions[perm], mask[perm], k=2)
    torch.testing.assert_close(s1[perm], s2)
    assert torch.equal(p1[perm][:, 0], p2[:, 0]) or torch.allclose(s1[perm][:, :2], s2[:, :2])


@given(shapes)
def test_viterbi_score_at_most_log_partition_and_marginals_sum_to_one(shape):
    B, T, K, seed = shape
    emissions, _, mask, _lengths = ragged_batch(B, T, K, seed)
    crf = make_crf(K, seed)
    _, best = crf.viterbi(emissions, mask)
    log_z = crf.log_partition(emissions, mask)
    assert (best <= log_z + 1e-9).all()
    sums = crf.marginals(emissions, mask).sum(-1)
    torch.testing.assert_close(sums, mask.double())
    # the best path's score is the score of the path it returns
    paths, scores = crf.viterbi(emissions, mask)
    llh = crf(emissions, paths.clamp(min=0), mask, "none")
    torch.testing.assert_close(llh, scores - log_z)


@given(st.integers(1, 6), st.integers(1, 9), st.integers(1, 7))
def test_zero_scores_give_t_log_k(B, T, K):
    crf = CRF(K, batch_first=True).double()
    torch.nn.init.zeros_(crf.transitions)
    torch.nn.init.zeros_(crf.start_transitions)
    torch.nn.init.zeros_(crf.end_transitions)
    lengths = torch.arange(B) % (T + 1)
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    log_z = crf.log_partition(torch.zeros(B, T, K, dtype=torch.float64), mask)
    torch.testing.assert_close(log_z, lengths.double() * math.log(K))


@pytest.mark.parametrize("scheme", ["IOB1", "BIO", "BIOES"])
@given(seed=st.integers(0, 10_000), T=st.integers(1, 12))
def test_constrained_decodes_never_contain_a_forbidden_move(scheme, seed, T):
    labels = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    if scheme == "BIOES":
        labels += ["E-PER", "S-PER", "E-LOC", "S-LOC"]
    start_ok, end_ok, trans_ok = allowed_transitions(scheme, labels)
    K = len(labels)
    crf = make_crf(K, seed, constraints=(start_ok, end_ok, trans_ok), scale=3.0)
    emissions, _, mask, lengths = ragged_batch(8, T, K, seed, min_len=1)
    paths, scores = crf.viterbi(emissions * 3, mask, k=4)
    for b in range(8):
        n = int(lengths[b])
        for r in range(4):
            if scores[b, r] == float("-inf"):
                continue
            path = paths[b, r, :n].tolist()
            assert start_ok[path[0]] and end_ok[path[-1]]
            assert all(trans_ok[i, j] for i, j in itertools.pairwise(path))
    # and training never sees a forbidden path: marginals of forbidden starts are 0
    marg = crf.marginals(emissions, mask)
    assert (marg[:, 0][:, ~start_ok] == 0).all()


def test_gold_path_breaking_constraints_raises():
    labels = ["O", "B-PER", "I-PER"]
    crf = CRF(3, batch_first=True, constraints=allowed_transitions("BIO", labels))
    emissions = torch.randn(2, 3, 3)
    tags = torch.tensor([[0, 1, 2], [0, 2, 2]])  # row 1: O -> I-PER is forbidden in BIO
    with pytest.raises(ValueError, match="batch row 1 break the transition constraints"):
        crf(emissions, tags)
    assert torch.isfinite(crf(emissions[:1], tags[:1]))


@pytest.mark.parametrize("fast", [True, False])
def test_gradcheck_float64(fast):
    emissions, tags, mask, _ = ragged_batch(3, 4, 3, seed=1)
    crf = make_crf(3, 1)
    if not fast:  # transition spread beyond the exp path's limit -> log-space branch
        with torch.no_grad():
            crf.transitions[0, 0] = 700.0
    emissions = emissions.masked_fill(~mask.unsqueeze(2), 0.0).requires_grad_(True)
    tags = tags.clamp(min=0)
    args = [emissions] + [
        p.detach().clone().requires_grad_(True)
        for p in (crf.start_transitions, crf.transitions, crf.end_transitions)
    ]
    assert torch.autograd.gradcheck(lambda *a: _llh(*a, tags=tags, mask=mask), args)


def _llh(em, start, trans, end, tags, mask):
    """Log-likelihood with the parameters passed as tensors (gradcheck needs inputs)."""
    crf = CRF(em.size(2), batch_first=True).double()
    del crf.start_transitions, crf.transitions, crf.end_transitions
    crf.start_transitions, crf.transitions, crf.end_transitions = start, trans, end
    return crf(em, tags, mask, reduction="none")


def test_gradient_equals_marginals():
    emissions, _, mask, _ = ragged_batch(4, 6, 5, seed=3)
    crf = make_crf(5, 3)
    emissions = emissions.requires_grad_(True)
    crf.log_partition(emissions, mask).sum().backward()
    torch.testing.assert_close(emissions.grad, crf.marginals(emissions.detach(), mask))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_half_inputs_are_computed_in_float32(dtype):
    emissions, tags, mask, _ = ragged_batch(4, 6, 5, seed=3, dtype=torch.float32)
    emissions = emissions.masked_fill(~mask.unsqueeze(2), 0.0)
    crf = make_crf(5, 3).float()
    reference = crf(emissions.to(dtype).float(), tags.clamp(min=0), mask, "none")
    got = crf(emissions.to(dtype), tags.clamp(min=0), mask, "none")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, reference)
    assert torch.isfinite(crf.marginals(emissions.to(dtype) * 1e3, mask)).all()
    paths, _ = crf.viterbi(emissions.to(dtype), mask)
    assert torch.equal(paths, crf.viterbi(emissions.to(dtype).float(), mask)[0])


@pytest.mark.parametrize(("T", "scale"), [(10_000, 10.0), (1_000, 1e4)])
def test_huge_emissions_and_long_sequences_stay_finite(T, scale):
    """T = 10,000 (scaled path) and |emissions| = 1e4 with -inf constraints (exact path)."""
    torch.manual_seed(0)
    crf = CRF(
        5,
        batch_first=True,
        constraints=allowed_transitions("BIO", ["O", "B-A", "I-A", "B-B", "I-B"]),
    )
    emissions = (torch.rand(2, T, 5) * 2 - 1) * scale
    emissions.requires_grad_(True)
    tags = torch.zeros(2, T, dtype=torch.long)
    mask = torch.ones(2, T, dtype=torch.bool)
    mask[1, T * 7 // 10 :] = False
    nll = crf.nll(emissions, tags, mask)
    assert torch.isfinite(nll)
    nll.backward()
    assert torch.isfinite(emissions.grad).all()
    marg = crf.marginals(emissions.detach(), mask)
    torch.testing.assert_close(marg.sum(-1), mask.float(), atol=1e-4, rtol=0)
    paths, scores = crf.viterbi(emissions.detach(), mask)
    assert (
        torch.isfinite(scores).all()
        and (paths[1, T * 7 // 10 :] == -1).all()
        and (paths[0] >= 0).all()
    )


def test_empty_rows():
    crf = make_crf(3, 0)
    emissions = torch.randn(3, 4, 3, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.uint8)
    tags = torch.zeros(3, 4, dtype=torch.long)
    llh = crf(emissions, tags, mask, "none")
    assert llh[1] == 0 and torch.isfinite(llh).all()
    assert crf.log_partition(emissions, mask)[1] == 0
    paths, scores = crf.viterbi(emissions, mask)
    assert (paths[1] == -1).all() and scores[1] == 0
    kp, ks = crf.viterbi(emissions, mask, k=2)
    assert ks[1].tolist() == [0.0, float("-inf")] and (kp[1] == -1).all()
    assert crf.decode(emissions, mask)[1] == []
    assert (crf.marginals(emissions, mask)[1] == 0).all()
    all_empty = torch.zeros(2, 3, dtype=torch.bool)
    assert crf(emissions[:2, :3], tags[:2, :3], all_empty, "none").tolist() == [0.0, 0.0]


def test_fewer_paths_than_k():
    crf = make_crf(2, 0)
    emissions = torch.randn(1, 2, 2, dtype=torch.float64)
    paths, scores = crf.viterbi(emissions, k=6)
    assert torch.isfinite(scores[0, :4]).all() and torch.isneginf(scores[0, 4:]).all()
    assert (paths[0, 4:] == -1).all()
    assert len({tuple(p) for p in paths[0, :4].tolist()}) == 4


def test_import_loads_no_lightning_hydra_or_omegaconf():
    code = (
        "import sys, chaincrf.crf\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning', 'hydra', 'omegaconf')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@given(shapes, st.booleans())
def test_batched_equals_brute_force_per_sentence(shape, batch_first):
    """Random ragged batches: log-partition, best path and score equal brute-force enumeration."""
    B, T, K, seed = shape
    T, K = min(T, 5), min(K, 4)
    emissions, _, mask, lengths = ragged_batch(B, T, K, seed)
    crf = make_crf(K, seed)
    start, trans, end = params(crf)
    crf.batch_first = batch_first
    em, mk = (emissions, mask) if batch_first else (emissions.transpose(0, 1), mask.t())
    log_z = crf.log_partition(em, mk)
    paths, scores = crf.viterbi(em, mk)
    paths = paths if batch_first else paths.t()
    for b in range(B):
        n = int(lengths[b])
        s = sentence(emissions, b, n)
        assert math.isclose(
            float(log_z[b]),
            ref.brute_log_partition(s, start, trans, end),
            rel_tol=1e-9,
            abs_tol=1e-9,
        )
        (_best_path, best_score), *_ = ref.brute_kbest(s, start, trans, end, 1)
        assert math.isclose(float(scores[b]), best_score, rel_tol=1e-9, abs_tol=1e-9)
        assert math.isclose(
            ref.path_score(s, paths[b, :n].tolist(), start, trans, end),
            best_score,
            rel_tol=1e-9,
            abs_tol=1e-9,
        )


@pytest.mark.parametrize(("B", "K"), [(2, 5), (64, 9)])  # tree paths and sequential paths
def test_works_under_inference_mode(B, K):
    """Lightning validates and predicts under torch.inference_mode: every method must work there."""
    crf = make_crf(K, 0)
    emissions, tags, mask, _ = ragged_batch(B, 40, K, seed=0, min_len=1)
    tags = tags.clamp(min=0)
    expected = (
        crf.viterbi(emissions, mask),
        crf.marginals(emissions, mask),
        crf(emissions, tags, mask),
    )
    with torch.inference_mode():
        got = (
            crf.viterbi(emissions, mask),
            crf.marginals(emissions, mask),
            crf(emissions, tags, mask),
        )
        assert crf.decode(emissions, mask) == crf.decode(emissions.clone(), mask)
    assert torch.equal(got[0][0], expected[0][0])
    torch.testing.assert_close(got[1], expected[1])
    torch.testing.assert_close(got[2], expected[2].detach())


def test_zero_length_batches():
    crf = make_crf(3, 0)
    emissions = torch.randn(2, 0, 3, dtype=torch.float64, requires_grad=True)
    tags = torch.zeros(2, 0, dtype=torch.long)
    assert crf(emissions, tags, reduction="none").tolist() == [0.0, 0.0]
    loss = crf.nll(emissions, tags, reduction="token_mean")
    loss.backward()  # no 0/0, and still a graph to back-propagate through
    assert loss.item() == 0.0
    assert crf.log_partition(emissions).tolist() == [0.0, 0.0]
    assert crf.decode(emissions) == [[], []]
    paths, scores = crf.viterbi(emissions, k=2)
    assert paths.shape == (2, 2, 0) and scores[:, 0].tolist() == [0.0, 0.0]
    assert crf.marginals(emissions).shape == (2, 0, 3)
