"""``include_start_end_transitions=False``: paths without start and end scores (AllenNLP's
option), on every kernel, against brute-force enumeration."""

from __future__ import annotations

import pytest
import torch

import reference as ref
from chaincrf.crf import CRF, kernels, plan
from chaincrf.data.schemes import allowed_transitions
from crf_helpers import assert_forced, params, ragged_batch, sentence

LABELS = ["O", "B-X", "I-X"]


def make(kernel: str, constrained: bool) -> CRF:
    torch.manual_seed(0)
    constraints = allowed_transitions("BIO", LABELS) if constrained else None
    crf = CRF(
        len(LABELS),
        batch_first=True,
        constraints=constraints,
        kernel=kernel,
        include_start_end_transitions=False,
    ).double()
    with torch.no_grad():
        crf.transitions.normal_()
    return crf


@pytest.mark.parametrize("kernel", kernels.names())
@pytest.mark.parametrize("constrained", [False, True])
def test_no_start_end_scores_against_brute_force(kernel, constrained):
    crf = make(kernel, constrained)
    emissions, _, mask, lengths = ragged_batch(5, 5, len(LABELS), seed=3)
    start, trans, end = params(crf)
    assert set(start) <= {0.0, float("-inf")} and set(end) <= {0.0, float("-inf")}
    with plan.record() as ran:
        log_z = crf.log_partition(emissions, mask)
        paths, best = crf.viterbi(emissions, mask)
        marginals = crf.marginals(emissions, mask)
    assert_forced(ran, kernel)
    for b, n in enumerate(lengths.tolist()):
        em = sentence(emissions, b, n)
        assert log_z[b].item() == pytest.approx(ref.brute_log_partition(em, start, trans, end))
        (want_path, want_score), *_ = ref.brute_kbest(em, start, trans, end, 1)
        assert paths[b, :n].tolist() == want_path
        assert best[b].item() == pytest.approx(want_score)
        want = torch.tensor(ref.brute_marginals(em, start, trans, end), dtype=torch.float64)
        torch.testing.assert_close(marginals[b, :n], want.reshape(n, -1))


@pytest.mark.parametrize("kernel", kernels.names())
def test_no_start_end_parameters_and_their_gradients(kernel):
    crf = make(kernel, constrained=False)
    assert list(crf.state_dict()) == ["transitions"]
    assert [name for name, _ in crf.named_parameters()] == ["transitions"]
    emissions, tags, mask, lengths = ragged_batch(4, 6, len(LABELS), seed=4)
    leaf = emissions.clone().requires_grad_(True)
    llh = crf(leaf, tags, mask, reduction="none")
    start, trans, end = params(crf)
    for b, n in enumerate(lengths.tolist()):
        want = ref.log_likelihood(
            sentence(emissions, b, n), tags[b, :n].tolist(), start, trans, end
        )
        assert llh[b].item() == pytest.approx(want)
    llh.sum().backward()
    assert crf.start_transitions.grad is None and crf.transitions.grad is not None
    # a pytorch-crf state dict has start and end scores this layer does not take
    full = CRF(len(LABELS), batch_first=True).double().state_dict()
    with pytest.raises(RuntimeError, match="start_transitions"):
        crf.load_state_dict(full)
