"""Scale-out from configuration alone (issue 19): torchrun on one and on two "nodes" (loopback)
leave one run directory whose figures equal a single-process evaluation; a sweep with Optuna
through submitit's local executor ends with a summary; bf16-mixed trains on the CPU.

The launches are real (torchrun, Hydra's sweeper and launcher plugins) on the fixture corpus with
a tiny model, each bounded in time."""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from chaincrf.cli.evaluate import evaluate
from chaincrf.cli.launch import RUN_DIR_PATTERN, STAMP_FORMAT, launch_rank, shared_run_dir
from chaincrf.cli.summary import summarize
from chaincrf.cli.train import train
from fixture_runs import CONF, NER_DATA, TINY_MODEL

TINY_RUN = [
    *NER_DATA,
    *TINY_MODEL,
    "callbacks=minimal",
    "trainer.enable_model_summary=false",
]

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def compose_config(overrides: list[str], name: str = "train", hydra: bool = False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=name, overrides=overrides, return_hydra_config=hydra)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(command: list[str], out: Path, extra_env: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "CHAINCRF_OUTPUT": str(out), "OMP_NUM_THREADS": "1", **(extra_env or {})}
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def finish(process: subprocess.Popen, timeout: float = 240) -> str:
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        pytest.fail(f"timed out after {timeout} s:\n{output[-3000:]}")
    assert process.returncode == 0, output[-3000:]
    return output


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args, "-m", "chaincrf.cli.train"]


# ---------------------------------------------------------------- the run directory, in units


