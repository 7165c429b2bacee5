"""Tag schemes: allowed transitions, span reading (seqeval semantics) and conversion."""

import functools
import itertools
import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from seqeval.metrics.sequence_labeling import get_entities

from chaincrf.data.schemes import (
    TagScheme,
    allowed_transitions,
    convert_tags,
    detect_scheme,
    get_spans,
    normalize_scheme,
    split_label,
)

TYPES = ("PER", "LOC")


def labels_of(scheme: str) -> list[str]:
    prefixes = "BIES" if normalize_scheme(scheme) == "BIOES" else "BI"
    return ["O", *(f"{p}-{t}" for t in TYPES for p in prefixes)]


def is_valid(sequence: list[str], scheme: str) -> bool:
    """Textbook validity of a tag sequence, written independently of the module."""
    scheme = normalize_scheme(scheme)
    prev = "O"
    for i, tag in enumerate(sequence):
        p, t = tag[0], tag[2:]
        pp, pt = prev[0], prev[2:]
        if scheme == "BIO" and p == "I" and not (pp in "BI" and pt == t and i > 0):
            return False
        if scheme == "IOB1" and p == "B" and pp != "O" and pt != t:
            return False
        if scheme == "BIOES":
            inside = pp in "BI" and i > 0
            if inside and not (p in "IE" and pt == t):
                return False
            if not inside and p in "IE":
                return False
        prev = tag
    return not (scheme == "BIOES" and sequence and sequence[-1][0] in "BI")


@functools.cache
def _allowed(scheme: str, labels: tuple[str, ...]):
    return allowed_transitions(scheme, list(labels))


def path_allowed(sequence, labels, scheme) -> bool:
    start, end, trans = _allowed(scheme, tuple(labels))
    ids = [labels.index(tag) for tag in sequence]
    ok = bool(start[ids[0]]) and bool(end[ids[-1]])
    return ok and all(bool(trans[i, j]) for i, j in itertools.pairwise(ids))


@pytest.mark.parametrize("scheme", ["IOB1", "BIO", "BIOES"])
def test_allowed_transitions_match_textbook_validity_for_every_short_sequence(scheme):
    labels = labels_of(scheme)
    for length in (1, 2, 3):
        for sequence in itertools.product(labels, repeat=length):
            assert path_allowed(list(sequence), labels, scheme) == is_valid(
                list(sequence), scheme
            ), sequence


def test_allowed_transitions_shapes_dtypes_and_indexing():
    labels = ["O", "B-PER", "I-PER"]
    start, end, trans = allowed_transitions("BIO", labels)
    assert start.shape == (3,) and end.shape == (3,) and trans.shape == (3, 3)
    assert start.dtype == end.dtype == trans.dtype == torch.bool
    # [from, to]: B-PER -> I-PER allowed, O -> I-PER not.
    assert trans[1, 2] and not trans[0, 2]
    assert start.tolist() == [True, True, False]


def test_aliases_and_bilou_prefixes():
    assert normalize_scheme("iob2") == "BIO"
    assert normalize_scheme("BILOU") == normalize_scheme("iobes") == "BIOES"
    bioes = allowed_transitions("BIOES", ["O", "B-X", "I-X", "E-X", "S-X"])
    bilou = allowed_transitions("BILOU", ["O", "B-X", "I-X", "L-X", "U-X"])
    for a, b in zip(bioes, bilou):
        assert torch.equal(a, b)


def test_iob1_allows_b_after_o_as_in_conll2003_but_not_after_another_type():
    labels = ["O", "B-MISC", "I-MISC", "I-PER"]
    start, _, trans = allowed_transitions("IOB1", labels)
    assert trans[0, 1]  # O B-MISC occurs twice in eng.train
    assert start[1]
    assert trans[2, 1]  # I-MISC B-MISC: two touching MISC spans
    assert not trans[3, 1]  # I-PER B-MISC is never written


def test_unknown_scheme_names_it_and_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"scheme must be one of .*BIO.*BIOES.*IOB1.*got 'IOE2'"):
        allowed_transitions("IOE2", ["O"])


