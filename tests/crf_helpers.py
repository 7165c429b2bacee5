"""Helpers for the CRF tests: random ragged batches and per-sentence reference views."""

from __future__ import annotations

import torch

from chaincrf.crf import CRF, kernels, plan


def ragged_batch(B: int, T: int, K: int, seed: int, min_len: int = 0, dtype=torch.float64):
    """Random emissions (B, T, K), tags (B, T) and a left-aligned mask (B, T) with garbage padding."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, T + 1, (B,), generator=g)
    if B > 0 and T > 0:
        lengths[0] = T  # at least one full row
    emissions = torch.randn(B, T, K, generator=g, dtype=dtype) * 2
    tags = torch.randint(0, K, (B, T), generator=g)
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    emissions = emissions.masked_fill(~mask.unsqueeze(2), 1e4)  # garbage where padded
    tags = tags.masked_fill(~mask, -100)
    return emissions, tags, mask, lengths


def assert_forced(ran: list[tuple[str, str]], kernel: str, dtype=torch.float64) -> None:
    """What ``plan.record()`` saw with ``kernel`` forced on CPU tensors: that kernel for every
    operation it can run (the kernel's ``can_run``), eager for the others."""
    assert ran, "no CRF operation was recorded"
    for operation, chosen in ran:
        problem = plan.Problem(operation, 1, 1, 1, dtype, "cpu")
        assert chosen == (kernel if kernels.get(kernel).can_run(problem) else "eager"), (
            kernel,
            ran,
        )


def make_crf(
    K: int, seed: int, constraints=None, scale: float = 1.0, batch_first: bool = True
) -> CRF:
    torch.manual_seed(seed)
    crf = CRF(K, batch_first=batch_first, constraints=constraints).double()
    with torch.no_grad():
        crf.start_transitions.normal_(0, scale)
        crf.end_transitions.normal_(0, scale)
        crf.transitions.normal_(0, scale)
    return crf


def params(crf: CRF):
    """(start, trans, end) as Python lists with -inf where constraints forbid."""
    start = crf.start_transitions.detach().double()
    trans = crf.transitions.detach().double()
    end = crf.end_transitions.detach().double()
    if crf.has_constraints:
        start = start.masked_fill(~crf.start_allowed, float("-inf"))
        trans = trans.masked_fill(~crf.transitions_allowed, float("-inf"))
        end = end.masked_fill(~crf.end_allowed, float("-inf"))
    return start.tolist(), trans.tolist(), end.tolist()


def sentence(emissions, b: int, length: int):
    """Row b of batch-first emissions, truncated to its length, as nested lists."""
    return emissions[b, :length].double().tolist()