def test_the_launch_rank_is_read_from_torchrun_slurm_and_lightning_variables():
    assert launch_rank({}) == (0, 1)
    assert launch_rank({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (3, 4)
    assert launch_rank({"SLURM_PROCID": "1", "SLURM_NTASKS": "2"}) == (1, 2)
    # the processes Lightning's own launcher starts: LOCAL_RANK and WORLD_SIZE only
    assert launch_rank({"LOCAL_RANK": "1", "WORLD_SIZE": "2"}) == (1, 2)
    with pytest.raises(ValueError, match="WORLD_SIZE='two'"):
        launch_rank({"WORLD_SIZE": "two"})


def test_torchrun_ranks_take_rank_zeros_directory_from_the_launchers_store():
    from torch.distributed import TCPStore

    server = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    env = {
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(server.port),
        "TORCHELASTIC_USE_AGENT_STORE": "True",
        "TORCHELASTIC_RUN_ID": "abc",
        "TORCHELASTIC_RESTART_COUNT": "0",
    }
    argv = ["experiment=quickstart"]
    first = shared_run_dir(argv, {**env, "RANK": "0"})
    second = shared_run_dir(argv, {**env, "RANK": "1"})
    [run_dir] = [a for a in first if a.startswith("hydra.run.dir=")]
    assert run_dir in second and run_dir.startswith(f"hydra.run.dir={RUN_DIR_PATTERN}")
    assert first == [*argv, run_dir]  # rank 0 writes .hydra/ and train.log
    assert second == [*argv, run_dir, "hydra.output_subdir=null", "hydra/job_logging=stdout"]
    # a restart of the workers is a new launch: a new directory
    again = shared_run_dir(argv, {**env, "RANK": "0", "TORCHELASTIC_RESTART_COUNT": "1"})
    assert again[-1] != run_dir


def test_slurm_tasks_name_the_directory_after_the_job_step():
    env = {"SLURM_NTASKS": "4", "SLURM_JOB_ID": "812", "SLURM_STEP_ID": "0"}
    zero = shared_run_dir([], {**env, "SLURM_PROCID": "0"})
    three = shared_run_dir([], {**env, "SLURM_PROCID": "3"})
    assert zero == [f"hydra.run.dir={RUN_DIR_PATTERN}slurm-812.0"]
    assert three[0] == zero[0] and "hydra.output_subdir=null" in three
    array = shared_run_dir([], {**env, "SLURM_ARRAY_JOB_ID": "800", "SLURM_ARRAY_TASK_ID": "5"})
    assert array == [f"hydra.run.dir={RUN_DIR_PATTERN}slurm-800_5.0"]


def test_one_process_a_multirun_and_a_named_directory_are_left_alone_and_fallbacks():
    assert shared_run_dir(["seed=1"], {}) == ["seed=1"]
    many = {"RANK": "1", "WORLD_SIZE": "2"}
    assert shared_run_dir(["-m", "seed=1,2"], many) == ["-m", "seed=1,2"]
    named = shared_run_dir(["hydra.run.dir=/x"], many)  # resume in place, Lightning's launcher
    assert named == ["hydra.run.dir=/x", "hydra.output_subdir=null", "hydra/job_logging=stdout"]
    old_torchrun = {**many, "TORCHELASTIC_RUN_ID": "5f1e", "TORCHELASTIC_RESTART_COUNT": "2"}
    assert shared_run_dir([], old_torchrun)[0] == f"hydra.run.dir={RUN_DIR_PATTERN}torchrun-5f1e-2"
    with pytest.raises(ValueError, match=r"hydra\.run\.dir"):
        shared_run_dir([], many)  # no torchrun store, no SLURM job: cannot agree


def test_the_shared_directory_has_the_configs_pattern():
    raw = OmegaConf.load(CONF / "train.yaml")
    assert OmegaConf.to_container(raw)["hydra"]["run"]["dir"] == (
        f"{RUN_DIR_PATTERN}${{now:{STAMP_FORMAT}}}"
    )


# ---------------------------------------------------------------- torchrun, real launches


@pytest.mark.slow
def test_torchrun_two_processes_one_run_directory_and_exact_figures(tmp_path):
    """torchrun --nproc_per_node=2 (gloo): one directory, one config, log and report writer;
    no sync_dist warning; its dev figures (span counts included) are those of a single-process
    chaincrf-eval of the same checkpoint. The losses are checked every 2 steps (an
    accelerator's way: the ranks read them together, at the same steps)."""
    out = tmp_path / "out"
    # verbose=true: Lightning's lines (its distributed start-up) are what show the processes met
    command = [*torchrun("--standalone", "--nproc_per_node=2"), "trainer=torchrun", *TINY_RUN,
               "trainer.max_epochs=3", "seed=3", "test=false", "verbose=true",
               "nan_check_every=2"]  # fmt: skip
    output = finish(launch(command, out))
    [run] = list((out / "train").iterdir())
    assert sorted(p.name for p in run.iterdir()) == [
        ".hydra", "checkpoints", "config.yaml", "csv", "encoder.json", "metrics.json", "train.log"
    ]  # fmt: skip
    log = (run / "train.log").read_text()
    assert log.count("run directory:") == 1 and "Initializing distributed" in output
    assert "sync_dist" not in output and "all_gather is deprecated" not in output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train_tokens_per_s"] > 0
    ckpt = metrics["best_model_path"]
    assert Path(ckpt).parent == run / "checkpoints"
    single = evaluate(compose_config([f"ckpt_path={ckpt}", "split=dev"], name="eval"))
    val = {k: v for k, v in metrics.items() if k.startswith("val/") and k != "val/loss"}
    assert any(k.startswith("val/support") for k in val) and len(val) > 10
    for key, value in val.items():
        assert single[key] == pytest.approx(value, abs=1e-12), key


@pytest.mark.slow
def test_two_nodes_on_loopback_train_into_one_checkpoint(tmp_path):
    """Two torchrun launches, one process each, a c10d rendezvous on 127.0.0.1: both ranks train
    a few steps (trainer=torchrun reads num_nodes=2 from torchrun) into one run directory."""
    out = tmp_path / "out"
    port = free_port()
    nodes = [
        launch(
            [
                *torchrun(
                    "--nnodes=2",
                    "--nproc_per_node=1",
                    "--rdzv-backend=c10d",
                    f"--rdzv-endpoint=127.0.0.1:{port}",
                    "--rdzv-id=loopback",
                ),
                "trainer=torchrun",
                *TINY_RUN,
                "trainer.max_epochs=1",
                "trainer.limit_train_batches=2",
                "test=false",
                "verbose=true",  # Lightning's distributed start-up lines
            ],
            out,
        )
        for _ in range(2)
    ]
    outputs = [finish(node) for node in nodes]
    assert any("GLOBAL_RANK: 1, MEMBER: 2/2" in o for o in outputs)
    [run] = list((out / "train").iterdir())
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == 2


@pytest.mark.slow
def test_slurm_tasks_train_into_one_run_directory(tmp_path):
    """Two tasks as ``srun`` starts them (its environment variables, one node): Lightning's
    SLURM environment, trainer=slurm sizing the run from them, one directory named after the
    job step."""
    out = tmp_path / "out"
    slurm = {"SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NNODES": "1",
             "SLURM_NODEID": "0", "SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0",
             "SLURM_NODELIST": "127.0.0.1", "SLURM_JOB_NAME": "chaincrf",
             "MASTER_PORT": str(free_port())}  # fmt: skip
    command = [sys.executable, "-m", "chaincrf.cli.train", "trainer=slurm", *TINY_RUN,
               "trainer.max_epochs=1", "test=false", "verbose=true"]  # fmt: skip
    tasks = [
        launch(command, out, {**slurm, "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i)})
        for i in range(2)
    ]
    outputs = [finish(task) for task in tasks]
    assert any("GLOBAL_RANK: 1, MEMBER: 2/2" in o for o in outputs)
    assert [p.name for p in (out / "train").iterdir()] == ["slurm-4242.0"]
    run = out / "train" / "slurm-4242.0"
    assert (run / "checkpoints" / "best.ckpt").is_file() and (run / "metrics.json").is_file()


# ---------------------------------------------------------------- sweeps, launchers, summaries


@pytest.mark.slow
def test_an_optuna_sweep_through_submitits_local_executor_ends_with_a_summary(tmp_path):
    """hparams_search=optuna (3 trials) with hydra/launcher=submitit_local: each trial a run
    directory in the sweep folder, Optuna's best result the best trial's dev score, the
    summary ranking the trials."""
    out = tmp_path / "out"
    command = [sys.executable, "-m", "chaincrf.cli.train", "hparams_search=optuna",
               "hydra.sweeper.n_trials=3", "hydra/launcher=submitit_local", *TINY_RUN,
               "trainer.max_epochs=2", "test=false"]  # fmt: skip
    finish(launch(command, out), timeout=300)
    [sweep] = list((out / "train").iterdir())
    assert (sweep / ".submitit").is_dir()
    trials = sorted(p for p in sweep.iterdir() if (p / "metrics.json").is_file())
    assert [t.name for t in trials] == ["0", "1", "2"]
    scores = [json.loads((t / "metrics.json").read_text())["val/score"] for t in trials]
    lrs = {OmegaConf.load(t / "config.yaml").optimizer.lr for t in trials}
    assert len(lrs) == 3  # three different points of the search space
    best = OmegaConf.load(sweep / "optimization_results.yaml")
    assert best.best_value == pytest.approx(max(scores))
    summary = json.loads((sweep / "summary.json").read_text())
    assert [r["runs"] for r in summary["configurations"]] == [1, 1, 1]
    assert summary["configurations"][0]["val/score"]["mean"] == pytest.approx(max(scores))
    assert "optimizer.lr" in summary["varying"] and (sweep / "summary.md").is_file()


def test_the_summary_groups_seeds_into_mean_and_std(tmp_path):
    runs = {
        "0": (["encoder.hidden_size=64", "seed=1"], {"val/score": 0.80, "test/score": 0.70}),
        "1": (["encoder.hidden_size=64", "seed=2"], {"val/score": 0.84, "test/score": 0.74}),
        "2": (["encoder.hidden_size=128", "seed=1"], {"val/score": 0.90, "test/score": 0.81}),
        "3": (["encoder.hidden_size=128", "seed=2"], None),  # failed: no metrics.json
    }
    for name, (overrides, metrics) in runs.items():
        (tmp_path / name / ".hydra").mkdir(parents=True)
        OmegaConf.save(OmegaConf.create(overrides), tmp_path / name / ".hydra" / "overrides.yaml")
        if metrics:
            (tmp_path / name / "metrics.json").write_text(json.dumps(metrics))
    markdown = summarize(tmp_path).read_text()
    summary = json.loads((tmp_path / "summary.json").read_text())
    first, second = summary["configurations"]
    assert first["configuration"] == ["encoder.hidden_size=128"] and first["runs"] == 1
    assert second["configuration"] == ["encoder.hidden_size=64"] and second["runs"] == 2
    assert second["val/score"]["mean"] == pytest.approx(0.82)
    assert second["test/score"]["std"] == pytest.approx(statistics.stdev([0.70, 0.74]))
    assert summary["failed"] == [str(tmp_path / "3")]
    assert "| `encoder.hidden_size=64` | 2 | 82.00 ± 2.83 | 72.00 ± 2.83 | 0, 1 |" in markdown
    assert summarize(tmp_path / "0") is None  # a folder without runs


def test_the_slurm_launcher_config_builds_submitits_slurm_launcher(tmp_path):
    from hydra.utils import instantiate

    cfg = compose_config(
        [f"hydra.sweep.dir={tmp_path}", "hydra/launcher=slurm", "hydra.launcher.tasks_per_node=4"],
        hydra=True,
    )
    launcher = instantiate(cfg.hydra.launcher)
    assert type(launcher).__name__ == "SlurmLauncher"
    assert launcher.params["tasks_per_node"] == 4 and launcher.params["timeout_min"] == 240
    assert str(cfg.hydra.launcher.submitit_folder) == f"{tmp_path}/.submitit/%j"


def test_the_distributed_trainer_configs_read_the_launchers_sizes(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setenv("GROUP_WORLD_SIZE", "2")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "8")
    monkeypatch.setenv("SLURM_NNODES", "3")
    run = compose_config(["trainer=torchrun", "run_dir=x"]).trainer
    assert (run.devices, run.num_nodes, run.strategy) == (4, 2, "ddp")
    slurm = compose_config(["trainer=slurm", "run_dir=x"]).trainer
    assert (slurm.devices, slurm.num_nodes, slurm.accelerator) == (8, 3, "auto")


# ---------------------------------------------------------------- mixed precision


def test_bf16_mixed_trains_on_the_cpu_and_reloads_in_float32(tmp_path):
    from chaincrf.tagger import SequenceTagger

    bf16 = ["trainer.precision=bf16-mixed", "embeddings=char_lstm", "embeddings.word_dim=16"]
    cfg = compose_config([*TINY_RUN, *bf16, f"run_dir={tmp_path}", "trainer.max_epochs=2"])
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    tagger = SequenceTagger.load(tmp_path / "checkpoints" / "best.ckpt")
    assert {p.dtype for p in tagger.parameters()} == {torch.float32}
    ckpt = tmp_path / "checkpoints" / "best.ckpt"
    assert tagger.trained_precision == "bf16-mixed"  # stored in the checkpoint
    scores = evaluate(compose_config([f"ckpt_path={ckpt}", "split=dev"], name="eval"))
    # chaincrf-eval runs in the precision the model was trained in: the run's own figures
    assert scores["val/score"] == pytest.approx(metrics["val/score"], abs=1e-9)
    assert scores["val/acc"] == pytest.approx(metrics["val/acc"], abs=1e-9)
    in_float32 = evaluate(
        compose_config([f"ckpt_path={ckpt}", "split=dev", "precision=32-true"], name="eval")
    )
    assert 0.0 <= in_float32["val/acc"] <= 1.0  # a chosen precision overrides the stored one


def test_the_crf_and_the_lstms_compute_in_float32_under_cpu_autocast():
    """Under bf16 autocast the CRF's results are its float32 results, exactly; so are the
    BiLSTM's on a CPU whose oneDNN has no bf16 LSTM (this one: AVX2 only)."""
    from chaincrf.crf import CRF
    from chaincrf.network.encoders.bilstm import BiLSTMEncoder
    from chaincrf.network.precision import cpu_supports

    torch.manual_seed(0)
    crf = CRF(9, batch_first=True)
    em = torch.randn(4, 13, 9, dtype=torch.bfloat16)
    tags = torch.randint(0, 9, (4, 13))
    mask = torch.arange(13) < torch.tensor([13, 7, 1, 10])[:, None]
    # the eager kernel on longer rows: its log-depth path, whose products autocast would lower
    eager = CRF(5, batch_first=True, kernel="eager")
    long_em, long_tags = torch.randn(2, 64, 5, dtype=torch.bfloat16), torch.randint(0, 5, (2, 64))
    calls = (
        lambda: crf(em, tags, mask, reduction="none"),
        lambda: crf.nll(em, tags, mask, reduction="token_mean"),
        lambda: crf.marginals(em, mask),
        lambda: crf.viterbi(em, mask)[1],
        lambda: crf.pairwise_marginals(em, mask),
        lambda: eager.nll(long_em, long_tags, reduction="token_mean"),
        lambda: eager.loss(long_em, long_tags, reduction="none"),
        lambda: eager(long_em, long_tags, reduction="none"),
    )
    plain = [f() for f in calls]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = [f() for f in calls]
    for a, b in zip(plain, mixed):
        assert b.dtype == a.dtype and torch.equal(a, b)
    encoder = BiLSTMEncoder(input_dim=6, hidden_size=5).eval()
    x = torch.randn(4, 13, 6)
    reference = encoder(x, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = encoder(x, mask)
    if not cpu_supports(torch.bfloat16):
        assert out.dtype == torch.float32 and torch.equal(out, reference)
    else:
        torch.testing.assert_close(out.float(), reference, atol=0.05, rtol=0.05)


# ---------------------------------------------------------------- GPUs (scripts/gpu_check.sh)

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
TWO_GPUS = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")


@pytest.mark.gpu
@CUDA
@pytest.mark.parametrize("precision", ["32-true", "16-mixed", "bf16-mixed"])
def test_training_on_one_gpu(tmp_path, precision):
    """The same run as on the CPU, on a GPU: finite loss, float32 weights, figures that a
    single-process chaincrf-eval reproduces."""
    cfg = compose_config([*TINY_RUN, f"run_dir={tmp_path}", "trainer=gpu",
                          f"trainer.precision={precision}", "trainer.max_epochs=2"])  # fmt: skip
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    ckpt = tmp_path / "checkpoints" / "best.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float32}
    again = evaluate(compose_config([f"ckpt_path={ckpt}", "split=dev"], name="eval"))
    assert again["val/score"] == pytest.approx(metrics["val/score"], abs=1e-9)


@pytest.mark.gpu
@CUDA
def test_a_training_step_on_the_gpu_waits_for_nothing(tmp_path):
    """The GPU recipe's steps (batch copy, network, CRF loss, backward, clipping, Adam) under
    CUDA's sync debug mode set to raise: no host synchronisation (the loss check's read comes
    every nan_check_every steps; here beyond the run)."""
    from fault_injection import NoHostSync

    NoHostSync.checked = 0
    cfg = compose_config([*TINY_RUN, f"run_dir={tmp_path}", "trainer=gpu", "trainer.max_epochs=2",
                          "trainer.enable_progress_bar=false", "test=false", "report=false",
                          "nan_check_every=100000", "batch_scale=1",
                          "+callbacks.nosync._target_=fault_injection.NoHostSync"])  # fmt: skip
    train(cfg)
    assert NoHostSync.checked >= 5  # 4 steps an epoch


@pytest.mark.gpu
@CUDA
def test_predict_on_the_gpu_tags_as_on_the_cpu(tmp_path):
    """chaincrf-predict device=cuda: the network, decoding and confidences on the GPU, the same
    tags and (to float32 rounding) the same confidences as on the CPU."""
    from chaincrf.cli.predict import predict

    model = Path(__file__).parent / "fixtures" / "model_files" / "v2.ckpt"
    text = tmp_path / "in.txt"
    text.write_text("Peter Blackburn visited Brussels .\nThe EU rejects German calls .\n")
    records = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"{device}.jsonl"
        cfg = compose_config([f"ckpt_path={model}", f"input={text}", f"output={out}",
                              "tokenizer=whitespace", f"device={device}"], name="predict")  # fmt: skip
        predict(cfg)
        records[device] = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["tags"] for r in records["cuda"]] == [r["tags"] for r in records["cpu"]]
    for gpu, cpu in zip(records["cuda"], records["cpu"]):
        assert gpu["confidences"] == pytest.approx(cpu["confidences"], abs=1e-4)


@pytest.mark.gpu
@TWO_GPUS
@pytest.mark.slow
def test_torchrun_on_two_gpus(tmp_path):
    out = tmp_path / "out"
    command = [*torchrun("--standalone", "--nproc_per_node=2"), "trainer=torchrun", *TINY_RUN,
               "trainer.max_epochs=2", "trainer.precision=16-mixed"]  # fmt: skip
    output = finish(launch(command, out))
    assert "GPU available: True (cuda), used: True" in output
    [run] = list((out / "train").iterdir())
    assert (run / "checkpoints" / "best.ckpt").is_file()
