"""budget.steps / budget.eval_every (issue 20): a training budget in optimiser steps, dev
evaluations (with early stopping and the plateau scheduler) every N steps across epoch ends."""

from __future__ import annotations

import csv

import pytest
import torch
from hydra import compose, initialize_config_dir

from chaincrf.cli.train import train
from fixture_runs import CONF, NER_DATA, TINY_MODEL

RUN = [
    *NER_DATA,  # 41 training sentences in batches of 8: 6 batches per epoch
    *TINY_MODEL,
    "data.test=null",
    "test=false",
    "trainer.log_every_n_steps=1",
]

pytestmark = pytest.mark.usefixtures("one_thread")


def compose_config(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def test_a_step_budget_evaluates_every_n_steps_and_stops_at_the_budget(tmp_path):
    budget = ["budget.steps=24", "budget.eval_every=4", "scheduler.patience=0"]
    cfg = compose_config([*RUN, *budget, f"run_dir={tmp_path}"])
    train(cfg)
    with open(next(tmp_path.glob("csv/**/metrics.csv")), newline="") as stream:
        rows = list(csv.DictReader(stream))
    evaluated = [int(r["step"]) + 1 for r in rows if r.get("val/score") not in (None, "")]
    assert evaluated[:6] == [4, 8, 12, 16, 20, 24]  # across epoch ends (6 batches per epoch)
    lrs = [float(r["lr-Adam"]) for r in rows if r.get("lr-Adam") not in (None, "")]
    assert min(lrs) < 0.001  # the plateau scheduler (patience 0) stepped after evaluations
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 24


def test_a_bad_budget_is_named(tmp_path):
    cfg = compose_config([*RUN, f"run_dir={tmp_path}", "budget.steps=0"])
    with pytest.raises(ValueError, match=r"budget\.steps must be a positive integer"):
        train(cfg)
