"""``chaincrf-predict``: tag raw text or a CoNLL file with a trained checkpoint.

Examples::

    echo "EU rejects German call to boycott British lamb ." | chaincrf-predict ckpt_path=best.ckpt
    chaincrf-predict ckpt_path=best.ckpt input=news.txt output=news.jsonl
    chaincrf-predict ckpt_path=best.ckpt input=eng.testb input_format=conll output_format=conll output=out.conll

Raw text: one sentence per line, tokenised by splitting on whitespace (``str.split()``); a blank
line is an empty sentence (an empty JSON record). JSON lines hold ``tokens``, ``tags`` (in the
corpus's original scheme), ``confidences`` (marginal probability of each tag) and ``spans`` with
``type``, ``start``, ``end`` (exclusive), ``text`` and ``confidence``. CoNLL output has one token
per line — ``token gold predicted`` when the input had labels (ready for conlleval), else
``token predicted`` — and a blank line after each sentence. Output files are written atomically:
complete, or not at all.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from chaincrf.cli.common import CONFIG_DIR, atomic_output, require
from chaincrf.tagger import SequenceTagger, TaggedSentence, tokenize

log = logging.getLogger("chaincrf.predict")

_FORMATS = ("auto", "text", "conll", "conllu")
_OUTPUT_FORMATS = ("jsonl", "conll")


def _input_format(cfg: DictConfig) -> str:
    fmt = str(cfg.get("input_format", "auto"))
    if fmt not in _FORMATS:
        raise ValueError(f"input_format must be one of {_FORMATS}; got {fmt!r}")
    if fmt != "auto":
        return fmt
    source = str(cfg.get("input", "-"))
    suffix = Path(source).suffix.lower()
    if suffix == ".conllu":
        return "conllu"
    if (source != "-" and suffix in (".conll", ".conll03", ".bio", ".iob", ".tsv")) or Path(
        source
    ).name.startswith("eng."):
        return "conll"
    return "text"


def read_input(
    cfg: DictConfig, feature_columns: Sequence[int | str] | None = None
) -> tuple[list[Any], list[list[str]] | None]:
    """Read the sentences to tag: ``(token lists or Sentences, gold labels or None)``.

    With ``feature_columns`` (a model trained with feature columns), column input is read into
    :class:`~chaincrf.data.Sentence` objects carrying those columns, and a column file has gold
    labels only when it has a column after the token and feature columns (the last one).
    """
    source = str(cfg.get("input", "-"))
    fmt = _input_format(cfg)
    if fmt == "text":
        if source == "-":
            text = sys.stdin.read()
        else:
            path = Path(source)
            if not path.is_file():
                raise FileNotFoundError(f"input file not found: {path}")
            text = path.read_text(encoding=str(cfg.get("encoding", "utf-8")))
        return [tokenize(line) for line in text.splitlines()], None
    if source == "-":
        raise ValueError(f"input_format={fmt} needs a file: pass input=<path>")
    from chaincrf.data.readers import read_columns, read_conllu

    features = list(feature_columns or [])
    if fmt == "conllu":
        sentences = read_conllu(source, feature_columns=features)
        has_gold = True
    else:
        token_column = int(cfg.get("token_column", 0))
        count = _column_count(Path(source))
        used = [c % count if -count <= c < count else c for c in [token_column, *features]]
        has_gold = count > max(used) + 1
        sentences = read_columns(
            source,
            token_column=token_column,
            label_column=-1 if has_gold else None,
            feature_columns=features,
        )
    labels = [list(s.labels) for s in sentences]
    items = sentences if features else [list(s.tokens) for s in sentences]
    return items, labels if has_gold else None


def _column_count(path: Path) -> int:
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            fields = line.split()
            if fields and not fields[0].startswith("-DOCSTART-") and not line.startswith("#"):
                return len(fields)
    return 1


def write_output(
    stream: object,
    results: Sequence[TaggedSentence],
    fmt: str,
    gold: Sequence[Sequence[str]] | None = None,
) -> None:
    """Write tagged sentences as JSON lines or CoNLL columns to a text stream."""
    if fmt == "jsonl":
        for tagged in results:
            stream.write(json.dumps(tagged.to_dict(), ensure_ascii=False) + "\n")
        return
    for i, tagged in enumerate(results):
        if not tagged.tokens:
            continue
        for j, (token, tag) in enumerate(zip(tagged.tokens, tagged.tags)):
            columns = [token, gold[i][j], tag] if gold is not None else [token, tag]
            stream.write(" ".join(columns) + "\n")
        stream.write("\n")


def predict(cfg: DictConfig) -> list[TaggedSentence]:
    """Tag ``cfg.input`` with ``cfg.ckpt_path`` and write ``cfg.output``; tests call this.

    Returns:
        The tagged sentences, in input order.
    """
    ckpt = Path(require(cfg, "ckpt_path", "pass ckpt_path=<path to a .ckpt>"))
    out_fmt = str(cfg.get("output_format", "jsonl"))
    if out_fmt not in _OUTPUT_FORMATS:
        raise ValueError(f"output_format must be one of {_OUTPUT_FORMATS}; got {out_fmt!r}")
    batch_size = int(cfg.get("batch_size", 128))
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    tagger = SequenceTagger.load(ckpt)
    items, gold = read_input(cfg, tagger.sentence_encoder.feature_columns)
    results = tagger.predict(items, batch_size=batch_size)
    with atomic_output(cfg.get("output", "-")) as stream:
        write_output(stream, results, out_fmt, gold)
    log.info("tagged %d sentences, %d tokens", len(results), sum(len(r.tokens) for r in results))
    return results


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="predict")
def main(cfg: DictConfig) -> None:
    """Entry point of ``chaincrf-predict``."""
    predict(cfg)


if __name__ == "__main__":
    main()
