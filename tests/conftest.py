"""Shared pytest configuration: a fixed Hypothesis profile (deterministic, no deadline)."""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "chaincrf",
    deadline=None,
    derandomize=True,
    max_examples=int(os.environ.get("CHAINCRF_HYPOTHESIS_EXAMPLES", "40")),
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("chaincrf")
