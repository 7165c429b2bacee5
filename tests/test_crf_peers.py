"""chaincrf agrees with its peers, pytorch-crf and torch-struct, on every quantity they share.

The cross-check that ``scripts/bench_crf.py`` runs before timing (``scripts/crf_peers.py``), on
small shapes: log-likelihood, log-partition, best paths and their scores, k-best scores,
marginals and the gradients of the emissions and transitions. The corruption tests show that the
cross-check fails when one answer is wrong, chaincrf's or a peer's.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("torchcrf")
pytest.importorskip("torch_struct")
# torch-struct's distributions predate torch's arg_constraints check
pytestmark = pytest.mark.filterwarnings("ignore:.*does not define `arg_constraints`")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "crf_peers.py"
WORKLOADS = ("nll+backward", "viterbi_k5", "marginals")  # the ones that add quantities
# (batch, seq_len, num_tags): one sequence, K = 1 and 2, padded rows (lengths in [T/2, T])
SHAPES = [(1, 4, 3), (3, 6, 4), (4, 5, 2), (2, 3, 1), (2, 2, 5), (5, 7, 5)]


def _load():
    spec = importlib.util.spec_from_file_location("crf_peers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["crf_peers"] = module
    spec.loader.exec_module(module)
    return module


peers = _load()


def _outputs(B: int, T: int, K: int, with_struct: bool = True) -> dict:
    x = peers.make_inputs(B, T, K, seed=0)
    cls, why = peers.chaincrf_class()
    assert cls is not None, why
    models = peers.make_models(x, cls, None)
    return peers.collect_outputs(models, peers.LIBS, WORKLOADS, with_struct=with_struct)


@pytest.fixture(scope="module")
def outputs() -> dict:
    return _outputs(3, 6, 4)


def _copy(outputs: dict) -> dict:
    return {
        q: {k: (v.clone() if torch.is_tensor(v) else v) for k, v in d.items()}
        for q, d in outputs.items()
    }


@pytest.mark.parametrize(("B", "T", "K"), SHAPES)
def test_chaincrf_agrees_with_both_peers(B, T, K):
    out = _outputs(B, T, K)
    assert peers.cross_check(out) == []
    if B > 1 and T > 3:  # the shapes meant to be padded are
        assert bool((out["_lengths"][""] < T).any())
    everyone = {"chaincrf", "pytorch-crf", "torch-struct"}
    for quantity in ("log_likelihood", "log_partition", "grad_emissions", "grad_transitions"):
        assert set(out[quantity]) == everyone, quantity
    assert everyone | {"chaincrf.viterbi"} <= set(out["paths"])
    assert {"pytorch-crf", "chaincrf.viterbi", "torch-struct"} <= set(out["best_score"])
    assert set(out["marginals"]) == {"chaincrf", "torch-struct"}
    assert "chaincrf" in out["kbest_scores"]
    if K * K >= 5:  # torch-struct's k-max needs 5 paths
        assert "torch-struct" in out["kbest_scores"]


def test_one_step_against_pytorch_crf():
    """T = 1 has no transition for torch-struct's potentials: chaincrf against pytorch-crf."""
    out = _outputs(2, 1, 3, with_struct=False)
    assert peers.cross_check(out) == []
    assert set(out["log_partition"]) == {"pytorch-crf", "chaincrf"}
    assert out["paths"]["chaincrf"].shape == (2, 1)


@pytest.mark.parametrize(
    ("quantity", "lib", "corrupt", "message"),
    [
        ("log_likelihood", "torch-struct", lambda v: v + 1e-2, "log_likelihood: torch-struct"),
        ("log_partition", "torch-struct", lambda v: v * (1 + 1e-3), "log_partition: torch-struct"),
        (
            "paths",
            "torch-struct",
            lambda v: v.masked_fill(v == v[0, 0], (v[0, 0] + 1) % 4),
            "paths: torch-struct",
        ),
        ("paths", "torch-struct", lambda v: v.masked_fill(v == -1, 0), "past the lengths"),
        ("best_score", "torch-struct", lambda v: v - 1e-2, "best_score: torch-struct"),
        ("grad_emissions", "torch-struct", lambda v: v.flip(0), "grad_emissions: torch-struct"),
        ("marginals", "torch-struct", lambda v: v * 0.99, "marginals: torch-struct"),
        ("log_partition", "chaincrf", lambda v: v + 1e-2, "log_partition: chaincrf"),
        ("paths", "chaincrf.viterbi", lambda v: v.flip(1), "paths: chaincrf.viterbi"),
        ("best_score", "chaincrf.viterbi", lambda v: v + 1e-2, "best_score: chaincrf.viterbi"),
        ("grad_transitions", "chaincrf", lambda v: v.t(), "grad_transitions: chaincrf"),
        ("kbest_scores", "chaincrf", lambda v: v.flip(1), "not in descending order"),
        ("marginals", "chaincrf", lambda v: v.roll(1, -1), "marginals: torch-struct"),
        ("log_likelihood", "pytorch-crf", lambda v: v - 1e-2, "log_likelihood: chaincrf"),
    ],
)
def test_cross_check_catches_wrong_results(outputs, quantity, lib, corrupt, message):
    bad = _copy(outputs)
    bad[quantity][lib] = corrupt(bad[quantity][lib])
    problems = peers.cross_check(bad)
    assert any(message in p for p in problems), problems


def test_cross_check_catches_nan(outputs):
    bad = _copy(outputs)
    bad["log_likelihood"]["torch-struct"][0] = float("nan")
    assert any("log_likelihood" in p for p in peers.cross_check(bad))


def test_cross_check_catches_a_shape_mismatch(outputs):
    bad = _copy(outputs)
    bad["marginals"]["torch-struct"] = bad["marginals"]["torch-struct"][:, :-1]
    assert any("shape" in p for p in peers.cross_check(bad))
