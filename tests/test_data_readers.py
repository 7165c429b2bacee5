"""Readers: column files and CoNLL-U, every error path reported as DataFormatError with file:line."""

import logging
import pickle
from pathlib import Path

import pytest

from chaincrf.data import DataFormatError, Sentence, read_columns, read_conllu, reader_for

FIXTURES = Path(__file__).parent / "fixtures" / "data"


def write(tmp_path: Path, text: str | bytes, name: str = "data.txt") -> Path:
    path = tmp_path / name
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    return path


def test_read_columns_conll2003_style():
    sentences = read_columns(FIXTURES / "ner_iob1.txt", label_column=3)
    assert [s.tokens for s in sentences] == [
        ["EU", "rejects", "German", "call", "."],
        ["Peter", "Blackburn"],
        ["In", "Paris", "Hilton", "and", "the", "1996", "Atlanta", "Games", "."],
        ["BRUSSELS", "1996-08-22"],
    ]
    assert sentences[0].labels == ["I-ORG", "O", "I-MISC", "O", "O"]
    assert sentences[2].labels[1:3] == ["I-LOC", "B-LOC"]
    # -DOCSTART- lines are dropped; each sentence keeps its document's ordinal.
    assert [s.doc for s in sentences] == ["1", "1", "2", "2"]
    # line of the first token; a whitespace-only line ends a sentence.
    assert [s.line for s in sentences] == [3, 9, 14, 24]


def test_read_columns_other_columns_and_no_labels():
    pos = read_columns(FIXTURES / "ner_iob1.txt", token_column=0, label_column=1)
    assert pos[1].labels == ["NNP", "NNP"]
    raw = read_columns(FIXTURES / "ner_iob1.txt", label_column=None)
    assert raw[1] == Sentence(["Peter", "Blackburn"], [], "1", 9)


def test_hash_lines_are_comments_only_outside_sentences_and_with_another_column_count():
    sentences = read_columns(FIXTURES / "chunk_bio.txt")
    assert [s.tokens for s in sentences] == [
        ["Confidence", "in", "the", "pound", "."],
        ["#", "300", "million"],
        ["He", "reckons", "#"],
    ]
    assert sentences[1].labels == ["B-NP", "I-NP", "I-NP"]
    assert sentences[0].doc is None


def test_tabs_crlf_bom_and_no_final_newline(tmp_path):
    path = write(tmp_path, b"\xef\xbb\xbfNew\tB-LOC\r\nYork\tI-LOC\r\n\r\nhi\tO")
    sentences = read_columns(path)
    assert [(s.tokens, s.labels) for s in sentences] == [
        (["New", "York"], ["B-LOC", "I-LOC"]),
        (["hi"], ["O"]),
    ]


def test_non_ascii_whitespace_stays_inside_a_token(tmp_path):
    path = write(tmp_path, "a\u00a0b O\n")
    assert read_columns(path)[0].tokens == ["a\u00a0b"]


def test_encoding_option(tmp_path):
    sentences = read_columns(FIXTURES / "latin1.tsv", encoding="latin-1")
    assert sentences[0].tokens == ["Zürich", "ist", "schön"]


def test_undecodable_bytes_name_file_line_and_encoding():
    with pytest.raises(
        DataFormatError, match=r"latin1\.tsv:1: bytes .* cannot be decoded as utf-8"
    ) as info:
        read_columns(FIXTURES / "latin1.tsv")
    assert info.value.line == 1
    assert info.value.path.endswith("latin1.tsv")
    assert isinstance(info.value, ValueError)


def test_undecodable_bytes_on_a_later_line(tmp_path):
    path = write(tmp_path, b"a O\nb O\n\nc\xff O\n")
    with pytest.raises(
        DataFormatError, match=r"data\.txt:4: bytes b'\\xff O\\n' cannot be decoded"
    ):
        read_columns(path)


def test_binary_garbage(tmp_path):
    path = write(tmp_path, b"a O\n\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(
        DataFormatError, match=r"data\.txt:2: binary data where utf-8 text was expected"
    ):
        read_columns(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataFormatError, match=r"nope\.txt: file not found") as info:
        read_columns(tmp_path / "nope.txt")
    assert info.value.line is None
    with pytest.raises(DataFormatError, match="expected a file, found a directory"):
        read_conllu(tmp_path)


def test_unknown_encoding(tmp_path):
    with pytest.raises(DataFormatError, match="unknown text encoding 'klingon'"):
        read_columns(write(tmp_path, "a O\n"), encoding="klingon")


