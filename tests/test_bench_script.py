"""Smoke tests for scripts/bench_crf.py: the cross-check catches wrong answers, a tiny grid runs."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # the fast lane (README) leaves this module out

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_crf.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_crf", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_crf"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def outputs(bench):
    pytest.importorskip("torchcrf")
    pytest.importorskip("torch_struct")
    x = bench.make_inputs(3, 6, 4, seed=0)
    cls, _ = bench._chaincrf_class()
    models = bench.make_models(x, cls, None)
    return bench.collect_outputs(models, bench.LIBS, list(bench.WORKLOADS))


def _copy(outputs: dict) -> dict:
    return {
        q: {k: (v.clone() if torch.is_tensor(v) else v) for k, v in d.items()}
        for q, d in outputs.items()
    }


def test_peers_agree(bench, outputs):
    assert bench.cross_check(outputs) == []
    # both peers answered every quantity they offer
    assert {"pytorch-crf", "torch-struct"} <= set(outputs["log_partition"])
    assert {"pytorch-crf", "torch-struct"} <= set(outputs["paths"])


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
    ],
)
def test_cross_check_catches_wrong_results(bench, outputs, quantity, lib, corrupt, message):
    bad = _copy(outputs)
    bad[quantity][lib] = corrupt(bad[quantity][lib])
    problems = bench.cross_check(bad)
    assert any(message in p for p in problems), problems


def test_cross_check_catches_nan(bench, outputs):
    bad = _copy(outputs)
    bad["log_likelihood"]["torch-struct"][0] = float("nan")
    assert any("log_likelihood" in p for p in bench.cross_check(bad))


def test_quick_grid_runs_and_writes_reports(tmp_path):
    pytest.importorskip("torchcrf")
    pytest.importorskip("torch_struct")
    out_json, out_md = tmp_path / "crf.json", tmp_path / "crf.md"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--threads",
            "1",
            "--json",
            str(out_json),
            "--markdown",
            str(out_md),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out_json.read_text())
    (cell,) = report["cells"]
    assert (cell["batch"], cell["length"], cell["tags"]) == (2, 8, 3)
    for workload in ("nll", "nll+backward", "decode"):
        entries = cell["workloads"][workload]["entries"]
        assert {"pytorch-crf", "torch-struct"} <= set(entries)
        assert all(e["tokens_per_s"] > 0 for e in entries.values())
    assert "passed" in report["cross_check"]
    assert "| B | T | K |" in out_md.read_text()
