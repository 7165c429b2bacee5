"""Model files written before the tagger became a package (issue 16) still load and predict
exactly what they predicted then: a training checkpoint and an exported bundle, made by
``tests/fixtures/model_files/make_model_files.py`` with the old code and committed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chaincrf.tagger import SequenceTagger

HERE = Path(__file__).parent / "fixtures" / "model_files"
EXPECTED = json.loads((HERE / "v1_expected.json").read_text())


@pytest.mark.parametrize("path", ["v1.ckpt", "v1_bundle"])
def test_old_model_files_load_and_predict_as_before(path):
    tagger = SequenceTagger.load(HERE / path)
    got = [tagged.to_dict() for tagged in tagger.predict([s["tokens"] for s in EXPECTED])]
    assert [s["tags"] for s in got] == [s["tags"] for s in EXPECTED]
    keys = ("type", "start", "end", "text", "confidence")  # v1's span fields (offsets came later)
    spans = [[{k: span[k] for k in keys} for span in s["spans"]] for s in got]
    assert spans == [s["spans"] for s in EXPECTED]
    for ours, theirs in zip(got, EXPECTED):
        assert ours["confidences"] == pytest.approx(theirs["confidences"], abs=2e-6)
