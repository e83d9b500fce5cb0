"""``adadfq-fast bench ops``: every fused op against the reference, forward and forward+backward, at the shapes
of ResNet-20 (CIFAR, batch 16 and 256) and ResNet-18 (ImageNet, batch 16).

"reference" is the spec math as chains of PyTorch ops with autograd (``adadfq_fast.reference``), which is how
the authors' code computes it. Other variants: the backends available on the device, plus on CUDA
``torch.compile(reference)`` and, for weights, aten's ``fake_quantize_per_channel_affine``.
Writes JSON (one record per measurement) and a Markdown table of median times and speedups.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
from typing import Callable, Dict, List, Optional, Sequence

import torch

import adadfq_fast
from adadfq_fast import _backend
from adadfq_fast import reference as ref

from .shapes import SETTINGS
from .timer import time_variants

BITS = 4
OPS = ("fake_quant", "fake_quant_weight", "fake_quant_act", "bn_stat_loss", "adadfq_losses")


def _randn(shape, device, requires_grad=False):
    return torch.randn(shape, device=device).requires_grad_(requires_grad)


def _backward_fn(forward: Callable[[], List[torch.Tensor]], leaves: Sequence[torch.Tensor]) -> Callable[[], None]:
    """forward, then the gradients of the leaves for fixed upstream gradients (made once, outside the timing),
    as inside a network where the next layer hands the gradient in."""
    upstream = [torch.randn_like(o) for o in forward()]

    def run():
        torch.autograd.grad(forward(), leaves, upstream, allow_unused=True)

    return run


def _op_functions(op: str, setting: str, device: str):
    """(forward builder per implementation, leaves) for one op and setting; None if the setting lacks the shapes."""
    feature_shapes, weight_shapes, logits_shape = SETTINGS[setting]
    if op in ("fake_quant", "fake_quant_act", "bn_stat_loss") and not feature_shapes:
        return None
    if op == "fake_quant_weight" and not weight_shapes:
        return None
    if op == "fake_quant":
        xs = [_randn(s, device, True) for s in feature_shapes]
        los = [x.detach().amin() for x in xs]
        his = [x.detach().amax() for x in xs]

        def make(fq):
            return lambda: [fq(x, BITS, lo, hi) for x, lo, hi in zip(xs, los, his)]

        return {"reference": make(ref.fake_quant), "fused": make(adadfq_fast.fake_quant)}, xs
    if op == "fake_quant_weight":
        ws = [_randn(s, device, True) for s in weight_shapes]

        def aten(w):
            flat = w.detach().reshape(w.shape[0], -1)
            lo, hi = flat.amin(1), flat.amax(1)
            scale = (hi - lo).clamp_min(1e-8) / (2**BITS - 1)
            zp = torch.clamp(torch.round(-lo / scale), 0, 2**BITS - 1).to(torch.int32)
            return torch.fake_quantize_per_channel_affine(w, scale, zp, 0, 0, 2**BITS - 1)

        return {
            "reference": lambda: [ref.fake_quant_weight(w, BITS) for w in ws],
            "fused": lambda: [adadfq_fast.fake_quant_weight(w, BITS) for w in ws],
            "aten": lambda: [aten(w) for w in ws],
        }, ws
    if op == "fake_quant_act":
        xs = [_randn(s, device, True) for s in feature_shapes]
        states = [adadfq_fast.new_act_state(device) for _ in xs]

        def make(fqa):
            return lambda: [fqa(x, BITS, st) for x, st in zip(xs, states)]

        return {"reference": make(ref.fake_quant_act), "fused": make(adadfq_fast.fake_quant_act)}, xs
    if op == "bn_stat_loss":
        xs = [_randn(s, device, True) for s in feature_shapes]
        rms = [torch.randn(s[1], device=device) for s in feature_shapes]
        rvs = [torch.rand(s[1], device=device) + 0.5 for s in feature_shapes]
        return {
            "reference": lambda: [ref.bn_stat_loss(xs, rms, rvs)],
            "fused": lambda: [adadfq_fast.bn_stat_loss(xs, rms, rvs)],
        }, xs
    if op == "adadfq_losses":
        t = _randn(logits_shape, device, True)
        s = _randn(logits_shape, device, True)
        y = torch.randint(0, logits_shape[1], (logits_shape[0],), device=device)

        def make(gen_loss, student_loss):
            def run():
                margin, bal = gen_loss(t, s, y)
                return [margin + bal, student_loss(t, s)]

            return run

        return {
            "reference": make(ref.adadfq_generator_loss, ref.adadfq_student_loss),
            "fused": make(adadfq_fast.adadfq_generator_loss, adadfq_fast.adadfq_student_loss),
        }, [t, s]
    raise ValueError(op)


def _with_backend(fn: Callable, backend: str) -> Callable:
    def run():
        with adadfq_fast.use_backend(backend):
            return fn()

    return run


def run_bench(device: str = "cpu", settings: Optional[Sequence[str]] = None, ops: Sequence[str] = OPS,
              repeats: int = 20, compile_reference: Optional[bool] = None, progress: bool = True) -> List[dict]:
    settings = list(settings or SETTINGS)
    # Not the partial backends (triton_tc: its other kernels are triton's, which is timed already).
    backends = [b for b in _backend.available_backends(device) if b != "reference" and b not in _backend.FALLBACK]
    if compile_reference is None:
        compile_reference = device == "cuda"
    records = []
    jobs = [(s, o) for s in settings for o in ops]
    try:
        from tqdm import tqdm

        iterator = tqdm(jobs, desc="bench ops", disable=not progress)
    except ImportError:  # tqdm is a dependency, but a bare environment should still run
        iterator = jobs
    for setting, op in iterator:
        built = _op_functions(op, setting, device)
        if built is None:
            continue
        impls, leaves = built
        for mode in ("fwd", "fwd+bwd"):
            variants: Dict[str, Callable] = {}
            for name, fwd in impls.items():
                call = fwd if mode == "fwd" else _backward_fn(fwd, leaves)
                if name == "fused":
                    for b in backends:
                        variants[b] = _with_backend(call, b)
                elif name == "reference":
                    variants["reference"] = call
                    if compile_reference:
                        compiled = torch.compile(fwd)
                        variants["compiled_reference"] = compiled if mode == "fwd" else _backward_fn(compiled, leaves)
                else:
                    variants[name] = call
            if mode == "fwd":
                variants = {k: _no_grad(v) for k, v in variants.items()}
            times = time_variants(variants, device=device, repeats=repeats)
            for name, ms in times.items():
                records.append(dict(setting=setting, op=op, mode=mode, variant=name, ms=ms,
                                    speedup_vs_reference=times["reference"] / ms))
    return records


def _no_grad(fn):
    def run():
        with torch.no_grad():
            return fn()

    return run


def environment(device: str) -> dict:
    env = dict(torch=torch.__version__, adadfq_fast=adadfq_fast.__version__, python=platform.python_version(),
               machine=platform.machine(), threads=torch.get_num_threads(), device=device)
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
    else:
        env["cpu"] = cpu_name()
    return env


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what platform says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def markdown_table(records: List[dict]) -> str:
    variants = []
    for r in records:
        if r["variant"] not in variants:
            variants.append(r["variant"])
    header = "| setting | op | mode | " + " | ".join(f"{v} ms" for v in variants) + " | " + " | ".join(
        f"{v} speedup" for v in variants if v != "reference") + " |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    rows: Dict[tuple, Dict[str, dict]] = {}
    for r in records:
        rows.setdefault((r["setting"], r["op"], r["mode"]), {})[r["variant"]] = r
    for (setting, op, mode), by_variant in rows.items():
        ms = [f"{by_variant[v]['ms']:.3f}" if v in by_variant else "-" for v in variants]
        sp = [f"{by_variant[v]['speedup_vs_reference']:.2f}x" if v in by_variant else "-"
              for v in variants if v != "reference"]
        lines.append(f"| {setting} | {op} | {mode} | " + " | ".join(ms) + " | " + " | ".join(sp) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="adadfq-fast bench ops", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--settings", nargs="*", default=None, choices=list(SETTINGS), help="default: all")
    p.add_argument("--ops", nargs="*", default=list(OPS), choices=list(OPS))
    p.add_argument("--repeats", type=int, default=20, help="timed rounds per variant (median reported)")
    p.add_argument("--json", default=None, help="write the records here (and a .md table beside it)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--compile-reference", action=argparse.BooleanOptionalAction, default=None,
                   help="also time torch.compile(reference) (default: on CUDA only; each op and mode compiles once)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    records = run_bench(args.device, args.settings, args.ops, args.repeats, args.compile_reference,
                        progress=not args.no_progress)
    table = markdown_table(records)
    print(table)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(dict(environment=environment(args.device), records=records), f, indent=1)
        md_path = os.path.splitext(args.json)[0] + ".md"
        with open(md_path, "w") as f:
            env = environment(args.device)
            f.write(f"# bench ops ({env.get('gpu', env.get('cpu'))}, torch {env['torch']}, {env['threads']} threads)\n\n")
            f.write("Median ms per call; speedup = reference time / variant time, measured in the same run.\n\n")
            f.write(table)
        print(f"wrote {args.json} and {md_path}")
    return 0
