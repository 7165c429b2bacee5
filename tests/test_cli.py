"""The Hydra side: every config group instantiates; fast_dev_run per encoder; train -> eval gives
the same dev figures; predict round trips; reload; resume from last.ckpt; 2-process DDP on CPU.

Everything runs on the tiny corpora in ``tests/fixtures/tagger`` with tiny models."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from chaincrf.cli.common import run_cli
from chaincrf.cli.evaluate import evaluate
from chaincrf.cli.export import export, export_command
from chaincrf.cli.predict import predict
from chaincrf.cli.train import build_tagger, train
from chaincrf.tagger import SequenceTagger
from chaincrf.training.report import read_metrics_csv
from fixture_runs import NER_DATA

CONF = Path(__file__).resolve().parents[1] / "conf"
FIXTURES = Path(__file__).parent / "fixtures" / "tagger"

POS_DATA = [
    "data=custom",
    "data.root=null",
    "data.format=conllu",
    "data.scheme=null",
    f"data.train={FIXTURES / 'train.conllu'}",
    f"data.dev={FIXTURES / 'dev.conllu'}",
    f"data.test={FIXTURES / 'test.conllu'}",
    "data.batch_size=8",
]
TINY = [
    "embeddings.word_dim=16",
    "embeddings.char_dim=8",
    "embeddings.char_hidden=8",
    "embeddings.dropout=0.0",
    "optimizer.lr=0.02",
    "callbacks=minimal",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=1",
    "threads=1",
]
ENCODERS = {
    "bilstm": ["encoder.hidden_size=16", "encoder.dropout=0.0"],
    "cnn": ["encoder.hidden_size=16", "encoder.dilations=[1,2]", "encoder.dropout=0.0"],
    "transformer": [
        "encoder.d_model=16",
        "encoder.num_heads=2",
        "encoder.num_layers=1",
        "encoder.dim_feedforward=32",
        "encoder.dropout=0.0",
    ],
    "identity": [],
    "pretrained": [],
    "pretrained_bilstm": [
        "encoder.layers.bilstm.hidden_size=16",
        "encoder.layers.bilstm.dropout=0.0",
    ],
}


pytestmark = pytest.mark.usefixtures("one_thread")


def compose_config(overrides: list[str], name: str = "train") -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def export_main(overrides: list[str]) -> int:
    """``chaincrf-export`` with these overrides: its exit status (1 for a user error)."""
    try:
        run_cli(export_command, compose_config(overrides, name="export"))
    except SystemExit as stop:
        return int(stop.code)
    return 0


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def run_overrides(run_dir: Path, *extra: str, encoder: str = "bilstm") -> list[str]:
    return [
        *NER_DATA,
        *TINY,
        f"encoder={encoder}",
        *ENCODERS[encoder],
        f"run_dir={run_dir}",
        *extra,
    ]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """One training run on the NER fixture, shared by the eval/predict/reload/resume tests."""
    run_dir = tmp_path_factory.mktemp("run")
    cfg = compose_config(run_overrides(run_dir, "trainer.max_epochs=6", "seed=1"))
    metrics = train(cfg)
    return {"run_dir": run_dir, "metrics": metrics, "cfg": cfg}


# ---------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "group",
    [
        "trainer",
        "logger",
        "callbacks",
        "optimizer",
        "scheduler",
        "head",
        "budget",
        "debug",
        "experiment",
    ],
)
def test_every_option_of_my_groups_composes(group, tmp_path):
    assert options(group), f"conf/{group} has no options"
    for option in options(group):
        cfg = compose_config([f"{group}={option}", f"run_dir={tmp_path}"])
        OmegaConf.resolve(cfg)  # every interpolation resolves
        assert cfg.run_dir == str(tmp_path)


@pytest.mark.parametrize("option", options("trainer"))
def test_trainer_configs_instantiate(option, tmp_path):
    cfg = compose_config([f"trainer={option}", f"run_dir={tmp_path}"])
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        with pytest.raises(Exception, match=r"(?i)gpu|cuda"):
            instantiate(cfg.trainer, logger=False)
        return
    trainer = instantiate(cfg.trainer, logger=False)
    assert trainer.gradient_clip_val == 5.0


@pytest.mark.parametrize("option", options("logger"))
def test_logger_configs_instantiate(option, tmp_path, monkeypatch):
    monkeypatch.setenv("CHAINCRF_MLFLOW_DB", str(tmp_path / "mlruns.db"))
    cfg = compose_config([f"logger={option}", f"run_dir={tmp_path}"])
    needs = {"tensorboard": "tensorboard", "mlflow": "mlflow"}
    for name, node in cfg.logger.items():
        if name in needs and importlib.util.find_spec(needs[name]) is None:
            with pytest.raises(Exception, match=needs[name]):  # a clear "install it" error
                instantiate(node)
            continue
        logger = instantiate(node)
        assert logger is not None
    if option == "mlflow":
        assert cfg.logger.mlflow.tracking_uri == f"sqlite:///{tmp_path / 'mlruns.db'}"
        monkeypatch.delenv("CHAINCRF_MLFLOW_DB")  # by default: inside the run's folder
        cfg = compose_config([f"logger={option}", f"run_dir={tmp_path / 'run'}"])
        assert cfg.logger.mlflow.tracking_uri == f"sqlite:///{tmp_path / 'run' / 'mlruns.db'}"


def test_mlflow_logger_records_the_run_in_sqlite(tmp_path, monkeypatch):
    """logger=mlflow: parameters and per-epoch dev scores land in the local SQLite store."""
    from mlflow.tracking import MlflowClient  # the dev extra installs mlflow

    db = tmp_path / "mlruns.db"
    monkeypatch.setenv("CHAINCRF_MLFLOW_DB", str(db))
    cfg = compose_config(
        run_overrides(
            tmp_path / "run", "logger=mlflow", "trainer.max_epochs=2", "task_name=mlflow_check"
        )
    )
    train(cfg)
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("mlflow_check")
    assert experiment is not None, f"no experiment 'mlflow_check' in {db}"
    (run,) = client.search_runs([experiment.experiment_id])
    history = client.get_metric_history(run.info.run_id, "val/score")
    assert run.data.params, "no hyperparameters logged"
    # the CSV logger stays on (the report reads it) and saw the same dev scores
    csv_scores = read_metrics_csv(tmp_path / "run" / "csv" / "metrics.csv")["val/score"]
    assert len(history) >= 2  # one per epoch (plus the best checkpoint's final evaluation)
    assert sorted(m.value for m in history) == pytest.approx(sorted(v for _, v in csv_scores))


CALLBACK_SETS = ("default", "minimal")
"""The files of conf/callbacks/ that compose their siblings; each other file is one callback."""


@pytest.mark.parametrize("option", CALLBACK_SETS)
def test_callback_configs_instantiate(option, tmp_path):
    cfg = compose_config([f"callbacks={option}", f"run_dir={tmp_path}"])
    callbacks = [instantiate(node) for node in cfg.callbacks.values() if node is not None]
    checkpoint = next(c for c in callbacks if type(c).__name__ == "ModelCheckpoint")
    assert checkpoint.monitor == "val/score"
    assert any(getattr(c, "filename", None) == "last" and c.monitor is None for c in callbacks)


@pytest.mark.parametrize("name", sorted(set(options("callbacks")) - set(CALLBACK_SETS)))
def test_each_callback_file_is_one_callback_a_list_adds(name, tmp_path):
    """callbacks=[minimal,<name>]: the set and one callback more, under its file's name."""
    alone = compose_config([f"callbacks={name}", f"run_dir={tmp_path}"]).callbacks
    assert list(alone) == [name]
    instantiate(alone[name])
    cfg = compose_config([f"callbacks=[minimal,{name}]", f"run_dir={tmp_path}"])
    minimal = compose_config(["callbacks=minimal", f"run_dir={tmp_path}"])
    assert set(cfg.callbacks) == {*minimal.callbacks, name}


