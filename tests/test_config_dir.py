"""Where the commands find their configs: inside the installed package (``chaincrf/conf``), plus
the user's folder from ``$CHAINCRF_CONFIG_DIR`` (Hydra's ``--config-dir``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import chaincrf
from chaincrf.cli.common import CONFIG_DIR, USER_CONFIG_ENV, config_hints, user_config_args

pytestmark = pytest.mark.slow  # the fast lane (README) leaves this module out

ROOT = Path(__file__).resolve().parents[1]


def test_the_configs_are_inside_the_package_and_are_the_repositorys():
    packaged = Path(chaincrf.__file__).parent / "conf"
    assert Path(CONFIG_DIR) == packaged
    assert packaged.resolve() == (ROOT / "conf").resolve()  # one source: the link
    assert {p.name for p in packaged.iterdir()} >= {"train.yaml", "predict.yaml", "export.yaml"}


def test_the_users_folder_is_added_as_hydras_config_dir(tmp_path, monkeypatch):
    monkeypatch.delenv(USER_CONFIG_ENV, raising=False)
    assert user_config_args([]) == []
    monkeypatch.setenv(USER_CONFIG_ENV, str(tmp_path))
    assert user_config_args(["trainer=cpu"]) == ["--config-dir", str(tmp_path.resolve())]
    assert user_config_args(["--config-dir", "/elsewhere"]) == []  # the command line wins
    assert user_config_args(["-cd", "/elsewhere"]) == []
    monkeypatch.setenv(USER_CONFIG_ENV, str(tmp_path / "missing"))
    with pytest.raises(NotADirectoryError, match=r"CHAINCRF_CONFIG_DIR=.*missing: not a folder"):
        user_config_args([])


@pytest.mark.slow
def test_a_command_composes_the_users_own_option(tmp_path):
    (tmp_path / "trainer").mkdir()
    (tmp_path / "trainer" / "mine.yaml").write_text("max_epochs: 77\n")
    env = {**os.environ, USER_CONFIG_ENV: str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-m", "chaincrf.cli.train", "--cfg", "job", "trainer=mine"],
        capture_output=True, text=True, env=env, cwd=tmp_path, check=True,
    )  # fmt: skip
    assert "max_epochs: 77" in out.stdout


def test_misspelled_keys_and_options_get_did_you_mean_hints():
    hints = config_hints("train", ["trainer.max_epoch=1", "experiment=conll2003", "seed=3"])
    assert any("did you mean experiment=conll2003_ner?" in h for h in hints)
    assert any(
        "did you mean trainer.max_epochs?" in h and "+trainer.max_epoch=1" in h for h in hints
    )
    assert len(hints) == 2  # seed=3 is a key of the config
    assert config_hints("predict", ["ckpt_path=x", "tokenizer=spacy", "+extra=1"]) == []
    assert config_hints("train", ["data.trian=x"]) == [
        "data.trian=x: no key `trian` in `data`; did you mean data.train? (to add a key: "
        "+data.trian=x)"
    ]


def test_the_user_folders_options_are_not_flagged(tmp_path):
    (tmp_path / "trainer").mkdir()
    (tmp_path / "trainer" / "mine.yaml").write_text("max_epochs: 77\n")
    assert config_hints("train", ["--config-dir", str(tmp_path), "trainer=mine"]) == []
    assert config_hints("train", ["trainer=mien"])[0].startswith("trainer=mien: no such option")


@pytest.mark.slow
def test_a_command_with_a_misspelled_key_says_what_was_meant(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "chaincrf.cli.train", "trainer.max_epoch=1"],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 1
    assert "did you mean trainer.max_epochs?" in out.stderr
