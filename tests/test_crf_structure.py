"""Pairwise marginals and entropy (chaincrf.crf.structure) against brute-force enumeration."""

from __future__ import annotations

import math

import pytest
import torch

import reference as ref
from chaincrf.data.schemes import allowed_transitions
from crf_helpers import make_crf, params, ragged_batch, sentence

LABELS = ["O", "B-X", "I-X"]


def enumerate_paths(em, start, trans, end):
    """(path, probability) of every path with a finite score."""
    log_z = ref.brute_log_partition(em, start, trans, end)
    out = []
    for p in ref.all_paths(len(em), len(start)):
        score = ref.path_score(em, list(p), start, trans, end)
        if score != -math.inf:
            out.append((p, math.exp(score - log_z)))
    return out


@pytest.mark.parametrize("constrained", [False, True])
@pytest.mark.parametrize("batch_first", [True, False])
def test_pairwise_marginals_and_entropy_against_brute_force(constrained, batch_first):
    constraints = allowed_transitions("BIO", LABELS) if constrained else None
    crf = make_crf(len(LABELS), 2, constraints=constraints, batch_first=batch_first)
    emissions, _, mask, lengths = ragged_batch(6, 5, len(LABELS), seed=7)
    start, trans, end = params(crf)
    x, m = (emissions, mask) if batch_first else (emissions.transpose(0, 1), mask.t())
    xi = crf.pairwise_marginals(x, m)
    h = crf.entropy(x, m)
    assert xi.shape == (6, 4, 3, 3) and h.shape == (6,)
    for b, n in enumerate(lengths.tolist()):
        paths = enumerate_paths(sentence(emissions, b, n), start, trans, end)
        want = torch.zeros(4, 3, 3, dtype=torch.float64)
        for p, prob in paths:
            for t in range(1, n):
                want[t - 1, p[t - 1], p[t]] += prob
        torch.testing.assert_close(xi[b], want)
        assert h[b].item() == pytest.approx(
            -sum(q * math.log(q) for _, q in paths if q > 0), abs=1e-9
        )
    if constrained:  # forbidden moves: probability exactly 0, and no NaN from 0 * -inf
        assert (xi[:, :, 0, 2] == 0).all() and torch.isfinite(h).all()
        leaf = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(crf.entropy(leaf, m).sum(), leaf)
        assert torch.isfinite(grad).all()


def test_entropy_is_differentiable_twice_and_extremes():
    crf = make_crf(len(LABELS), 3)
    emissions, _, mask, _ = ragged_batch(3, 4, len(LABELS), seed=8, min_len=1)
    leaf = emissions.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(crf.entropy(leaf, mask).sum(), leaf, create_graph=True)
    (gg,) = torch.autograd.grad((g * mask.unsqueeze(2)).pow(2).sum(), leaf)
    assert torch.isfinite(gg).all() and gg.abs().sum() > 0
    # a near-certain path has entropy ~0; uniform scores give log(number of paths)
    peaked = torch.full((1, 4, 3), -50.0, dtype=torch.float64)
    peaked[0, :, 1] = 50.0
    assert crf.entropy(peaked).item() == pytest.approx(0.0, abs=1e-6)
    flat = make_crf(len(LABELS), 4, scale=0.0)
    assert flat.entropy(torch.zeros(1, 4, 3, dtype=torch.float64)).item() == pytest.approx(
        4 * math.log(3)
    )


@pytest.mark.parametrize("constrained", [False, True])
def test_samples_follow_the_path_distribution(constrained):
    constraints = allowed_transitions("BIO", LABELS) if constrained else None
    crf = make_crf(len(LABELS), 6, constraints=constraints, scale=0.7)
    emissions, _, mask, lengths = ragged_batch(3, 3, len(LABELS), seed=9)
    start, trans, end = params(crf)
    n = 20_000
    draws = crf.sample(emissions, mask, num_samples=n, generator=torch.Generator().manual_seed(0))
    assert draws.shape == (n, 3, 3)
    for b, length in enumerate(lengths.tolist()):
        assert (draws[:, b, length:] == -1).all()
        paths = enumerate_paths(sentence(emissions, b, length), start, trans, end)
        counts = {}
        for row in draws[:, b, :length].tolist():
            counts[tuple(row)] = counts.get(tuple(row), 0) + 1
        assert set(counts) <= {p for p, _ in paths}  # never a forbidden path
        for p, prob in paths:  # 4 standard deviations of a frequency at n = 20,000
            assert (
                abs(counts.get(tuple(p), 0) / n - prob)
                < 4 * math.sqrt(prob * (1 - prob) / n) + 1e-3
            )
    again = crf.sample(emissions, mask, num_samples=n, generator=torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)  # the generator makes it reproducible