@pytest.mark.parametrize(
    ("scheme", "label"),
    [
        ("BIO", "E-PER"),
        ("IOB1", "S-PER"),
        ("BIOES", "X-PER"),
        ("BIO", "NOUN"),
        ("BIO", "B-"),
        ("BIO", "BPER"),
    ],
)
def test_label_that_does_not_fit_the_scheme_is_named(scheme, label):
    with pytest.raises(
        ValueError, match=f"label '{label}' does not fit the {normalize_scheme(scheme)} scheme"
    ):
        allowed_transitions(scheme, ["O", label])


def test_a_string_is_not_a_label_list():
    with pytest.raises(ValueError, match="labels must be a sequence"):
        allowed_transitions("BIO", "O")


def test_split_label_keeps_dashes_in_types():
    assert split_label("B-ARG-1", "BIO") == ("B", "ARG-1")
    assert split_label("U-PER", "BILOU") == ("S", "PER")
    assert split_label("O", "BIOES") == ("O", "")


def test_get_spans_end_is_exclusive():
    assert get_spans(["B-PER", "I-PER", "O", "B-LOC"], "BIO") == [("PER", 0, 2), ("LOC", 3, 4)]
    assert get_spans(["I-PER", "B-PER", "O"], "IOB1") == [("PER", 0, 1), ("PER", 1, 2)]
    assert get_spans(["S-PER", "B-LOC", "E-LOC"], "BIOES") == [("PER", 0, 1), ("LOC", 1, 3)]
    assert get_spans([], "BIO") == []


tag_sequences = st.lists(st.sampled_from(labels_of("BIOES")), min_size=0, max_size=8)


@given(tag_sequences)
def test_get_spans_equals_seqeval_default_mode_even_on_ill_formed_input(tags):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = [(t, s, e + 1) for t, s, e in get_entities(list(tags))]
    assert get_spans(tags, "BIOES") == expected


@given(
    st.sampled_from(["IOB1", "BIO", "BIOES"]),
    st.lists(st.lists(st.integers(0, 4 * len(TYPES)), max_size=7), min_size=1, max_size=5),
    st.sampled_from(["IOB1", "BIO", "BIOES"]),
)
def test_batch_spans_read_each_row_as_get_spans_does(scheme, rows, original):
    """A batch's spans found with tensors (any ids, ill-formed sequences included; garbage off
    the mask) are each row's ``get_spans``, and the original-scheme tags written from them are
    ``to_original``'s."""
    labels = labels_of(scheme)
    tags = TagScheme(labels, scheme, original)
    rows = [[i % len(labels) for i in row] for row in rows]
    T = max(map(len, rows))
    ids = torch.tensor(
        [row + [-1 - i for i in range(T - len(row))] for row in rows], dtype=torch.long
    )
    mask = torch.tensor([[t < len(row) for t in range(T)] for row in rows], dtype=torch.bool)
    ids, mask = ids.reshape(len(rows), T), mask.reshape(len(rows), T)
    found = tags.batch_spans(ids, mask)
    for row, spans in zip(rows, found):
        row_tags = [labels[i] for i in row]
        assert spans == get_spans(row_tags, scheme)
        assert tags.to_original(row_tags, spans) == tags.to_original(row_tags)
    assert TagScheme(["NN", "VB"]).batch_spans(ids % 2, mask) == [[] for _ in rows]


@given(tag_sequences, st.sampled_from(["IOB1", "BIO", "BIOES"]))
def test_conversion_keeps_spans_and_produces_valid_sequences(tags, target):
    converted = convert_tags(tags, "BIOES", target)
    assert len(converted) == len(tags)
    assert get_spans(converted, target) == get_spans(tags, "BIOES")
    assert is_valid(converted, target)
    if converted:
        assert path_allowed(converted, labels_of(target), target)


@given(
    tag_sequences,
    st.sampled_from(["IOB1", "BIO", "BIOES"]),
    st.sampled_from(["IOB1", "BIO", "BIOES"]),
)
def test_round_trip_through_any_scheme_is_identity_on_canonical_input(tags, middle, target):
    canonical = convert_tags(tags, "BIOES", target)
    assert convert_tags(convert_tags(canonical, target, middle), middle, target) == canonical


