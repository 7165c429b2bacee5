#!/usr/bin/env bash
# The GPU check: one prepared run for a machine with a CUDA device (one H200: about 6 minutes, 8 with the tagger),
# everything written to one folder, ${OUT:-gpu_check} (logs, JSON reports).
#
#   bash scripts/gpu_check.sh                 # the project installed (pip install -e ".[dev]")
#   PYTHONPATH=src bash scripts/gpu_check.sh  # or from the source tree, with Hydra, seqeval and
#                                             # the peers (pytorch-crf, torch-struct) importable
#   PREFLIGHT=1 bash scripts/gpu_check.sh     # the same steps, small, on the CPU (below)
#
# 1. the gpu-marked tests compiled for the GPU (not interpreted): the Triton kernels against
#    the eager kernel on CUDA tensors, a training step replayed in a CUDA graph, torch.compile
#    (fullgraph, Inductor) equal to eager;
# 2. scripts/bench_crf_gpu.py: kernel launches and host synchronisations per NLL + backward,
#    NLL + backward and Viterbi against pytorch-crf and torch-struct over B x T x K with
#    every library checked against float64 and each cell's floor, float32 against float64 at
#    T = 512, 4,096 and 10,000, a CUDA-graph training step, torch.compile of chaincrf and of
#    pytorch-crf (mode="reduce-overhead"), and last (so that a timeout cuts it first) the tree
#    kernel against the Triton kernels on few long rows (where tuning.TREE's crossover lies).
# 3. the tagger on the GPU (issue 30): the gpu-marked tagger tests (a run in 32-true, 16-mixed
#    and bf16-mixed whose figures chaincrf-eval reproduces; chaincrf-predict device=cuda; the
#    embedder with either character encoder, eager and compiled, equal to the CPU), then,
#    when CoNLL-2003 is under $CHAINCRF_DATA, scripts/bench_train.py --device cuda with the
#    GPU recipe's padded lengths (training and prediction tokens/s against the plain PyTorch +
#    pytorch-crf loop, GPU utilisation, peak memory).
# Copy the tables into benchmarks/crf_gpu.md and benchmarks/train_gpu.md with the command and
# the device.
#
# What the GPU machines lack (wheels, CoNLL-2003) travels in .carry/: scripts/gpu_carry.sh
# makes it and gives the command to run there.
# PREFLIGHT=1 runs the same steps on the CPU, small: no CUDA asked for, the gpu tests collected
# (they skip), the benchmark's sections on CPU tensors (graph needs CUDA), the tagger benchmark
# on a few batches. Run it in an environment like the machines' before spending device time:
# a fresh Python 3.12 venv with their packages and the wheels on PYTHONPATH (a module the
# machines lack fails here as it would there).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_check}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
status=0
if [ "${PREFLIGHT:-0}" = 1 ]; then
    export TRITON_INTERPRET=1
    device=cpu sections="${SECTIONS:-launches grid long compile scan}" size=(--batch 1 4 --length 32 --tags 9 --scan-cells 1x512)
    train_size=(--batches 3 --rounds 1)
    python3 -c "import torch, triton; print(torch.__version__, triton.__version__, 'preflight on the CPU')" \
        | tee "$out/device.txt" || exit 1
else
    export TRITON_INTERPRET=0
    device=cuda sections="${SECTIONS:-launches grid long graph compile scan}" size=()
    train_size=(--batches 40 --rounds 2)
    python3 -c "import torch, triton; assert torch.cuda.is_available(), 'no CUDA device'; \
print(torch.__version__, triton.__version__, torch.cuda.get_device_name(0))" | tee "$out/device.txt" || exit 1
    nvidia-smi >> "$out/device.txt" 2>&1 || true
fi
timeout "${TEST_SECONDS:-120}" python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_crf_triton.py tests/test_crf_tree.py \
    2>&1 | tee "$out/tests.log" || status=1
timeout "${BENCH_SECONDS:-240}" python3 scripts/bench_crf_gpu.py --json "$out/crf_gpu.json" \
    --device $device --sections $sections "${size[@]}" 2>&1 | tee "$out/crf_gpu.log" || status=1
timeout "${TAGGER_TEST_SECONDS:-75}" python3 -m pytest -q -p no:cacheprovider -m gpu \
    tests/test_scale_out.py tests/test_data_batching.py tests/test_embeddings.py \
    -k "one_gpu or predict_on_the_gpu or waits_for_nothing or pinned_batches or embedder_equals_the_cpus" 2>&1 | tee "$out/tagger_tests.log" || status=1
if [ -f "${CHAINCRF_DATA:-../shared/data}/conll2003/eng.train" ]; then
    # the shipped recipe's shapes (trainer=gpu, conf/trainer/gpu.yaml): batches of 32 x
    # batch_scale 8 sentences padded to a few lengths, prediction in batches of 1,024
    timeout "${TRAIN_BENCH_SECONDS:-60}" python3 scripts/bench_train.py --device $device \
        "${train_size[@]}" --batch-size 256 --eval-batch-size 1024 --length-buckets 16 32 64 128 \
        --json "$out/train_gpu.json" 2>&1 | tee "$out/train_gpu.log" || status=1
fi
exit $status
