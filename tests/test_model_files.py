"""Model files are data, never code: crafted checkpoints, bundles and run configs for every entry
point (``SequenceTagger.load``, ``chaincrf-predict``, ``chaincrf-eval``, ``chaincrf-export``,
``chaincrf-train`` resume) must not run anything, and every bad file gets an error naming it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from chaincrf.cli.evaluate import evaluate
from chaincrf.cli.export import export
from chaincrf.cli.predict import predict
from chaincrf.cli.train import train
from chaincrf.files.model_files import ModelFileError
from chaincrf.network.encoders.identity import IdentityEncoder
from chaincrf.predict.bundle import load_predictor
from chaincrf.spec import UntrustedTargetError
from chaincrf.tagger import SequenceTagger
from test_cli import compose_config, export_main, run_overrides

pytestmark = pytest.mark.usefixtures("one_thread")


class TrustedByTheUser(IdentityEncoder):
    """A user's own encoder class: loadable only with an explicit allow_targets."""


class Payload:
    """A pickle payload: unpickling it would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("model_files_run")
    train(compose_config(run_overrides(run_dir, "trainer.max_epochs=1", "seed=1", "report=false")))
    return run_dir


def _crafted_run(run: Path, tmp_path: Path, edit) -> Path:
    """A copy of the run whose best.ckpt hyper-parameters were edited; returns the checkpoint."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    ckpt = copy / "checkpoints" / "best.ckpt"
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    edit(checkpoint["hyper_parameters"])
    torch.save(checkpoint, ckpt)
    return ckpt


def _marker_spec(marker: Path) -> dict:
    return {"_target_": "subprocess.getoutput", "cmd": f"touch {marker}"}


ENTRY_POINTS = ["load", "predict", "eval", "export", "export_main"]


def _call(entry: str, path: Path, tmp_path: Path, caplog=None):
    if entry == "load":
        return SequenceTagger.load(path)
    if entry == "predict":
        text = tmp_path / "in.txt"
        text.write_text("EU rejects German call .\n")
        return predict(
            compose_config(
                [f"ckpt_path={path}", f"input={text}", f"output={tmp_path / 'o.jsonl'}"],
                name="predict",
            )
        )
    if entry == "eval":
        return evaluate(compose_config([f"ckpt_path={path}", "split=dev"], name="eval"))
    if entry == "export":
        return export(path, tmp_path / "bundle")
    code = export_main([f"ckpt_path={path}", f"output={tmp_path / 'bundle'}"])
    if code != 0:
        raise ModelFileError(f"chaincrf-export exited with {code}: {caplog.text if caplog else ''}")
    return code


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize(
    "where",
    ["embeddings.char_encoder", "encoder", "optimizer", "scheduler", "encoder.layers"],
)
def test_crafted_checkpoint_runs_no_code(run, tmp_path, entry, where, caplog):
    marker = tmp_path / "MARKER"

    def edit(hparams):
        spec = _marker_spec(marker)
        if where == "embeddings.char_encoder":
            hparams["embeddings"]["char_encoder"] = spec
        elif where == "encoder.layers":
            hparams["encoder"] = {
                "_target_": "chaincrf.network.encoders.stacked.StackedEncoder",
                "layers": [spec],
            }
        else:
            hparams[where] = spec

    ckpt = _crafted_run(run, tmp_path, edit)
    with pytest.raises((UntrustedTargetError, ModelFileError)) as caught:
        _call(entry, ckpt, tmp_path)
    if entry != "export_main":
        assert "subprocess.getoutput" in str(caught.value) and str(ckpt) in str(caught.value)
    else:
        assert "subprocess.getoutput" in caplog.text
    assert not marker.exists()


@pytest.mark.parametrize("entry", ["load", "predict", "export"])
def test_crafted_bundle_runs_no_code(run, tmp_path, entry):
    marker = tmp_path / "MARKER"
    bundle = export(run / "checkpoints" / "best.ckpt", tmp_path / "good")
    config = json.loads((bundle / "config.json").read_text())
    config["hparams"]["embeddings"]["char_encoder"] = _marker_spec(marker)
    (bundle / "config.json").write_text(json.dumps(config))
    with pytest.raises(UntrustedTargetError, match=r"config\.json.*subprocess\.getoutput"):
        _call(entry, bundle, tmp_path)
    assert not marker.exists()


