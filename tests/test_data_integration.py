"""The readers, scheme conversion and data module on the real corpora (published counts)."""

import itertools
import os
from pathlib import Path

import pytest

from chaincrf.data import TaggingDataModule, read_columns, read_conllu
from chaincrf.data.schemes import allowed_transitions, convert_tags

ROOT = Path(
    os.environ.get("CHAINCRF_DATA")
    or Path(__file__).resolve().parents[1].parent / "shared" / "data"
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not ROOT.is_dir(), reason=f"data root {ROOT} is absent"),
]


@pytest.mark.parametrize(
    ("path", "reader", "sentences", "tokens"),
    [
        ("conll2003/eng.train", read_columns, 14041, 203621),
        ("conll2003/eng.testa", read_columns, 3250, 51362),
        ("conll2003/eng.testb", read_columns, 3453, 46435),
        ("ud_english_ewt/en_ewt-ud-train.conllu", read_conllu, 12544, 204577),
        ("ud_english_ewt/en_ewt-ud-dev.conllu", read_conllu, 2001, 25147),
        ("ud_english_ewt/en_ewt-ud-test.conllu", read_conllu, 2077, 25094),
        ("conll2000/train.txt", read_columns, 8936, 211727),
        ("conll2000/test.txt", read_columns, 2012, 47377),
    ],
)
def test_published_counts(path, reader, sentences, tokens):
    data = reader(ROOT / path)
    assert (len(data), sum(len(s.tokens) for s in data)) == (sentences, tokens)


def test_conll2003_documents_and_ud_tags():
    assert len({s.doc for s in read_columns(ROOT / "conll2003/eng.train")}) == 946
    assert (
        len(
            {
                label
                for s in read_conllu(ROOT / "ud_english_ewt/en_ewt-ud-dev.conllu")
                for label in s.labels
            }
        )
        == 17
    )


@pytest.mark.parametrize(
    ("iob1", "iob2"),
    [("eng.train", "train.txt"), ("eng.testa", "valid.txt"), ("eng.testb", "test.txt")],
)
@pytest.mark.parametrize("column", [2, 3])  # chunk and NER tags
def test_iob1_to_bio_reproduces_the_iob2_files(iob1, iob2, column):
    source = read_columns(ROOT / "conll2003" / iob1, label_column=column)
    target = read_columns(ROOT / "conll2003" / "iob2" / iob2, label_column=column)
    assert len(source) == len(target)
    for a, b in zip(source, target):
        assert a.tokens == b.tokens
        assert convert_tags(a.labels, "IOB1", "BIO") == b.labels


@pytest.mark.parametrize("scheme", ["IOB1", "BIO", "BIOES"])
def test_every_gold_path_obeys_the_constraints(scheme):
    sentences = read_columns(ROOT / "conll2003/eng.train")
    converted = [convert_tags(s.labels, "IOB1", scheme) for s in sentences]
    labels = sorted({label for tags in converted for label in tags})
    start, end, trans = (t.tolist() for t in allowed_transitions(scheme, labels))
    index = {label: i for i, label in enumerate(labels)}
    for tags in converted:
        ids = [index[t] for t in tags]
        assert start[ids[0]] and end[ids[-1]]
        assert all(trans[a][b] for a, b in itertools.pairwise(ids)), tags


def test_conll2000_module_holds_out_a_fixed_tenth_of_train():
    dm = TaggingDataModule(
        root=str(ROOT),
        train="conll2000/train.txt",
        test="conll2000/test.txt",
        label_column=2,
        dev_fraction=0.1,
    )
    dm.setup()
    assert (len(dm.sentences["train"]), len(dm.sentences["dev"]), len(dm.sentences["test"])) == (
        8042,
        894,
        2012,
    )
    assert dm.original_scheme == "BIO" and len(dm.tag_names) == 1 + 4 * 11
