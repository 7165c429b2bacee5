#!/usr/bin/env bash
# What scripts/gpu_check.sh needs on a GPU machine beyond the repository, in one ignored folder
# (default .carry/) to carry there: the Python packages the machines lack, as wheels
# (.carry/whl/), and CoNLL-2003 for the tagger benchmark (.carry/data/conll2003, copied from
# $CHAINCRF_DATA or ../shared/data; its licence allows this use, never a commit). Then, there:
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .carry/whl/*.whl
#   PYTHONPATH=/tmp/site:$PWD/src CHAINCRF_DATA=.carry/data OUT=$OUT/gpu_check bash scripts/gpu_check.sh
#
# The machines (Python 3.12, torch 2.11, Triton 3.6) hold Lightning, torchmetrics, numba,
# onnxruntime, rich, matplotlib, scikit-learn, transformers and pytest, but not Hydra and its
# config library, seqeval, or the peers the benchmark compares with. All of these are pure
# Python (py3-none-any); two come only as source and are built here. The pins are releases CI
# tests. About 4 MB in all. Check the folder first with gpu_check.sh's preflight (PREFLIGHT=1,
# on the CPU, in an environment like the machines'; see there).
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-.carry}"
rm -rf "$dest/whl"  # one release of each: two would stop the install there
mkdir -p "$dest/whl"
PY="${PYTHON:-python3}"
binary=(hydra-core==1.3.2 omegaconf==2.3.0 pytorch-crf==0.7.2 torch-struct==0.5)
source_only=(antlr4-python3-runtime==4.9.3 seqeval==1.2.2)  # omegaconf 2.3 pins antlr4 4.9.*
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 -d "$dest/whl" "${binary[@]}"
"$PY" -m pip wheel --quiet --no-deps --no-binary=antlr4-python3-runtime,seqeval -w "$dest/whl" \
    "${source_only[@]}"
data="${CHAINCRF_DATA:-../shared/data}/conll2003"
if [ -f "$data/eng.train" ]; then
    mkdir -p "$dest/data/conll2003"
    cp "$data"/eng.* "$dest/data/conll2003/"
else
    echo "no CoNLL-2003 at $data: gpu_check.sh will skip the tagger benchmark" >&2
fi
du -sh "$dest"/*
