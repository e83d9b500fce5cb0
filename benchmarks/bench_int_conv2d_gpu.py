"""GPU benchmark of adadfq_fast.int_conv2d (triton and cuda backends) on the integer convolutions of ResNet-18
(224 px) at batch 256, against float16 channels_last F.conv2d (cuDNN) on the same shapes.

Ours: uint8 codes in, conv + per-channel scale/bias + ReLU + requant to 4-bit codes out (the fused epilogue),
channels_last. F.conv2d: float16 in and out, no epilogue (BN folded into its weights, ReLU left out: it favours
F.conv2d). Times are medians of interleaved repetitions (adadfq_fast.bench.timer); TOPS counts 2 * MACs.
Before timing, each backend's output on the first 4 images is compared bit for bit with the reference.

  python benchmarks/bench_int_conv2d_gpu.py [--batch 256] [--repeats 20] [--json PATH]   (PATH.md next to it)
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.nn.functional as F

import adadfq_fast
from adadfq_fast import _backend
from adadfq_fast.bench.int_cuda import triton_tiles
from adadfq_fast.bench.ops import environment
from adadfq_fast.bench.timer import time_variants

from adadfq_fast.bench.shapes import INT_CONV_RESNET18 as RESNET18

QUICK = ("l1.conv3x3", "l3.conv3x3", "l4.proj1x1/2")
EPILOGUE = dict(relu=True, out_bits=4, out_scale=3.0, out_zero=8.0)


def _inputs(batch, c, h, o, k, device):
    x = torch.randint(0, 16, (batch, c, h, h), dtype=torch.uint8, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    q = torch.randint(-8, 8, (o, c, k, k), dtype=torch.int8, device=device)
    q = q.contiguous(memory_format=torch.channels_last)  # the layout the kernels read without a copy
    z = torch.randint(-7, 9, (o,), dtype=torch.int32, device=device)
    mult = torch.rand(o, device=device) * 0.02 / (c * k * k) ** 0.5 + 1e-4
    bias = torch.randn(o, device=device)
    return x, q, z, mult, bias


def _profile(args) -> int:
    shape = {s[0]: s for s in RESNET18}.get(args.profile)
    if shape is None:
        raise SystemExit(f"--profile: unknown layer {args.profile!r}; known: {', '.join(s[0] for s in RESNET18)}")
    _, c, h, o, k, stride, _ = shape
    backend = (args.backends or ["triton"])[0]
    x, q, z, mult, bias = _inputs(args.batch, c, h, o, k, args.device)
    with adadfq_fast.use_backend(backend):
        for _ in range(3):
            adadfq_fast.int_conv2d(x, q, z, stride, k // 2, out_mult=mult, out_bias=bias, **EPILOGUE)
    if args.device == "cuda":
        torch.cuda.synchronize()
    print(f"launched {backend} int_conv2d for {args.profile} (batch {args.batch}) 3 times")
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    p.add_argument("--backends", nargs="*", default=None, help="default: triton, cuda and triton_tc where available")
    p.add_argument("--json", default=None)
    p.add_argument("--profile", default=None, metavar="LAYER",
                   help="no timing: launch LAYER's int_conv2d (first of --backends) 3 times, for a profiler such as "
                        "ncu --launch-skip 2 --launch-count 1 (set ADADFQ_TRITON_TUNE=0: no tuning launches)")
    args = p.parse_args(argv)
    if args.profile:
        return _profile(args)
    dev = args.device
    wanted = args.backends or ["triton", "cuda", "triton_tc"]
    available = _backend.implementations("int_conv2d", torch.device(dev).type)
    backends = [b for b in wanted if b in available]
    skipped = {b: _backend.why_unavailable(b, dev) or "no int_conv2d kernel" for b in wanted if b not in backends}
    shapes = [s for s in RESNET18 if not args.quick or s[0] in QUICK]
    records = []
    for name, c, h, o, k, stride, count in shapes:
        pad = k // 2
        x, q, z, mult, bias = _inputs(args.batch, c, h, o, k, dev)
        xf = x.to(torch.float16)
        wf = q.to(torch.float16)
        ho = (h + 2 * pad - k) // stride + 1
        macs = args.batch * ho * ho * o * c * k * k
        fns = {}
        exact = {}
        with adadfq_fast.use_backend("reference"):
            want = adadfq_fast.int_conv2d(x[:4], q, z, stride, pad, out_mult=mult, out_bias=bias, **EPILOGUE)
        for b in backends:
            def run(b=b):
                with adadfq_fast.use_backend(b):
                    return adadfq_fast.int_conv2d(x, q, z, stride, pad, out_mult=mult, out_bias=bias, **EPILOGUE)
            with adadfq_fast.use_backend(b):
                got = adadfq_fast.int_conv2d(x[:4], q, z, stride, pad, out_mult=mult, out_bias=bias, **EPILOGUE)
            exact[b] = bool(torch.equal(got, want))
            fns[f"int_conv2d[{b}]"] = run
        fns["F.conv2d fp16 channels_last"] = lambda: F.conv2d(xf, wf, None, stride, pad)
        with torch.no_grad():
            times = time_variants(fns, device=dev, repeats=args.repeats)
        base = times["F.conv2d fp16 channels_last"]
        for variant, ms in times.items():
            b = variant[len("int_conv2d["):-1] if variant.startswith("int_conv2d[") else None
            records.append(dict(layer=name, C=c, H=h, O=o, k=k, stride=stride, batch=args.batch, count=count,
                                variant=variant, ms=ms, tops=2 * macs / ms / 1e9, speedup_vs_fp16=base / ms,
                                bit_exact_vs_reference=exact.get(b)))
        print(f"{name}: " + ", ".join(f"{v} {ms:.3f} ms" for v, ms in times.items()), flush=True)
    lines = ["| layer | C->O | H | variant | ms | TOPS | vs fp16 | exact |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['layer']} | {r['C']}->{r['O']} | {r['H']} | {r['variant']} | {r['ms']:.3f} | {r['tops']:.2f} | "
              f"{r['speedup_vs_fp16']:.2f}x | {'' if r['bit_exact_vs_reference'] is None else r['bit_exact_vs_reference']} |"
              for r in records]
    totals = {}
    for r in records:  # one forward pass's integer convs: each layer times its occurrences
        totals[r["variant"]] = totals.get(r["variant"], 0.0) + r["ms"] * r["count"]
    lines += ["", "| whole network (sum over layers x occurrences) | ms |", "|---|---|"]
    lines += [f"| {v} | {ms:.2f} |" for v, ms in totals.items()]
    table = "\n".join(lines) + "\n"
    if skipped:
        table += "\nSkipped backends: " + "; ".join(f"{b}: {why}" for b, why in skipped.items()) + "\n"
    print(table)
    for t in triton_tiles():
        print(f"triton tile for C={t['cin_g']} O={t['cout_g']} k={t['kh']} stride={t['sh']} pixels={t['n_pixels']}: "
              f"BLOCK_M, BLOCK_N, BLOCK_K, warps, stages = {t['tile']}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(dict(environment=environment(dev), epilogue=EPILOGUE, records=records, network_ms=totals,
                           skipped=skipped, triton_tiles=triton_tiles()), f, indent=1)
        with open(os.path.splitext(args.json)[0] + ".md", "w") as f:
            f.write(f"# int_conv2d on {dev}: ResNet-18 layers, batch {args.batch}\n\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
