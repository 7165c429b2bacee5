"""Readers: column files and CoNLL-U, every error path reported as DataFormatError with file:line."""

import logging
import os
import pickle
import re
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


# --- line ends, non-regular files and line length ----------------------------------------------

CONLLU_LINE = "1\tI\tI\tPRON\tPRP\t_\t0\troot\t_\t_"
CR_REASON = r"carriage return \(\\r\) without a line feed: lines must end in \\n or \\r\\n"


def read_any(fmt: str, path: Path, **options) -> list[Sentence]:
    return (read_columns if fmt == "columns" else read_conllu)(path, **options)


@pytest.mark.parametrize(
    ("fmt", "text"),
    [
        ("columns", "a O\rb O\r\rc O\rd O\r"),
        ("conllu", f"{CONLLU_LINE}\r{CONLLU_LINE}\r\r{CONLLU_LINE}\r"),
    ],
)
def test_carriage_return_only_line_ends_are_refused(tmp_path, fmt, text):
    # Read as one line, this file used to give one sentence of one token (columns).
    path = write(tmp_path, text.encode())
    with pytest.raises(DataFormatError, match=rf"data\.txt:1: {CR_REASON}") as info:
        read_any(fmt, path)
    assert info.value.line == 1
    assert "tr '\\r' '\\n'" in info.value.reason


@pytest.mark.parametrize(
    ("fmt", "text", "line"),
    [
        ("columns", "a O\r\nb\rc O\r\n\r\nd O\r\n", 2),
        ("columns", "a O\nb O\n\nc O\r", 4),
        ("conllu", f"{CONLLU_LINE}\r\n\r\n{CONLLU_LINE}\r\r\n", 3),
    ],
)
def test_a_stray_carriage_return_names_its_line(tmp_path, fmt, text, line):
    path = write(tmp_path, text.encode())
    with pytest.raises(DataFormatError, match=rf"data\.txt:{line}: {CR_REASON}"):
        read_any(fmt, path)


def test_crlf_reads_as_lf(tmp_path):
    lf = f"# newdoc id = d\n{CONLLU_LINE}\n2\tgo\tgo\tVERB\tVB\t_\t1\tx\t_\t_\n\n{CONLLU_LINE}\n"
    crlf = lf.replace("\n", "\r\n")
    for name, fmt in (("a.conllu", "conllu"), ("a.txt", "columns")):
        assert read_any(fmt, write(tmp_path, crlf.encode(), name)) == read_any(
            fmt, write(tmp_path, lf.encode(), "lf-" + name)
        )


def test_unicode_line_separators_stay_inside_a_token(tmp_path):
    # U+2028, U+2029 and NEL (\x85) are line boundaries for str.splitlines but not in a data file.
    path = write(tmp_path, "a\u2028b O\nc O\n\nd\x85e O\nf\u2029g O\n")
    sentences = read_columns(path)
    assert [s.tokens for s in sentences] == [["a\u2028b", "c"], ["d\x85e", "f\u2029g"]]
    assert [s.line for s in sentences] == [1, 4]
    conllu = write(tmp_path, CONLLU_LINE.replace("\tI\tI", "\tI\u2028x\tI") + "\n", "u.conllu")
    assert read_conllu(conllu)[0].tokens == ["I\u2028x"]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("fmt", ["columns", "conllu"])
def test_a_device_is_refused_before_reading(fmt):
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero on this system")
    with pytest.raises(DataFormatError, match=r"^/dev/zero: not a regular file") as info:
        read_any(fmt, Path("/dev/zero"))
    assert info.value.line is None


@pytest.mark.timeout(20)
def test_a_fifo_without_a_writer_is_refused_without_blocking(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this system")
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    with pytest.raises(DataFormatError, match=r"pipe\.txt: not a regular file \(a device, FIFO"):
        read_columns(fifo)


def test_a_symlink_to_a_regular_file_is_read(tmp_path):
    link = tmp_path / "link.txt"
    link.symlink_to(write(tmp_path, "a O\n"))
    assert read_columns(link)[0].tokens == ["a"]


@pytest.mark.parametrize("fmt", ["columns", "conllu"])
def test_a_line_over_max_line_chars_is_refused(tmp_path, fmt):
    long = (
        "x" * 40 + " O"
        if fmt == "columns"
        else CONLLU_LINE.replace("\tI\t", "\t" + "x" * 40 + "\t", 1)
    )
    short = "a O" if fmt == "columns" else CONLLU_LINE
    path = write(tmp_path, f"{short}\r\n{long}\r\n")
    assert len(read_any(fmt, path, max_line_chars=len(long))[0]) == 2  # \r\n not counted
    with pytest.raises(
        DataFormatError,
        match=rf"data\.txt:2: line is {len(long)} characters long; the limit is 30 \(max_line_chars\)",
    ):
        read_any(fmt, path, max_line_chars=30)


def test_the_default_line_limit_is_a_million_characters(tmp_path):
    path = write(tmp_path, "a O\n" + "x" * 1_000_000 + " O\n")
    with pytest.raises(DataFormatError, match=r"data\.txt:2: line is 1000002 characters long"):
        read_columns(path)
    assert read_columns(path, max_line_chars=1_000_002)[0].tokens[1] == "x" * 1_000_000


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "100", None])
def test_max_line_chars_is_validated(tmp_path, bad):
    path = write(tmp_path, "a O\n")
    message = rf"max_line_chars must be a positive integer; got {re.escape(repr(bad))}"
    for read in (read_columns, read_conllu):
        with pytest.raises(ValueError, match=message):
            read(path, max_line_chars=bad)
    for fmt in ("columns", "conllu"):
        with pytest.raises(ValueError, match=message):
            reader_for(fmt, max_line_chars=bad)


def test_reader_for_forwards_max_line_chars(tmp_path):
    path = write(tmp_path, "abcdef O\n")
    with pytest.raises(DataFormatError, match=r"data\.txt:1: line is 8 characters long"):
        reader_for("columns", max_line_chars=5)(path)
    assert reader_for("columns", max_line_chars=8)(path)[0].tokens == ["abcdef"]
