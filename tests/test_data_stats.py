"""chaincrf-data-stats on fixtures."""

import json
from pathlib import Path

from chaincrf.data import read_columns
from chaincrf.data.stats import compute_stats, main

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


def test_main_json(capsys):
    code = main(
        [
            str(FIXTURES / "ner_iob1.txt"),
            str(FIXTURES / "ner_iob1_dev.txt"),
            "--label-column",
            "3",
            "--json",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["sentences"] for r in result] == [4, 2]
    assert result[1]["oov_rate"] > 0


def test_main_tables_for_conllu(capsys):
    assert main([str(FIXTURES / "tiny.conllu")]) == 0
    out = capsys.readouterr().out
    assert "PRON" in out and "sentences" in out


def test_main_reports_data_errors_with_file_and_line(tmp_path, capsys):
    # a path longer than a terminal line, with [brackets] that rich would read as markup
    folder = tmp_path / ("long-folder-name-" * 8)
    folder.mkdir()
    path = folder / "bad[1].txt"
    path.write_text("a O\nb\n")
    assert main([str(path)]) == 1
    assert f"{path}:2: expected 2 columns" in capsys.readouterr().err  # whole, on one line


def test_main_preset_needs_a_root(capsys, monkeypatch):
    monkeypatch.delenv("CHAINCRF_DATA", raising=False)
    assert main(["--preset", "conll2003"]) == 1
    assert "--root" in capsys.readouterr().err
