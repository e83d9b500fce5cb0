#!/usr/bin/env bash
# ONE command for a lent GPU machine (torch 2.11+cu130, triton 3.6, nvcc 13.0, H100/H200, no network):
#   bash benchmarks/gpu_check.sh
# Builds the package with its CUDA kernels, runs the GPU test tier, benchmarks every op on the GPU (reference,
# torch.compile(reference), aten where it applies, triton, cuda) and the copy-bandwidth ceiling, and writes
# JSON + Markdown under $OUT (when set) and benchmarks/results/. Budget: under 8 minutes in all.
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=benchmarks/results
DEST=${OUT:-$RESULTS}
mkdir -p "$RESULTS" "$DEST"
export PYTHONUNBUFFERED=1
exec > >(tee "$DEST/gpu_check.log") 2>&1
start=$(date +%s)
step() { echo; echo "=== $* ($(( $(date +%s) - start ))s)"; }
# Every later step gets at most what is left of a 470 s budget, so the whole check ends inside 8 minutes.
BUDGET=470
left() { local l=$(( BUDGET - ($(date +%s) - start) )); [ "$l" -gt "$1" ] && l=$1; [ "$l" -lt 1 ] && l=1; echo "$l"; }

step "device"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"

step "build (CUDA kernels for sm_90; no network: no dependencies, no build isolation)"
export ADADFQ_BUILD_CUDA=1 ADADFQ_CUDA_ARCHS=${ADADFQ_CUDA_ARCHS:-9.0} MAX_JOBS=${MAX_JOBS:-16}
if ! timeout $(left 300) python3 -m pip install -q --no-deps --no-build-isolation -e . ; then
  echo "pip build failed; trying setup.py build_ext --inplace"
  timeout $(left 300) python3 setup.py -q build_ext --inplace || { echo "BUILD FAILED"; exit 1; }
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -m adadfq_fast env

step "GPU test tier (cuda + triton backends vs reference, CUDA graph capture/replay)"
timeout $(left 240) python3 -m pytest -q -x -p no:cacheprovider tests/test_gpu_backends.py tests/test_triton_kernels.py \
  --junitxml="$DEST/gpu_tests.xml" 2>&1 | tail -40

step "bench ops on the GPU (all settings; reference, aten, triton, cuda)"
timeout $(left 120) python3 -m adadfq_fast bench ops --device cuda --repeats 30 --no-progress --no-compile-reference \
  --json "$DEST/bench_ops_gpu.json"

step "copy bandwidth ceiling vs fake-quant forward (64 and 256 MB)"
timeout $(left 90) python3 benchmarks/bench_bandwidth.py --device cuda --sizes-mb 64 256 --json "$DEST/bandwidth_gpu.json"

step "int_conv2d: triton and cuda vs float16 channels_last F.conv2d, ResNet-18 layers at batch 256"
timeout $(left 75) python3 benchmarks/bench_int_conv2d_gpu.py --device cuda --batch 256 --repeats 10 \
  --json "$DEST/bench_int_conv2d_gpu.json"

step "bench step: one game iteration, faithful vs fast (ResNet-20 CIFAR and ResNet-18 224 px, batch 16)"
timeout $(left 120) python3 -m adadfq_fast bench step --device cuda --model resnet20_cifar10 --batch 16 --iters 20 \
  --json "$DEST/bench_step_gpu_resnet20.json"
timeout $(left 150) python3 -m adadfq_fast bench step --device cuda --model resnet18 --batch 16 --iters 10 \
  --json "$DEST/bench_step_gpu_resnet18.json"

step "bench int: integer model (eager + CUDA graph at batch 1) vs float16 channels_last (eager, torch.compile)"
# First the CUDA-graph runner's GPU test (captured vs eager logits bit for bit; at most 30 s), then the benchmark,
# at most 60 s in all. Reduced vs the command's defaults to fit: 10 timed rounds at batch 1 (5 at the large batch);
# ResNet-18 224 px first, throughput at batch 64 (not 256) and without torch.compile (its two compiles take
# longer than this step has); then ResNet-20 CIFAR with whatever is left, batch 256 and torch.compile.
timeout $(left 30) python3 -m pytest -q -x -p no:cacheprovider tests/test_deploy_gpu.py \
  --junitxml="$DEST/gpu_tests_deploy.xml" 2>&1 | tail -15
int_budget=$(left 60); int_start=$(date +%s)
echo "bench int, reduced settings (${int_budget}s in all): 10 rounds; resnet18_imagenet at batch 64 (not 256)" \
  "without torch.compile; resnet20_cifar at batch 256 with torch.compile"
timeout $(( int_budget < 25 ? int_budget : 25 )) python3 -m adadfq_fast bench int --device cuda --no-progress \
  --models resnet18_imagenet --batch 64 --repeats 10 --no-compile \
  --note "gpu_check.sh reduced settings: 10 rounds at batch 1, 5 at batch 64; torch.compile not run for ResNet-18." \
  --json "$DEST/bench_int_gpu_resnet18.json"
int_rem=$(( int_budget - ($(date +%s) - int_start) )); [ "$int_rem" -lt 1 ] && int_rem=1
timeout "$int_rem" python3 -m adadfq_fast bench int --device cuda --no-progress \
  --models resnet20_cifar --batch 256 --repeats 10 \
  --note "gpu_check.sh reduced settings: 10 rounds at batch 1, 5 at batch 256." \
  --json "$DEST/bench_int_gpu_resnet20.json"

step "bench ops with torch.compile(reference), ResNet-18 batch 16 and the large logits (compiles are slow: last)"
timeout $(left 150) python3 -m adadfq_fast bench ops --device cuda --repeats 30 --no-progress --compile-reference \
  --settings resnet18_b16 logits_b256_c1000 --json "$DEST/bench_ops_gpu_compiled.json"

if [ "$DEST" != "$RESULTS" ]; then cp "$DEST"/*.json "$DEST"/*.md "$RESULTS"/ 2>/dev/null || true; fi
step "done; results in $DEST"
