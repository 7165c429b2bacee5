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


def forced_paths(K: int = 17, T: int = 5, kernel: str = "auto") -> tuple[CRF, torch.Tensor]:
    """A float64 layer and two rows whose only good path goes through a tag far below its
    step's best (a scaled exp-space recursion that drops that tag's weight returns about
    -160 instead of -110): row 0 starts in tag 1 (110 nats below tag 0), which alone leads to
    tag 2 at the later steps; row 1 (the backward's mirror) stays in tag 3, which may only
    move on to itself or to tag 1, its last position's tag 110 nats below tag 0. Tag 0 pays 40
    nats a step; every other score is 0, other tags' emissions -inf. Row 2: tag 4, which no
    path reaches (no start, no move into it), scores 150 at the middle position, where a
    backward recursion scaled by its largest entry loses every reachable tag. Row 3: tag 5 may
    only move on to tag 6, at -55, and tag 6 scores -46 at the last position: the backward's sum
    for tag 5 there (e^-101) falls under the floor while the forward keeps every tag in range."""
    crf = CRF(K, batch_first=True, kernel=kernel).double()
    with torch.no_grad():
        for p in (crf.start_transitions, crf.transitions, crf.end_transitions):
            p.zero_()
        crf.transitions[:, 2] = float("-inf")
        crf.transitions[1:3, 2] = 0.0
        crf.transitions[3, :] = float("-inf")
        crf.transitions[3, [1, 3]] = 0.0
        crf.transitions[:, 4] = float("-inf")
        crf.start_transitions[4] = float("-inf")
        crf.transitions[5, :] = float("-inf")
        crf.transitions[5, 6] = -55.0
    em = torch.full((4, T, K), float("-inf"), dtype=torch.float64)
    em[0, 0, 0], em[0, 0, 1] = 0.0, -110.0
    em[0, 1:, 0], em[0, 1:, 2] = -40.0, 0.0
    em[1, :-1, 0], em[1, :-1, 3] = -40.0, 0.0
    em[1, -1, 0], em[1, -1, 1] = 0.0, -110.0
    em[2, :, :4] = 0.0
    em[2, T // 2, 4] = 150.0
    em[3] = 0.0
    em[3, -1, 6] = -46.0
    return crf, em
