"""What reaches Q during AdaDFQ's game: L_Q, the gradient per layer against weight decay's pull, and how much of
the gradient arrives through activations the frozen ranges clamp (where the faithful identity STE still passes it).

    python benchmarks/q_gradients.py                     # W4A4 and W3A3, faithful and ste=clipped, seed 0
    python benchmarks/q_gradients.py --bits 4 --modes faithful --measure-iters 50

Each case builds the main job's players (`adadfq-fast quantize` defaults: the shipped Fashion-MNIST ResNet-20,
batch 16, Q lr 1e-4, SGD momentum 0.9, weight decay 1e-4), runs its warm-up (G only, ranges updating), then
--measure-iters game iterations during which it records, at every Q step: L_Q; for every parameter tensor of Q the
norm of the gradient the optimiser receives and weight decay's term wd * ||w||; and per activation site the share
of activations above the frozen x_max. Writes benchmarks/results/q_gradients.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections import defaultdict

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def measure(bits: int, mode: str, args) -> dict:
    from adadfq_fast import quantize_job
    from adadfq_fast.data import dataset_info
    from adadfq_fast.game.trainer import Trainer
    from adadfq_fast.models import build_model
    from adadfq_fast.nn import QuantAct

    qargs = quantize_job._parser().parse_args(
        ["--bits", str(bits), "--seed", str(args.seed), "--iters-per-epoch", str(args.iters_per_epoch),
         "--warmup-epochs", str(args.warmup_epochs), "--epochs", str(args.warmup_epochs + 1)]
        + (["--ste", "clipped"] if mode == "ste=clipped" else [])
        + (["--act-range-update", "standard"] if mode == "act_range_update=standard" else []))
    qargs.wbits = qargs.abits = bits
    info = dataset_info(qargs.dataset)
    teacher = build_model(qargs.model, num_classes=info["num_classes"], in_channels=info["in_channels"],
                          in_size=info["in_size"], checkpoint=quantize_job._teacher_source(qargs))
    cfg = quantize_job._config(qargs, info, "adadfq", args.work)
    tr = Trainer(cfg, teacher, run_dir=None, progress=False, method="adadfq")
    for epoch in range(cfg.warmup_epochs):
        tr.train_epoch(epoch)
    from adadfq_fast.nn import freeze_act_ranges

    freeze_act_ranges(tr.Q)
    names = {id(p): n for n, p in tr.Q.named_parameters()}
    wd, lr = cfg.q_weight_decay, cfg.q_lr
    grad_norms = defaultdict(list)
    weight_norms = {}

    def pre_step(opt, a, k):
        for group in opt.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    grad_norms[names[id(p)]].append(p.grad.norm().item())
                    weight_norms[names[id(p)]] = p.detach().norm().item()

    hook = tr.opt_q.register_step_pre_hook(pre_step)
    clamped = defaultdict(list)
    sites = [(n, m) for n, m in tr.Q.named_modules() if isinstance(m, QuantAct)]
    act_hooks = [m.register_forward_pre_hook(
        lambda mod, a, n=n: clamped[n].append((a[0] > mod.x_max).float().mean().item())) for n, m in sites]
    losses = []
    start = time.perf_counter()
    for _ in range(args.measure_iters):
        out = tr.step(step_q=True, ranges_frozen=True)
        losses.append(out["loss_q"].item())
    seconds = time.perf_counter() - start
    hook.remove()
    for h in act_hooks:
        h.remove()
    floor = -cfg.temperature**2 * math.log(cfg.num_classes)
    layers = []
    for name, norms in grad_norms.items():
        g = statistics.fmean(norms)
        w = weight_norms[name]
        layers.append(dict(param=name, grad_norm=g, weight_norm=w, wd_pull=wd * w, grad_over_wd=g / (wd * w) if w else None,
                           rel_step=lr * g / w if w else None))
    return dict(bits=bits, mode=mode, seed=args.seed, iters=args.measure_iters, seconds=seconds,
                loss_q_mean=statistics.fmean(losses), loss_q_min=min(losses), loss_q_max=max(losses),
                loss_floor=floor, lr=lr, weight_decay=wd, layers=layers,
                clamped_share={n: statistics.fmean(v) for n, v in clamped.items()})


def displacement(run_dir: str) -> dict:
    """How far a finished `adadfq-fast quantize` run moved Q's AdaDFQ weights from P's (Q starts as P), per tensor
    relative to P's norm, against what weight decay alone would move them: steps x lr x wd / (1 - momentum)
    (the momentum's steady-state gain; an upper bound for a pull that keeps its direction)."""
    from adadfq_fast.nn import load_q_checkpoint

    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    run = summary["runs"]["adadfq"]
    cfg = run["config"]
    p_state = torch.load(summary["config"]["teacher_checkpoint"], map_location="cpu", weights_only=True)
    p_state = p_state.get("state_dict", p_state)
    q, _ = load_q_checkpoint(run["checkpoint"])
    rel = {}
    for k, v in q.state_dict().items():
        if k in p_state and isinstance(v, torch.Tensor) and v.is_floating_point() and "running" not in k:
            rel[k] = ((v - p_state[k]).norm() / p_state[k].norm().clamp_min(1e-12)).item()
    steps = (cfg["epochs"] - cfg["warmup_epochs"]) * cfg["iters_per_epoch"]
    wd_only = steps * cfg["q_lr"] * cfg["q_weight_decay"] / (1 - cfg["q_momentum"])
    return dict(run=run_dir, bits=cfg["wbits"], fixes=", ".join(
        f"{k}={cfg[k]}" for k, d in (("ste", "identity"), ("act_range_update", "faithful")) if cfg[k] != d)
        or "faithful", seed=cfg["seed"], q_steps=steps, median=statistics.median(rel.values()),
        max=max(rel.values()), max_param=max(rel, key=rel.get), wd_only=wd_only,
        calib_acc=summary["calib_acc"], adadfq_acc=summary["adadfq_acc"])


def _fmt(x, spec=".3g"):
    return "n/a" if x is None else format(x, spec)


def build_md(cases, command, displacements=()) -> str:
    out = ["What reaches Q in AdaDFQ's game (main job's players: Fashion-MNIST ResNet-20, batch 16, SGD lr 1e-4, "
           "momentum 0.9, weight decay 1e-4), measured over the first game iterations after the warm-up.", ""]
    out += ["| bits | mode | L_Q mean (min..max) | L_Q - (-T^2 ln C) | median ‖g‖ / (wd ‖w‖) over tensors | "
            "min..max | median lr ‖g‖/‖w‖ per step | share of activations above x_max: mean, max over sites |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for c in cases:
        ratios = sorted(l["grad_over_wd"] for l in c["layers"] if l["grad_over_wd"] is not None)
        steps = sorted(l["rel_step"] for l in c["layers"] if l["rel_step"] is not None)
        shares = list(c["clamped_share"].values())
        share = f"{statistics.fmean(shares):.2g}, {max(shares):.2g}" if shares else "n/a"
        out.append(f"| W{c['bits']}A{c['bits']} | {c['mode']} | {c['loss_q_mean']:.2f} ({c['loss_q_min']:.2f}.."
                   f"{c['loss_q_max']:.2f}) | {c['loss_q_mean'] - c['loss_floor']:.3g} | "
                   f"{statistics.median(ratios):.3g} | {ratios[0]:.3g}..{ratios[-1]:.3g} | "
                   f"{statistics.median(steps):.2e} | {share} |")
    for c in cases:
        out += ["", f"Per tensor, W{c['bits']}A{c['bits']} {c['mode']} ({c['iters']} iterations, seed {c['seed']}): "
                "mean gradient norm ‖g‖, weight decay's term wd ‖w‖, their ratio.", "",
                "| Q parameter | ‖g‖ | ‖w‖ | wd ‖w‖ | ‖g‖ / (wd ‖w‖) |", "|---|---:|---:|---:|---:|"]
        for l in c["layers"]:
            out.append(f"| {l['param']} | {l['grad_norm']:.3g} | {l['weight_norm']:.3g} | {l['wd_pull']:.3g} | "
                       f"{_fmt(l['grad_over_wd'])} |")
        out += ["", "Share of activations above the frozen x_max per site (their gradient passes the identity STE "
                "unchanged, though the forward clamped them):", "",
                ", ".join(f"{n.replace('features.', '').replace('.quant.0', '')} {v:.2g}"
                          for n, v in c["clamped_share"].items())]
    if displacements:
        out += ["", "How far the game moved Q from P (finished `adadfq-fast quantize` runs): ‖w_Q - w_P‖ / ‖w_P‖ per "
                "tensor, against weight decay alone (steps x lr x wd / (1 - momentum)).", "",
                "| run | bits | mode | Q steps | median over tensors | max (tensor) | weight decay alone | "
                "calibration -> AdaDFQ top-1 |", "|---|---|---|---:|---:|---:|---:|---|"]
        for d in displacements:
            out.append(f"| {os.path.basename(d['run'])} | W{d['bits']}A{d['bits']} | {d['fixes']} | {d['q_steps']} | "
                       f"{d['median']:.2e} | {d['max']:.2e} ({d['max_param']}) | {d['wd_only']:.1e} | "
                       f"{d['calib_acc']:.2f} -> {d['adadfq_acc']:.2f} |")
    out += ["", f"Regenerate: `{command}`"]
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bits", type=int, nargs="+", default=[4, 3])
    p.add_argument("--modes", nargs="+", default=["faithful", "ste=clipped"],
                   choices=["faithful", "ste=clipped", "act_range_update=standard"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iters-per-epoch", type=int, default=100)
    p.add_argument("--warmup-epochs", type=int, default=2)
    p.add_argument("--measure-iters", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default=os.path.join("runs", "q_gradients"))
    p.add_argument("--results", default=os.path.join(HERE, "results"))
    p.add_argument("--md-only", action="store_true", help="only rewrite the .md from the existing .json")
    p.add_argument("--displacement", nargs="+", default=None, metavar="RUN_DIR",
                   help="add (to the existing .json/.md) how far finished quantize runs moved Q from P")
    args = p.parse_args(argv)
    if args.md_only or args.displacement:
        path = os.path.join(args.results, "q_gradients.json")
        with open(path) as f:
            saved = json.load(f)
        if args.displacement:
            saved["displacement"] = [displacement(d) for d in args.displacement]
            saved["displacement_command"] = "python benchmarks/q_gradients.py " + " ".join(
                sys.argv[1:] if argv is None else argv)
            with open(path, "w") as f:
                json.dump(saved, f, indent=1)
        command = saved["command"] + ("`; `" + saved["displacement_command"] if saved.get("displacement") else "")
        with open(os.path.join(args.results, "q_gradients.md"), "w") as f:
            f.write(build_md(saved["cases"], command, saved.get("displacement", ())) + "\n")
        return 0
    torch.set_num_threads(args.threads)
    cases = []
    for bits in args.bits:
        for mode in args.modes:
            cases.append(measure(bits, mode, args))
            print(f"[q_gradients] W{bits}A{bits} {mode}: {cases[-1]['seconds']:.0f} s", flush=True)
    command = "python benchmarks/q_gradients.py " + " ".join(sys.argv[1:] if argv is None else argv)
    os.makedirs(args.results, exist_ok=True)
    md = build_md(cases, command.strip())
    with open(os.path.join(args.results, "q_gradients.md"), "w") as f:
        f.write(md + "\n")
    with open(os.path.join(args.results, "q_gradients.json"), "w") as f:
        json.dump({"command": command.strip(), "cases": cases}, f, indent=1)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
