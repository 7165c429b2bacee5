#!/usr/bin/env bash
# The GPU check: one prepared run for a machine with a CUDA device (one H200: about 6 minutes),
# everything written to one folder, ${OUT:-gpu_check} (logs, JSON reports).
#
#   bash scripts/gpu_check.sh                 # the project installed (pip install -e ".[dev]")
#   PYTHONPATH=src bash scripts/gpu_check.sh  # or from the source tree, with the peers
#                                             # (pytorch-crf, torch-struct) importable
#
# 1. the gpu-marked tests compiled for the GPU (not interpreted): the Triton kernels against
#    the eager kernel on CUDA tensors, a training step replayed in a CUDA graph, torch.compile
#    (fullgraph, Inductor) equal to eager;
# 2. scripts/bench_crf_gpu.py: kernel launches and host synchronisations per NLL + backward,
#    NLL + backward and Viterbi against pytorch-crf and torch-struct over B x T x K with
#    every library checked against float64 and each cell's floor, float32 against float64 at
#    T = 512, 4,096 and 10,000, a CUDA-graph training step, torch.compile of chaincrf and of
#    pytorch-crf (mode="reduce-overhead").
# Copy the tables into benchmarks/crf_gpu.md with the command and the device.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_check}"
mkdir -p "$out"
export TRITON_INTERPRET=0 PYTHONUNBUFFERED=1
status=0
python3 -c "import torch, triton; assert torch.cuda.is_available(), 'no CUDA device'; \
print(torch.__version__, triton.__version__, torch.cuda.get_device_name(0))" | tee "$out/device.txt" || exit 1
nvidia-smi >> "$out/device.txt" 2>&1 || true
timeout "${TEST_SECONDS:-150}" python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_crf_triton.py \
    2>&1 | tee "$out/tests.log" || status=1
timeout "${BENCH_SECONDS:-330}" python3 scripts/bench_crf_gpu.py --json "$out/crf_gpu.json" \
    --sections ${SECTIONS:-launches grid long graph compile} 2>&1 | tee "$out/crf_gpu.log" || status=1
exit $status
