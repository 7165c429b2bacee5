"""The precision a model was trained in is stored in its checkpoint, and chaincrf-eval evaluates
in it (issue 30, part 5): the figures a run prints are the ones chaincrf-eval reproduces. The
end-to-end check (a bf16-mixed run, then chaincrf-eval) is in tests/test_scale_out.py; on a GPU,
``test_training_on_one_gpu`` asserts it in three precisions."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from chaincrf.cli.evaluate import eval_precision
from chaincrf.files.model_files import ModelFileError
from chaincrf.tagger import SequenceTagger

OLD = Path(__file__).parent / "fixtures" / "model_files" / "v2.ckpt"


@pytest.mark.parametrize(
    ("chosen", "trained", "accelerator", "expected"),
    [
        (None, "bf16-mixed", "cpu", "bf16-mixed"),  # the run's own precision
        (None, "16-mixed", "gpu", "16-mixed"),
        (None, None, "cpu", "32-true"),  # a model file that does not say
        ("32-true", "bf16-mixed", "cpu", "32-true"),  # precision= wins
        ("bf16", None, "cpu", "bf16-mixed"),  # Lightning's short names, resolved as it does
        ("32", None, "cpu", "32-true"),
    ],
)
def test_chaincrf_eval_runs_in_the_trained_precision(chosen, trained, accelerator, expected):
    assert eval_precision(chosen, trained, accelerator) == expected


def test_float16_autocast_on_the_cpu_falls_back_to_float32_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="chaincrf.eval"):
        assert eval_precision(None, "16-mixed", "cpu") == "32-true"
        assert eval_precision("16", None, "cpu") == "32-true"
        if not torch.cuda.is_available():
            assert eval_precision(None, "16-mixed", "auto") == "32-true"
    assert "16-mixed" in caplog.text and "accelerator=gpu" in caplog.text


def test_the_checkpoint_stores_the_precision_and_a_bundle_keeps_it(tmp_path):
    checkpoint = torch.load(OLD, weights_only=True)
    assert SequenceTagger.load(OLD).trained_precision is None  # written before it was stored
    checkpoint["chaincrf"]["precision"] = "bf16-mixed"
    torch.save(checkpoint, tmp_path / "new.ckpt")
    tagger = SequenceTagger.load(tmp_path / "new.ckpt")
    assert tagger.trained_precision == "bf16-mixed"
    assert SequenceTagger.load(tagger.save_bundle(tmp_path / "bundle")).trained_precision == (
        "bf16-mixed"
    )
    checkpoint["chaincrf"]["precision"] = "transformer-engine"  # a newer Lightning's: loads
    torch.save(checkpoint, tmp_path / "newer.ckpt")
    assert SequenceTagger.load(tmp_path / "newer.ckpt").trained_precision == "transformer-engine"
    checkpoint["chaincrf"]["precision"] = 16
    torch.save(checkpoint, tmp_path / "bad.ckpt")
    with pytest.raises(ModelFileError, match=r"bad\.ckpt: chaincrf\['precision'\] must be a"):
        SequenceTagger.load(tmp_path / "bad.ckpt")
