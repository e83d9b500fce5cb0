#!/usr/bin/env bash
# ONE command for a lent GPU machine (torch 2.11+cu130, triton 3.6, nvcc 13.0, H100/H200, no network):
#   bash benchmarks/gpu_check.sh
# Builds the package with its CUDA kernels, then runs the stages named in GPU_CHECK_STEPS, in order. Each stage has
# its own timeout, capped by what is left of the whole budget (GPU_CHECK_BUDGET seconds, default 450), logs its exit
# status and duration, and never stops the later ones: a failing or slow stage costs only its own time. At the end
# (also after a timeout of a stage) summary.md collects the stage table and the headline numbers.
#
# Stages (default "sweep models"; with the build about 7.5 minutes on an H200):
#   sweep   per-layer sweep of every int_conv2d backend and triton_tc tile on ResNet-18 (224 px) and ResNet-20
#           layers at batches 256 and 1, bit-exact first, against cuDNN fp16 (benchmarks/sweep_int_conv2d_gpu.py);
#           writes the measured policy, installed as adadfq_fast/policies/int_conv2d_sm90.json so that `auto`
#           picks per layer from it in the later stages (and in the package, once committed);
#   models  whole models (ResNet-20 first: its batch-1 target is quick to measure): integer (auto = the measured
#           policy, and each backend) vs float16 channels_last eager,
#           replayed from a CUDA graph (batch 1) and torch.compile (batch 256, ResNet-18), batches 256 and 1;
#   tests   the GPU tests of the new kernel and policy (tests/test_triton_int_conv2d_tc.py and others);
#   9       the full CIFAR-10 ResNet-20 W4A4 run (400 x 200 iterations + 400 evaluations of 10k synthetic images,
#           random teacher: the time is real, the accuracy is not); about 6-7 minutes on its own: run it in a call
#           of its own, GPU_CHECK_STEPS=9 (with the build that call takes about 8 minutes). Where it is cut short,
#           the summary gives its epochs done and an estimate from them, marked as such;
#   1..8    the stages of the earlier checks (bench step, GPU test tier, bench ops, ncu, ...), see run_N below.
# SWEEP_BACKENDS (default "cuda triton triton_tc") and SWEEP_REPEATS (7) trim the sweep.
# Results: $GPU_CHECK_RESULTS (default benchmarks/results/gpu_h200/run4), also packed into $OUT/gpu_results.tar.gz
# after every stage when $OUT is set (the device tool brings back at most 8 files), with $OUT/gpu_check.log.
# pytorchcv (ResNet-18) is not on the lent machines: a copy of its package in .gpu_deps/ (git-ignored; carried by the
# device tool) is put on PYTHONPATH when present.
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=${GPU_CHECK_RESULTS:-benchmarks/results/gpu_h200/run4}
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
export PYTHONUNBUFFERED=1
if [ -n "${OUT:-}" ]; then
  exec > >(tee "$RESULTS/gpu_check.log" "$OUT/gpu_check.log") 2>&1
else
  exec > >(tee "$RESULTS/gpu_check.log") 2>&1
