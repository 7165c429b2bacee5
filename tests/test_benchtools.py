"""scripts/benchtools.py, the benchmarks' timing method: the run orders are balanced, every
entry runs in every repetition, and the machine report carries what the reports print."""

from __future__ import annotations

import importlib.util
import itertools
import math
import sys
from collections import Counter
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchtools.py"


def _load():
    spec = importlib.util.spec_from_file_location("benchtools", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["benchtools"] = module
    spec.loader.exec_module(module)
    return module


benchtools = _load()


@pytest.mark.parametrize("n", range(2, 10))
def test_the_square_balances_positions_and_predecessors(n):
    names = [f"e{i}" for i in range(n)]
    cycle = benchtools.orders(names)
    square = cycle[: 2 * n if n % 2 else n]
    assert all(sorted(order) == names for order in cycle)
    positions = Counter((e, i) for order in square for i, e in enumerate(order))
    follows = Counter(pair for order in square for pair in itertools.pairwise(order))
    assert len(positions) == n * n and len(set(positions.values())) == 1
    assert len(follows) == n * (n - 1) and len(set(follows.values())) == 1


@pytest.mark.parametrize("n", range(1, 5))
def test_up_to_four_entries_cycle_through_every_permutation(n):
    cycle = benchtools.orders(list("abcd"[:n]))
    assert sorted(cycle) == sorted(itertools.permutations("abcd"[:n]))


def test_every_entry_runs_in_every_repetition_in_the_given_orders():
    log: list[str] = []
    fns = {name: (lambda name=name: log.append(name)) for name in "abc"}
    times = benchtools.time_entries(fns, warmup=1, inner=1, min_reps=6, max_reps=6)
    assert log[:3] == list("abc")  # the warm-up
    reps = [tuple(log[3 + 3 * r : 6 + 3 * r]) for r in range(6)]
    assert reps == benchtools.orders(list("abc"))
    for t in times.values():
        assert t["reps"] == 6 and t["inner"] == 1
        assert 0 <= t["min_s"] <= t["median_s"] and t["iqr_s"] >= 0


def test_the_budget_stops_every_entry_together():
    fns = {name: (lambda: None) for name in "ab"}
    times = benchtools.time_entries(fns, min_reps=2, max_reps=50, budget_s=0.0)
    assert [t["reps"] for t in times.values()] == [2, 2]
    times = benchtools.time_entries(fns, inner=1, min_reps=1, max_reps=5, budget_s=math.inf)
    assert [t["reps"] for t in times.values()] == [5, 5]


def test_the_calibration_fills_a_sample():
    times = benchtools.time_entries({"cheap": lambda: None}, min_sample_s=0.001, max_reps=1)
    assert times["cheap"]["inner"] > 1


def test_the_machine_report(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    info = benchtools.machine(str(SCRIPT), ["--quick"])
    for key in ("cpu", "cores", "torch_threads", "load_average_1_5_15", "python", "torch"):
        assert key in info
    assert info["OMP_WAIT_POLICY"] == "PASSIVE" and info["device"] == "cpu"
    assert info["command"].startswith("OMP_WAIT_POLICY=PASSIVE python ")
    assert info["command"].endswith("benchtools.py --quick")
    assert "- Machine: " in benchtools.machine_markdown(info)
    assert "OMP_WAIT_POLICY=PASSIVE" in benchtools.machine_line(info)
