#!/usr/bin/env bash
# ONE command for a lent GPU machine (torch 2.11+cu130, triton 3.6, nvcc 13.0, H100/H200, no network):
#   bash benchmarks/gpu_check.sh
# Builds the package with its CUDA kernels, then measures and checks, most wanted first, each step capped by what
# is left of the budget (GPU_CHECK_BUDGET seconds, default 420) so a slow or failing step never costs the later
# ones their turn:
#   1. bench step, ResNet-20 CIFAR batch 16: faithful vs fast vs fast in a CUDA graph (issue 4's 5x target) and
#      the full-run estimate (400 x 200 iterations);
#   2. bench int: the integer model vs float16 channels_last eager, ResNet-18 224 px and ResNet-20 at batch 256
#      and batch 1 (CUDA graph), every int_conv2d backend (issue 6's 1.3x target);
#   3. int_conv2d per ResNet-18 layer: triton and cuda vs cuDNN float16, bit-exactness checked first;
#   4. the GPU test tier (cuda + triton backends vs reference, CUDA graph capture, integer model), in parallel
#      workers when pytest-xdist is there (the Triton compiles are CPU-bound);
#   5. bench step ResNet-18 224 px batch 16; 6. bench ops on the GPU; 7. torch.compile baselines for ResNet-20;
#   8. (not by default) ncu on the Triton int_conv2d; 9. (not by default, ~7 min) a whole 400 x 200 CIFAR run.
# GPU_CHECK_STEPS picks steps and their order (default "1 2 3 4 5 6 7"); GPU_TESTS replaces step 4's test list
# (pytest arguments).
# Everything lands in $GPU_CHECK_DIR (default /tmp/adadfq_gpu_check) and is copied to benchmarks/results/; where
# $OUT is set (the device tool), $OUT gets gpu_check.log and gpu_results.tar.gz, repacked after every step (the
# tool brings back at most 8 files).
# pytorchcv (ResNet-18) is not on the lent machines: a copy of its package in .gpu_deps/ (git-ignored; carried
# by the device tool) is put on PYTHONPATH when present.
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=benchmarks/results
WORK=${GPU_CHECK_DIR:-/tmp/adadfq_gpu_check}
rm -rf "$WORK"
mkdir -p "$RESULTS" "$WORK"
export PYTHONUNBUFFERED=1
if [ -n "${OUT:-}" ]; then
  exec > >(tee "$WORK/gpu_check.log" "$OUT/gpu_check.log") 2>&1
else
  exec > >(tee "$WORK/gpu_check.log") 2>&1
fi
[ -d .gpu_deps ] && export PYTHONPATH=$PWD/.gpu_deps${PYTHONPATH:+:$PYTHONPATH}
start=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET:-420}
pack() {
  if [ -n "${OUT:-}" ]; then tar -czf "$OUT/gpu_results.tar.gz.tmp" -C "$WORK" . && mv "$OUT/gpu_results.tar.gz.tmp" "$OUT/gpu_results.tar.gz"; fi
}
step() { pack; echo; echo "=== $* ($(( $(date +%s) - start ))s)"; }
# Seconds a step may take: at most $1, and never more than what is left of the budget.
left() { local l=$(( BUDGET - ($(date +%s) - start) )); [ "$l" -gt "$1" ] && l=$1; [ "$l" -lt 1 ] && l=1; echo "$l"; }

step "device"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
python3 -c "import pytorchcv; print('pytorchcv', pytorchcv.__file__)" || echo "pytorchcv missing: ResNet-18 steps will fail"

step "build (CUDA kernels for sm_90; no network: no dependencies, no build isolation)"
export ADADFQ_CUDA_ARCHS=${ADADFQ_CUDA_ARCHS:-9.0} MAX_JOBS=${MAX_JOBS:-16}
if ! ADADFQ_BUILD_CUDA=1 timeout $(left 200) python3 -m pip install -q --no-deps --no-build-isolation -e . ; then
  echo "CUDA BUILD FAILED: building without the CUDA kernels (the triton backend still runs on the GPU)"
  ADADFQ_BUILD_CUDA=0 timeout $(left 120) python3 -m pip install -q --no-deps --no-build-isolation -e . \
    || { echo "BUILD FAILED"; pack; exit 1; }
fi
python3 -m adadfq_fast env

run_1() {
  step "1. bench step: ResNet-20 CIFAR batch 16, faithful vs fast vs fast + CUDA graph"
  timeout $(left 70) python3 -m adadfq_fast bench step --device cuda --model resnet20_cifar10 --batch 16 --iters 20 \
    --json "$WORK/bench_step_gpu_resnet20.json"
}

