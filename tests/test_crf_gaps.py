"""Masks with gaps and left-padded masks: masked positions are skipped, the chain runs over the
kept ones — checked against brute-force enumeration over each row's kept positions, for every
kernel (forced through the public ``kernel`` argument), in training and decoding alike."""

from __future__ import annotations

import math

import pytest
import torch

import reference as ref
from chaincrf import CRF
from chaincrf.crf import kernels
from chaincrf.data.schemes import allowed_transitions
from crf_helpers import params

LABELS = ["O", "B-X", "I-X", "E-X", "S-X"]
K = len(LABELS)
# row 0: all kept; 1: first-subword style gaps; 2: left padding; 3: a masked [CLS] and a tail;
# 4: nothing kept; 5: one kept position in the middle
MASK = torch.tensor(
    [
        [1, 1, 1, 1, 1, 1],
        [1, 0, 1, 1, 0, 1],
        [0, 0, 1, 1, 1, 1],
        [0, 1, 1, 0, 1, 0],
        [0, 0, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0],
    ],
    dtype=torch.bool,
)


def _layer(kernel: str, constrained: bool, batch_first: bool = True) -> CRF:
    torch.manual_seed(3)
    constraints = allowed_transitions("BIOES", LABELS) if constrained else None
    crf = CRF(K, batch_first=batch_first, constraints=constraints, kernel=kernel).double()
    with torch.no_grad():
        for p in crf.parameters():
            p.normal_()
    return crf


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    emissions = torch.randn(*MASK.shape, K, generator=g, dtype=torch.float64) * 2
    emissions = emissions.masked_fill(~MASK.unsqueeze(2), 1e4)  # garbage where masked
    return emissions, MASK.clone()


def _kept(x: torch.Tensor, b: int) -> list:
    return x[b][MASK[b]].tolist()


@pytest.mark.parametrize("validate", [True, False])
@pytest.mark.parametrize("constrained", [False, True])
@pytest.mark.parametrize("kernel", kernels.names())
def test_every_operation_runs_over_the_kept_positions(kernel, constrained, validate):
    crf = _layer(kernel, constrained)
    emissions, mask = _inputs()
    start, trans, end = params(crf)
    log_z = crf.log_partition(emissions, mask, validate=validate)
    paths, best = crf.viterbi(emissions, mask, validate=validate)
    decoded = crf.decode(emissions, mask, validate=validate)
    marginals = crf.marginals(emissions, mask, validate=validate)
    for b in range(MASK.size(0)):
        em = _kept(emissions, b)
        n = len(em)
        assert (paths[b][~MASK[b]] == -1).all() and (marginals[b][~MASK[b]] == 0).all()
        if n == 0:
            assert log_z[b] == 0 and best[b] == 0 and decoded[b] == []
            continue
        assert log_z[b].item() == pytest.approx(ref.brute_log_partition(em, start, trans, end))
        (want_path, want_score), *_ = ref.brute_kbest(em, start, trans, end, 1)
        assert _kept(paths, b) == want_path and decoded[b] == want_path
        assert best[b].item() == pytest.approx(want_score)
        want = torch.tensor(ref.brute_marginals(em, start, trans, end), dtype=torch.float64)
        torch.testing.assert_close(marginals[b][MASK[b]], want)


@pytest.mark.parametrize("kernel", kernels.names())
def test_training_over_gaps_equals_training_on_the_kept_positions(kernel):
    """Log-likelihoods and gradients: as if each row held its kept positions only."""
    crf = _layer(kernel, constrained=False)
    reference = _layer("eager", constrained=False)
    emissions, mask = _inputs(1)
    tags = torch.randint(0, K, MASK.shape, generator=torch.Generator().manual_seed(2))
    leaf = emissions.clone().requires_grad_(True)
    llh = crf(leaf, tags, mask, reduction="none")
    llh.sum().backward()
    start, trans, end = params(crf)
    for b in range(MASK.size(0)):
        want = ref.log_likelihood(_kept(emissions, b), _kept(tags, b), start, trans, end)
        assert llh[b].item() == pytest.approx(want if _kept(tags, b) else 0.0)
        row = emissions[b][MASK[b]].unsqueeze(0).requires_grad_(True)
        reference.zero_grad()
        reference(row, tags[b][MASK[b]].unsqueeze(0)).backward()
        torch.testing.assert_close(leaf.grad[b][MASK[b]], row.grad[0])
    assert (leaf.grad[~MASK] == 0).all()


@pytest.mark.parametrize("batch_first", [True, False])
def test_structure_methods_skip_masked_positions(batch_first):
    crf = _layer("auto", constrained=True, batch_first=batch_first)
    emissions, mask = _inputs(4)
    start, trans, end = params(crf)
    x, m = (emissions, mask) if batch_first else (emissions.transpose(0, 1), mask.t())
    entropy = crf.entropy(x, m)
    pairs = crf.pairwise_marginals(x, m)
    samples = crf.sample(x, m, num_samples=400, generator=torch.Generator().manual_seed(0))
    for b in range(MASK.size(0)):
        em = _kept(emissions, b)
        if not em:
            assert entropy[b] == 0 and (samples[:, b] == -1).all()
            continue
        log_z = ref.brute_log_partition(em, start, trans, end)
        probs = {}
        for p in ref.all_paths(len(em), K):
            score = ref.path_score(em, list(p), start, trans, end)
            if score != -math.inf:
                probs[tuple(p)] = math.exp(score - log_z)
        h = -sum(q * math.log(q) for q in probs.values() if q > 0)
        assert entropy[b].item() == pytest.approx(h, abs=1e-9)
        kept = MASK[b].nonzero()[:, 0].tolist()
        for i in range(1, len(kept)):  # the pair (previous kept, t) at index t - 1
            want = torch.zeros(K, K, dtype=torch.float64)
            for p, q in probs.items():
                want[p[i - 1], p[i]] += q
            torch.testing.assert_close(pairs[b, kept[i] - 1], want)
        others = [t - 1 for t in range(1, MASK.size(1)) if t not in kept[1:]]
        assert (pairs[b, others] == 0).all()
        row = samples[:, b]
        assert (row[:, ~MASK[b]] == -1).all()
        assert all(tuple(s) in probs for s in row[:, MASK[b]].tolist())


@pytest.mark.parametrize("kernel", kernels.names())
def test_errors_name_the_original_positions(kernel):
    crf = _layer(kernel, constrained=False)
    emissions, mask = _inputs(5)
    emissions[2, 4, 1] = float("nan")  # row 2 is left-padded: position 4 is its third kept
    with pytest.raises(ValueError, match="batch row 2, position 4 holds NaN"):
        crf.viterbi(emissions, mask)
    tags = torch.zeros(MASK.shape, dtype=torch.long)
    tags[3, 2] = K
    with pytest.raises(ValueError, match=rf"got {K} at batch row 3, position 2"):
        crf(_inputs(5)[0], tags, mask)
