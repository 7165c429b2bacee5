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
    *NER_DATA,  # 41 training sentences in batches of 8: 5 batches per epoch
    *TINY_MODEL,
    "data.test=null",
    "test=false",
    "trainer.log_every_n_steps=1",
]

pytestmark = pytest.mark.usefixtures("one_thread")


def compose_config(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def test_a_step_budget_evaluates_every_n_steps_and_stops_at_the_budget(tmp_path):
    budget = ["budget.steps=24", "budget.eval_every=4", "scheduler.patience=0"]
    cfg = compose_config([*RUN, *budget, f"run_dir={tmp_path}"])
    train(cfg)
    with open(next(tmp_path.glob("csv/**/metrics.csv")), newline="") as stream:
        rows = list(csv.DictReader(stream))
    evaluated = [int(r["step"]) + 1 for r in rows if r.get("val/score") not in (None, "")]
    assert evaluated[:6] == [4, 8, 12, 16, 20, 24]  # across epoch ends (5 batches per epoch)
    lrs = [float(r["lr-Adam"]) for r in rows if r.get("lr-Adam") not in (None, "")]
    assert min(lrs) < 0.001  # the plateau scheduler (patience 0) stepped after evaluations
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 24


@pytest.mark.parametrize("key", ["steps", "eval_every", "min_steps", "min_eval_every"])
def test_a_bad_budget_is_named(key, tmp_path):
    cfg = compose_config([*RUN, f"run_dir={tmp_path}", f"budget.{key}=0"])
    with pytest.raises(ValueError, match=rf"budget\.{key} must be a positive integer"):
        train(cfg)


def evaluated_steps(run_dir) -> list[int]:
    with open(next(run_dir.glob("csv/**/metrics.csv")), newline="") as stream:
        rows = list(csv.DictReader(stream))
    return [int(r["step"]) + 1 for r in rows if r.get("val/score") not in (None, "")]


def test_a_corpus_too_small_for_its_epochs_trains_to_the_step_floor(tmp_path, caplog):
    # 2 epochs of 5 batches are 10 steps < budget.min_steps=18: 18 steps, dev every 9
    floor = ["trainer.max_epochs=2", "budget.min_steps=18", "budget.min_eval_every=9"]
    cfg = compose_config([*RUN, *floor, f"run_dir={tmp_path}"])
    with caplog.at_level("WARNING", logger="chaincrf.train"):
        train(cfg)
    assert "a small training set: 2 epochs of 5 batches are 10 optimiser steps" in caplog.text
    assert evaluated_steps(tmp_path)[:2] == [9, 18]
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 18


def test_a_corpus_with_enough_steps_keeps_its_epochs(tmp_path):
    # 3 epochs of 5 batches are 15 steps >= budget.min_steps=12: epochs as given, dev each epoch
    floor = ["trainer.max_epochs=3", "budget.min_steps=12", "budget.min_eval_every=9"]
    cfg = compose_config([*RUN, *floor, f"run_dir={tmp_path}"])
    train(cfg)
    assert evaluated_steps(tmp_path)[:3] == [5, 10, 15]
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 15


@pytest.mark.parametrize("recipe", ["spans", "tokens"])
def test_the_own_data_recipes_train_on_column_files(recipe, tmp_path):
    # the README's own-data command on the fixture (a tiny model, a floor of 8 steps)
    data = [o for o in NER_DATA if not o.startswith("data=custom")]
    floor = ["trainer.max_epochs=1", "budget.min_steps=8"]
    overrides = [f"experiment={recipe}", *data, *TINY_MODEL, *floor]
    metrics = train(compose_config([*overrides, f"run_dir={tmp_path}"]))
    assert 0.0 <= metrics["test/score"] <= 1.0
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 8


def test_batch_scale_trains_the_recipe_in_fewer_larger_steps(tmp_path, caplog):
    """batch_scale=2: batches of 16 instead of 8 (41 sentences: 3 batches per epoch), the
    learning rate times the square root of 2, the step budgets halved (rounded up); the run's
    config.yaml holds the values trained with, and batch_scale 1. The word table keeps the
    recipe's learning rate."""
    from omegaconf import OmegaConf

    budget = ["budget.steps=8", "budget.eval_every=3", "batch_scale=2"]
    cfg = compose_config([*RUN, *budget, f"run_dir={tmp_path}", "trainer.max_epochs=5"])
    with caplog.at_level("INFO", logger="chaincrf.train"):
        train(cfg)
    assert (
        "batch_scale=2, epoch_scale=1: data.batch_size 8 -> 16, optimizer.lr 0.001 -> 0.001414"
        in caplog.text
    )
    assert evaluated_steps(tmp_path)[:2] == [2, 4]  # eval_every 3 -> 2
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 4  # steps 8 -> 4
    assert last["hyper_parameters"]["optimizer"]["lr"] == pytest.approx(0.001 * 2**0.5)
    # the word table keeps the recipe's learning rate: its group steps 1/sqrt(2) of the rest's
    rest, words = last["optimizer_states"][0]["param_groups"]
    assert words["lr"] / rest["lr"] == pytest.approx(2**-0.5)
    saved = OmegaConf.load(tmp_path / "config.yaml")
    assert (saved.batch_scale, saved.data.batch_size, saved.budget.steps) == (1, 16, 4)
    assert saved.model.word_lr_scale == pytest.approx(2**-0.5)


@pytest.mark.parametrize("key", ["batch_scale", "epoch_scale"])
@pytest.mark.parametrize("value", ["0", "-2", "1.5", "true"])
def test_a_bad_batch_or_epoch_scale_is_named(key, value, tmp_path):
    cfg = compose_config([*RUN, f"run_dir={tmp_path}", f"{key}={value}"])
    with pytest.raises(ValueError, match=rf"^{key} must be a positive integer; got"):
        train(cfg)


def test_the_gpu_trainer_scales_a_recipes_batch_by_8():
    from chaincrf.cli.budget import apply_batch_scale

    cfg = compose_config(["experiment=conll2003_ner_glove", "trainer=gpu"])
    assert apply_batch_scale(cfg) is not None
    assert (cfg.data.batch_size, cfg.budget.min_steps, cfg.budget.min_eval_every) == (256, 750, 55)
    assert cfg.optimizer.lr == pytest.approx(0.001 * 8**0.5)
    assert cfg.optimizer.lr * cfg.model.word_lr_scale == pytest.approx(0.001)  # the word table's
    assert cfg.data.eval_batch_size == 1024 and cfg.batch_scale == cfg.epoch_scale == 1
    assert cfg.trainer.max_epochs == 60  # the recipe's 30, times epoch_scale 2
    assert apply_batch_scale(cfg) is None  # once only
