#!/usr/bin/env bash
# The CRF's GPU check (issue 15), one short prepared run for a machine with a CUDA device and
# this project installed (`pip install -e ".[dev,gpu]"`): the Triton kernels' tests (marker gpu)
# compiled for the GPU, not interpreted, on CUDA tensors against the eager kernel on the same
# device; then scripts/bench_crf.py on CUDA against pytorch-crf and torch-struct. Results go to ${OUT:-benchmarks}/crf_gpu.json and
# the console; copy the table into benchmarks/crf_gpu.md with the command and the device.
# Usage: bash scripts/gpu_check.sh   (about 5 minutes on one GPU; BUDGET=0.5 for less;
#        CHAINCRF_DATA=../shared/data adds the training throughput, EPOCHS=2 epochs per run)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks}"
export TRITON_INTERPRET=0
python3 -c "import torch, triton; assert torch.cuda.is_available(), 'no CUDA device'; \
print(torch.__version__, triton.__version__, torch.cuda.get_device_name(0))"
# 1. the same tests as on the CPU, on CUDA tensors (marker gpu): the CRF kernels, then training
#    on 1 GPU (32-true, 16-mixed, bf16-mixed) and torchrun on 2 GPUs when there are 2
python3 -m pytest -q -m gpu tests/test_crf_triton.py tests/test_scale_out.py
# 2. the planner's choice (triton on CUDA) and each kernel forced, against the peers
python3 scripts/bench_crf.py --device cuda --kernels eager triton --budget "${BUDGET:-1.0}" \
    --json "$out/crf_gpu.json"
# 3. training throughput on the GPU(s) with a corpus (CHAINCRF_DATA set): 1 process, then 2
#    under torchrun when there are 2 GPUs (benchmarks/scaling.md)
if [ -n "${CHAINCRF_DATA:-}" ]; then
    procs="1"
    if python3 -c "import sys, torch; sys.exit(torch.cuda.device_count() < 2)"; then procs="1 2"; fi
    python3 scripts/bench_scaling.py --epochs "${EPOCHS:-2}" --procs $procs \
        --json "$out/scaling_gpu.json" -- experiment=conll2003_ner_glove trainer.accelerator=gpu
fi