@pytest.mark.parametrize("constrained", [False, True])
def test_marginals_are_differentiable_twice(constrained):
    """With emissions that require a gradient, marginals are a differentiable function:
    d P(y_t = i) / d em[s, j] = P(y_t = i, y_s = j) - P(y_t = i) P(y_s = j) (by enumeration),
    and their second derivatives pass gradgradcheck; a gap in the mask is skipped."""
    constraints = allowed_transitions("BIO", LABELS) if constrained else None
    crf = make_crf(len(LABELS), 8, constraints=constraints)
    start, trans, end = params(crf)
    emissions = torch.randn(1, 4, len(LABELS), dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, True, False, True]])  # the chain: positions 0, 1, 3
    marginals = crf.marginals(emissions, mask)
    kept = [0, 1, 3]
    em = emissions.detach()[0, kept].tolist()
    paths = enumerate_paths(em, start, trans, end)
    K = len(LABELS)
    node = torch.zeros(3, K, dtype=torch.float64)
    joint = torch.zeros(3, K, 3, K, dtype=torch.float64)
    for p, q in paths:
        for t in range(3):
            node[t, p[t]] += q
            for s in range(3):
                joint[t, p[t], s, p[s]] += q
    torch.testing.assert_close(marginals[0, kept], node)
    assert (marginals[0, 2] == 0).all()
    for t in range(3):
        for i in range(K):
            (grad,) = torch.autograd.grad(marginals[0, kept[t], i], emissions, retain_graph=True)
            want = joint[t, i] - node[t, i] * node
            torch.testing.assert_close(grad[0, kept], want)
            assert (grad[0, 2] == 0).all()
    inputs = torch.randn(2, 3, K, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x: crf.marginals(x), (inputs,))


@pytest.mark.parametrize(
    "case", ["plain", "constrained", "huge emissions", "a tag with no successor", "no path"]
)
def test_the_confidences_scaled_messages_equal_the_log_space_ones(case):
    """``chain_messages`` (the span confidences' forward-backward: exp space with per-step
    scaling on the CPU) gives the log-space messages of ``structure.messages`` to rounding,
    ``-inf`` where they have it, also where scaling underflows or no path is open (those rows
    are recomputed in log space); empty rows and rows of one token included."""
    from chaincrf.crf import structure
    from chaincrf.crf.confidence import chain_messages, crf_scores

    torch.manual_seed(0)
    labels = ["O", "B-X", "I-X", "E-X", "S-X", "B-Y", "I-Y", "E-Y", "S-Y"]
    crf = make_crf(len(labels), 0, constraints=allowed_transitions("BIOES", labels))
    start, trans, end = crf_scores(crf)
    if case == "plain":
        start, trans, end = (torch.randn_like(x) for x in (start, trans, end))
    lengths = torch.tensor([40, 0, 1, 17, 40, 2, 33, 9])
    T, K = 40, len(labels)
    mask = torch.arange(T) < lengths[:, None]
    emissions = torch.randn(len(lengths), T, K, dtype=torch.float64) * 3
    if case == "huge emissions":  # differences far past exp's range: every row underflows
        emissions[::2] *= 400
    elif case == "a tag with no successor":
        trans = trans.clone()
        trans[2] = -math.inf
    elif case == "no path":
        emissions[3, 5] = -math.inf  # every tag forbidden at one position of one row
    got = chain_messages(emissions, mask, start, trans, end)
    em = torch.where(mask.unsqueeze(2), emissions, 0.0)
    want = structure.messages(em, mask, start, trans, end)
    for g, w in zip(got, want):
        assert torch.equal(torch.isneginf(g), torch.isneginf(w))
        assert not torch.isnan(g).any()
        finite = torch.isfinite(w)
        torch.testing.assert_close(g[finite], w[finite], rtol=1e-12, atol=1e-10)
    if case == "no path":
        assert torch.isneginf(got[2][3])  # log Z of the row without a path
