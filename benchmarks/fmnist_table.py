"""Our Table 2 on real data: Fashion-MNIST ResNet-20, W3A3 / W4A4 / W5A5 x {calibration only, GDFQ, AdaDFQ},
mean and standard deviation over seeds, from `adadfq-fast quantize` runs.

    python benchmarks/fmnist_table.py                       # 3 bit widths x 3 seeds at the main job's budget
    python benchmarks/fmnist_table.py --bits 3 --seeds 0 1 --epochs 20 --iters-per-epoch 100

The faithful mode against the opt-in fixes of Q's activation quantizer (one table row per bit width and mode;
the fix rows also give AdaDFQ's paired gain over the faithful run of the same seed):

    python benchmarks/fmnist_table.py --bits 3 4 --fixes faithful ste=clipped act_range_update=standard \
        --method adadfq --name fmnist_fixes

Each run writes its own folder under --work (default runs/fmnist_table/w<b>a<b>_s<seed>, plus _<fix> for a fix);
a run whose summary.json exists is reused, so the table can be built in several sittings. Writes
benchmarks/results/<name>.{md,json} (default fmnist_table). Every extra argument goes to `adadfq-fast quantize`.
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


# --fixes: the quantize options each fix sets (config key -> command-line flag of `adadfq-fast quantize`).
FIX_FLAGS = {"ste": "--ste", "act_range_update": "--act-range-update"}


def parse_fix(text: str) -> dict:
    """``faithful`` -> {}; ``ste=clipped,act_range_update=standard`` -> the settings (checked by the job)."""
    if text == "faithful":
        return {}
    fix = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or key not in FIX_FLAGS:
            raise SystemExit(f"--fixes: expected 'faithful' or key=value with key in {list(FIX_FLAGS)}, got {text!r}")
        fix[key] = value
    return fix


def fix_label(fix: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in fix.items()) or "faithful"


def run_folder(work: str, bits: int, seed: int, fix: dict) -> str:
    tail = "".join(f"_{k}-{v}" for k, v in fix.items())
    return os.path.join(work, f"w{bits}a{bits}_s{seed}{tail}")


def _cell(values, signed=False) -> str:
    """mean ± std of the non-None values; a single value alone (a std of one run would read as no spread)."""
    values = [v for v in values if v is not None]
    m, s = _mean_std(values)
    if m is None:
        return "n/a"
    text = f"{m:+.2f}" if signed else f"{m:.2f}"
    return text + (f" ± {s:.2f}" if len(values) > 1 else " (1 seed)")


def build_fix_table(summaries: dict, budget: str) -> str:
    """Rows: bit width x mode (``summaries[(bits, label)]`` = runs in seed order)."""
    lines = [f"Fashion-MNIST, ResNet-20 teacher (`adadfq_fast/weights/resnet20_fashion_mnist.pt`), {budget}.",
             "Top-1 (%) on the real test images, final epoch, mean ± std over seeds (n = number of seeds). "
             "'vs faithful' is AdaDFQ's gain over the faithful run of the same seed (paired), mean ± std.", "",
             "| bits | Q's activation quantizer | FP teacher | calibration only | GDFQ | AdaDFQ | AdaDFQ - FP | "
             "vs faithful | n (seeds) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for bits, label in sorted(summaries, key=lambda k: (k[0], k[1] != "faithful", k[1])):
        runs = summaries[(bits, label)]
        teacher, _ = _mean_std([s["teacher_acc"] for s in runs])
        cells = [_cell([r[key] for r in runs]) for key, _ in COLUMNS]
        gap = _cell([r["adadfq_acc"] - r["teacher_acc"] for r in runs if r["adadfq_acc"] is not None], signed=True)
        base = {r["config"]["seed"]: r["adadfq_acc"] for r in summaries.get((bits, "faithful"), [])}
        paired = [r["adadfq_acc"] - base[r["config"]["seed"]] for r in runs
                  if label != "faithful" and r["adadfq_acc"] is not None and base.get(r["config"]["seed"]) is not None]
        seeds = ",".join(str(r["config"]["seed"]) for r in runs)
        lines.append(f"| W{bits}A{bits} | {label} | {teacher:.2f} | {' | '.join(cells)} | {gap} | "
                     f"{_cell(paired, signed=True) if paired else ''} | {len(runs)} ({seeds}) |")
    return "\n".join(lines)


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


# Settings that make two runs' numbers comparable (the seed aside); `adadfq-fast quantize` reads them back.
BUDGET_KEYS = ("model", "dataset", "epochs", "iters_per_epoch", "warmup_epochs", "batch_size", "q_lr", "g_lr",
               "schedule", "bf16", "ste", "act_range_update", "test_images")


def _run_key(key) -> str:
    if isinstance(key, tuple):
        return f"w{key[0]}a{key[0]}/{key[1]}"
    return f"w{key}a{key}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bits", type=int, nargs="+", default=[3, 4, 5])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--work", default=os.path.join("runs", "fmnist_table"))
    p.add_argument("--results", default=os.path.join(HERE, "results"))
    p.add_argument("--table-only", action="store_true", help="only rebuild the table from finished runs")
    p.add_argument("--name", default="fmnist_table", help="file name (no extension) of the results table")
    p.add_argument("--fixes", nargs="+", default=None, metavar="FIX",
                   help="modes to compare: faithful and/or key=value[,key=value] with key in "
                   f"{list(FIX_FLAGS)} (e.g. ste=clipped act_range_update=standard); one row per bits x mode")
    args, quantize_args = p.parse_known_args(argv)
    fixes = [parse_fix(f) for f in args.fixes] if args.fixes else None

    from adadfq_fast import quantize_job

    summaries: dict = {}
    for seed in args.seeds:  # seeds outer: a partial table still covers every bit width (and mode)
        for bits in args.bits:
            for fix in (fixes or [{}]):
                out = run_folder(args.work, bits, seed, fix)
                path = os.path.join(out, "summary.json")
                if not os.path.isfile(path):
                    if args.table_only:
                        continue
                    start = time.perf_counter()
                    flags = [a for k, v in fix.items() for a in (FIX_FLAGS[k], v)]
                    quantize_job.main(["--bits", str(bits), "--seed", str(seed), "--out", out, "--no-plots",
                                       "--eval-every", "1000", *flags, *quantize_args])
                    print(f"[fmnist_table] W{bits}A{bits} seed {seed} {fix_label(fix)}: "
                          f"{time.perf_counter() - start:.0f} s", flush=True)
                with open(path) as f:
                    summary = json.load(f)
                key = (bits, fix_label(fix)) if fixes is not None else bits
                summaries.setdefault(key, []).append(summary)
    if not summaries:
        print("no finished runs", file=sys.stderr)
        return 1
    cfg = next(iter(summaries.values()))[0]["config"]
    budget = (f"{cfg['epochs']} epochs x {cfg['iters_per_epoch']} iterations x batch {cfg['batch_size']} per method "
              f"(first {cfg['warmup_epochs']} epochs G only, ranges frozen after them), Q lr {cfg['q_lr']}, "
              f"{cfg['schedule']} schedule, {cfg.get('threads', '?')} thread(s), CPU, {cfg.get('test_images')} test images"
              + (", G and P under bfloat16 autocast" if cfg.get("bf16") else ""))
    table = (build_fix_table if fixes is not None else build_table)(summaries, budget)
    command = "python benchmarks/fmnist_table.py " + " ".join(sys.argv[1:] if argv is None else argv)
    os.makedirs(args.results, exist_ok=True)
    with open(os.path.join(args.results, f"{args.name}.md"), "w") as f:
        f.write(table + f"\n\nRegenerate: `{command.strip()}`\n")
    with open(os.path.join(args.results, f"{args.name}.json"), "w") as f:
        # The budget as settings too: the main job compares its own run with this table only at the same budget.
        budget_cfg = {k: cfg.get(k) for k in BUDGET_KEYS}
        json.dump({"command": command.strip(), "budget": budget, "budget_config": budget_cfg,
                   "runs": {_run_key(key): [{k: s[k] for k in ("teacher_acc", "calib_acc", "gdfq_acc", "adadfq_acc",
                                                             "gdfq_best_acc", "adadfq_best_acc", "iters_per_s",
                                                             "total_s")} | {"seed": s["config"]["seed"]}
                                            for s in runs] for key, runs in summaries.items()}}, f, indent=1)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
