"""Shared pytest configuration: a fixed Hypothesis profile (deterministic, no deadline), and
Triton's interpreter for the whole session where there is no CUDA device (so that the
``triton`` CRF kernel runs, on CPU tensors, in every test that forces it)."""

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

settings.register_profile(
    "chaincrf",
    deadline=None,
    derandomize=True,
    max_examples=int(os.environ.get("CHAINCRF_HYPOTHESIS_EXAMPLES", "40")),
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("chaincrf")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a test module: two threads on two cores shared with other
    processes run tiny models 10-30x slower (oversubscription). Module scope, so that module
    fixtures run under it too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def eager_kernel(monkeypatch):
    """Force the CRF's eager kernel through its public switch (``CHAINCRF_KERNEL``), for tests
    of the eager kernel's own branches."""
    monkeypatch.setenv("CHAINCRF_KERNEL", "eager")
