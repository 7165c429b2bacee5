"""Overrides shared by the tests that train on the fixture corpus (``tests/fixtures/tagger``)."""

from __future__ import annotations

from pathlib import Path

CONF = Path(__file__).resolve().parents[1] / "conf"
FIXTURES = Path(__file__).parent / "fixtures" / "tagger"

NER_DATA = [
    "data=custom",
    "data.root=null",
    f"data.train={FIXTURES / 'train.conll'}",
    f"data.dev={FIXTURES / 'dev.conll'}",
    f"data.test={FIXTURES / 'test.conll'}",
    "data.batch_size=8",
]
"""The NER fixture (IOB1, 41 training sentences), batches of 8."""

TINY_MODEL = [
    "embeddings.word_dim=16",
    "embeddings.char_dim=8",
    "embeddings.char_hidden=8",
    "encoder.hidden_size=16",
    "trainer.enable_progress_bar=false",
    "report=false",
]
"""A model of a few thousand parameters, no progress bar, no report."""
