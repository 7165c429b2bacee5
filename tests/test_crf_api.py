"""chaincrf.CRF as a drop-in for torchcrf.CRF, and every input error it reports."""

from __future__ import annotations

import pytest
import torch
import torchcrf

from chaincrf import CRF
from chaincrf.data.schemes import allowed_transitions
from crf_helpers import ragged_batch

pytestmark = pytest.mark.filterwarnings("ignore:where received a uint8 condition tensor")


def _pair(K: int, batch_first: bool, seed: int = 0):
    torch.manual_seed(seed)
    ours = CRF(K, batch_first=batch_first)
    theirs = torchcrf.CRF(K, batch_first=batch_first)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


def test_same_constructor_parameters_init_and_state_dict_keys():
    torch.manual_seed(1)
    ours = CRF(7)
    torch.manual_seed(1)
    theirs = torchcrf.CRF(7)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    assert ours.batch_first is False and repr(ours) == "CRF(num_tags=7)"
    # a pytorch-crf checkpoint loads strictly, constrained or not
    constrained = CRF(3, constraints=allowed_transitions("BIO", ["O", "B-X", "I-X"]))
    constrained.load_state_dict(torchcrf.CRF(3).state_dict())


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean", "token_mean"])
def test_log_likelihood_and_gradients_equal_pytorch_crf(batch_first, reduction):
    B, T, K = 6, 9, 5
    emissions, tags, mask, _ = ragged_batch(B, T, K, seed=2, min_len=1, dtype=torch.float32)
    emissions = emissions.masked_fill(~mask.unsqueeze(2), 0.0)
    tags = tags.clamp(min=0)
    if not batch_first:
        emissions, tags, mask = emissions.transpose(0, 1), tags.t(), mask.t()
    ours, theirs = _pair(K, batch_first)
    em1 = emissions.clone().requires_grad_(True)
    em2 = emissions.clone().requires_grad_(True)
    got = ours(em1, tags, mask.byte(), reduction=reduction)
    want = theirs(em2, tags, mask.byte(), reduction=reduction)
    torch.testing.assert_close(got, want)
    got.sum().backward()
    want.sum().backward()
    torch.testing.assert_close(em1.grad, em2.grad)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("batch_first", [False, True])
def test_decode_equals_pytorch_crf(batch_first):
    B, T, K = 8, 12, 6
    emissions, _, mask, lengths = ragged_batch(B, T, K, seed=4, min_len=1, dtype=torch.float32)
    if not batch_first:
        emissions, mask = emissions.transpose(0, 1), mask.t()
    ours, theirs = _pair(K, batch_first, seed=3)
    assert ours.decode(emissions, mask) == theirs.decode(emissions, mask.byte())
    assert ours.decode(emissions) == theirs.decode(emissions)
    paths, _ = ours.viterbi(emissions, mask)
    rows = paths.tolist() if batch_first else paths.t().tolist()
    assert [r[: int(n)] for r, n in zip(rows, lengths)] == theirs.decode(emissions, mask.byte())


@pytest.mark.parametrize("batch_first", [False, True])
def test_output_layouts(batch_first):
    B, T, K = 3, 4, 5
    crf = CRF(K, batch_first=batch_first)
    shape = (B, T, K) if batch_first else (T, B, K)
    emissions = torch.randn(*shape)
    paths, scores = crf.viterbi(emissions)
    assert paths.shape == shape[:2] and scores.shape == (B,) and paths.dtype == torch.long
    paths, scores = crf.viterbi(emissions, k=2)
    assert paths.shape == ((B, 2, T) if batch_first else (T, B, 2)) and scores.shape == (B, 2)
    assert crf.marginals(emissions).shape == shape
    assert crf.log_partition(emissions).shape == (B,)


# ------------------------------------------------------------------ errors


@pytest.fixture
def crf() -> CRF:
    return CRF(4, batch_first=True)


def test_error_num_tags():
    with pytest.raises(ValueError, match="num_tags must be a positive int; got 0"):
        CRF(0)


def test_error_emissions_rank(crf):
    with pytest.raises(
        ValueError,
        match=r"emissions must have 3 dimensions \(batch, seq_len, 4\); got shape \(2, 4\)",
    ):
        crf.decode(torch.randn(2, 4))


