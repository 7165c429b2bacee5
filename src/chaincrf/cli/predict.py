"""``chaincrf-predict``: tag raw text or a CoNLL file with a trained checkpoint, a bundle, or
an installed model package by name (``model=en_ewt_upos``; see :mod:`chaincrf.files.models`).

Examples::

    echo "EU rejects German call to boycott British lamb ." | chaincrf-predict ckpt_path=best.ckpt
    chaincrf-predict ckpt_path=best.ckpt input=news.txt output=news.jsonl
    chaincrf-predict ckpt_path=best.ckpt input=eng.testb input_format=conll output_format=conll output=out.conll

Raw text: one sentence per line, tokenised by ``tokenizer`` (:mod:`chaincrf.predict.tokenizers`):
``spacy`` (the default: spaCy's rule-based English tokenizer, ``call.`` -> ``call`` ``.``) or
``whitespace`` (``str.split()``, the former rule); a blank line is an empty sentence (an empty
JSON record). Lines end at "\n" only (one "\r" before it is dropped): every input line gives
exactly one record, whatever other separators (a lone "\r", "\x0b", "\x0c", "\x1c"-"\x1e",
"\x85", U+2028, U+2029) it holds; both tokenizers treat those as whitespace between tokens.
JSON lines hold ``tokens``, ``tags`` (in the corpus's original scheme), ``confidences``
(marginal probability of each tag), ``spans`` with ``type``, ``start``, ``end`` (token offsets,
end exclusive), ``text``, ``confidence``, ``start_char`` and ``end_char``, and ``offsets``: per
token, ``[start, end]`` character offsets into its line (for raw text; null for column input,
as the spans' ``start_char``/``end_char``). A span's ``text`` is its line's original substring
(raw text) or its tokens joined by spaces (column input). With ``top_k`` > 1 (a CRF model), a
record also holds ``alternatives``: the ``top_k`` best taggings with their probabilities, best
first. CoNLL output has one token per line — ``token gold predicted`` when the input had labels
(ready for conlleval), else ``token predicted`` — and a blank line after each sentence.

Memory is bounded: raw text is read as a stream of lines, tagged ``chunk_size`` sentences at a
time and each chunk's records are written before the next chunk is read, so memory holds one
chunk (its sentences and records) plus one batch's tensors, whatever the input's length. Column
files (conll, conllu) are read whole, then tagged and written chunk by chunk the same way. Output
files are written atomically (complete, or not at all); on stdout each chunk's records are
written as soon as they are done, each record in one piece. The spaCy tokenizer works chunk by
chunk too (the strings it creates for a chunk are freed after it).

Progress: when stderr is a terminal (and the records do not go to that terminal), a progress
display there counts the lines and tokens tagged as chunks finish; at the end one log line gives
the sentences, tokens and tokens per second (wall time of reading, tagging and writing, model
loading excluded).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import re
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

from omegaconf import DictConfig

from chaincrf.cli.common import allow_targets, hydra_main, require, run_cli
from chaincrf.cli.predict_output import (
    PredictSummary,
    counted,
    open_output,
    progress_display,
    show_progress,
    write_output,
)
from chaincrf.extras import require as require_extra
from chaincrf.files.model_files import check_local_path
from chaincrf.predict.streaming import check_top_k_limit
from chaincrf.predict.tokenizers import get_tokenizer

log = logging.getLogger("chaincrf.predict")

MAX_LINE_CHARS = 100_000
"""Default ``max_line_chars`` of raw text input: a hundred thousand characters (a sentence is
rarely over a thousand). The worst such line (up to 100,000 tokens of punctuation) is tokenised
in seconds (:data:`chaincrf.predict.tokenizers.MAX_RUN_CHARS`) and tagged in well under a GB
(measured: ``python3 scripts/reliability.py --only bounded_work``); a longer line is almost
always not a sentence (a file without line breaks, a JSON dump). Raise it for genuine ones."""

_FORMATS = ("auto", "text", "conll", "conllu")
_OUTPUT_FORMATS = ("jsonl", "conll")
_ENGINES = ("auto", "torch", "onnx")


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
) -> tuple[Iterable[Any], list[list[str]] | None]:
    """The sentences to tag: ``(raw lines, token lists or Sentences, gold labels or None)``.

    Raw text is a lazy stream of lines, one sentence each (see :func:`text_lines`; the predictor
    tokenises them); the input file is checked now and read while the stream is consumed. With
    ``feature_columns`` (a model trained with feature columns), column input is read into
    :class:`~chaincrf.data.Sentence` objects carrying those columns, and a column file has gold
    labels only when it has a column after the token and feature columns (the last one).
    """
    source = str(cfg.get("input", "-"))
    fmt = _input_format(cfg)
    if fmt == "text":
        encoding = text_encoding(cfg.get("encoding", "utf-8"))
        if source != "-" and not Path(source).is_file():
            raise FileNotFoundError(f"input file not found: {source}")
        limit = cfg.get("max_line_chars", MAX_LINE_CHARS)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"max_line_chars must be a positive int; got {limit!r}")
        return text_lines(source, encoding, limit), None
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


def text_encoding(encoding: Any) -> str:
    """``encoding`` when it names a Python text codec (``utf-8``, ``latin-1``, ``cp1252``...).

    Raises:
        ValueError: naming the option, for an unknown name or a codec that is not a text
            encoding (``rot13``, ``base64``, ``zlib``...).
    """
    name = str(encoding)
    try:
        "".encode(name)  # LookupError for unknown names and for bytes-to-bytes/str codecs
    except LookupError:
        raise ValueError(
            f"encoding must name a text encoding such as utf-8, latin-1 or cp1252; got {name!r}"
        ) from None
    return name


_UNDECODED = re.compile("[\udc80-\udcff]+")
"""Bytes the decoder could not decode, as ``surrogateescape`` keeps them."""


def check_stdio(cfg: DictConfig) -> None:
    """Fail early, naming the option, when ``input=-`` or ``output=-`` meets a closed stdin or
    stdout (``<&-``, ``>&-``: Python then has ``None`` for the stream).

    Raises:
        OSError: ``input=-: stdin is closed ...`` or ``output=-: stdout is closed ...``.
    """
    if _input_format(cfg) == "text" and str(cfg.get("input", "-")) == "-" and sys.stdin is None:
        raise OSError("input=-: stdin is closed; pipe text in, or pass input=<file>")
    output = cfg.get("output", "-")
    if (output is None or str(output) == "-") and sys.stdout is None:
        raise OSError("output=-: stdout is closed; pass output=<file>")


def text_lines(
    source: str, encoding: str = "utf-8", max_line_chars: int | None = None
) -> Iterator[str]:
    """The lines of a text file, or of stdin for ``"-"``, read lazily and split on "\n" only.

    One "\r" right before the "\n" is dropped; any other character (a lone "\r", "\x0b",
    "\x85", U+2028, ...) stays inside its line, so each line of the input is one item.
    ``max_line_chars`` counts a line's characters without its line end ("\n" or "\r\n").

    Raises:
        ValueError: ``<source>:<line>: ...`` for a line longer than ``max_line_chars``
            characters (read no further than the limit: a file without line breaks never
            fills the memory), and for bytes that ``encoding`` cannot decode (naming the
            bytes and the ``encoding=`` option).
        OSError: for ``"-"`` when stdin is closed.
    """
    where = "stdin" if source == "-" else source
    with contextlib.ExitStack() as stack:
        if source != "-":
            stream: IO[str] = stack.enter_context(
                open(source, encoding=encoding, errors="surrogateescape", newline="\n")
            )
        elif sys.stdin is None:
            raise OSError("input=-: stdin is closed; pipe text in, or pass input=<file>")
        elif getattr(sys.stdin, "buffer", None) is not None:
            # re-decode the bytes: sys.stdin translates a lone "\r" into a line end
            stream = io.TextIOWrapper(
                sys.stdin.buffer, encoding=encoding, errors="surrogateescape", newline="\n"
            )
            stack.callback(stream.detach)  # leave sys.stdin's buffer open
        else:  # a text stream without bytes below it (an embedding application's, tests')
            stream = sys.stdin
        # room for "\r\n": a read without "\n" at this size holds more than max_line_chars
        limit = -1 if max_line_chars is None else max_line_chars + 2
        number = 0
        while line := stream.readline(limit):
            number += 1
            if line.endswith("\n"):
                line = line[:-2] if line.endswith("\r\n") else line[:-1]
            if max_line_chars is not None and len(line) > max_line_chars:
                raise ValueError(
                    f"{where}:{number}: line is longer than "
                    f"{max_line_chars} characters (max_line_chars=...; one sentence per line)"
                )
            if (bad := _UNDECODED.search(line)) is not None:
                raw = bytes(ord(c) - 0xDC00 for c in bad.group()[:4])
                raise ValueError(
                    f"{where}:{number}: bytes {raw!r} cannot be decoded as {encoding} (pass "
                    "encoding=<the text's encoding>, e.g. encoding=latin-1 or encoding=cp1252)"
                )
            yield line


def _column_count(path: Path) -> int:
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            fields = line.split()
            if fields and not fields[0].startswith("-DOCSTART-") and not line.startswith("#"):
                return len(fields)
    return 1


def check_device(device: str, engine: str) -> str:
    """``device=`` checked before anything is read: ``cpu`` (no torch imported for it), or a
    torch device the machine has (``cuda``, ``cuda:1``), for the PyTorch engine.

    Raises:
        ValueError: one line naming ``device`` and what is wrong.
    """
    if device == "cpu":
        return device
    if engine == "onnx":
        raise ValueError(
            f"device={device}: the ONNX engine runs on onnxruntime's CPU provider; use "
            "engine=torch (or leave engine=auto) to tag on the GPU"
        )
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"device must be cpu, cuda or cuda:<index>; got {device!r}") from None
    if parsed.type != "cuda":
        raise ValueError(f"device must be cpu, cuda or cuda:<index>; got {device!r}")
    if not torch.cuda.is_available():
        raise ValueError(f"device={device}: no CUDA device is available on this machine")
    if parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ValueError(
            f"device={device}: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    return device


PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "32", "bf16", "16")
"""``precision=`` values (Lightning's names and their short forms) prediction runs in."""


def check_precision(precision: Any) -> str | None:
    """``precision=`` checked: None (the model's training precision) or one of
    :data:`PRECISIONS`.

    Raises:
        ValueError: one line naming ``precision`` and the values it takes.
    """
    if precision is None:
        return None
    if str(precision) not in PRECISIONS:
        raise ValueError(f"precision must be null or one of {PRECISIONS}; got {precision!r}")
    return str(precision)


def load(ckpt: Any, engine: str, cfg: DictConfig) -> Any:
    """The predictor for ``engine``: ``onnx`` runs an exported folder's ``model.onnx`` with
    onnxruntime (no torch: :class:`~chaincrf.predict.onnx_predictor.OnnxPredictor`), ``torch``
    the PyTorch network of a checkpoint or bundle (torch only), ``auto`` the first when the
    folder was exported with ``format=onnx`` and onnxruntime is installed, else the second.

    Raises:
        ValueError: for ``engine=onnx`` and a path that is not an ONNX export.
        MissingExtra: (an ``ImportError``) for ``engine=onnx`` without onnxruntime.
    """
    import importlib.util

    from chaincrf.files.models import resolve
    from chaincrf.predict.onnx_predictor import OnnxPredictor, is_artefact

    ckpt = resolve(check_local_path(ckpt, "ckpt_path"))  # an installed model's name: its folder
    onnx = is_artefact(ckpt, "onnx")
    if engine == "onnx" and not onnx:
        raise ValueError(
            f"engine=onnx needs a folder written by `chaincrf-export ... format=onnx`; got {ckpt}"
        )
    if engine == "onnx":
        require_extra("onnxruntime", "export", "chaincrf-predict engine=onnx")
    device = str(cfg.get("device", "cpu"))
    if (
        onnx
        and engine != "torch"
        and device == "cpu"
        and importlib.util.find_spec("onnxruntime") is not None
    ):
        return OnnxPredictor(ckpt)
    from chaincrf.predict.bundle import load_predictor

    return load_predictor(ckpt, device, allow_targets(cfg))  # torch only


def warm_up(predictor: Any, items: Iterable[Any], top_k: int) -> Iterable[Any]:
    """Tag the first sentence once, before the clock starts: the k-best kernels compile on
    their first call (seconds), which the tokens per second must not count.

    Returns:
        ``items`` as they were (the first one put back in front).
    """
    iterator = iter(items)
    first = next(iterator, None)
    if first is None:
        return []
    predictor.predict([first], top_k=top_k)
    return itertools.chain([first], iterator)


def model_alias(argv: list[str]) -> list[str]:
    """The command line with ``model=<name or path>`` as ``ckpt_path=<name or path>``: the same
    option under the name users of model packages expect (``model`` alone would be Hydra's
    config group of that name).

    Raises:
        ValueError: when both ``model=`` and ``ckpt_path=`` are given.
    """
    models = [a for a in argv if a.startswith("model=")]
    if models and any(a.startswith("ckpt_path=") for a in argv):
        raise ValueError("pass model= or ckpt_path=, not both (they are the same option)")
    return [f"ckpt_path={a.removeprefix('model=')}" if a in models else a for a in argv]


def predict(cfg: DictConfig) -> PredictSummary:
    """Tag ``cfg.input`` with ``cfg.ckpt_path`` (a path or an installed model's name; ``model=``
    on the command line) and write ``cfg.output``; tests call this.

    Sentences are tagged ``cfg.chunk_size`` at a time and written as each chunk is done (see
    the module docstring for the memory bound); raw text is tokenised by ``cfg.tokenizer``.

    Returns:
        How many sentences (records) and tokens were tagged, and in how many seconds.

    Raises:
        ValueError: for a bad option (``output_format``, ``batch_size``, ``chunk_size``,
            ``top_k``, ``tokenizer``, ...), before the model is loaded; for ``top_k`` > 1 with
            a model without a CRF, before anything is read.
    """
    ckpt = require(
        cfg, "ckpt_path", "pass model=<an installed model's name> or ckpt_path=<a .ckpt or bundle>"
    )
    engine = str(cfg.get("engine", "auto"))
    if engine not in _ENGINES:
        raise ValueError(f"engine must be one of {_ENGINES}; got {engine!r}")
    out_fmt = str(cfg.get("output_format", "jsonl"))
    if out_fmt not in _OUTPUT_FORMATS:
        raise ValueError(f"output_format must be one of {_OUTPUT_FORMATS}; got {out_fmt!r}")
    sizes = {"batch_size": cfg.batch_size, "chunk_size": cfg.chunk_size}  # conf/predict.yaml
    top_k = cfg.get("top_k", 1)
    for name, value in {**sizes, "top_k": top_k}.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be >= 1; got {value!r}")
    check_top_k_limit(top_k)
    tokenizer = get_tokenizer(cfg.get("tokenizer", "spacy"))
    if _input_format(cfg) == "text":
        text_encoding(cfg.get("encoding", "utf-8"))
    check_stdio(cfg)
    check_device(str(cfg.get("device", "cpu")), engine)
    precision = check_precision(cfg.get("precision"))
    predictor = load(ckpt, engine, cfg)
    if precision is not None and hasattr(predictor, "precision"):  # the PyTorch engine's
        predictor.precision = precision
    predictor.tokenizer = tokenizer
    items, gold = read_input(cfg, predictor.sentence_encoder.feature_columns)
    if _input_format(cfg) == "text":
        tokenizer.prepare()  # spaCy's start-up is not tagging time
    if top_k > 1:
        items = warm_up(predictor, items, top_k)
    results = predictor.predict_iter(items, **sizes, top_k=top_k)
    output = cfg.get("output", "-")
    start = time.perf_counter()
    with open_output(output) as stream, progress_display(show_progress(output)) as update:
        summary = write_output(stream, counted(results, sizes["chunk_size"], update), out_fmt, gold)
    summary = replace(summary, seconds=time.perf_counter() - start)
    log.info(
        "tagged %d sentences, %d tokens in %.2f s (%.0f tokens/s)",
        summary.sentences,
        summary.tokens,
        summary.seconds,
        summary.tokens / max(summary.seconds, 1e-9),
    )
    return summary


@hydra_main("predict", argv_hook=model_alias)
def main(cfg: DictConfig) -> None:
    """Entry point of ``chaincrf-predict``."""
    run_cli(predict, cfg)


if __name__ == "__main__":
    main()