def test_wrong_column_count_names_the_line_and_the_reference_line(tmp_path):
    path = write(tmp_path, "EU NNP I-ORG\nrejects VBZ\n")
    with pytest.raises(
        DataFormatError, match=r"data\.txt:2: expected 3 columns \(as on line 1\); got 2"
    ):
        read_columns(path)


def test_empty_token_column(tmp_path):
    path = write(tmp_path, "EU\tI-ORG\n\tO\n")
    with pytest.raises(DataFormatError, match=r"data\.txt:2: .*empty column"):
        read_columns(path)


def test_column_out_of_range(tmp_path):
    path = write(tmp_path, "\n\nEU I-ORG\n")
    with pytest.raises(
        DataFormatError,
        match=r"data\.txt:3: label_column=3 is out of range for a line with 2 columns",
    ):
        read_columns(path, label_column=3)


def test_skip_bad_sentences_counts_them(tmp_path, caplog):
    path = write(tmp_path, "a O\nb O\n\nc O O\nd O\n\ne O\n\nf\n")
    with caplog.at_level(logging.WARNING):
        sentences = read_columns(path, skip_bad_sentences=True)
    assert [s.tokens for s in sentences] == [["a", "b"], ["e"]]
    assert "skipped 2 bad sentence(s)" in caplog.text
    assert "data.txt:4" in caplog.text


def test_data_format_error_pickles():
    error = DataFormatError("x.txt", 3, "bad")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.path, copy.line, str(copy)) == ("x.txt", 3, "x.txt:3: bad")


def test_read_conllu_skips_ranges_and_empty_nodes():
    sentences = read_conllu(FIXTURES / "tiny.conllu")
    assert [s.tokens for s in sentences] == [
        ["I", "do", "n't", "know", "."],
        ["Go", "home"],
        ["New York", "_"],
    ]
    assert sentences[0].labels == ["PRON", "AUX", "PART", "VERB", "PUNCT"]
    assert [s.doc for s in sentences] == ["doc-a", "doc-a", "doc-b"]
    assert [s.line for s in sentences] == [4, 12, 18]


@pytest.mark.parametrize(
    ("column", "expected"),
    [
        ("xpos", ["PRP", "VBP", "RB", "VB", "."]),
        ("DEPREL", ["nsubj", "aux", "advmod", "root", "punct"]),
        (2, ["I", "do", "not", "know", "."]),
    ],
)
def test_read_conllu_label_columns(column, expected):
    assert read_conllu(FIXTURES / "tiny.conllu", label_column=column)[0].labels == expected


def test_read_conllu_unknown_column():
    with pytest.raises(
        ValueError, match=r"label_column must be a CoNLL-U column name .* got 'lemmas'"
    ):
        read_conllu(FIXTURES / "tiny.conllu", label_column="lemmas")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("1\tI\tI\tPRON\tPRP\t_\t0\troot\t_", "expected 10 tab-separated CoNLL-U columns; got 9"),
        ("x\tI\tI\tPRON\tPRP\t_\t0\troot\t_\t_", "expected an integer ID, a range .* got 'x'"),
        ("1\t\tI\tPRON\tPRP\t_\t0\troot\t_\t_", r"empty FORM \(column 2\)"),
        ("1\tI\tI\t\tPRP\t_\t0\troot\t_\t_", r"empty UPOS \(column 4\)"),
    ],
)
def test_read_conllu_errors(tmp_path, line, message):
    path = write(tmp_path, f"# sent_id = 1\n{line}\n", "bad.conllu")
    with pytest.raises(DataFormatError, match=rf"bad\.conllu:2: {message}"):
        read_conllu(path)


def test_read_conllu_skip_bad_sentences(tmp_path, caplog):
    good = "1\tI\tI\tPRON\tPRP\t_\t0\troot\t_\t_\n"
    path = write(tmp_path, good + "\n1\tI\tI\tPRON\n\n" + good, "bad.conllu")
    with caplog.at_level(logging.WARNING):
        assert len(read_conllu(path, skip_bad_sentences=True)) == 2
    assert "skipped 1 bad sentence(s)" in caplog.text


def test_reader_for_validates_format_and_columns():
    with pytest.raises(ValueError, match="format must be 'columns' or 'conllu'; got 'csv'"):
        reader_for("csv")
    with pytest.raises(ValueError, match="label_column must be an integer column index"):
        reader_for("columns", label_column="upos")
    read = reader_for("conllu")
    assert read(FIXTURES / "tiny.conllu")[1].labels == ["VERB", "ADV"]
    pickle.dumps(read)