@pytest.mark.parametrize("option", options("optimizer"))
def test_optimizer_and_scheduler_configs_instantiate(option, tmp_path):
    parameter = torch.nn.Parameter(torch.zeros(2))
    for scheduler in options("scheduler"):
        cfg = compose_config(
            [f"optimizer={option}", f"scheduler={scheduler}", f"run_dir={tmp_path}"]
        )
        optimizer = instantiate(cfg.optimizer)([parameter])
        assert instantiate(cfg.scheduler)(optimizer) is not None


@pytest.mark.parametrize("option", options("data"))
def test_data_configs_instantiate(option, tmp_path):
    cfg = compose_config(
        [f"data={option}", f"run_dir={tmp_path}", f"data.train={FIXTURES / 'train.conll'}"]
    )
    datamodule = instantiate(cfg.data)
    assert type(datamodule).__name__ == "TaggingDataModule"


@pytest.mark.parametrize("embeddings", options("embeddings"))
@pytest.mark.parametrize("head", options("head"))
def test_embeddings_and_head_configs_build_a_tagger(embeddings, head, tmp_path):
    overrides = [*NER_DATA, f"embeddings={embeddings}", f"head={head}", f"run_dir={tmp_path}"]
    cfg = compose_config(overrides)
    if cfg.data.get("pretrained") is None and embeddings == "glove":
        with open_dict(cfg):
            cfg.data.pretrained = None  # GloVe shape comes from the data; random here
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    tagger = build_tagger(cfg, datamodule)
    assert (tagger.model.crf is not None) == cfg.model.use_crf


