"""Non-finite values never give a silently wrong result: NaN or +inf emissions at unmasked
positions, or NaN parameters, are refused (naming the row and position) by every method while
validating; -inf (a forbidden tag) and garbage under the mask stay allowed."""

from __future__ import annotations

import pytest
import torch

from chaincrf import CRF

METHODS = {
    "forward": lambda crf, em, mask: crf(em, torch.zeros(em.shape[:2], dtype=torch.long), mask),
    "nll": lambda crf, em, mask: crf.nll(em, torch.zeros(em.shape[:2], dtype=torch.long), mask),
    "log_partition": lambda crf, em, mask: crf.log_partition(em, mask),
    "viterbi": lambda crf, em, mask: crf.viterbi(em, mask),
    "viterbi_k": lambda crf, em, mask: crf.viterbi(em, mask, k=3),
    "decode": lambda crf, em, mask: crf.decode(em, mask),
    "marginals": lambda crf, em, mask: crf.marginals(em, mask),
    "partial": lambda crf, em, mask: crf.partial_log_likelihood(
        em, torch.ones(*em.shape, dtype=torch.bool), mask
    ),
}


def _inputs():
    torch.manual_seed(0)
    crf = CRF(4, batch_first=True)
    emissions = torch.randn(3, 5, 4)
    mask = torch.arange(5)[None] < torch.tensor([[5], [3], [4]])
    return crf, emissions, mask


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_emission_on_the_mask_is_refused(method, value):
    crf, emissions, mask = _inputs()
    emissions[2, 1, 3] = value
    with pytest.raises(ValueError, match=r"batch row 2, position 1 holds (NaN|\+inf)"):
        METHODS[method](crf, emissions, mask)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_nan_under_the_mask_and_minus_inf_stay_allowed(method):
    crf, emissions, mask = _inputs()
    emissions[1, 4, :] = float("nan")  # row 1 has length 3: position 4 is padding
    emissions[0, 2, 1] = float("-inf")  # tag 1 forbidden at one position
    result = METHODS[method](crf, emissions, mask)
    values = result if isinstance(result, tuple) else (result,)
    for value in values:
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            assert not torch.isnan(value).any()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_nan_parameters_are_refused(method):
    crf, emissions, mask = _inputs()
    with torch.no_grad():
        crf.transitions[0, 1] = float("nan")
    with pytest.raises(ValueError, match="CRF parameter transitions holds NaN"):
        METHODS[method](crf, emissions, mask)


@pytest.mark.usefixtures("eager_kernel")
def test_validate_false_skips_the_check():
    crf, emissions, mask = _inputs()
    emissions[2, 1, 3] = float("nan")
    _, scores = crf.viterbi(emissions, mask, validate=False)
    assert torch.isnan(scores[2])  # the eager kernel: visible as NaN, not a plausible number
