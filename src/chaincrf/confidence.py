"""Moved: :mod:`chaincrf.crf.confidence` (span confidences are CRF maths). Kept so that
``from chaincrf.confidence import ...`` still works."""

from chaincrf.crf.confidence import (
    chain_messages,
    continuation_tables,
    crf_scores,
    span_log_probabilities,
)

__all__ = ["chain_messages", "continuation_tables", "crf_scores", "span_log_probabilities"]
