"""``adadfq-fast quantize``: the main job. Quantize a real pretrained network without data, evaluate on real data.

With no arguments: the shipped ResNet-20 Fashion-MNIST teacher (``adadfq_fast/weights``), W4A4, on CPU, a budget
that finishes in under 10 minutes on a 2-core machine. It runs, on the same teacher and seed:

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
        "Fashion-MNIST teacher at W4A4), then evaluation on the real test set: FP teacher, calibration only, "
        "GDFQ, AdaDFQ.")
    p.add_argument("--model", default="resnet20", help="zoo name of the teacher (default: resnet20)")
    p.add_argument("--checkpoint", default=None,
                   help="teacher weights (default: the shipped Fashion-MNIST ResNet-20 when --model/--dataset are "
                   "the defaults)")
    p.add_argument("--dataset", default="fashion-mnist", help="real test set: fashion-mnist, cifar10, cifar100")
    p.add_argument("--data-root", default=None, help="folder with the dataset (default: the standard places)")
    p.add_argument("--bits", type=int, default=None, help="weight and activation bits (sets both)")
    p.add_argument("--wbits", type=int, default=4)
    p.add_argument("--abits", type=int, default=4)
    p.add_argument("--method", default="all", choices=["all", *METHODS], help="which games to run")
    p.add_argument("--epochs", type=int, default=10, help="epochs of each game")
    p.add_argument("--iters-per-epoch", type=int, default=100)
    p.add_argument("--warmup-epochs", type=int, default=2,
                   help="epochs training only G while Q's ranges are set (ranges freeze after them)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--q-lr", type=float, default=1e-4, help="Q's SGD learning rate (spec: 1e-4)")
    p.add_argument("--g-lr", type=float, default=1e-3, help="G's Adam learning rate (spec: 1e-3)")
    p.add_argument("--schedule", default="fast", choices=["fast", "faithful"])
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
        g_lr=args.g_lr,
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
    table = format_table(summary)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table + "\n")
    print("\n" + table)
    if not args.no_plots:
        for path in plot(summary, args.out):
            print(f"plot: {path}")
    print(f"\nwrote {os.path.join(args.out, 'summary.json')} ({total_s / 60:.1f} min in all)")
    return summary


def format_table(summary: dict) -> str:
    cfg = summary["config"]
    teacher = summary["teacher_acc"]
    rows = [("FP teacher", teacher, None, "")]
    w, a = cfg["wbits"], cfg["abits"]
    if summary["calib_acc"] is not None:
        rows.append((f"W{w}A{a} calibration only", summary["calib_acc"], None, "ranges from generated samples"))
    for method, label in (("gdfq", "GDFQ"), ("adadfq", "AdaDFQ")):
        run = summary["runs"].get(method)
        if run is not None:
            rows.append((f"W{w}A{a} {label}", run["final_acc"], run["iters_per_s"],
                         f"best {run['best_acc']:.2f}% at epoch {run['best_epoch'] + 1}" if run["best_acc"] is not None
                         else ""))
    iters = cfg["epochs"] * cfg["iters_per_epoch"]
    lines = [f"{cfg['model']} on {cfg['dataset']} ({cfg.get('test_images')} test images), {iters} game iterations "
             f"per method (batch {cfg['batch_size']}, {cfg['schedule']} schedule, seed {cfg['seed']})", "",
             "| network | top-1 (%) | vs FP | game iters/s | note |", "|---|---:|---:|---:|---|"]
    for name, acc, speed, note in rows:
        delta = "" if name == "FP teacher" or acc is None else f"{acc - teacher:+.2f}"
        acc_s = "n/a" if acc is None else f"{acc:.2f}"
        lines.append(f"| {name} | {acc_s} | {delta} | {'' if speed is None else f'{speed:.2f}'} | {note} |")
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