def test_bad_config_fails_at_construction_with_a_clear_error(tmp_path):
    cfg = compose_config(run_overrides(tmp_path, "encoder.hidden_size=-1"))
    with pytest.raises(ValueError, match="hidden_size must be positive"):
        train(cfg)
    cfg = compose_config(run_overrides(tmp_path, "data.scheme=BIOX"))
    with pytest.raises(ValueError, match="scheme must be one of"):
        train(cfg)
    cfg = compose_config(run_overrides(tmp_path, "monitor_mode=up"))
    with pytest.raises(ValueError, match="monitor_mode must be 'max' or 'min'"):
        train(cfg)


# ---------------------------------------------------------------- training runs


@pytest.mark.parametrize("encoder", list(ENCODERS))
def test_fast_dev_run_each_encoder(encoder, tmp_path):
    if encoder.startswith("pretrained") and importlib.util.find_spec("transformers") is None:
        pytest.skip("the pretrained encoder needs the optional `transformers` extra")
    cfg = compose_config(run_overrides(tmp_path, "debug=fast_dev_run", encoder=encoder))
    metrics = train(cfg)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))


def test_fast_dev_run_pos_softmax(tmp_path):
    cfg = compose_config(
        [
            *POS_DATA,
            *TINY,
            *ENCODERS["bilstm"],
            f"run_dir={tmp_path}",
            "head=softmax",
            "debug=fast_dev_run",
        ]
    )
    metrics = train(cfg)
    assert "val/acc" in metrics and "val/f1" not in metrics


def test_overfit_debug_config(tmp_path):
    cfg = compose_config(
        [*POS_DATA, *TINY, *ENCODERS["bilstm"], f"run_dir={tmp_path}", "debug=overfit"]
    )
    metrics = train(cfg)
    assert metrics["train/loss"] < 0.05


def test_training_run_writes_everything(trained):
    run_dir = trained["run_dir"]
    for name in (
        "config.yaml",
        "encoder.json",
        "metrics.json",
        "report.md",
        "learning_curves.png",
        "transitions.png",
        "per_type_f1.png",
        "confusion.png",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "csv/metrics.csv",
    ):
        assert (run_dir / name).is_file(), name
    saved = OmegaConf.load(run_dir / "config.yaml")
    assert saved.run_dir == str(run_dir) and "${" not in (run_dir / "config.yaml").read_text()
    metrics = trained["metrics"]
    assert metrics["val/f1"] > 0.5 and metrics["test/f1"] > 0.5  # it learnt something
    assert metrics["train_tokens_per_s"] > 0 and metrics["test_tokens_per_s"] > 0
    # figures of the run only: not the last step's loss (the progress bar's)
    assert (
        "loss" not in json.loads((run_dir / "metrics.json").read_text()) and "loss" not in metrics
    )
    report = (run_dir / "report.md").read_text()
    assert "| dev |" in report and "| test |" in report and "PER" in report
    # a model card: how to reproduce it, what it is for
    from chaincrf.data.download import sha256_of

    train_file = Path(trained["cfg"].data.train)
    assert f"sha256 {sha256_of(train_file)}" in report and "**seed**: 1" in report
    for line in ("**command**: `chaincrf-train", "**versions**: Python", "torch", "**hardware**"):
        assert line in report
    assert "**intended use**: tagging spans (LOC, MISC, ORG, PER)" in report


