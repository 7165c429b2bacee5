"""Issue 30's GPU recipe, the parts the CPU runs: batches padded to a few lengths
(``data.length_buckets``: the shapes repeat, so that cuDNN's plans, compiled graphs and CUDA
graphs are reused) change no result, and a training step whose network runs through
``torch.compile`` (``compile=true``, :meth:`SequenceTagger.compile_training`) equals eager."""

from __future__ import annotations

import copy
import csv
import pickle
import random

import pytest
import torch
from hydra import compose, initialize_config_dir

from chaincrf.cli.train import build_datamodule, build_tagger, train
from chaincrf.crf import tracing
from chaincrf.data import TaggingDataModule
from chaincrf.data.batching import BucketBatchSampler, collate
from chaincrf.data.layout import bucketed, pad
from fixture_runs import CONF, FIXTURES, NER_DATA, TINY_MODEL

pytestmark = pytest.mark.usefixtures("one_thread")

RUN = [*NER_DATA, *TINY_MODEL, "data.test=null", "test=false", "seed=3"]


def compose_config(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def _item(n: int, chars: int) -> dict:
    return {
        "words": list(range(2, 2 + n)),
        "chars": [[3] * chars for _ in range(n)],
        "casing": [1] * n,
        "tags": [1] * n,
    }


@pytest.mark.parametrize(
    ("n", "buckets", "want"),
    [(5, [8, 16], 8), (8, [16, 8], 8), (9, [8, 16], 16), (17, [8, 16], 32), (33, [16], 48)],
)
def test_a_batch_pads_to_the_smallest_bucket_that_holds_it(n, buckets, want):
    assert bucketed(n, buckets) == want
    arrays = pad([_item(n, 5), _item(2, 3)], buckets)
    assert arrays["words"].shape == (2, want) and arrays["tags"].shape == (2, want)
    assert arrays["chars"].shape == (2, want, 8)  # 5 characters -> a power of two
    assert arrays["mask"].sum(1).tolist() == [n, 2]
    assert pad([_item(n, 5)])["words"].shape == (1, n)  # without buckets: its longest


@pytest.mark.parametrize("buckets", [[0, 8], [], "16", [8, 2.5], [True]])
def test_bad_length_buckets_are_named(buckets):
    with pytest.raises(ValueError, match="length_buckets"):
        TaggingDataModule(train=str(FIXTURES / "train.conll"), length_buckets=buckets)


def _setup(overrides: list[str]):
    cfg = compose_config([*RUN, *overrides])
    datamodule = build_datamodule(cfg.data)
    return datamodule, build_tagger(cfg, datamodule)


def test_bucketed_batches_repeat_their_shapes_and_change_no_result():
    datamodule, tagger = _setup(["data.length_buckets=[16,32,64]"])
    lengths = {tuple(batch["words"].shape[1:]) for batch in datamodule.train_dataloader()}
    assert {T for (T,) in lengths} <= {16, 32, 64}
    items = [datamodule.datasets["train"][i] for i in range(8)]
    plain, padded = collate(items), collate(items, [64])
    assert padded["words"].shape[1] == 64 > plain["words"].shape[1]
    net = tagger.model.eval()
    with torch.no_grad():
        losses = [net.loss(net.emissions(b), b["tags"], b["mask"]) for b in (plain, padded)]
        paths = [net.decode(net.emissions(b), b["mask"]) for b in (plain, padded)]
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    T = plain["words"].shape[1]
    assert torch.equal(paths[0], paths[1][:, :T]) and bool((paths[1][:, T:] == -1).all())


def test_a_token_budget_counts_the_bucket_padding():
    """With ``max_tokens`` the budget holds for the batch as padded to its length bucket (a
    batch of 17-token sentences padded to 32 takes half as many)."""
    lengths = [random.Random(i).randint(1, 40) for i in range(300)]
    buckets = [16, 32, 64]
    sampler = BucketBatchSampler(
        None, None, lengths=lengths, max_tokens=128, length_buckets=buckets, seed=1
    )
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(300))
    sizes = [bucketed(max(lengths[i] for i in b), buckets) * len(b) for b in batches]
    assert max(sizes) <= 128 and len(batches) > len(list(BucketBatchSampler(
        None, None, lengths=lengths, max_tokens=128, seed=1)))  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("kernel", ["auto", "triton"])
def test_a_compiled_training_step_equals_eager(kernel, monkeypatch):
    """... with the planner's kernel, and with the Triton kernel forced (``CHAINCRF_KERNEL``;
    interpreted here): the GPU's compiled path, Inductor included, on the CPU."""
    if kernel != "auto":
        monkeypatch.setenv("CHAINCRF_KERNEL", kernel)
    # (Dynamo keeps its compiled code per function across taggers, and its guards do not see
    # the environment variable: a graph traced by an earlier test would be reused)
    torch._dynamo.reset()
    datamodule, eager = _setup(["embeddings.dropout=0.0", "encoder.dropout=0.0"])
    compiled = copy.deepcopy(eager)
    compiled.compile_training()
    batch = next(iter(datamodule.train_dataloader()))
    losses = []
    for tagger in (eager, compiled):
        tagger.train()
        with tracing.record() as chosen:
            loss = tagger.training_step(batch, 0)
        if kernel != "auto":  # (compiled, the planner chooses while the step is traced)
            assert chosen and {name for _, name in chosen} == {kernel}, chosen
        loss.backward()
        losses.append(loss.detach())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
    # a compiled tagger pickles (ddp_spawn sends it to its processes) and compiles again there
    clone = pickle.loads(pickle.dumps(compiled))
    torch.testing.assert_close(clone.training_step(batch, 0).detach(), losses[0], rtol=1e-5,
                               atol=1e-6)  # fmt: skip
    # compiled, non-finite scores make a NaN loss (which stops a run before its backward), not
    # a device assert from inside the graph
    with torch.no_grad():
        next(clone.model.parameters()).fill_(float("nan"))
    assert bool(torch.isnan(clone.training_step(batch, 0)))


@pytest.mark.slow
def test_the_cli_trains_compiled_on_bucketed_batches(tmp_path):
    overrides = ["compile=true", "data.length_buckets=[16,64]", "trainer.max_epochs=2"]
    train(compose_config([*RUN, *overrides, f"run_dir={tmp_path}"]))
    with open(next(tmp_path.glob("csv/**/metrics.csv")), newline="") as stream:
        rows = list(csv.DictReader(stream))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss") not in (None, "")]
    assert len(losses) == 2 and all(loss == loss for loss in losses) and losses[1] < losses[0]
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_the_gpu_trainer_sets_the_shapes_and_an_override_wins():
    """``trainer=gpu`` alone: one GPU, cuDNN's autotuner and bucketed lengths, also under an
    experiment; a command-line override still wins."""
    cfg = compose_config(["trainer=gpu", "experiment=conll2003_ner"])
    assert (cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.benchmark) == ("gpu", 1, True)
    assert cfg.trainer.max_epochs == compose_config([]).trainer.max_epochs  # trainer/cpu.yaml's
    assert list(cfg.data.length_buckets) == [16, 32, 64, 128]
    assert cfg.data.train == "conll2003/eng.train"
    cfg = compose_config(["trainer=gpu", "data.length_buckets=null"])
    assert cfg.data.length_buckets is None
    assert compose_config([]).data.length_buckets is None