def test_known_conversions():
    iob1 = ["I-PER", "I-PER", "B-PER", "O", "I-LOC", "O", "B-MISC", "I-MISC"]
    assert convert_tags(iob1, "IOB1", "BIO") == [
        "B-PER",
        "I-PER",
        "B-PER",
        "O",
        "B-LOC",
        "O",
        "B-MISC",
        "I-MISC",
    ]
    assert convert_tags(iob1, "IOB1", "BIOES") == [
        "B-PER",
        "E-PER",
        "S-PER",
        "O",
        "S-LOC",
        "O",
        "B-MISC",
        "E-MISC",
    ]
    # B- after O is not canonical IOB1: written back as I-.
    assert convert_tags(iob1, "IOB1", "IOB1")[6] == "I-MISC"
    assert convert_tags(["B-X", "L-X", "U-X"], "BILOU", "BIO") == ["B-X", "I-X", "B-X"]


def test_convert_rejects_labels_of_another_scheme():
    with pytest.raises(ValueError, match="label 'S-PER' does not fit the BIO scheme"):
        convert_tags(["S-PER"], "BIO", "BIOES")


@pytest.mark.parametrize(
    ("sequences", "expected"),
    [
        ([["I-PER", "O"], ["B-LOC", "I-LOC"]], "IOB1"),
        ([["O", "I-PER"]], "IOB1"),
        ([["B-PER", "I-PER"], ["B-LOC"]], "BIO"),
        ([["B-PER", "E-PER"], ["I-LOC"]], "BIOES"),
        ([["U-PER"]], "BIOES"),
        ([["NOUN", "VERB"]], None),
        ([["O", "O"]], None),
        ([], None),
    ],
)
def test_detect_scheme(sequences, expected):
    assert detect_scheme(sequences) == expected


def test_tag_scheme_is_the_one_object_for_a_tag_set():
    labels = ["O", "B-PER", "I-PER", "E-PER", "S-PER", "B-LOC", "I-LOC", "E-LOC", "S-LOC"]
    tags = TagScheme(labels, "BIOES", "BILOU")  # aliases normalised; BILOU reads as BIOES
    assert tags.scheme == tags.original == "BIOES" and tags.is_span_task
    assert tags.entity_types == ["LOC", "PER"] and tags.original_labels == labels
    iob1 = TagScheme(labels, "bioes", "iob1")
    assert iob1.original_labels == ["O", "I-LOC", "B-LOC", "I-PER", "B-PER"]
    ids = torch.tensor([[1, 3, 0, 4], [8, 0, 0, 0]])
    mask = torch.tensor([[True, True, True, True], [True, False, False, False]])
    assert iob1.decode_batch(ids, mask) == [["B-PER", "E-PER", "O", "S-PER"], ["S-LOC"]]
    assert iob1.decode_batch(ids, mask, original=True) == [
        ["I-PER", "I-PER", "O", "I-PER"],
        ["I-LOC"],
    ]
    assert iob1.to_training(["I-PER", "I-PER", "O", "I-PER"]) == ["B-PER", "E-PER", "O", "S-PER"]
    assert iob1.spans(["B-PER", "E-PER", "O", "S-PER"]) == [("PER", 0, 2), ("PER", 3, 4)]
    start, end, trans = iob1.allowed_transitions()
    assert not start[2] and not end[1] and trans[1, 2] and not trans[1, 6]
    pos = TagScheme(["NOUN", "VERB"])
    assert not pos.is_span_task and pos.allowed_transitions() is None and pos.spans(["NOUN"]) == []
    assert pos.decode([1, 0], original=True) == ["VERB", "NOUN"] and pos.entity_types == []
    with pytest.raises(ValueError, match="needs a training scheme"):
        TagScheme(["O"], None, "BIO")
    with pytest.raises(ValueError, match="scheme must be one of"):
        TagScheme(["O"], "BIOX")