def test_eval_from_checkpoint_gives_the_training_figures(trained, tmp_path):
    run_dir, metrics = trained["run_dir"], trained["metrics"]
    output = tmp_path / "eval.json"
    cfg = compose_config(
        [f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}", "split=dev", f"output={output}"],
        name="eval",
    )
    results = evaluate(cfg)
    for key in ("val/f1", "val/precision", "val/recall", "val/acc", "val/f1_PER"):
        assert results[key] == pytest.approx(metrics[key], abs=1e-9), key
    assert json.loads(output.read_text())["val/f1"] == pytest.approx(metrics["val/f1"])
    card = tmp_path / "card"
    cfg = compose_config(
        [f"ckpt_path={run_dir / 'checkpoints' / 'best.ckpt'}", "split=test", f"report={card}"],
        name="eval",
    )
    assert evaluate(cfg)["test/f1"] == pytest.approx(metrics["test/f1"], abs=1e-9)
    # the evaluation's model card, as training writes one
    from chaincrf.data.download import sha256_of

    report = (card / "report.md").read_text()
    assert report.startswith("# chaincrf evaluation report: test")
    assert f"sha256 {sha256_of(run_dir / 'checkpoints' / 'best.ckpt')}" in report
    assert f"sha256 {sha256_of(FIXTURES / 'test.conll')}" in report and "| test |" in report
    assert "**intended use**: tagging spans (LOC, MISC, ORG, PER)" in report


def test_eval_data_overrides_reach_the_data_module(trained, tmp_path):
    ckpt = trained["run_dir"] / "checkpoints" / "best.ckpt"
    cfg = compose_config(
        [f"ckpt_path={ckpt}", "split=dev", "+data_overrides.eval_batch_size=3"], name="eval"
    )
    assert evaluate(cfg)["val/f1"] == pytest.approx(trained["metrics"]["val/f1"], abs=1e-9)
    moved = tmp_path / "moved"
    cfg = compose_config(
        [
            f"ckpt_path={ckpt}",
            "split=dev",
            f"+data_overrides.root={moved}",
            "+data_overrides.dev=dev.conll",
        ],
        name="eval",
    )
    with pytest.raises(Exception, match=f"{moved / 'dev.conll'}: file not found"):
        evaluate(cfg)


def test_eval_needs_a_checkpoint():
    cfg = compose_config([], name="eval")
    with pytest.raises(ValueError, match="'ckpt_path' is required"):
        evaluate(cfg)


def test_predict_cli_raw_text_to_jsonl(trained, tmp_path):
    ckpt = trained["run_dir"] / "checkpoints" / "best.ckpt"
    output = tmp_path / "out" / "tags.jsonl"
    cfg = compose_config(
        [f"ckpt_path={ckpt}", f"input={FIXTURES / 'raw.txt'}", f"output={output}"], name="predict"
    )
    old = os.umask(0o022)
    try:
        predict(cfg)
    finally:
        os.umask(old)
    assert output.stat().st_mode & 0o777 == 0o644  # the umask's, not tempfile's 0o600
    records = [json.loads(line) for line in output.read_text().splitlines()]
    lines = (FIXTURES / "raw.txt").read_text().splitlines()
    assert [r["tokens"] for r in records] == [line.split() for line in lines]  # spaCy agrees
    for line, record in zip(lines, records):
        assert len(record["tags"]) == len(record["confidences"]) == len(record["tokens"])
        assert [line[a:b] for a, b in record["offsets"]] == record["tokens"]
        assert "alternatives" not in record  # top_k=1
        for span in record["spans"]:
            keys = {"type", "start", "end", "text", "confidence", "start_char", "end_char"}
            assert set(span) == keys
            assert span["text"] == " ".join(record["tokens"][span["start"] : span["end"]])
            assert span["text"] == line[span["start_char"] : span["end_char"]]
    assert sorted(p.name for p in output.parent.iterdir()) == ["tags.jsonl"]  # no temporary left


