"""chaincrf-data-stats on fixtures."""

import json
from pathlib import Path

import pytest

from chaincrf.cli.data_stats import data_stats
from chaincrf.data import read_columns
from chaincrf.data.stats import compute_stats
from test_cli import compose_config

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def test_compute_stats_counts_and_oov():
    train = read_columns(FIXTURES / "ner_iob1.txt", label_column=3)
    dev = read_columns(FIXTURES / "ner_iob1_dev.txt", label_column=3)
    vocab = {t for s in train for t in s.tokens}
    stats = compute_stats("dev", dev, vocab)
    assert (stats.sentences, stats.tokens, stats.documents, stats.longest, stats.longest_line) == (
        2,
        7,
        1,
        4,
        3,
    )
    assert stats.labels == {"O": 4, "I-PER": 1, "I-LOC": 1, "I-ORG": 1}
    assert stats.oov_rate == 2 / 7  # "visited" and "said"
    assert stats.spans == {"LOC": 1, "ORG": 1, "PER": 1}
    train_stats = compute_stats("train", train)
    assert train_stats.oov_rate is None
    assert train_stats.spans == {"LOC": 3, "MISC": 2, "ORG": 1, "PER": 1}


def _stats(*overrides: str) -> list:
    return data_stats(compose_config(list(overrides), name="data_stats"))


def test_cli_json_for_a_columns_corpus(capsys):
    results = _stats(
        "data=custom",
        "data.root=null",
        f"data.train={FIXTURES / 'ner_iob1.txt'}",
        f"data.dev={FIXTURES / 'ner_iob1_dev.txt'}",
        "data.test=null",
        "data.label_column=3",
        "json=true",
    )
    printed = json.loads(capsys.readouterr().out)
    assert [r["sentences"] for r in printed] == [4, 2] == [r.sentences for r in results]
    assert printed[1]["oov_rate"] > 0 and printed[0]["oov_rate"] is None


def test_cli_tables_for_conllu(capsys):
    tiny = str(FIXTURES / "tiny.conllu")
    _stats("data=ud_ewt", "data.root=null", f"data.train={tiny}", "data.dev=null", "data.test=null")
    out = capsys.readouterr().out
    assert "PRON" in out and "sentences" in out


def test_cli_reports_data_errors_with_file_and_line(tmp_path):
    # a path longer than a terminal line, with [brackets] that rich would read as markup
    folder = tmp_path / ("long-folder-name-" * 8)
    folder.mkdir()
    path = folder / "bad[1].txt"
    path.write_text("a O\nb\n")
    with pytest.raises(ValueError, match=r"bad\[1\]\.txt:2: expected 2 columns"):
        _stats("data=custom", "data.root=null", f"data.train='{path}'", "data.dev=null",
               "data.test=null", "data.label_column=1")  # fmt: skip


def test_cli_names_a_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"missing\.txt: file not found"):
        _stats("data=custom", "data.root=null", f"data.train={tmp_path / 'missing.txt'}",
               "data.dev=null", "data.test=null")  # fmt: skip
