#!/usr/bin/env bash
# The wheel works anywhere: build it, install it (not editable) into a fresh venv, and from an
# unrelated folder train on the fixture corpus and tag with the checkpoint and with its bundle;
# then package that run as a model wheel (chaincrf-package), install it into the same venv and
# tag by the model's name from yet another folder.
# CI runs this (.ci/run); by hand: bash scripts/check_wheel.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
FIX="$ROOT/tests/fixtures/tagger"

python3 -m pip wheel --quiet --no-deps --wheel-dir "$WORK/dist" "$ROOT"
python3 -m venv "$WORK/venv"
BIN="$WORK/venv/bin"
"$BIN/python" -m pip install --quiet torch==2.13.0
WHEEL=$(ls "$WORK"/dist/chaincrf-*.whl)
"$BIN/python" -m pip install --quiet "$WHEEL[package]"
mkdir "$WORK/elsewhere" && cd "$WORK/elsewhere"

# the installed package, not the checkout, with its configs inside
"$BIN/python" - "$ROOT" <<'PY'
import sys
from pathlib import Path

import chaincrf
from chaincrf.cli.common import CONFIG_DIR

root = Path(sys.argv[1]).resolve()
where = Path(chaincrf.__file__).resolve()
assert root not in where.parents, f"chaincrf imported from the checkout: {where}"
assert (Path(CONFIG_DIR) / "train.yaml").is_file(), f"no configs in {CONFIG_DIR}"
assert root not in Path(CONFIG_DIR).resolve().parents, f"configs from the checkout: {CONFIG_DIR}"
print(f"chaincrf {chaincrf.__version__} from {where.parent}; configs in {CONFIG_DIR}")
PY

DATA="data=custom data.train=$FIX/train.conll data.dev=$FIX/dev.conll"
"$BIN/chaincrf-train" debug=fast_dev_run $DATA
"$BIN/chaincrf-train" $DATA trainer.max_epochs=1 report=false test=false hydra.run.dir=run
"$BIN/chaincrf-export" ckpt_path=run/checkpoints/best.ckpt output=bundle
for model in run/checkpoints/best.ckpt bundle; do
    echo "EU rejects German call to boycott British lamb." \
        | "$BIN/chaincrf-predict" ckpt_path=$model > tagged.jsonl
    "$BIN/python" - <<'PY'
import json

records = [json.loads(line) for line in open("tagged.jsonl", encoding="utf-8")]
assert len(records) == 1, records
assert records[0]["tokens"][:2] == ["EU", "rejects"] and len(records[0]["tags"]) == len(records[0]["tokens"]), records
print("tagged:", list(zip(records[0]["tokens"], records[0]["tags"])))
PY
done

# models by name: the run as a pip-installable model package, installed, found by its name
"$BIN/chaincrf-package" run name=en_fixture_tags output=models license=MIT \
    "attribution='chaincrf test fixture: tests/fixtures/tagger'"
"$BIN/python" -m pip install --quiet --no-deps models/en_fixture_tags-0.1.0-py3-none-any.whl
mkdir "$WORK/another" && cd "$WORK/another"
echo "EU rejects German call to boycott British lamb." \
    | "$BIN/chaincrf-predict" model=en_fixture_tags > tagged.jsonl
"$BIN/python" - <<'PY'
import json

from chaincrf.predict.bundle import load_predictor

records = [json.loads(line) for line in open("tagged.jsonl", encoding="utf-8")]
assert len(records) == 1 and records[0]["tokens"][:2] == ["EU", "rejects"], records
same = load_predictor("en_fixture_tags").predict(["EU rejects German call to boycott British lamb."])
assert records[0]["tags"] == same[0].tags, (records[0]["tags"], same[0].tags)
print("tagged by name:", list(zip(records[0]["tokens"], records[0]["tags"])))
PY
echo "wheel check passed"