def test_predict_cli_runs_in_the_chosen_or_the_trained_precision(trained, tmp_path):
    """precision=null predicts in the model's training precision (this run's: 32-true);
    precision=bf16-mixed runs the network under bfloat16 autocast (other confidences); a value
    prediction does not take is one line naming the argument."""
    ckpt = trained["run_dir"] / "checkpoints" / "best.ckpt"
    confidences = {}
    for precision in ("null", "32-true", "bf16-mixed"):
        output = tmp_path / f"{precision}.jsonl"
        cfg = compose_config(
            [f"ckpt_path={ckpt}", f"input={FIXTURES / 'raw.txt'}", f"output={output}",
             f"precision={precision}"], name="predict",
        )  # fmt: skip
        predict(cfg)
        records = [json.loads(line) for line in output.read_text().splitlines()]
        confidences[precision] = [r["confidences"] for r in records]
    assert confidences["null"] == confidences["32-true"]
    assert confidences["bf16-mixed"] != confidences["32-true"]
    cfg = compose_config([f"ckpt_path={ckpt}", "precision=64-true"], name="predict")
    with pytest.raises(ValueError, match=r"^precision must be null or one of .*got '64-true'$"):
        predict(cfg)


def test_predict_cli_conll_round_trip(trained, tmp_path):
    ckpt = trained["run_dir"] / "checkpoints" / "best.ckpt"
    output = tmp_path / "dev.out.conll"
    cfg = compose_config(
        [
            f"ckpt_path={ckpt}",
            f"input={FIXTURES / 'dev.conll'}",
            "output_format=conll",
            f"output={output}",
        ],
        name="predict",
    )
    summary = predict(cfg)
    blocks = [b.splitlines() for b in output.read_text().strip().split("\n\n")]
    from chaincrf.data import read_columns

    gold = read_columns(FIXTURES / "dev.conll")
    assert len(blocks) == len(gold) == summary.sentences
    predicted = []
    for block, sentence in zip(blocks, gold):
        rows = [line.split() for line in block]
        assert [r[0] for r in rows] == sentence.tokens
        assert [r[1] for r in rows] == sentence.labels  # gold column kept for conlleval
        predicted.append([r[2] for r in rows])
    # The predictions score exactly as chaincrf-eval scored the dev split.
    from seqeval.metrics import f1_score

    f1 = f1_score([s.labels for s in gold], predicted)
    assert f1 == pytest.approx(trained["metrics"]["val/f1"], abs=1e-6)


def test_predict_never_leaves_half_written_output(trained, tmp_path):
    ckpt = trained["run_dir"] / "checkpoints" / "best.ckpt"
    output = tmp_path / "tags.jsonl"
    output.write_text("previous\n")
    cfg = compose_config(
        [f"ckpt_path={ckpt}", f"input={tmp_path / 'missing.txt'}", f"output={output}"],
        name="predict",
    )
    with pytest.raises(FileNotFoundError, match="input file not found"):
        predict(cfg)
    assert output.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tags.jsonl"]


def test_reloaded_model_predicts_identically(trained, tmp_path):
    ckpt = trained["run_dir"] / "checkpoints" / "best.ckpt"
    sentences = (FIXTURES / "raw.txt").read_text().splitlines()
    first = SequenceTagger.load(ckpt).predict(sentences)
    second = SequenceTagger.load(ckpt).predict(sentences)
    assert [r.to_dict() for r in first] == [r.to_dict() for r in second]
    bundle = export(ckpt, tmp_path / "bundle")
    assert sorted(p.name for p in bundle.iterdir()) == [
        ".chaincrf-export.json",
        "config.json",
        "vocab.json",
        "weights.pt",
    ]
    third = SequenceTagger.load(bundle).predict(sentences)
    assert [r.to_dict() for r in third] == [r.to_dict() for r in first]


def test_export_cli_writes_a_loadable_bundle(trained, tmp_path):
    ckpt = trained["run_dir"] / "checkpoints" / "best.ckpt"
    old = os.umask(0o022)
    try:
        assert export_main([f"ckpt_path={ckpt}", f"output={tmp_path / 'bundle'}"]) == 0
    finally:
        os.umask(old)
    assert (tmp_path / "bundle").stat().st_mode & 0o777 == 0o755  # not tempfile's 0o700
    config = json.loads((tmp_path / "bundle" / "config.json").read_text())
    assert config["hparams"]["labels"] == SequenceTagger.load(ckpt).labels
    state = torch.load(tmp_path / "bundle" / "weights.pt", weights_only=True)
    assert "model.crf.transitions" in state


