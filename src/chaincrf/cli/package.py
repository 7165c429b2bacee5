"""``chaincrf-package``: a trained model as a pip-installable wheel, found by name once
installed (:mod:`chaincrf.cli.packaging`).

Examples::

    chaincrf-package outputs/ud_ewt_pos/<run>      # dist/en_ewt_upos-0.1.0-py3-none-any.whl
    chaincrf-package source=exported/ner name=my_ner license=MIT attribution="..."
    pip install dist/en_ewt_upos-0.1.0-py3-none-any.whl
    chaincrf-predict model=en_ewt_upos input=sentences.txt

The first argument may be the run, checkpoint or bundle itself (``source=`` is added). A Hydra
CLI like the others (``conf/package.yaml``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from chaincrf.cli.common import allow_targets, hydra_main, require, run_cli
from chaincrf.files.model_files import check_local_path

log = logging.getLogger("chaincrf.package")


def source_first(argv: list[str]) -> list[str]:
    """``source=<first argument>`` when the command line starts with a bare path (no ``=``, not
    an option)."""
    if argv and "=" not in argv[0] and not argv[0].startswith("-"):
        return [f"source={argv[0]}", *argv[1:]]
    return argv


def package_command(cfg: DictConfig) -> Path:
    """``chaincrf-package``: the wheel of ``cfg.source`` written into ``cfg.output``."""
    from chaincrf.cli.packaging import package_model

    source = check_local_path(
        require(cfg, "source", "pass the training run, checkpoint or bundle to package"), "source"
    )
    name = cfg.get("name")
    license_ = cfg.get("license")
    attribution = cfg.get("attribution")
    path = package_model(
        source,
        str(cfg.get("output") or "dist"),
        None if name is None else str(name),
        version=str(cfg.get("version")),
        license=None if license_ is None else str(license_),
        attribution=None if attribution is None else str(attribution),
        allow_targets=allow_targets(cfg),
    )
    log.info(
        "wrote %s (pip install it, then: chaincrf-predict model=%s)", path, path.name.split("-")[0]
    )
    return path


@hydra_main("package", argv_hook=source_first)
def main(cfg: DictConfig) -> None:
    """Entry point of ``chaincrf-package``."""
    run_cli(package_command, cfg)


if __name__ == "__main__":
    main()
