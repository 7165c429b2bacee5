"""scripts/conll_documents.py: one sequence per document, same tokens and labels in order."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from chaincrf.data import read_columns

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "conll_documents.py"
FIXTURE = Path(__file__).parent / "fixtures" / "data" / "ner_iob1.txt"


def load_script():
    spec = importlib.util.spec_from_file_location("conll_documents", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_document_becomes_one_sequence(tmp_path):
    target = tmp_path / "out" / "merged.txt"
    assert load_script().merge(FIXTURE, target) == 2
    sentences = read_columns(FIXTURE, label_column=3)
    documents = read_columns(target, label_column=3)
    assert [d.doc for d in documents] == ["1", "2"]
    for document in documents:
        members = [s for s in sentences if s.doc == document.doc]
        assert len(members) > 1
        assert document.tokens == [t for s in members for t in s.tokens]
        assert document.labels == [label for s in members for label in s.labels]