def test_error_num_tags_mismatch(crf):
    with pytest.raises(ValueError, match=r"last dimension 4 \(num_tags\); got \(2, 3, 5\)"):
        crf.log_partition(torch.randn(2, 3, 5))


def test_error_tags_shape(crf):
    with pytest.raises(
        ValueError,
        match=r"tags must have shape \(batch, seq_len\) = \(2, 3\) matching emissions; got \(3, 2\)",
    ):
        crf(torch.randn(2, 3, 4), torch.zeros(3, 2, dtype=torch.long))


def test_error_tags_dtype(crf):
    with pytest.raises(
        ValueError, match=r"tags must be an integer tensor; got dtype torch\.float32"
    ):
        crf(torch.randn(2, 3, 4), torch.zeros(2, 3))


def test_error_mask_shape(crf):
    with pytest.raises(
        ValueError,
        match=r"mask must have shape \(batch, seq_len\) = \(2, 3\) matching emissions; got \(2, 4\)",
    ):
        crf.decode(torch.randn(2, 3, 4), torch.ones(2, 4, dtype=torch.bool))


def test_error_mask_dtype(crf):
    with pytest.raises(
        ValueError, match=r"mask must be a bool or uint8 tensor; got dtype torch\.float32"
    ):
        crf.decode(torch.randn(2, 3, 4), torch.ones(2, 3))


def test_error_tags_out_of_range(crf):
    tags = torch.tensor([[0, 1, 2], [3, 4, -100]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    with pytest.raises(
        ValueError,
        match=r"tags must be in \[0, 4\) where the mask is on; got 4 at batch row 1, position 1",
    ):
        crf(torch.randn(2, 3, 4), tags, mask)
    # validate=False skips the check; the eager kernel's indexing fails later, the fused
    # kernel's bounds check (it never reads outside the transition table) names the tag, and
    # the Triton kernel (which reads nothing back to the host) makes that row's score NaN
    try:
        llh = crf(torch.randn(2, 3, 4), tags, mask, reduction="none", validate=False)
    except (IndexError, RuntimeError, ValueError):
        return
    assert bool(torch.isnan(llh[1])) and bool(torch.isfinite(llh[0]))


def test_error_reduction(crf):
    with pytest.raises(ValueError, match=r"invalid reduction: expected one of .*; got 'avg'"):
        crf(torch.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.long), reduction="avg")


def test_error_k(crf):
    with pytest.raises(ValueError, match="k must be a positive int; got 0"):
        crf.viterbi(torch.randn(2, 3, 4), k=0)


def test_error_allowed(crf):
    emissions = torch.randn(2, 3, 4)
    with pytest.raises(
        ValueError, match=r"allowed must have the shape of emissions \(2, 3, 4\); got \(2, 3\)"
    ):
        crf.partial_log_likelihood(emissions, torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"allowed must be a bool tensor; got torch\.int64"):
        crf.partial_log_likelihood(emissions, torch.ones(2, 3, 4, dtype=torch.long))
    allowed = torch.ones(2, 3, 4, dtype=torch.bool)
    allowed[1, 2] = False
    with pytest.raises(ValueError, match="batch row 1, position 2 allows none"):
        crf.partial_log_likelihood(emissions, allowed)


def test_error_constraints_shape():
    with pytest.raises(
        ValueError, match=r"constraints transitions_allowed must have shape \(3, 3\); got \(2, 2\)"
    ):
        CRF(
            3,
            constraints=(
                torch.ones(3, dtype=torch.bool),
                torch.ones(3, dtype=torch.bool),
                torch.ones(2, 2, dtype=torch.bool),
            ),
        )
    with pytest.raises(ValueError, match="constraints start_allowed must be a bool tensor"):
        CRF(
            3,
            constraints=(
                torch.ones(3),
                torch.ones(3, dtype=torch.bool),
                torch.ones(3, 3, dtype=torch.bool),
            ),
        )


def test_error_unknown_scheme_and_bad_label():
    with pytest.raises(ValueError, match="XYZ"):
        allowed_transitions("XYZ", ["O"])
    with pytest.raises(ValueError, match="Q-PER"):
        allowed_transitions("BIO", ["O", "Q-PER"])