run_2() {
  step "2. bench int: integer model vs float16 channels_last, ResNet-18 224 px and ResNet-20, batch 256 and 1"
  timeout $(left 120) python3 -m adadfq_fast bench int --device cuda --no-progress \
    --models resnet18_imagenet resnet20_cifar --batch 256 --repeats 10 --no-compile \
    --note "gpu_check.sh: 10 rounds at batch 1, 5 at batch 256; torch.compile in a later step." \
    --json "$WORK/bench_int_gpu.json"
}

run_3() {
  step "3. int_conv2d per ResNet-18 layer at batch 256: triton and cuda vs float16 channels_last F.conv2d"
  timeout $(left 90) python3 benchmarks/bench_int_conv2d_gpu.py --device cuda --batch 256 --repeats 10 \
    --json "$WORK/bench_int_conv2d_gpu.json"
}

run_4() {
  step "4. GPU test tier"
  local par=""
  python3 -c "import xdist" 2>/dev/null && par="-n 8"
  python3 -c "import pytest_timeout" 2>/dev/null && par="$par --timeout 100"
  # shellcheck disable=SC2086
  timeout $(left 130) python3 -m pytest -q $par -p no:cacheprovider -rfEP ${GPU_TESTS:-$ALL_GPU_TESTS} \
    --junitxml="$WORK/gpu_tests.xml" 2>&1 | grep -v "^\[gw" | tail -80
}

run_5() {
  step "5. bench step: ResNet-18 224 px batch 16"
  timeout $(left 70) python3 -m adadfq_fast bench step --device cuda --model resnet18 --batch 16 --iters 10 \
    --json "$WORK/bench_step_gpu_resnet18.json"
}

run_6() {
  step "6. bench ops on the GPU (reference, aten, triton, cuda)"
  timeout $(left 60) python3 -m adadfq_fast bench ops --device cuda --repeats 20 --no-progress --no-compile-reference \
    --json "$WORK/bench_ops_gpu.json"
}

run_7() {
  step "7. torch.compile baseline: ResNet-20 CIFAR, integer vs float16 channels_last compiled"
  timeout $(left 90) python3 -m adadfq_fast bench int --device cuda --no-progress --models resnet20_cifar \
    --batch 256 --repeats 10 --note "gpu_check.sh step 7: with torch.compile." \
    --json "$WORK/bench_int_gpu_compiled.json"
}

run_8() {
  step "8. ncu on the Triton int_conv2d (ResNet-18 l1.conv3x3 and l2.proj1x1/2, batch 256): where its time goes"
  if ! command -v ncu >/dev/null; then echo "ncu not on PATH: skipped"; return; fi
  for layer in l1.conv3x3 l2.proj1x1/2; do
    ADADFQ_TRITON_TUNE=0 timeout $(left 45) ncu --clock-control none -k regex:int_conv2d_gemm --launch-skip 2 \
      --launch-count 1 --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
      python3 benchmarks/bench_int_conv2d_gpu.py --device cuda --backends triton --profile "$layer" \
      > "$WORK/ncu_int_conv2d_${layer//\//_}.txt" 2>&1
    tail -60 "$WORK/ncu_int_conv2d_${layer//\//_}.txt"
  done
}

run_9() {
  # Not in the default list: about 6-8 minutes on an H100/H200; give it a call of its own with
  # GPU_CHECK_STEPS=9 GPU_CHECK_BUDGET=560. A random teacher (no pretrained weights reach the GPU machines) and 10k
  # random CIFAR-shaped test images (no CIFAR either): the accuracy means nothing, the time is the real cost of the
  # CIFAR-10 ResNet-20 preset, 400 epochs x 200 iterations with an evaluation after every epoch.
  step "9. full run: CIFAR-10 ResNet-20 W4A4 preset, 400 x 200 iterations, fast + CUDA graph, 10k-image evaluations"
  timeout $(left 560) python3 -m adadfq_fast train --config cifar10_resnet20_w4a4 --random-teacher \
    --synthetic-eval 10000 --no-progress device=cuda capture=cuda_graph \
    output_dir="$WORK/full_run" 2>&1 | tail -5
  cp "$WORK/full_run/cifar10_resnet20_w4a4/summary.json" "$WORK/full_run_summary.json" 2>/dev/null || true
}

ALL_GPU_TESTS="tests/test_gpu_backends.py tests/test_triton_kernels.py tests/test_triton_int_conv2d.py \
  tests/test_triton_quantize_codes.py tests/test_deploy_gpu.py tests/test_cuda_graph_step.py"
for n in ${GPU_CHECK_STEPS:-1 2 3 4 5 6 7}; do "run_$n"; done

cp "$WORK"/*.json "$WORK"/*.md "$WORK"/*.xml "$WORK"/*.txt "$WORK"/gpu_check.log "$RESULTS"/ 2>/dev/null || true
step "done; results in $WORK and $RESULTS"
pack
