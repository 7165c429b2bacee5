"""Overrides shared by the tests that train on the fixture corpus (``tests/fixtures/tagger``), and
the console lines chaincrf writes."""

from __future__ import annotations

import re
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

CHAINCRF_LINE = re.compile(
    r"\[\d{4}-\d\d-\d\d [\d:,]+\]\[chaincrf(\.\w+)*\]\[(INFO|WARNING)\] -? ?"
    r"(run directory: |data: train |pretrained vectors |model: [\d,]+ parameters|budget: "
    r"|a small training set: "
    r"|epoch \d+(/\d+)?(, step \d+/\d+)?  train loss |best checkpoint: |report: |done in "
    r"|val/score = |no test file |wrote |interrupted)"
)
"""A console line chaincrf writes (its log format, a chaincrf logger, one of its messages); the
continuation of a multi-line message (an indented resume command) counts as part of it."""


def foreign_lines(console: str) -> list[str]:
    """The lines of a command's console that chaincrf did not write (:data:`CHAINCRF_LINE`)."""
    return [
        line
        for line in console.splitlines()
        if line.strip() and not CHAINCRF_LINE.match(line) and not line.startswith("  ")
    ]
