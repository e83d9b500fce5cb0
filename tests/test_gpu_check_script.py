"""benchmarks/gpu_check.sh and gpu_check_summary.py without a GPU: a failing stage is logged and the later ones
still run, the stage table and summary are written; the summary reads the targets from the stages' files."""
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import gpu_check_summary as summary  # noqa: E402


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_failing_stages_do_not_stop_the_script(tmp_path):
    env = dict(os.environ, GPU_CHECK_SKIP_BUILD="1", GPU_CHECK_STEPS="bogus 1 9", GPU_CHECK_RESULTS=str(tmp_path),
               GPU_CHECK_BUDGET="60", CUDA_VISIBLE_DEVICES="")
    env.pop("OUT", None)
    # Stage 1 and the full run need a GPU: both fail here (quickly), and the script still ends with a summary.
    proc = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh")], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = (tmp_path / "gpu_check.log").read_text()
    assert "unknown stage bogus" in log and "STAGE 1 FAILED" in log and "=== full" in log
    stages = (tmp_path / "stages.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in stages] == ["stage", "1", "full"]
    text = (tmp_path / "summary.md").read_text()
    assert "| 1 | FAILED" in text and "full CIFAR ResNet-20 W4A4 run < 10 min | not measured" in text


def _bench(tmp_path, r18_int, r18_fp16c, r20_graph, r20_fp16_graph):
    recs = [
        {"model": "resnet18_imagenet", "batch": 256, "integer_vs_best_fp16": min(r18_fp16c, 6.0) / r18_int,
         "ms": {"integer": r18_int, "fp16_channels_last": 6.0, "fp16_channels_last_compiled": r18_fp16c},
         "best": {"integer": "integer", "fp16": "fp16_channels_last_compiled" if r18_fp16c < 6.0 else "fp16_channels_last"}},
        {"model": "resnet20_cifar", "batch": 1,
         "ms": {"integer": 1.5, "integer_cuda_graph": r20_graph, "fp16_channels_last": 3.0,
                "fp16_channels_last_graph": r20_fp16_graph}},
    ]
    (tmp_path / "bench_int_gpu.json").write_text(json.dumps({"records": recs}))


def test_summary_targets(tmp_path):
    _bench(tmp_path, r18_int=3.0, r18_fp16c=4.2, r20_graph=0.4, r20_fp16_graph=0.5)
    (tmp_path / "full_run_summary.json").write_text(json.dumps(
        {"epochs_done": 400, "fit_seconds": 420.0, "eval_seconds": 40.0}))
    (tmp_path / "full_run_wall.txt").write_text("full run: exit 0 after 450 s wall (process start to end)\n")
    lines = summary.target_lines(str(tmp_path))
    assert "1.40x" in lines[2] and lines[2].endswith("| yes |")
    assert "integer_cuda_graph 0.400 ms vs fp16 CUDA graph 0.500 ms | yes |" in lines[3]
    assert "measured: 7.00 min in fit" in lines[4] and "7.50 min process wall | yes |" in lines[4]
    _bench(tmp_path, r18_int=5.0, r18_fp16c=4.2, r20_graph=0.6, r20_fp16_graph=0.5)
    lines = summary.target_lines(str(tmp_path))
    assert "0.84x" in lines[2] and lines[2].endswith("| no |") and lines[3].endswith("| no |")


def test_summary_of_a_full_run_cut_short(tmp_path):
    (tmp_path / "full_run_metrics.jsonl").write_text("".join(json.dumps({"epoch": i}) + "\n" for i in range(100)))
    (tmp_path / "full_run_wall.txt").write_text("full run: exit 124 after 150 s wall (process start to end)\n")
    line = summary.full_run_line(str(tmp_path))
    assert "NOT measured: cut short after 100 of 400 epochs in 150 s; estimate from those 10.0 min" in line