def test_lightning_instantiator_in_a_checkpoint_is_refused(run, tmp_path):
    marker = tmp_path / "MARKER"
    ckpt = _crafted_run(
        run, tmp_path, lambda h: h.update(_instantiator="subprocess.getoutput", cmd=str(marker))
    )
    with pytest.raises(ModelFileError, match=r"unknown hyper-parameter\(s\) \['_instantiator'"):
        SequenceTagger.load(ckpt)
    assert not marker.exists()


def test_crafted_run_config_beside_the_checkpoint_runs_no_code(run, tmp_path):
    """chaincrf-eval builds the data module from the config.yaml beside the checkpoint."""
    marker = tmp_path / "MARKER"
    ckpt = _crafted_run(run, tmp_path, lambda h: None)
    config_path = ckpt.parents[1] / "config.yaml"
    config = OmegaConf.load(config_path)
    config.data = {"_target_": "subprocess.getoutput", "cmd": f"touch {marker}"}
    OmegaConf.save(config, config_path)
    with pytest.raises(UntrustedTargetError, match=f"{config_path}.*subprocess.getoutput"):
        evaluate(compose_config([f"ckpt_path={ckpt}", "split=dev"], name="eval"))
    assert not marker.exists()


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_pickle_payload_is_refused(run, tmp_path, entry, caplog):
    marker = tmp_path / "MARKER"
    ckpt = _crafted_run(run, tmp_path, lambda h: h.update(labels=Payload(marker)))
    with pytest.raises(ModelFileError, match=r"pickled objects.*Unsupported global"):
        _call(entry, ckpt, tmp_path, caplog)
    assert not marker.exists()


@pytest.mark.parametrize("entry", ["train", "predict", "eval"])
def test_remote_checkpoint_is_refused(run, tmp_path, entry):
    url = "http://127.0.0.1:9/evil.ckpt"  # nothing listens: a fetch would fail differently
    if entry == "train":
        cfg = compose_config(run_overrides(tmp_path / "resume", f"ckpt_path={url}"))
        call = lambda: train(cfg)  # noqa: E731
    elif entry == "predict":
        cfg = compose_config([f"ckpt_path={url}"], name="predict")
        call = lambda: predict(cfg)  # noqa: E731
    else:
        cfg = compose_config([f"ckpt_path={url}"], name="eval")
        call = lambda: evaluate(cfg)  # noqa: E731
    with pytest.raises(ValueError, match="ckpt_path must be a local file; got the URL"):
        call()


def test_resume_loads_without_unpickling(run, tmp_path):
    marker = tmp_path / "MARKER"
    last = tmp_path / "last.ckpt"
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    checkpoint["payload"] = Payload(marker)
    torch.save(checkpoint, last)
    cfg = compose_config(run_overrides(tmp_path / "resumed", f"ckpt_path={last}", "report=false"))
    with pytest.raises(Exception, match=r"(?i)weights.only|unpickl"):
        train(cfg)
    assert not marker.exists()


def test_user_class_loads_only_with_an_explicit_opt_in(run, tmp_path):
    target = f"{__name__}.TrustedByTheUser"
    ckpt = _crafted_run(
        run, tmp_path, lambda h: h.update(encoder={"_target_": target, "_partial_": True})
    )
    # the checkpoint's weights were trained with a BiLSTM: keep only what an identity encoder has
    checkpoint = torch.load(ckpt, weights_only=True)
    tagger = SequenceTagger(**checkpoint["hyper_parameters"])
    checkpoint["state_dict"] = tagger.state_dict()
    torch.save(checkpoint, ckpt)
    with pytest.raises(UntrustedTargetError, match=f"allow_targets=\\['{target}'\\]"):
        SequenceTagger.load(ckpt)
    loaded = SequenceTagger.load(ckpt, allow_targets=[target])
    assert isinstance(loaded.model.encoder, TrustedByTheUser)
    bundle = export(ckpt, tmp_path / "bundle", allow_targets=[target])
    again = [f"ckpt_path={bundle}", f"output={tmp_path / 'again'}"]
    assert export_main(again) == 1  # refused without opt-in
    assert export_main([*again, f"allow_targets=[{target}]"]) == 0


