#!/usr/bin/env bash
# The CRF's GPU check (issue 15), one short prepared run for a machine with a CUDA device and
# this project installed (`pip install -e ".[dev,gpu]"`): the Triton kernels' tests (marker gpu)
# compiled for the GPU, not interpreted, on CUDA tensors against the eager kernel on the same
# device; then scripts/bench_crf.py on CUDA against pytorch-crf and torch-struct. Results go to ${OUT:-benchmarks}/crf_gpu.json and
# the console; copy the table into benchmarks/crf_gpu.md with the command and the device.
# Usage: bash scripts/gpu_check.sh   (about 5 minutes on one GPU; BUDGET=0.5 for less)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks}"
export TRITON_INTERPRET=0
python3 -c "import torch, triton; assert torch.cuda.is_available(), 'no CUDA device'; \
print(torch.__version__, triton.__version__, torch.cuda.get_device_name(0))"
# 1. the same tests as on the CPU, on CUDA tensors (marker gpu)
python3 -m pytest -q -m gpu tests/test_crf_triton.py
# 2. the planner's choice (triton on CUDA) and each kernel forced, against the peers
python3 scripts/bench_crf.py --device cuda --kernels eager triton --budget "${BUDGET:-1.0}" \
    --json "$out/crf_gpu.json"
