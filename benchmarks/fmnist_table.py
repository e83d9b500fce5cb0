"""Our Table 2 on real data: Fashion-MNIST ResNet-20, W3A3 / W4A4 / W5A5 x {calibration only, GDFQ, AdaDFQ},
mean and standard deviation over seeds, from `adadfq-fast quantize` runs.

    python benchmarks/fmnist_table.py                       # 3 bit widths x 3 seeds at the main job's budget
    python benchmarks/fmnist_table.py --bits 3 --seeds 0 1 --epochs 20 --iters-per-epoch 100

Each run writes its own folder under --work (default runs/fmnist_table/w<b>a<b>_s<seed>); a run whose
summary.json exists is reused, so the table can be built in several sittings. Writes
benchmarks/results/fmnist_table.{md,json}. Every extra argument goes to `adadfq-fast quantize`.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
COLUMNS = (("calib_acc", "calibration only"), ("gdfq_acc", "GDFQ"), ("adadfq_acc", "AdaDFQ"))


def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def build_table(summaries: dict, budget: str) -> str:
    lines = [f"Fashion-MNIST, ResNet-20 teacher (`adadfq_fast/weights/resnet20_fashion_mnist.pt`), {budget}.",
             "Top-1 (%) on the 10k real test images, final epoch, mean ± std over seeds (n = number of seeds).", "",
             "| bits | FP teacher | calibration only | GDFQ | AdaDFQ | AdaDFQ - GDFQ | n | game iters/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for bits in sorted(summaries):
        runs = summaries[bits]
        teacher, _ = _mean_std([s["teacher_acc"] for s in runs])
        cells = []
        for key, _ in COLUMNS:
            m, s = _mean_std([r[key] for r in runs])
            cells.append("n/a" if m is None else f"{m:.2f} ± {s:.2f}")
        diffs = [r["adadfq_acc"] - r["gdfq_acc"] for r in runs if r["adadfq_acc"] is not None and r["gdfq_acc"]]
        dm, ds = _mean_std(diffs)
        speed, _ = _mean_std([r["iters_per_s"].get("adadfq") for r in runs])
        lines.append(f"| W{bits}A{bits} | {teacher:.2f} | {' | '.join(cells)} | "
                     f"{'n/a' if dm is None else f'{dm:+.2f} ± {ds:.2f}'} | {len(runs)} | "
                     f"{'n/a' if speed is None else f'{speed:.2f}'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bits", type=int, nargs="+", default=[3, 4, 5])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--work", default=os.path.join("runs", "fmnist_table"))
    p.add_argument("--results", default=os.path.join(HERE, "results"))
    p.add_argument("--table-only", action="store_true", help="only rebuild the table from finished runs")
    p.add_argument("--name", default="fmnist_table", help="file name (no extension) of the results table")
    args, quantize_args = p.parse_known_args(argv)

    from adadfq_fast import quantize_job

    summaries: dict = {}
    for seed in args.seeds:  # seeds outer: a partial table still covers every bit width
        for bits in args.bits:
            out = os.path.join(args.work, f"w{bits}a{bits}_s{seed}")
            path = os.path.join(out, "summary.json")
            if not os.path.isfile(path):
                if args.table_only:
                    continue
                start = time.perf_counter()
                quantize_job.main(["--bits", str(bits), "--seed", str(seed), "--out", out, "--no-plots",
                                   "--eval-every", "1000", *quantize_args])
                print(f"[fmnist_table] W{bits}A{bits} seed {seed}: {time.perf_counter() - start:.0f} s", flush=True)
            with open(path) as f:
                summaries.setdefault(bits, []).append(json.load(f))
    if not summaries:
        print("no finished runs", file=sys.stderr)
        return 1
    cfg = next(iter(summaries.values()))[0]["config"]
    budget = (f"{cfg['epochs']} epochs x {cfg['iters_per_epoch']} iterations x batch {cfg['batch_size']} per method "
              f"(first {cfg['warmup_epochs']} epochs G only, ranges frozen after them), Q lr {cfg['q_lr']}, "
              f"{cfg['schedule']} schedule, CPU" + (", G and P under bfloat16 autocast" if cfg.get("bf16") else ""))
    table = build_table(summaries, budget)
    command = "python benchmarks/fmnist_table.py " + " ".join(sys.argv[1:] if argv is None else argv)
    os.makedirs(args.results, exist_ok=True)
    with open(os.path.join(args.results, f"{args.name}.md"), "w") as f:
        f.write(table + f"\n\nRegenerate: `{command.strip()}`\n")
    with open(os.path.join(args.results, f"{args.name}.json"), "w") as f:
        json.dump({"command": command.strip(), "budget": budget,
                   "runs": {f"w{b}a{b}": [{k: s[k] for k in ("teacher_acc", "calib_acc", "gdfq_acc", "adadfq_acc",
                                                           "gdfq_best_acc", "adadfq_best_acc", "iters_per_s",
                                                           "total_s")} | {"seed": s["config"]["seed"]}
                                          for s in runs] for b, runs in summaries.items()}}, f, indent=1)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