def test_every_shipped_optimizer_and_scheduler_loads(run, tmp_path):
    """The allowlist is not too strict: the configs this project ships all load back."""
    conf = Path(__file__).resolve().parents[1] / "conf"
    for group in ("optimizer", "scheduler"):
        for path in sorted((conf / group).glob("*.yaml")):
            spec = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
            if not spec or "_target_" not in spec:
                continue
            spec = {k: v for k, v in spec.items() if not str(v).startswith("${")}
            ckpt = _crafted_run(
                run,
                tmp_path / f"{group}_{path.stem}",
                lambda h, group=group, spec=spec: h.update({group: spec}),
            )
            assert SequenceTagger.load(ckpt).hparams[group]["_target_"] == spec["_target_"]


# ---------------------------------------------------------------- clear errors for bad files


def test_bundle_with_bad_json_names_the_file_and_line(run, tmp_path):
    bundle = export(run / "checkpoints" / "best.ckpt", tmp_path / "bundle")
    (bundle / "config.json").write_text('{"format": 1,\n "hparams": {,}}')
    with pytest.raises(ModelFileError, match=r"config\.json:2:\d+: invalid JSON"):
        SequenceTagger.load(bundle)
    (bundle / "config.json").write_text("{}")
    with pytest.raises(ModelFileError, match=r"config\.json: has no 'hparams' entry"):
        SequenceTagger.load(bundle)
    (bundle / "config.json").write_text('{"format": 7, "hparams": {}}')
    with pytest.raises(ModelFileError, match="bundle format 7"):
        SequenceTagger.load(bundle)


def test_truncated_or_foreign_checkpoints_name_the_file(run, tmp_path):
    data = (run / "checkpoints" / "best.ckpt").read_bytes()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match=f"{truncated}: cannot be read as a torch file"):
        SequenceTagger.load(truncated)
    text = tmp_path / "notes.txt"  # e.g. the wrong file of a run folder
    text.write_text("EU rejects German call .\n")
    for load in (SequenceTagger.load, load_predictor):
        with pytest.raises(ModelFileError, match=f"{text}: not a checkpoint or bundle") as error:
            load(text)
        assert "starts with 'EU rejects German call" in str(error.value)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(ModelFileError, match="not a training checkpoint"):
        SequenceTagger.load(foreign)
    mismatched = _crafted_run(run, tmp_path, lambda h: h.update(num_words=h["num_words"] + 1))
    with pytest.raises(ModelFileError, match="weights do not fit the model"):
        SequenceTagger.load(mismatched)


def test_unwritable_bundle_folder_is_one_clear_error(run, tmp_path, caplog):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    ckpt = run / "checkpoints" / "best.ckpt"
    assert export_main([f"ckpt_path={ckpt}", f"output={blocker / 'bundle'}"]) == 1
    assert f"cannot write the bundle {blocker / 'bundle'}" in caplog.text


@pytest.mark.slow
def test_failing_run_leaves_no_directory_and_prints_one_line(tmp_path):
    """A run that fails before training (a data file that does not exist) removes the folder
    Hydra made for it, and the user sees one line, not a traceback."""
    import subprocess
    import sys

    overrides = [o for o in run_overrides(tmp_path / "unused") if not o.startswith("run_dir=")]
    overrides = [o for o in overrides if not o.startswith("data.dev=")]
    overrides.append(f"data.dev={tmp_path / 'missing.conll'}")
    env = {**os.environ, "CHAINCRF_OUTPUT": str(tmp_path / "out"), "OMP_NUM_THREADS": "1"}
    env.pop("CHAINCRF_TRACEBACK", None)
    done = subprocess.run(
        [sys.executable, "-m", "chaincrf.cli.train", *overrides, "task_name=fails"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-2000:]
    assert "missing.conll: file not found" in output
    assert "Traceback" not in output
    left = (
        list((tmp_path / "out" / "fails").iterdir())
        if (tmp_path / "out" / "fails").exists()
        else []
    )
    assert left == []
