"""Kernels are units in one registry: a kernel from one folder, with one table row and nothing
else, is chosen by the planner and passes the kernel suite (``tests/toy_kernel``)."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from chaincrf.crf import kernels

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
SUITE = [
    "tests/test_crf_reference.py",
    "tests/test_crf_gaps.py",
    "tests/test_crf_nonfinite.py",
    "tests/test_crf_plan.py",
]


def _env(**extra: str) -> dict[str, str]:
    paths = [str(TESTS), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]
    return {
        **os.environ,
        "CHAINCRF_KERNEL_MODULES": "toy_kernel",
        "PYTHONPATH": os.pathsep.join(p for p in paths if p),
        "OMP_NUM_THREADS": "1",
        **extra,
    }


def test_every_kernel_declares_the_contract():
    assert {"eager", "fused", "export", "tree", "triton"} <= set(kernels.names())
    for name in kernels.names():
        kernel = kernels.get(name)
        assert name == kernel.NAME
        assert set(kernels.base.OPERATIONS) >= kernel.OPERATIONS


def test_register_refuses_a_kernel_that_breaks_the_contract():
    before = dict(kernels.REGISTRY)
    with pytest.raises(TypeError, match=r"lacks \['GAPS', 'OPERATIONS'"):
        kernels.register(types.SimpleNamespace(__name__="half", NAME="half"))
    clash = types.ModuleType("clash")
    clash.__dict__.update(vars(kernels.get("eager")))
    clash.__name__ = "clash"
    with pytest.raises(ValueError, match="the name 'eager' is taken"):
        kernels.register(clash)
    clash.NAME, clash.OPERATIONS = "clash", frozenset({"log_partition", "beam_search"})
    with pytest.raises(TypeError, match="unknown operations \\['beam_search'\\]"):
        kernels.register(clash)
    assert before == kernels.REGISTRY


def test_a_kernel_from_one_folder_is_chosen_by_its_row():
    code = (
        "import torch\n"
        "from chaincrf.crf import CRF, kernels, plan\n"
        "assert 'toy' in kernels.names()\n"
        "em = torch.randn(4, 6, 7, requires_grad=True)\n"
        "mask = torch.ones(4, 6, dtype=torch.bool); mask[1, 3:] = False\n"
        "crf, ref = CRF(7, batch_first=True), CRF(7, batch_first=True, kernel='eager')\n"
        "ref.load_state_dict(crf.state_dict())\n"
        "with plan.record() as ran:\n"
        "    log_z = crf.log_partition(em, mask)\n"
        "    paths, _ = crf.viterbi(em, mask)\n"
        "    CRF(5).log_partition(torch.randn(3, 2, 5))\n"
        "torch.testing.assert_close(log_z, ref.log_partition(em, mask))\n"
        "assert torch.equal(paths, ref.viterbi(em, mask)[0])\n"
        "print(ran)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "('log_partition', 'toy'), ('viterbi', 'toy'), ('log_partition', 'fused')" in done.stdout


@pytest.mark.slow
def test_the_kernel_suite_runs_a_registered_kernel():
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *SUITE],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=_env(CHAINCRF_KERNEL="toy", CHAINCRF_HYPOTHESIS_EXAMPLES="8"),
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert " passed" in done.stdout.splitlines()[-1]
