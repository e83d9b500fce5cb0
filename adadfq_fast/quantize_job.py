"""``adadfq-fast quantize``: the main job. Quantize a real pretrained network without data, evaluate on real data.

With no arguments: the shipped ResNet-20 Fashion-MNIST teacher (``adadfq_fast/weights``), W3A3, on CPU, a budget
that finishes in under 10 minutes on a 2-core machine. W3A3 is the default because there the method's effect is
larger than the spread over seeds (benchmarks/results/fmnist_table.md: AdaDFQ beats GDFQ in every seed, by
+1.21 ± 0.25 over 3 seeds, and calibration only by +2.7); at W4A4 all three land within ~0.5 points of each other
and a single run's order is float-order noise. The printed table quotes that table's mean ± std over seeds next to
this run's numbers whenever the run's budget is the table's. It runs, on the same teacher and seed:

1. the FP teacher on the real test set;
2. **GDFQ** (generator: CE + 0.1 BNS; student: KD + CE) and
3. **AdaDFQ** (the spec's L_G and L_Q), each for ``epochs x iters_per_epoch`` game iterations with the fast
   schedule; the first ``warmup_epochs`` train only G while Q's activation ranges are set from the generated
   samples (the spec's schedule, shortened);
4. **calibration only**: Q evaluated at the end of AdaDFQ's warm-up: its weights are still P's, its activation
   ranges were calibrated on generated samples, no game step has touched it.

Q is evaluated on the real test set after every epoch (ranges frozen first, as the original does); the table
reports the *final* epoch (the paper reports the best epoch; that is in summary.json too). Outputs in ``--out``:
``summary.json``, ``table.md``, ``q_<method>_w<W>a<A>.pt`` (self-describing Q checkpoints, see
``adadfq_fast.nn.checkpoint``; ``adadfq-fast export`` turns them into integer models), each run's
``metrics.jsonl``, ``accuracy.png`` (top-1 over iterations) and ``h_norm.png`` (H' of the generated samples in
AdaDFQ's first and last epochs, with lambda_l / lambda_u marked).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

import torch

METHODS = ("gdfq", "adadfq")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="adadfq-fast quantize",
        description="The main job: data-free quantization of a pretrained network (default: the shipped ResNet-20 "
        "Fashion-MNIST teacher at W3A3), then evaluation on the real test set: FP teacher, calibration only, "
        "GDFQ, AdaDFQ.")
    p.add_argument("--model", default="resnet20", help="zoo name of the teacher (default: resnet20)")
    p.add_argument("--checkpoint", default=None,
                   help="teacher weights (default: the shipped Fashion-MNIST ResNet-20 when --model/--dataset are "
                   "the defaults)")
    p.add_argument("--dataset", default="fashion-mnist", help="real test set: fashion-mnist, cifar10, cifar100")
    p.add_argument("--data-root", default=None, help="folder with the dataset (default: the standard places)")
    p.add_argument("--bits", type=int, default=None, help="weight and activation bits (sets both)")
    p.add_argument("--wbits", type=int, default=3)
    p.add_argument("--abits", type=int, default=3)
    p.add_argument("--method", default="all", choices=["all", *METHODS], help="which games to run")
    p.add_argument("--epochs", type=int, default=10, help="epochs of each game")
    p.add_argument("--iters-per-epoch", type=int, default=100)
    p.add_argument("--warmup-epochs", type=int, default=2,
                   help="epochs training only G while Q's ranges are set (ranges freeze after them)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--q-lr", type=float, default=1e-4, help="Q's SGD learning rate (spec: 1e-4)")
    p.add_argument("--g-lr", type=float, default=1e-3, help="G's Adam learning rate (spec: 1e-3)")
    p.add_argument("--schedule", default="fast", choices=["fast", "faithful"])
    p.add_argument("--ste", default="identity", choices=["identity", "clipped"],
                   help="Q's activation STE: identity (the original's) or clipped (opt-in fix: no gradient where "
                   "the quantizer clamps)")
    p.add_argument("--act-range-update", default="faithful", choices=["faithful", "standard"],
                   help="Q's activation-range EMA: faithful (the original's compounding bias correction) or "
                   "standard (opt-in fix)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-images", type=int, default=None, help="evaluate on the first N test images only")
    p.add_argument("--eval-every", type=int, default=1,
                   help="evaluate Q every N epochs (always after the warm-up and the last epoch)")
    p.add_argument("--out", default=os.path.join("runs", "quantize"), help="output folder")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--bf16", action="store_true",
                   help="run G and P under bfloat16 autocast (Q stays float32); CPUs with AVX-512 BF16 gain ~1.4x")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--no-progress", action="store_true")
    return p


def _teacher_source(args) -> str:
    from adadfq_fast.pretrain import SHIPPED_TEACHER

    if args.checkpoint:
        return args.checkpoint
    if args.model == "resnet20" and args.dataset in ("fashion-mnist", "fashion_mnist", "fmnist"):
        if not os.path.isfile(SHIPPED_TEACHER):
            raise SystemExit(f"quantize: the shipped teacher {SHIPPED_TEACHER} is missing (re-create it with "
                             "`adadfq-fast pretrain --out " + SHIPPED_TEACHER + "`) or pass --checkpoint PATH")
        return SHIPPED_TEACHER
    raise SystemExit(f"quantize: no shipped teacher for {args.model} on {args.dataset}; pass --checkpoint PATH")


def _config(args, info: dict, method: str, out_dir: str):
    from adadfq_fast.config import AdaDFQConfig

    size = info["in_size"][0]
    return AdaDFQConfig(
        name=method, dataset=info["name"], model=args.model, num_classes=info["num_classes"], img_size=size,
        channels=info["in_channels"], wbits=args.wbits, abits=args.abits, epochs=args.epochs,
        iters_per_epoch=args.iters_per_epoch, batch_size=args.batch_size, warmup_epochs=args.warmup_epochs,
        act_range_unfreeze_epochs=args.warmup_epochs, schedule=args.schedule, seed=args.seed, q_lr=args.q_lr,
        g_lr=args.g_lr, ste=args.ste, act_range_update=args.act_range_update,
        # The spec's lr steps fall at epochs 100/200/300 of 400; the short budget keeps one constant lr.
        q_lr_milestones=(), g_lr_milestones=(),
        generator="imagenet" if size >= 64 else "cifar", output_dir=out_dir, checkpoint_every=0,
        eval_every=args.eval_every,
        device=args.device,
    )


def run(args) -> dict:
    from adadfq_fast.data import dataset_info, evaluate, load_dataset, make_loader
    from adadfq_fast.game.trainer import Trainer, resolve_device
    from adadfq_fast.models import build_model

    if args.bits is not None:
        args.wbits = args.abits = args.bits
    if args.threads:
        torch.set_num_threads(args.threads)
    info = dataset_info(args.dataset)
    source = _teacher_source(args)
    device = resolve_device(args.device)
    test_set = load_dataset(args.dataset, root=args.data_root, split="test")  # before any work: fail early
    if args.eval_images is not None:
        test_set = torch.utils.data.Subset(test_set, range(min(args.eval_images, len(test_set))))
    loader = make_loader(test_set, batch_size=500)
    progress = not args.no_progress

    def evaluate_fn(model):
        return evaluate(model, loader, device=device, progress=progress)

    os.makedirs(args.out, exist_ok=True)
    start = time.perf_counter()
    teacher = build_model(args.model, num_classes=info["num_classes"], in_channels=info["in_channels"],
                          in_size=info["in_size"], checkpoint=source).to(device)
    teacher_acc = evaluate_fn(teacher)
    print(f"FP teacher {args.model} ({source}): top-1 {teacher_acc:.2f}% on {len(test_set)} {info['name']} "
          "test images", flush=True)
    methods = list(METHODS) if args.method == "all" else [args.method]
    results: Dict[str, dict] = {}
    calib_acc = None
    for method in methods:
        print(f"--- {method.upper()} W{args.wbits}A{args.abits}: {args.epochs} epochs x {args.iters_per_epoch} "
              f"iterations, batch {args.batch_size}, first {args.warmup_epochs} epochs G only ---", flush=True)
        cfg = _config(args, info, method, args.out)
        trainer = Trainer(cfg, teacher, evaluate_fn=evaluate_fn, run_dir=os.path.join(args.out, method),
                          progress=progress, method=method,
                          autocast_dtype=torch.bfloat16 if args.bf16 else None)
        summary = trainer.fit()
        history = trainer.history
        final = history[-1].get("q_acc")
        if args.warmup_epochs > 0 and (calib_acc is None or method == "adadfq"):
            calib_acc = history[args.warmup_epochs - 1].get("q_acc")
        ckpt = os.path.join(args.out, f"q_{method}_w{args.wbits}a{args.abits}.pt")
        trainer.save_q(ckpt, method=method, top1=final, teacher=source, seed=args.seed)
        results[method] = {
            "final_acc": final, "best_acc": summary["best_acc"], "best_epoch": summary["best_epoch"],
            "iters_per_s": summary["iters_per_s"], "checkpoint": ckpt,
            "curve": [{"iteration": (r["epoch"] + 1) * r["iters"], "q_acc": r.get("q_acc")} for r in history],
            "h_norm_first": summary["h_norm_first"], "h_norm_last": summary["h_norm_last"],
            # Worst x_max / largest activation when the ranges froze (the trainer warns above RANGE_BLOWUP).
            "act_range_ratio": next((r["act_range_ratio"] for r in history if "act_range_ratio" in r), None),
            "config": cfg.to_dict(),
        }
    total_s = time.perf_counter() - start
    summary = {
        "teacher_acc": teacher_acc, "calib_acc": calib_acc,
        "gdfq_acc": results.get("gdfq", {}).get("final_acc"), "adadfq_acc": results.get("adadfq", {}).get("final_acc"),
        "gdfq_best_acc": results.get("gdfq", {}).get("best_acc"),
        "adadfq_best_acc": results.get("adadfq", {}).get("best_acc"),
        "iters_per_s": {m: r["iters_per_s"] for m, r in results.items()},
        "total_s": total_s,
        "config": vars(args) | {"teacher_checkpoint": source,
                                                            "test_images": len(test_set), "torch": torch.__version__,
                                                            "threads": torch.get_num_threads()},
        "runs": results,
    }
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    reference = seed_reference(summary)
    if reference is not None:
        summary["seed_reference"] = reference
    table = format_table(summary)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table + "\n")
    print("\n" + table)
    if not args.no_plots:
        for path in plot(summary, args.out):
            print(f"plot: {path}")
    print(f"\nwrote {os.path.join(args.out, 'summary.json')} ({total_s / 60:.1f} min in all)")
    return summary


# The seed-spread table that the printed table quotes (benchmarks/fmnist_table.py writes it).
SEED_TABLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "results",
                          "fmnist_table.json")
# Settings whose defaults older tables did not record.
_BUDGET_DEFAULTS = {"bf16": False, "ste": "identity", "act_range_update": "faithful"}


def _mean_std(values) -> Optional[dict]:
    import statistics

    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def seed_reference(summary: dict, path: str = SEED_TABLE) -> Optional[dict]:
    """Mean ± std over seeds of every row of the table, from the seed table's runs at this run's bit width, or
    None where that table is absent or was made at another budget (then its spread would not apply)."""
    cfg = summary["config"]
    if not os.path.isfile(path) or cfg["wbits"] != cfg["abits"]:
        return None
    with open(path) as f:
        table = json.load(f)
    budget = table.get("budget_config") or {}
    for key, value in budget.items():
        mine = cfg.get(key, _BUDGET_DEFAULTS.get(key))
        if (value if value is not None else _BUDGET_DEFAULTS.get(key)) != mine:
            return None
    runs = table.get("runs", {}).get(f"w{cfg['wbits']}a{cfg['abits']}")
    if not budget or not runs:
        return None
    ref = {key: _mean_std([r[key] for r in runs]) for key in ("teacher_acc", "calib_acc", "gdfq_acc", "adadfq_acc")}
    for other in ("gdfq", "calib"):
        gains = [r["adadfq_acc"] - r[f"{other}_acc"] for r in runs
                 if r["adadfq_acc"] is not None and r[f"{other}_acc"] is not None]
        ref[f"adadfq_minus_{other}"] = _mean_std(gains)
        if gains:
            ref[f"adadfq_minus_{other}"]["ahead"] = sum(g > 0 for g in gains)
    ref["seeds"] = [r.get("seed") for r in runs]
    ref["source"] = "benchmarks/results/fmnist_table.md"
    return ref


def _fixes(cfg: dict) -> str:
    """The opt-in fixes this run used, as words (empty for the faithful mode)."""
    fixes = [f"{k}={cfg[k]}" for k, faithful in (("ste", "identity"), ("act_range_update", "faithful"))
             if cfg.get(k, faithful) != faithful]
    return ", ".join(fixes)


def format_table(summary: dict) -> str:
    cfg = summary["config"]
    teacher = summary["teacher_acc"]
    ref = summary.get("seed_reference")
    rows = [("FP teacher", teacher, None, "", "teacher_acc")]
    w, a = cfg["wbits"], cfg["abits"]
    if summary["calib_acc"] is not None:
        from adadfq_fast.game.trainer import RANGE_BLOWUP

        ratio = (summary["runs"].get("adadfq") or next(iter(summary["runs"].values()), {})).get("act_range_ratio")
        note = "ranges from generated samples"
        if ratio is not None and ratio > RANGE_BLOWUP:
            note += (f"; NOT converged when frozen (x_max up to {ratio:.3g}x the activations): longer warm-up or "
                     "--act-range-update standard")
        rows.append((f"W{w}A{a} calibration only", summary["calib_acc"], None, note, "calib_acc"))
    for method, label in (("gdfq", "GDFQ"), ("adadfq", "AdaDFQ")):
        run = summary["runs"].get(method)
        if run is not None:
            rows.append((f"W{w}A{a} {label}", run["final_acc"], run["iters_per_s"],
                         f"best {run['best_acc']:.2f}% at epoch {run['best_epoch'] + 1}" if run["best_acc"] is not None
                         else "", f"{method}_acc"))
    iters = cfg["epochs"] * cfg["iters_per_epoch"]
    fixes = _fixes(cfg)
    lines = [f"{cfg['model']} on {cfg['dataset']} ({cfg.get('test_images')} test images), {iters} game iterations "
             f"per method (batch {cfg['batch_size']}, {cfg['schedule']} schedule, seed {cfg['seed']}, "
             + (f"opt-in fixes: {fixes})" if fixes else "faithful quantizer)"), ""]
    if ref is not None:
        n = len(ref["seeds"])
        lines += [f"| network | top-1 (%) this run | {n} seeds ({os.path.basename(ref['source'])}): mean ± std | "
                  "vs FP | game iters/s | note |",
                  "|---|---:|---:|---:|---:|---|"]
    else:
        lines += ["| network | top-1 (%) | vs FP | game iters/s | note |", "|---|---:|---:|---:|---|"]
    for name, acc, speed, note, key in rows:
        delta = "" if name == "FP teacher" or acc is None else f"{acc - teacher:+.2f}"
        acc_s = "n/a" if acc is None else f"{acc:.2f}"
        cells = [name, acc_s]
        if ref is not None:
            spread = ref.get(key)
            cells.append("" if spread is None else f"{spread['mean']:.2f} ± {spread['std']:.2f}")
        cells += [delta, "" if speed is None else f"{speed:.2f}", note]
        lines.append("| " + " | ".join(cells) + " |")
    gdfq, ada, calib = summary.get("gdfq_acc"), summary.get("adadfq_acc"), summary.get("calib_acc")
    gains = []
    for other, label, key in ((gdfq, "GDFQ", "adadfq_minus_gdfq"), (calib, "calibration only", "adadfq_minus_calib")):
        if ada is None or other is None:
            continue
        text = f"AdaDFQ - {label}: {ada - other:+.2f} this run"
        spread = ref.get(key) if ref is not None else None
        if spread is not None:
            text += (f"; {spread['mean']:+.2f} ± {spread['std']:.2f} over {spread['n']} seeds, ahead in "
                     f"{spread['ahead']} of {spread['n']} (paired per seed, {ref['source']})")
        gains.append(text)
    if gains:
        lines += [""] + gains
    if ref is None:
        lines += ["", "No seed spread quoted: benchmarks/results/fmnist_table.json holds no runs at this budget and "
                  "bit width (single-run differences below ~0.5 points are within float-order and seed noise)."]
    return "\n".join(lines)


def plot(summary: dict, out_dir: str) -> List[str]:
    """accuracy.png and h_norm.png; returns the paths written (none, with a warning, without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plots skipped: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
        return []
    cfg = summary["config"]
    paths = []
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method, label in (("gdfq", "GDFQ"), ("adadfq", "AdaDFQ")):
        run = summary["runs"].get(method)
        if run:
            pts = [(c["iteration"], c["q_acc"]) for c in run["curve"] if c["q_acc"] is not None]
            ax.plot(*zip(*pts), marker="o", ms=3, label=f"{label} W{cfg['wbits']}A{cfg['abits']}")
    ax.axhline(summary["teacher_acc"], color="k", ls="--", lw=1, label=f"FP teacher {summary['teacher_acc']:.2f}%")
    warm = cfg["warmup_epochs"] * cfg["iters_per_epoch"]
    if warm:
        ax.axvline(warm, color="gray", ls=":", lw=1, label="end of warm-up (calibration only)")
    ax.set_xlabel("game iteration")
    ax.set_ylabel("top-1 on the real test set (%)")
    ax.set_title(f"{cfg['model']} on {cfg['dataset']}: Q's accuracy during the game")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "accuracy.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    run = summary["runs"].get("adadfq") or next(iter(summary["runs"].values()), None)
    if run and run["h_norm_first"]:
        lam = run["config"]
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        bins = [i / 40 for i in range(41)]
        ax.hist(run["h_norm_first"], bins=bins, alpha=0.6, label=f"first epoch ({len(run['h_norm_first'])} samples)")
        ax.hist(run["h_norm_last"], bins=bins, alpha=0.6, label=f"last epoch ({len(run['h_norm_last'])} samples)")
        for value, name in ((lam["lambda_l"], "lambda_l"), (lam["lambda_u"], "lambda_u")):
            ax.axvline(value, color="k", ls="--", lw=1)
            ax.text(value, ax.get_ylim()[1] * 0.95, f" {name}={value}", fontsize=8, va="top")
        ax.set_xlabel("H' (normalised disagreement entropy of P and Q on a generated sample)")
        ax.set_ylabel("samples")
        ax.set_title("Adaptability of the generated samples")
        ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(os.path.join(out_dir, "h_norm.png"))
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    for key in ("bits", "wbits", "abits"):
        value = getattr(args, key)
        if value is not None and not 2 <= value <= 8:
            raise SystemExit(f"quantize: --{key} must be in 2..8, got {value}")
    for key in ("epochs", "iters_per_epoch", "batch_size"):
        if getattr(args, key) < 1:
            raise SystemExit(f"quantize: --{key.replace('_', '-')} must be >= 1, got {getattr(args, key)}")
    if not 0 <= args.warmup_epochs < args.epochs:
        raise SystemExit(f"quantize: --warmup-epochs must be in [0, --epochs), got {args.warmup_epochs}")
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
