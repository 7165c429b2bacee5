"""One builder: :func:`chaincrf.spec.instantiate` against ``hydra.utils.instantiate``, node by node,
over every file in ``conf/`` (each option of each group composed into a full config), and
:func:`chaincrf.spec.build_from_spec`'s factory semantics for plain specs in checkpoints."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import OmegaConf

from chaincrf.network.encoders.bilstm import BiLSTMEncoder
from chaincrf.spec import build_from_spec, instantiate
from test_cli import CONF, NER_DATA, compose_config

GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir())


def _nodes(node, path="cfg"):
    """Every ``_target_`` node of a composed config, with its dotted path."""
    if OmegaConf.is_dict(node):
        if "_target_" in node:
            yield path, node
        for key in node:
            yield from _nodes(node[key], f"{path}.{key}")
    elif OmegaConf.is_list(node):
        for i, item in enumerate(node):
            yield from _nodes(item, f"{path}[{i}]")


def _plain(value):
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _same(ours, hydras, where):
    """The same callable, arguments and nested structure (partials compared field by field;
    Hydra 1.3.8 defers a partial node nested in a partial as a partial-like ``_DeferredTarget``)."""
    if isinstance(hydras, functools.partial) or hasattr(hydras, "keywords"):
        assert isinstance(ours, functools.partial), where
        assert ours.func is hydras.func, where
        assert len(ours.args) == len(hydras.args), where
        for a, b in zip(ours.args, hydras.args):
            _same(a, b, where)
        assert set(ours.keywords) == set(hydras.keywords), where
        for key in hydras.keywords:
            _same(ours.keywords[key], hydras.keywords[key], f"{where}.{key}")
    elif isinstance(hydras, dict) or OmegaConf.is_dict(hydras):
        assert isinstance(ours, dict) and set(ours) == set(hydras), where
        for key in hydras:
            _same(ours[key], hydras[key], f"{where}.{key}")
    elif isinstance(hydras, (list, tuple)) or OmegaConf.is_list(hydras):
        assert isinstance(ours, list) and len(ours) == len(hydras), where
        for i, (a, b) in enumerate(zip(ours, hydras)):
            _same(a, b, f"{where}[{i}]")
    else:
        assert ours == hydras, where


def _configs():
    for group in GROUPS:  # callbacks: each set, and each file of one callback alone
        for path in sorted((CONF / group).glob("*.yaml")):
            yield pytest.param(group, path.stem, id=f"{group}={path.stem}")


@pytest.mark.parametrize(("group", "option"), list(_configs()))
def test_every_config_node_builds_as_hydra_builds_it(group, option, tmp_path):
    cfg = compose_config([*NER_DATA, f"run_dir={tmp_path}", f"{group}={option}"])
    nodes = list(_nodes(cfg))
    assert nodes, f"{group}={option}: no _target_ node composed"
    for where, node in nodes:
        # _partial_ on top of each node: nothing is constructed (a data module, a logger...),
        # the callable and every argument (nested nodes built) are compared
        ours = instantiate(_plain(node), where, _partial_=True)
        theirs = hydra_instantiate(node, _partial_=True)
        _same(ours, theirs, where)


def test_partial_nesting_and_positional_arguments_follow_hydra():
    spec = {
        "_target_": "builtins.dict",
        "inner": {"_target_": "builtins.list", "_args_": [[1, 2]]},
        "maker": {"_target_": "builtins.sorted", "_partial_": True, "reverse": True},
        "plain": [{"_target_": "builtins.abs", "_args_": [-3]}, {"x": 1}],
    }
    ours, theirs = instantiate(spec), hydra_instantiate(OmegaConf.create(spec))
    assert ours["inner"] == [1, 2] == list(theirs["inner"])
    assert ours["maker"]([1, 3, 2]) == [3, 2, 1] == theirs["maker"]([1, 3, 2])
    assert ours["plain"] == [3, {"x": 1}] and _plain(theirs["plain"]) == [3, {"x": 1}]
    assert isinstance(instantiate({**spec, "_partial_": True}), functools.partial)
    assert instantiate(spec, inner=5)["inner"] == 5  # kwargs override the node, as Hydra's


@pytest.mark.parametrize("partial", [True, False])
def test_build_from_spec_treats_a_spec_as_a_factory(partial):
    """Specs in checkpoints (with or without ``_partial_``) get the sizes only data knows."""
    spec = {"_target_": "chaincrf.network.encoders.bilstm.BiLSTMEncoder", "hidden_size": 4}
    if partial:
        spec["_partial_"] = True
    encoder = build_from_spec(spec, "encoder", input_dim=6, not_an_argument=1)
    assert isinstance(encoder, BiLSTMEncoder) and encoder.input_dim == 6
    optimizer = build_from_spec(
        {"_target_": "torch.optim.SGD", "_partial_": partial, "lr": 0.5},
        "optimizer",
        [torch.nn.Parameter(torch.zeros(1))],
    )
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["lr"] == 0.5
    with pytest.raises(TypeError, match="'_target_' key"):
        build_from_spec({"lr": 1}, "optimizer")
    with pytest.raises(ValueError, match="cannot be imported"):
        instantiate({"_target_": "chaincrf.no_such_module.Thing"}, "encoder")


@pytest.mark.parametrize("mode", ["max", "min"])
def test_the_plateau_scheduler_follows_monitor_mode(mode, tmp_path):
    cfg = compose_config(
        [*NER_DATA, f"run_dir={tmp_path}", "scheduler=plateau", f"monitor_mode={mode}"]
    )
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_from_spec(_plain(cfg.scheduler), "scheduler", optimizer)
    assert scheduler.mode == mode


def test_the_default_callbacks_compose_every_callback_file(tmp_path):
    default = compose_config([*NER_DATA, f"run_dir={tmp_path}", "callbacks=default"]).callbacks
    sets = {"default", "minimal"}  # the files that compose their siblings
    assert set(default) == {p.stem for p in (CONF / "callbacks").glob("*.yaml")} - sets


def test_the_default_callbacks_extend_the_minimal_ones(tmp_path):
    minimal = compose_config([*NER_DATA, f"run_dir={tmp_path}", "callbacks=minimal"]).callbacks
    default = compose_config([*NER_DATA, f"run_dir={tmp_path}", "callbacks=default"]).callbacks
    assert set(minimal) < set(default)
    for name in minimal:
        assert default[name] == minimal[name]


def _parameters(target) -> set[str]:
    import inspect

    return set(inspect.signature(target).parameters) - {"self", "kwargs", "args"}


def _keys(group: str, option: str) -> set[str]:
    node = OmegaConf.load(CONF / group / f"{option}.yaml")
    return {key for key in node if key not in ("defaults", "_target_", "_partial_")}


def test_config_keys_and_the_code_agree_both_ways():
    """Each key in conf/ is an argument the code reads, and each argument the code reads from
    configuration has its key (and default) in conf/: one source of each default."""
    from chaincrf.data import TaggingDataModule
    from chaincrf.network.config import TaggerConfig
    from chaincrf.network.embeddings import TokenEmbedder

    passed_by_code = {"sentence_encoder"}  # an object: chaincrf-eval passes the checkpoint's
    assert _keys("data", "base") == _parameters(TaggingDataModule.__init__) - passed_by_code
    filled_by_tagger = {"num_words", "num_chars", "pretrained", "feature_sizes"}
    assert _keys("embeddings", "default") == _parameters(TokenEmbedder.__init__) - filled_by_tagger
    from_other_groups = {"labels", "num_words", "num_chars", "embeddings", "encoder", "optimizer",
                         "scheduler", "monitor", "feature_sizes", "scheme",
                         "original_scheme"}  # fmt: skip
    # the tagger's own keys: conf/train.yaml's model node and the head group's (head=crf)
    model = compose_config([*NER_DATA, "run_dir=."]).model
    assert set(model) == _parameters(TaggerConfig) - from_other_groups
    assert _keys("head", "crf") == _keys("head", "softmax") == {"use_crf", "constrain"}
    for group in ("data", "embeddings", "encoder", "optimizer", "scheduler"):
        for path in sorted((CONF / group).glob("*.yaml")):
            node = compose_config([*NER_DATA, "run_dir=.", f"{group}={path.stem}"])[group]
            target = instantiate(_plain(node), group, _partial_=True).func
            unknown = set(node) - {"_target_", "_partial_"} - _parameters(target)
            assert not unknown, f"{group}={path.stem}: keys {unknown} are no argument of {target}"


CLI_CONFIGS = {
    "train": "train",
    "evaluate": "eval",
    "predict": "predict",
    "data_stats": "data_stats",
    "export": "export",
}


@pytest.mark.parametrize(("module", "config"), CLI_CONFIGS.items())
def test_each_cli_reads_its_config_keys_and_no_other(module, config):
    """The top-level keys a command reads (``cfg.<key>``, ``cfg.get("<key>")``) are in its
    primary config (or are config groups), and each key there is read by the command or used
    by an interpolation: no dead option, no option only the code knows."""
    import re

    import chaincrf.cli

    source = (Path(chaincrf.cli.__file__).parent / f"{module}.py").read_text()
    if module in ("train", "evaluate"):  # both build the data node via cli/common.py
        common = (Path(chaincrf.cli.__file__).parent / "common.py").read_text()
        # its allow_targets(cfg) counts for the commands that call it (below)
        source += re.sub(r"def allow_targets\(.*?\n\n\n", "", common, flags=re.S)
    if module == "train":  # the run's length and step size: cli/budget.py
        source += (Path(chaincrf.cli.__file__).parent / "budget.py").read_text()
    if "run_cli(" in source:  # every command's run_cli reads cfg.verbose (cli/common.py)
        common = (Path(chaincrf.cli.__file__).parent / "common.py").read_text()
        source += re.search(r"def run_cli\(.*?\n\n\n", common, flags=re.S).group(0)
    read = set(re.findall(r"\bcfg\.get\(\"(\w+)\"", source))
    read |= set(re.findall(r"\brequire\(cfg, \"(\w+)\"", source))
    read |= {"allow_targets"} if "allow_targets(cfg)" in source else set()
    read |= set(re.findall(r"\bcfg\.(\w+)\b", source)) - {"get"}
    primary = OmegaConf.load(CONF / f"{config}.yaml")
    keys = set(primary) - {"defaults", "hydra"}
    groups = {p.name for p in CONF.iterdir() if p.is_dir()}
    assert read <= keys | groups, f"{module} reads keys {read - keys - groups} {config}.yaml lacks"
    interpolated = set(
        re.findall(r"\$\{(\w+)", "\n".join(p.read_text() for p in CONF.rglob("*.yaml")))
    )
    unused = keys - read - interpolated
    assert not unused, f"{config}.yaml keys {unused} are read by no code"
