"""The architecture's direction (README "Layout"): data knows no model — importing
``chaincrf.data`` imports no embeddings, encoders, tagger or metrics module, and nothing of the
tagger's side reaches into ``cli/``."""

from __future__ import annotations

import json
import subprocess
import sys

from chaincrf.data.casing import CASING_CLASSES
from chaincrf.embeddings import NUM_CASING


def _new_modules(setup: str, statement: str) -> list[str]:
    code = (
        "import json, sys\n"
        f"{setup}\n"
        "before = set(sys.modules)\n"
        f"{statement}\n"
        "print(json.dumps(sorted(m for m in set(sys.modules) - before if m.startswith('chaincrf'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_data_imports_no_model_module():
    loaded = _new_modules("import chaincrf", "import chaincrf.data")
    assert loaded and all(
        m.startswith("chaincrf.data") or m == "chaincrf.constraints" for m in loaded
    ), loaded


def test_the_tagger_imports_no_cli_module():
    loaded = _new_modules("import chaincrf", "from chaincrf.tagger import SequenceTagger")
    assert "chaincrf.tagger.module" in loaded
    assert not [m for m in loaded if m.startswith("chaincrf.cli")], loaded


def test_the_casing_feature_size_is_the_datas():
    assert len(CASING_CLASSES) == NUM_CASING
