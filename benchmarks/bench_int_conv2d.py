"""Benchmark of adadfq_fast.int_conv2d (cpp backend) on the integer convolutions of ResNet-20 (CIFAR, 32x32) and
ResNet-18 (224 px), against float32 F.conv2d (oneDNN, channels_last) and torch.ao's quantized conv
(torch.ops.quantized.conv2d_relu, x86 engine) on the same shapes.

Every variant computes conv + per-channel scale/bias + ReLU: ours and torch.ao write requantized uint8 codes
(ours: 4-bit codes with W4 weights, the AdaDFQ setting; torch.ao: quint8 with its own requantization),
F.conv2d writes float32 and gets no epilogue (BN folded into its weights, ReLU left out: it favours F.conv2d).
Inputs are channels_last. Timing is CPU time of the calling thread (time.thread_time) with torch and our kernel
on --threads threads (default 1): on this shared, oversubscribed 2-core machine, wall-clock times of multithreaded
calls measure mostly how long the OpenMP workers wait to be scheduled (tens of ms for a 0.1 ms conv), not the
kernels. The variants alternate within each repetition; the tables report the minimum over the repetitions
(medians are in the JSON) and speedups are ratios from the same run.

  python benchmarks/bench_int_conv2d.py [--repeats 9] [--threads 1] [--wall] [--quick] [--out PATH_STEM]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import adadfq_fast
from adadfq_fast import _backend
from adadfq_fast.bench.ops import cpu_name
from adadfq_fast.bench.timer import time_samples
from adadfq_fast.bench.shapes import INT_CONV_RESNET18 as RESNET18, INT_CONV_RESNET20 as RESNET20

SETTINGS = {"resnet20": (RESNET20, (1, 256)), "resnet18": (RESNET18, (1, 64))}


def _time_interleaved(fns: dict, repeats: int, clock) -> tuple:
    """Minimum and median ms per variant (warm-up: first calls pack weights / create oneDNN primitives)."""
    samples = time_samples(fns, repeats=repeats, warmup=2, clock=clock)
    return {k: min(v) for k, v in samples.items()}, {k: statistics.median(v) for k, v in samples.items()}


def _variants(n, c, h, o, k, s):
    pad = k // 2
    x = torch.randint(0, 16, (n, c, h, h), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    q = torch.randint(-8, 8, (o, c, k, k), dtype=torch.int8)
    z = torch.randint(-7, 9, (o,), dtype=torch.int32)
    mult, bias = torch.rand(o) * 0.01 + 1e-3, torch.randn(o)
    fns = {}

    def ours():
        return adadfq_fast.int_conv2d(x, q, z, s, pad, out_mult=mult, out_bias=bias, relu=True, out_bits=4,
                                      out_scale=3.0, out_zero=8.0)

    fns["int_conv2d"] = ours
    xf = x.float().contiguous(memory_format=torch.channels_last)
    wf = torch.randn(o, c, k, k).contiguous(memory_format=torch.channels_last)
    fns["f32_conv2d"] = lambda: F.conv2d(xf, wf, bias, s, pad)
    ao = _torch_ao(xf, wf, bias, s, pad)
    if ao is not None:
        fns["torch_ao_qconv"] = ao
    return fns


def _torch_ao(xf, wf, bias, s, pad):
    """torch.ao quantized conv + ReLU (x86 engine): quint8 activations, per-channel qint8 weights, quint8 out."""
    try:
        torch.backends.quantized.engine = "x86"
        qx = torch.quantize_per_tensor(xf, 0.1, 0, torch.quint8)
        o = wf.shape[0]
        qw = torch.quantize_per_channel(wf, torch.rand(o, dtype=torch.float64) * 0.01 + 1e-3,
                                        torch.zeros(o, dtype=torch.int64), 0, torch.qint8)
        packed = torch.ops.quantized.conv2d_prepack(qw, bias, [s, s], [pad, pad], [1, 1], 1)
        fn = lambda: torch.ops.quantized.conv2d_relu(qx, packed, 0.05, 0)  # noqa: E731
        fn()
        return fn
    except Exception as e:  # noqa: BLE001 - report, run without it
        print(f"torch.ao quantized conv unavailable: {type(e).__name__}: {e}", file=sys.stderr)
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (all variants)")
    ap.add_argument("--wall", action="store_true", help="wall-clock time instead of the thread's CPU time")
    ap.add_argument("--quick", action="store_true", help="batch 1 and 8 only (smoke run)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                  "bench_int_conv2d_cpu"))
    args = ap.parse_args(argv)
    if _backend.resolve("int_conv2d", torch.device("cpu")) != "cpp":
        print("warning: the cpp int_conv2d kernel is not available; timing the reference", file=sys.stderr)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.wall else time.thread_time
    records = []
    for net, (layers, batches) in SETTINGS.items():
        for n in ((1, 8) if args.quick else batches):
            for name, c, h, o, k, s, count in layers:
                with adadfq_fast.use_backend("auto"):
                    ms, ms_median = _time_interleaved(_variants(n, c, h, o, k, s), args.repeats, clock)
                rec = dict(net=net, batch=n, layer=name, C=c, H=h, O=o, k=k, stride=s, count=count, ms=ms,
                           ms_median=ms_median)
                records.append(rec)
                line = "  ".join(f"{v}={t:.3f}ms" for v, t in ms.items())
                print(f"{net} b{n} {name}: {line}  vs f32 {ms['f32_conv2d'] / ms['int_conv2d']:.2f}x", flush=True)
    env = dict(torch=torch.__version__, adadfq_fast=adadfq_fast.__version__, python=platform.python_version(),
               machine=platform.machine(), threads=torch.get_num_threads(), cpu=cpu_name(),
               backend=_backend.resolve("int_conv2d", torch.device("cpu")), command=" ".join(sys.argv),
               clock="wall" if args.wall else "thread CPU time")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(dict(environment=env, records=records), f, indent=1)
    with open(args.out + ".md", "w") as f:
        f.write(_markdown(env, records))
    print(f"wrote {args.out}.json and .md")
    return 0


def _fmt(v):
    return "-" if v is None else f"{v:.3f}"


def _ratio(other, ours):
    return "-" if other is None else f"{other / ours:.2f}x"


def _markdown(env, records) -> str:
    lines = [
        f"# bench int_conv2d ({env['cpu']}, torch {env['torch']}, {env['threads']} threads, {env['clock']},"
        f" backend {env['backend']})",
        "",
        "Minimum ms per call (clock in the title) over interleaved repetitions (medians in the JSON), channels_last inputs. int_conv2d: uint8 codes x int8 (W4)"
        " weights, fused scale/bias/ReLU/4-bit requant. f32_conv2d: F.conv2d (oneDNN) float32 with bias."
        " torch_ao_qconv: torch.ops.quantized.conv2d_relu (x86 engine). Speedup = other / int_conv2d, same run."
        " Shared, loaded CPU: compare ratios, not absolute times.",
        "",
        "| net | batch | layer | C->O | HxW | k/s | int_conv2d ms | f32_conv2d ms | torch_ao_qconv ms | vs f32 | vs torch.ao |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    totals = {}
    for r in records:
        ms = r["ms"]
        ao = ms.get("torch_ao_qconv")
        lines.append(
            f"| {r['net']} | {r['batch']} | {r['layer']} | {r['C']}->{r['O']} | {r['H']}x{r['H']} | {r['k']}/{r['stride']} "
            f"| {_fmt(ms['int_conv2d'])} | {_fmt(ms['f32_conv2d'])} | {_fmt(ao)} "
            f"| {ms['f32_conv2d'] / ms['int_conv2d']:.2f}x | {_ratio(ao, ms['int_conv2d'])} |"
        )
        key = (r["net"], r["batch"])
        tot = totals.setdefault(key, {})
        for v, t in ms.items():
            tot[v] = tot.get(v, 0.0) + t * r["count"]
    lines += [
        "",
        "Whole network (sum over the integer convolutions of one forward pass, each layer shape times its count):",
        "",
        "| net | batch | int_conv2d ms | f32_conv2d ms | torch_ao_qconv ms | vs f32 | vs torch.ao |",
        "|---|---|---|---|---|---|---|",
    ]
    for (net, n), tot in totals.items():
        ao = tot.get("torch_ao_qconv")
        lines.append(
            f"| {net} | {n} | {_fmt(tot['int_conv2d'])} | {_fmt(tot['f32_conv2d'])} | {_fmt(ao)} "
            f"| {tot['f32_conv2d'] / tot['int_conv2d']:.2f}x | {_ratio(ao, tot['int_conv2d'])} |"
        )
    lines.append("")
    lines.append(f"Command: `{env['command']}`")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