fi
[ -d .gpu_deps ] && export PYTHONPATH=$PWD/.gpu_deps${PYTHONPATH:+:$PYTHONPATH}
start=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET:-450}
STAGES="$RESULTS/stages.tsv"
printf 'stage\texit\tseconds\tlimit\n' > "$STAGES"
pack() {
  if [ -n "${OUT:-}" ]; then
    tar -czf "$OUT/gpu_results.tar.gz.tmp" -C "$RESULTS" . && mv "$OUT/gpu_results.tar.gz.tmp" "$OUT/gpu_results.tar.gz"
  fi
}
# Seconds a stage may take: at most $1, and never more than what is left of the budget (at least 1).
left() { local l=$(( BUDGET - ($(date +%s) - start) )); [ "$l" -gt "$1" ] && l=$1; [ "$l" -lt 1 ] && l=1; echo "$l"; }
# stage NAME MAX_SECONDS FUNCTION: run FUNCTION under a timeout of $(left MAX), record exit status and duration.
stage() {
  local name=$1 max=$2 fn=$3 t0 rc limit
  limit=$(left "$max")
  echo; echo "=== $name (at $(( $(date +%s) - start ))s, limit ${limit}s)"
  t0=$(date +%s)
  LIMIT=$limit "$fn"
  rc=$?
  [ "$rc" -eq 124 ] && echo "STAGE $name TIMED OUT after ${limit}s"
  [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && echo "STAGE $name FAILED (exit $rc)"
  printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" "$limit" >> "$STAGES"
  summary
  pack
}
summary() { python3 benchmarks/gpu_check_summary.py "$RESULTS" > "$RESULTS/summary.md" 2>&1 || true; }

echo "=== device"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
python3 -c "import pytorchcv; print('pytorchcv', pytorchcv.__file__)" || echo "pytorchcv missing: ResNet-18 stages will fail"

do_build() {
  export ADADFQ_CUDA_ARCHS=${ADADFQ_CUDA_ARCHS:-9.0} MAX_JOBS=${MAX_JOBS:-16}
  if ! ADADFQ_BUILD_CUDA=1 timeout "$LIMIT" python3 -m pip install -q --no-deps --no-build-isolation -e . ; then
    echo "CUDA BUILD FAILED: building without the CUDA kernels (the triton backends still run on the GPU)"
    ADADFQ_BUILD_CUDA=0 timeout "$(left 120)" python3 -m pip install -q --no-deps --no-build-isolation -e . || return 1
  fi
  python3 -m adadfq_fast env
}
# No network, no build isolation. The sweep needs no CUDA build (the triton backends run without it).
# GPU_CHECK_SKIP_BUILD=1: use the package as it is (tests of this script; a machine where it is installed).
[ "${GPU_CHECK_SKIP_BUILD:-0}" = 1 ] || stage build 170 do_build

POLICY_SHIPPED=adadfq_fast/policies/int_conv2d_sm90.json

do_sweep() {
  # The sweep stops starting layers 25 s before its limit, so it always writes its table and policy.
  # shellcheck disable=SC2086
  timeout "$LIMIT" python3 benchmarks/sweep_int_conv2d_gpu.py --out "$RESULTS" --models resnet18 resnet20 \
    --backends ${SWEEP_BACKENDS:-cuda triton triton_tc} \
    --batches 256 1 --repeats ${SWEEP_REPEATS:-7} --calls 10 --budget $(( LIMIT - 25 ))
  local rc=$?
  if [ -s "$RESULTS/int_conv2d_policy.json" ] && python3 - "$RESULTS/int_conv2d_policy.json" <<'EOF'
import sys
from adadfq_fast import _backend
p = _backend.load_int_conv2d_policy(sys.argv[1])
print(f"policy: {len(p)} layers measured on {p.device} (capability {p.capability})")
sys.exit(0 if len(p) else 1)
EOF
  then
    cp "$RESULTS/int_conv2d_policy.json" "$POLICY_SHIPPED"
    echo "installed $POLICY_SHIPPED: auto now picks per layer from it"
  else
    echo "no usable policy: auto keeps its heuristic"
  fi
  return $rc
}

do_models() {
  local compile=${GPU_CHECK_COMPILE:-resnet18_imagenet}
  # shellcheck disable=SC2086
  timeout "$LIMIT" python3 -m adadfq_fast bench int --device cuda --no-progress \
    --models resnet20_cifar resnet18_imagenet --batch 256 --repeats 10 --compile-models $compile \
    --note "gpu_check.sh (run4): auto reads the measured policy of the sweep; 10 rounds at batch 1, 5 at 256." \
    --json "$RESULTS/bench_int_gpu.json"
}

do_tests() {
  local par=""
  python3 -c "import xdist" 2>/dev/null && par="-n 8"
  # shellcheck disable=SC2086
  timeout "$LIMIT" python3 -m pytest -q $par -p no:cacheprovider -rfE ${GPU_TESTS:-$TC_TESTS} \
    --junitxml="$RESULTS/gpu_tests.xml" 2>&1 | grep -v "^\[gw" | tail -40
}
TC_TESTS="tests/test_triton_int_conv2d_tc.py tests/test_int_conv_policy.py tests/test_deploy_gpu.py \
  tests/test_triton_int_conv2d.py"

do_full() {
  # A random teacher (no pretrained weights reach the GPU machines) and 10k random CIFAR-shaped test images (no
  # CIFAR either): the accuracy means nothing, the time is the real cost of the CIFAR-10 ResNet-20 preset, 400
  # epochs x 200 iterations with an evaluation after every epoch. metrics.jsonl grows per epoch (the summary reads it
  # when the run is cut short).
  rm -rf "$RESULTS/full_run"
  local t0; t0=$(date +%s)
  timeout "$LIMIT" python3 -m adadfq_fast train --config cifar10_resnet20_w4a4 --random-teacher \
    --synthetic-eval 10000 --no-progress device=cuda capture=cuda_graph output_dir="$RESULTS/full_run" 2>&1 | tail -5
  local rc=${PIPESTATUS[0]}
  echo "full run: exit $rc after $(( $(date +%s) - t0 )) s wall (process start to end)" | tee "$RESULTS/full_run_wall.txt"
  cp "$RESULTS"/full_run/*/summary.json "$RESULTS/full_run_summary.json" 2>/dev/null || true
  cp "$RESULTS"/full_run/*/metrics.jsonl "$RESULTS/full_run_metrics.jsonl" 2>/dev/null || true
  return "$rc"
}

# The earlier checks' stages (run1-run3), kept callable by number.
run_1() { timeout "$LIMIT" python3 -m adadfq_fast bench step --device cuda --model resnet20_cifar10 --batch 16 \
  --iters 20 --json "$RESULTS/bench_step_gpu_resnet20.json"; }
run_3() { timeout "$LIMIT" python3 benchmarks/bench_int_conv2d_gpu.py --device cuda --batch 256 --repeats 10 \
  --backends triton cuda triton_tc --json "$RESULTS/bench_int_conv2d_gpu.json"; }
run_4() { GPU_TESTS="tests/test_gpu_backends.py tests/test_triton_kernels.py tests/test_triton_int_conv2d.py \
  tests/test_triton_int_conv2d_tc.py tests/test_triton_quantize_codes.py tests/test_deploy_gpu.py \
  tests/test_cuda_graph_step.py" do_tests; }
run_5() { timeout "$LIMIT" python3 -m adadfq_fast bench step --device cuda --model resnet18 --batch 16 --iters 10 \
  --json "$RESULTS/bench_step_gpu_resnet18.json"; }
run_6() { timeout "$LIMIT" python3 -m adadfq_fast bench ops --device cuda --repeats 20 --no-progress \
  --no-compile-reference --json "$RESULTS/bench_ops_gpu.json"; }
run_8() {
  if ! command -v ncu >/dev/null; then echo "ncu not on PATH: skipped"; return 0; fi
  for layer in l1.conv3x3 l2.proj1x1/2; do
    ADADFQ_TRITON_TUNE=0 timeout "$(left 45)" ncu --clock-control none -k regex:int_conv2d_tc --launch-skip 2 \
      --launch-count 1 --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
      python3 benchmarks/bench_int_conv2d_gpu.py --device cuda --backends triton_tc --profile "$layer" \
      > "$RESULTS/ncu_int_conv2d_tc_${layer//\//_}.txt" 2>&1
    tail -40 "$RESULTS/ncu_int_conv2d_tc_${layer//\//_}.txt"
  done
}

for s in ${GPU_CHECK_STEPS:-sweep models}; do
  case "$s" in
    sweep) stage sweep 200 do_sweep ;;
    models) stage models 200 do_models ;;
    tests) stage tests 120 do_tests ;;
    9|full) stage full 560 do_full ;;
    1|3|4|5|6|8) stage "$s" 120 "run_$s" ;;
    *) echo "unknown stage $s (known: sweep models tests 9 1 3 4 5 6 8)" ;;
  esac
done
echo; echo "=== done at $(( $(date +%s) - start ))s; results in $RESULTS"
summary
cat "$RESULTS/summary.md"
pack
