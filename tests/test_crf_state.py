"""Constraints saved with the layer: a chaincrf state_dict restores them, pytorch-crf
checkpoints still load strictly, and constraints never vanish silently."""

from __future__ import annotations

import pytest
import torch
import torchcrf

from chaincrf.crf import CRF
from chaincrf.data.schemes import allowed_transitions

LABELS = ["O", "B-X", "I-X", "B-Y", "I-Y"]
K = len(LABELS)


def constrained(scheme: str = "BIO") -> CRF:
    return CRF(K, batch_first=True, constraints=allowed_transitions(scheme, LABELS))


def everything_allowed() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.ones(K, dtype=torch.bool),
        torch.ones(K, dtype=torch.bool),
        torch.ones(K, K, dtype=torch.bool),
    )


def test_a_constrained_state_restores_its_constraints():
    saved = constrained()
    state = saved.state_dict()
    assert list(state) == [
        "start_transitions", "end_transitions", "transitions",
        "start_allowed", "end_allowed", "transitions_allowed",
    ]  # fmt: skip
    other = CRF(K, batch_first=True, constraints=everything_allowed())
    other.load_state_dict(state)  # strict
    for name in ("start_allowed", "end_allowed", "transitions_allowed"):
        assert torch.equal(getattr(other, name), getattr(saved, name))
    emissions = torch.randn(3, 7, K)
    assert torch.equal(other.viterbi(emissions)[0], saved.viterbi(emissions)[0])
    assert not bool(saved.transitions_allowed.all())  # the test means something


def test_pytorch_crf_and_unconstrained_states_load_strictly_and_keep_the_constraints():
    layer = constrained()
    before = layer.transitions_allowed.clone()
    reference = torchcrf.CRF(K, batch_first=True)
    layer.load_state_dict(reference.state_dict())  # strict: no missing, no unexpected keys
    assert torch.equal(layer.transitions_allowed, before)
    assert torch.equal(layer.transitions.detach(), reference.transitions.detach())
    assert list(CRF(K).state_dict()) == list(reference.state_dict())


@pytest.mark.parametrize("strict", [True, False])
def test_constraints_into_an_unconstrained_layer_are_an_error(strict):
    with pytest.raises(RuntimeError, match="built without any"):
        CRF(K, batch_first=True).load_state_dict(constrained().state_dict(), strict=strict)


def test_partial_or_malformed_constraints_are_an_error():
    state = constrained().state_dict()
    del state["end_allowed"]
    with pytest.raises(RuntimeError, match="not end_allowed"):
        constrained().load_state_dict(state)
    state = constrained().state_dict()
    state["transitions_allowed"] = state["transitions_allowed"].float()
    with pytest.raises(RuntimeError, match="transitions_allowed must be a bool tensor"):
        constrained().load_state_dict(state)
