"""Span confidences: the O(T·K) computation against the formula it replaced.

``chaincrf.crf.confidence.span_log_probabilities`` (used by ``SequenceTagger.predict``: forward and
backward messages once per sentence) against the previous formula (``crf.partial_log_likelihood``
over one masked copy of the sentence per span: O(spans·T·K) memory), on identical inputs in one
process and one thread, BIOES with its constraints, 4 entity types, timed side by side by
``scripts/benchtools.py``. Prints the machine, the median time per call of each, their ratio and
the largest difference of the probabilities (the old one computes in float32, the new one in
float64)::

    python3 scripts/bench_confidence.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchtools: a sibling
import benchtools
from chaincrf import CRF
from chaincrf.crf.confidence import continuation_tables, crf_scores, span_log_probabilities
from chaincrf.data.schemes import allowed_transitions, get_spans

LABELS = ["O"] + [f"{p}-{t}" for t in ("LOC", "MISC", "ORG", "PER") for p in "BIES"]


def old_formula(crf: CRF, em: Tensor, mask: Tensor, paths: Tensor, spans: Tensor, tables) -> Tensor:
    """The formula ``SequenceTagger._span_confidences`` used before (one masked copy per span)."""
    after, before, first_is_inside = tables
    _, T, K = em.shape
    rows, starts, ends = spans.unbind(1)
    N = rows.shape[0]
    span_mask = mask[rows]
    span_paths = paths[rows].clamp(min=0)
    steps = torch.arange(T)
    inside = (steps >= starts[:, None]) & (steps < ends[:, None])  # (N, T)
    allowed = span_mask.unsqueeze(-1).expand(N, T, K).clone()  # (N, T, K)
    allowed[inside] = False
    at, pos = inside.nonzero(as_tuple=True)
    allowed[at, pos, span_paths[at, pos]] = True
    first = span_paths.gather(1, starts[:, None]).squeeze(1)
    extend = (ends < span_mask.sum(1)).nonzero(as_tuple=True)[0]
    allowed[extend, ends[extend]] &= ~after[first[extend]]
    extend = ((starts > 0) & first_is_inside[first]).nonzero(as_tuple=True)[0]
    allowed[extend, starts[extend] - 1] &= ~before[first[extend]]
    return crf.partial_log_likelihood(em[rows], allowed, mask[rows], reduction="none")


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    K = len(LABELS)
    crf = CRF(K, batch_first=True, constraints=allowed_transitions("BIOES", LABELS))
    tables = continuation_tables(LABELS)
    print(benchtools.machine_line(benchtools.machine(__file__)) + "\n")
    print(
        "| batch | length | spans | new ms | old ms | old / new | largest probability difference |"
    )
    print("|---|---|---|---|---|---|---|")
    for B, T in ((128, 40), (32, 40), (1, 30), (1, 1000)):
        em = torch.randn(B, T, K) * 3
        lengths = torch.randint(T // 2, T + 1, (B,))
        lengths[0] = T
        mask = torch.arange(T)[None] < lengths[:, None]
        paths, _ = crf.viterbi(em, mask)
        flat = [
            (b, start, end)
            for b in range(B)
            for _, start, end in get_spans(
                [LABELS[i] for i in paths[b, : int(lengths[b])].tolist()], "BIOES"
            )
        ]
        spans = torch.tensor(flat)
        scores = crf_scores(crf)

        def new(em=em, mask=mask, paths=paths, spans=spans, scores=scores) -> Tensor:
            return span_log_probabilities(em, mask, paths, spans, scores, tables)

        def old(em=em, mask=mask, paths=paths, spans=spans) -> Tensor:
            return old_formula(crf, em, mask, paths, spans, tables)

        reps = 4 if T >= 1000 else 20
        times = benchtools.time_entries({"new": new, "old": old}, min_reps=reps, max_reps=reps)
        new_s, old_s = times["new"]["median_s"], times["old"]["median_s"]
        diff = (new().exp() - old().double().exp()).abs().max().item()
        print(
            f"| {B} | {T} | {len(flat)} | {new_s * 1e3:.1f} | {old_s * 1e3:.1f} | "
            f"{old_s / new_s:.2f} | {diff:.1e} |"
        )


if __name__ == "__main__":
    main()
