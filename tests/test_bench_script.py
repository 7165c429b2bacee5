"""Smoke test for scripts/bench_crf.py: a tiny grid runs and writes its reports.

The cross-check it runs before timing is tested in the fast lane: tests/test_crf_peers.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the fast lane (README) leaves this module out

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_crf.py"


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
    assert report["machine"]["torch_threads"] == 1
    assert "OMP_WAIT_POLICY" in report["machine"]
    assert "| B | T | K |" in out_md.read_text()