def test_resume_from_last_checkpoint(trained, tmp_path):
    last = trained["run_dir"] / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=True)
    assert state["epoch"] == 5  # six epochs: 0..5
    cfg = compose_config(
        run_overrides(
            tmp_path,
            "trainer.max_epochs=8",
            "seed=1",
            f"ckpt_path={last}",
            "test=false",
            "report=false",
        )
    )
    train(cfg)
    resumed = torch.load(
        tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    assert resumed["epoch"] == 7 and resumed["global_step"] > state["global_step"]


@pytest.mark.slow
def test_runs_launched_together_get_their_own_directories(tmp_path):
    """Two ``chaincrf-train`` processes started at once (same task, same second) must not share a
    run directory: they would overwrite each other's config, vocabularies and logs."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "CHAINCRF_OUTPUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    overrides = [o for o in run_overrides(tmp_path / "unused") if not o.startswith("run_dir=")]
    command = [sys.executable, "-m", "chaincrf.cli.train", *overrides]
    command += ["debug=fast_dev_run", "task_name=together", "report=false"]
    processes = [
        subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err.decode()[-2000:]
    runs = sorted(p for p in (tmp_path / "together").iterdir() if p.is_dir())
    assert len(runs) == 2, runs
    for run in runs:
        assert (run / "config.yaml").is_file() and (run / "encoder.json").is_file()


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(tmp_path):
    cfg = compose_config(
        run_overrides(
            tmp_path, "trainer=ddp_cpu", "trainer.max_epochs=1", "test=false", "report=false"
        )
    )
    metrics = train(cfg)
    assert "val/f1" in metrics
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_ema_weight_averaging_is_what_dev_test_and_eval_score(tmp_path):
    """averaging=ema: best.ckpt holds the averaged weights (the raw ones beside them, for
    resuming), and the test figures train() reports are those chaincrf-eval reproduces."""
    cfg = compose_config(
        run_overrides(
            tmp_path,
            "trainer.max_epochs=4",
            "seed=1",
            "averaging=ema",
            "callbacks.weight_averaging.decay=0.9",
            "report=false",
        )
    )
    metrics = train(cfg)
    ckpt = tmp_path / "checkpoints" / "best.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    averaged, raw = state["state_dict"], state["current_model_state"]
    name = "model.crf.transitions"
    assert not torch.allclose(averaged[name], raw[name])  # an average, not the last step
    reloaded = SequenceTagger.load(ckpt)
    assert torch.equal(reloaded.state_dict()[name], averaged[name])
    for split, prefix in (("dev", "val"), ("test", "test")):
        results = evaluate(compose_config([f"ckpt_path={ckpt}", f"split={split}"], name="eval"))
        for key in ("f1", "precision", "recall", "acc"):
            assert results[f"{prefix}/{key}"] == pytest.approx(
                metrics[f"{prefix}/{key}"], abs=1e-9
            ), (split, key)


def test_the_confusion_matrix_is_over_the_scored_labels(trained):
    """Spans are scored on the corpus's own labels (IOB1 here): so is the confusion matrix
    (the model trains on BIOES); it counts every test token once."""
    import pytorch_lightning as pl

    from chaincrf.data import TaggingDataModule
    from chaincrf.tagger import SequenceTagger

    tagger = SequenceTagger.load(trained["run_dir"] / "checkpoints" / "best.ckpt")
    assert tagger.tags.scheme == "BIOES" and tagger.tags.original == "IOB1"
    labels = tagger.metrics["val"].confusion.index
    assert list(labels) == tagger.tags.original_labels and not any(
        x.startswith(("E-", "S-")) for x in labels
    )
    datamodule = TaggingDataModule(
        train=str(FIXTURES / "train.conll"),
        test=str(FIXTURES / "test.conll"),
        scheme="BIOES",
        sentence_encoder=tagger.sentence_encoder,
    )
    datamodule.setup("test")
    pl.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False).test(
        tagger, datamodule=datamodule, verbose=False
    )
    confusion = tagger.confusion["test"]
    assert tuple(confusion.shape) == (len(labels), len(labels))
    assert int(confusion.sum()) == sum(len(s) for s in datamodule.sentences["test"])
