"""summary.md of a benchmarks/gpu_check.sh run: the stage table (exit status, seconds) and the issue's targets,
read from what the stages wrote into the results folder. Prints Markdown; missing files give "not measured".

  python benchmarks/gpu_check_summary.py RESULTS_DIR > RESULTS_DIR/summary.md
"""
from __future__ import annotations

import csv
import json
import os
import sys
from typing import Dict, List, Optional

FULL_RUN_EPOCHS = 400  # the cifar10_resnet20_w4a4 preset
FULL_RUN_LIMIT_S = 600
RESNET18_TARGET = 1.3


def _load(path: str) -> Optional[Dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def stage_lines(results: str) -> List[str]:
    out = ["| stage | exit | seconds | limit |", "|---|---|---|---|"]
    try:
        with open(os.path.join(results, "stages.tsv")) as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
    except OSError:
        return ["no stages.tsv"]
    for r in rows:
        status = {"0": "ok", "124": "TIMED OUT"}.get(r["exit"], f"FAILED ({r['exit']})")
        out.append(f"| {r['stage']} | {status} | {r['seconds']} | {r['limit']} |")
    return out


def _record(bench: Optional[Dict], model: str, batch_pick) -> Optional[Dict]:
    recs = [r for r in (bench or {}).get("records", []) if r["model"] == model]
    return batch_pick(recs, key=lambda r: r["batch"]) if recs else None


def target_lines(results: str) -> List[str]:
    out = ["| target | result | met |", "|---|---|---|"]
    bench = _load(os.path.join(results, "bench_int_gpu.json"))
    r18 = _record(bench, "resnet18_imagenet", max)
    if r18 is not None and r18.get("integer_vs_best_fp16") is not None:
        ratio = r18["integer_vs_best_fp16"]
        ms = r18["ms"]
        out.append(f"| ResNet-18 224 px batch {r18['batch']}: integer >= {RESNET18_TARGET}x fp16 CL (eager or "
                   f"compiled, the faster) | {ratio:.2f}x: {r18['best']['integer']} {ms[r18['best']['integer']]:.3f} ms "
                   f"vs {r18['best']['fp16']} {ms[r18['best']['fp16']]:.3f} ms | {'yes' if ratio >= RESNET18_TARGET else 'no'} |")
    else:
        out.append("| ResNet-18 batch 256 >= 1.3x fp16 | not measured | |")
    r20 = _record(bench, "resnet20_cifar", min)
    if r20 is not None and "fp16_channels_last_graph" in r20["ms"]:
        ms = r20["ms"]
        integer = min((k for k in ms if k.startswith("integer")), key=ms.get)
        out.append(f"| ResNet-20 batch {r20['batch']} latency below fp16 captured | {integer} {ms[integer]:.3f} ms vs "
                   f"fp16 CUDA graph {ms['fp16_channels_last_graph']:.3f} ms | "
                   f"{'yes' if ms[integer] < ms['fp16_channels_last_graph'] else 'no'} |")
    else:
        out.append("| ResNet-20 batch 1 below fp16 captured | not measured | |")
    out.append(full_run_line(results))
    return out


def full_run_line(results: str) -> str:
    summary = _load(os.path.join(results, "full_run_summary.json"))
    wall = None
    try:
        with open(os.path.join(results, "full_run_wall.txt")) as f:
            text = f.read()
        wall = int(text.split(" after ")[1].split(" s")[0])
    except (OSError, IndexError, ValueError):
        pass
    if summary is not None and summary.get("epochs_done") == FULL_RUN_EPOCHS:
        fit = summary["fit_seconds"]
        total = wall if wall is not None else fit
        return (f"| full CIFAR ResNet-20 W4A4 run < 10 min | measured: {fit / 60:.2f} min in fit (evaluations "
                f"{summary.get('eval_seconds', 0) / 60:.2f} min), {total / 60:.2f} min process wall | "
                f"{'yes' if total < FULL_RUN_LIMIT_S else 'no'} |")
    epochs = []
    try:
        with open(os.path.join(results, "full_run_metrics.jsonl")) as f:
            epochs = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError):
        pass
    if epochs and wall is not None:
        est = wall / len(epochs) * FULL_RUN_EPOCHS
        return (f"| full CIFAR ResNet-20 W4A4 run < 10 min | NOT measured: cut short after {len(epochs)} of "
                f"{FULL_RUN_EPOCHS} epochs in {wall} s; estimate from those {est / 60:.1f} min (includes start-up) | |")
    return "| full CIFAR ResNet-20 W4A4 run < 10 min | not measured | |"


def sweep_lines(results: str) -> List[str]:
    sweep = _load(os.path.join(results, "sweep_int_conv2d.json"))
    if not sweep:
        return ["sweep: not measured"]
    recs = sweep["records"]
    wins: Dict[str, int] = {}
    for r in recs:
        if r["best_backend"]:
            wins[r["best_backend"]] = wins.get(r["best_backend"], 0) + 1
    bad = sum(1 for r in recs for ok in r["bit_exact"].values() if not ok)
    policy = _load(os.path.join(results, "int_conv2d_policy.json"))
    return [f"sweep: {len(recs)} layer x batch measured; fastest backend counts {wins}; variants not bit-exact: {bad}; "
            f"policy layers: {len(policy['layers']) if policy else 0} (details: sweep_int_conv2d.md)"]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: gpu_check_summary.py RESULTS_DIR")
    results = argv[0]
    lines = ["# gpu_check summary", "", *stage_lines(results), "", *target_lines(results), "", *sweep_lines(results)]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
