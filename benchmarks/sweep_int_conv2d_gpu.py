"""Per-layer sweep of the int_conv2d backends on a GPU, and the measured policy ``auto`` reads from it.

For every integer convolution of ResNet-18 (224 px) and ResNet-20 (CIFAR) at the given batches: each backend
(``cuda`` dp4a, ``triton``, and ``triton_tc`` with every tile of its layer class, ``int_mm`` included for 1x1
convs) is checked bit for bit against the reference on the first images, then timed, next to float16 channels_last
F.conv2d (cuDNN) of the same shape. Times are GPU times: each variant is captured ``--calls`` times into one CUDA
graph and replayed (no Python launch cost, which a model replayed from a graph does not pay either; where a capture
fails, CUDA events around eager calls instead). Medians over ``--repeats`` interleaved rounds.

Writes ``--out``/sweep_int_conv2d.json and .md (the per-layer table, whole-network sums per variant) and the policy
file (``--policy-out``, format ``adadfq_fast._backend.POLICY_FORMAT``): per layer and batch, the fastest backend
and the fastest triton_tc tile. ``benchmarks/gpu_check.sh`` runs it and ships the policy as
``adadfq_fast/policies/int_conv2d_sm90.json``.

  python benchmarks/sweep_int_conv2d_gpu.py --out DIR [--policy-out FILE] [--models resnet18 resnet20]
      [--batches 256 1] [--layers l1.conv3x3 ...] [--repeats 10] [--calls 10] [--budget SECONDS]

On CPU (``--device cpu`` under TRITON_INTERPRET=1) the same code runs with the CPU timer: a test of the plumbing,
not a measurement.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F

import adadfq_fast
from adadfq_fast import _backend
from adadfq_fast.bench.ops import environment
from adadfq_fast.bench.shapes import INT_CONV_RESNET18, INT_CONV_RESNET20

MODELS = {"resnet18": INT_CONV_RESNET18, "resnet20": INT_CONV_RESNET20}
EPILOGUE = dict(relu=True, out_bits=4, out_scale=3.0, out_zero=8.0)
FP16 = "F.conv2d fp16 channels_last"


def _inputs(batch, c, h, o, k, device):
    x = torch.randint(0, 16, (batch, c, h, h), dtype=torch.uint8, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    q = torch.randint(-8, 8, (o, c, k, k), dtype=torch.int8, device=device)
    q = q.contiguous(memory_format=torch.channels_last)
    z = torch.randint(-7, 9, (o,), dtype=torch.int32, device=device)
    mult = torch.rand(o, device=device) * 0.02 / (c * k * k) ** 0.5 + 1e-4
    bias = torch.randn(o, device=device)
    return x, q, z, mult, bias


def _graphed(fn: Callable, calls: int) -> Callable:
    """``fn`` run ``calls`` times inside one CUDA graph; the returned function replays it."""
    fn()  # compile / tune outside the capture
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return graph.replay


def time_gpu(fns: Dict[str, Callable], calls: int, repeats: int, device: str) -> Dict[str, float]:
    """Median ms per call of each variant (see the module docstring); variants that fail are left out."""
    if device != "cuda":
        from adadfq_fast.bench.timer import time_variants

        return time_variants(fns, device=device, repeats=repeats, min_seconds=0, warmup=1)
    runs, per = {}, {}
    for name, fn in fns.items():
        try:
            runs[name], per[name] = _graphed(fn, calls), calls
        except Exception as e:  # noqa: BLE001 - capture refused: eager calls between events instead
            print(f"  {name}: CUDA-graph capture failed ({type(e).__name__}: {str(e)[:120]}); timing eagerly")
            torch.cuda.synchronize()
            runs[name], per[name] = fn, 1
    for run in runs.values():
        run()
    torch.cuda.synchronize()
    samples: Dict[str, List[float]] = {k: [] for k in runs}
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(repeats):
        for name, run in runs.items():
            start.record()
            run()
            end.record()
            end.synchronize()
            samples[name].append(start.elapsed_time(end) / per[name])
    return {k: statistics.median(v) for k, v in samples.items()}


def _tc_candidates(tc, c, o, k, stride, n_pixels, device):
    """Every tile of the layer's class, fitted to it, deduplicated; int_mm where it can run."""
    k_total = c * k * k
    min_k = tc.INTERPRET_MIN_BLOCK_K if tc._INTERPRET else tc.GPU_MIN_BLOCK_K
    out = []
    for cfg in tc.TC_CONFIGS[tc.layer_class(k, k, stride, stride, o)]:
        if cfg == tc.INT_MM:
            x_probe = torch.empty(0, device=device)
            if k == 1 and tc.int_mm_eligible(x_probe, n_pixels, c, o):
                out.append(cfg)
            continue
        out.append(tc.fit_config(cfg, c, k_total, o, min_k))
    if tc._INTERPRET:  # one tile: the interpreter's (a plumbing test, not a measurement)
        out = [o_ for o_ in out if o_ == tc.INT_MM][:1] + [tc.fit_config(tc.INTERPRET_CONFIG, c, k_total, o, min_k)]
    return list(dict.fromkeys(out))


def tile_name(cfg) -> str:
    return cfg if isinstance(cfg, str) else "x".join(map(str, cfg))


def sweep_layer(model, name, c, h, o, k, stride, count, batch, args, backends, tc) -> Dict:
    dev = args.device
    pad = k // 2
    x, q, z, mult, bias = _inputs(batch, c, h, o, k, dev)
    conv_args = (x, q, z, [stride] * 2, [pad] * 2, [1, 1], 1, mult, bias, None, 1.0, EPILOGUE["relu"],
                 EPILOGUE["out_bits"], EPILOGUE["out_scale"], EPILOGUE["out_zero"])
    ref_args = (x[:4],) + conv_args[1:]
    want = _backend.backend_kernel("int_conv2d", "reference")(*ref_args)
    ho = (h + 2 * pad - k) // stride + 1
    n_pixels = batch * ho * ho
    fns, exact, errors = {}, {}, {}
    for b in backends:
        fn = _backend.backend_kernel("int_conv2d", b)
        variants = {b: None} if b != "triton_tc" else {
            f"triton_tc[{tile_name(cfg)}]": cfg for cfg in _tc_candidates(tc, c, o, k, stride, n_pixels, dev)}
        for variant, cfg in variants.items():
            extra = {} if cfg is None else {"config": cfg}
            try:
                got = fn(*ref_args, **extra)
                exact[variant] = bool(torch.equal(got.cpu(), want.cpu()))
            except Exception as e:  # noqa: BLE001 - recorded, the sweep goes on
                errors[variant] = f"{type(e).__name__}: {e}"[:300]
                continue
            fns[variant] = (lambda fn=fn, extra=extra: fn(*conv_args, **extra))
    xf = x.to(torch.float16)
    wf = q.to(torch.float16).contiguous(memory_format=torch.channels_last)
    fns[FP16] = lambda: F.conv2d(xf, wf, None, stride, pad)
    bad = [v for v, ok in exact.items() if not ok]
    for v in bad:  # never time (or choose) a variant that is not bit-exact
        fns.pop(v, None)
    with torch.no_grad():
        times = time_gpu(fns, args.calls, args.repeats, dev)
    macs = n_pixels * o * c * k * k
    tc_times = {v: ms for v, ms in times.items() if v.startswith("triton_tc[")}
    per_backend = {b: ms for b, ms in times.items() if b in backends}
    best_tile = None
    if tc_times:
        best_variant = min(tc_times, key=tc_times.get)
        per_backend["triton_tc"] = tc_times[best_variant]
        best_tile = best_variant[len("triton_tc["):-1]
        best_tile = best_tile if best_tile == "int_mm" else [int(v) for v in best_tile.split("x")]
    best = min(per_backend, key=per_backend.get) if per_backend else None
    rec = dict(model=model, layer=name, batch=batch, C=c, H=h, O=o, k=k, stride=stride, count=count, macs=macs,
               ms=times, bit_exact=exact, errors=errors, best_backend=best, best_tile=best_tile,
               backend_ms=per_backend)
    line = ", ".join(f"{v} {ms:.4f}" for v, ms in sorted(times.items(), key=lambda kv: kv[1]))
    print(f"[{model} b{batch}] {name}: best {best} (tile {best_tile}); {line}"
          + (f"; NOT EXACT: {bad}" if bad else "") + (f"; errors: {list(errors)}" if errors else ""), flush=True)
    return rec


def policy_from(records: List[Dict], device: str) -> Dict:
    cap = list(torch.cuda.get_device_capability()) if device == "cuda" else None
    layers = []
    for r in records:
        if r["best_backend"] is None:
            continue
        pad = r["k"] // 2
        layers.append(dict(model=r["model"], layer=r["layer"], batch=r["batch"], x=[r["C"], r["H"], r["H"]],
                           weight=[r["O"], r["C"], r["k"], r["k"]], stride=[r["stride"]] * 2, padding=[pad] * 2,
                           dilation=[1, 1], groups=1, backend=r["best_backend"], tile=r["best_tile"],
                           ms={b: round(ms, 5) for b, ms in r["backend_ms"].items()}))
    name = torch.cuda.get_device_name() if device == "cuda" else device
    return {"format": _backend.POLICY_FORMAT, "device": name, "capability": cap, "torch": torch.__version__,
            "created": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "note": "written by benchmarks/sweep_int_conv2d_gpu.py: per layer and batch the fastest int_conv2d "
                    "backend and triton_tc tile (GPU times from CUDA-graph replays)", "layers": layers}


def markdown(records: List[Dict], env: Dict) -> str:
    out = [f"# int_conv2d per-layer sweep ({env.get('device', '')}, torch {env.get('torch', '')})", "",
           "GPU time per call (CUDA-graph replays), median ms; TOPS = 2 * MACs / time; vs fp16 = cuDNN float16 "
           "channels_last F.conv2d time / this time. Epilogue: per-channel scale/bias, ReLU, 4-bit requant.", "",
           "| model | batch | layer | C->O | H | best | best tile | cuda ms | triton ms | triton_tc ms | fp16 ms | "
           "best TOPS | best vs fp16 |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        bm = r["backend_ms"]
        f16 = r["ms"].get(FP16)

        def f(v):
            return f"{v:.4f}" if v is not None else "n/a"

        best_ms = bm.get(r["best_backend"]) if r["best_backend"] else None
        tops = f"{2 * r['macs'] / best_ms / 1e9:.1f}" if best_ms else "n/a"
        vs = f"{f16 / best_ms:.2f}x" if best_ms and f16 else "n/a"
        out.append(f"| {r['model']} | {r['batch']} | {r['layer']} | {r['C']}->{r['O']} | {r['H']} | "
                   f"{r['best_backend']} | {tile_name(r['best_tile']) if r['best_tile'] else ''} | {f(bm.get('cuda'))} | "
                   f"{f(bm.get('triton'))} | {f(bm.get('triton_tc'))} | {f(f16)} | {tops} | {vs} |")
    totals: Dict = {}
    for r in records:  # one forward pass's integer convs: each layer times its occurrences
        key = (r["model"], r["batch"])
        t = totals.setdefault(key, {})
        for b, ms in list(r["backend_ms"].items()) + [("fp16", r["ms"].get(FP16))]:
            if ms is not None:
                t[b] = t.get(b, 0.0) + ms * r["count"]
        if r["best_backend"]:
            t["best per layer"] = t.get("best per layer", 0.0) + r["backend_ms"][r["best_backend"]] * r["count"]
    out += ["", "| model | batch | variant | integer convs of one forward, ms |", "|---|---|---|---|"]
    for (model, batch), t in totals.items():
        out += [f"| {model} | {batch} | {v} | {ms:.3f} |" for v, ms in t.items()]
    bad = [(r["model"], r["batch"], r["layer"], v) for r in records for v, ok in r["bit_exact"].items() if not ok]
    errs = [(r["model"], r["batch"], r["layer"], v, e) for r in records for v, e in r["errors"].items()]
    if bad:
        out += ["", "NOT BIT-EXACT (left out of the timing and the policy): " + "; ".join(map(str, bad))]
    if errs:
        out += ["", "Errors: " + "; ".join(map(str, errs))]
    return "\n".join(out) + "\n"


def sweep_plan(args) -> List[tuple]:
    """(model, batch) pairs in sweep order: what the targets need first, so a sweep cut short by its budget has
    measured them (ResNet-18 at the throughput batch, ResNet-20 at batch 1)."""
    if args.plan:
        plan = []
        for item in args.plan:
            model, _, batch = item.partition(":")
            if model not in MODELS or not batch.isdigit() or int(batch) < 1:
                raise SystemExit(f"--plan: expected MODEL:BATCH with MODEL in {list(MODELS)}, got {item!r}")
            plan.append((model, int(batch)))
        return plan
    pairs = [(m, b) for b in args.batches for m in args.models]
    first = [("resnet18", max(args.batches)), ("resnet20", min(args.batches))]
    return [p for p in first if p in pairs] + [p for p in pairs if p not in first]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--batches", nargs="*", type=int, default=[256, 1])
    p.add_argument("--plan", nargs="*", default=None, metavar="MODEL:BATCH",
                   help="the (model, batch) pairs in sweep order (default: the targets first: resnet18 at the largest "
                        "batch, resnet20 at the smallest, then the rest of --models x --batches)")
    p.add_argument("--layers", nargs="*", default=None, help="only these layer names")
    p.add_argument("--backends", nargs="*", default=["cuda", "triton", "triton_tc"])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--calls", type=int, default=10, help="calls per CUDA graph (GPU time per call = replay / calls)")
    p.add_argument("--budget", type=float, default=0, help="stop starting new layers after this many seconds (0: no limit)")
    p.add_argument("--out", required=True, help="folder for sweep_int_conv2d.json/.md")
    p.add_argument("--policy-out", default=None, help="the policy JSON (default: OUT/int_conv2d_policy.json)")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device")
    tc = importlib.import_module("adadfq_fast.kernels.int_conv2d_tc")
    dev_type = torch.device(args.device).type
    available = _backend.implementations("int_conv2d", dev_type)
    backends = [b for b in args.backends if b in available]
    skipped = {b: _backend.why_unavailable(b, dev_type) or "no int_conv2d kernel" for b in args.backends
               if b not in backends}
    if skipped:
        print(f"skipped backends: {skipped}")
    os.makedirs(args.out, exist_ok=True)
    policy_path = args.policy_out or os.path.join(args.out, "int_conv2d_policy.json")
    env = dict(environment(args.device), skipped=skipped)
    env["device"] = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    records: List[Dict] = []
    t0 = time.perf_counter()

    def save():
        with open(os.path.join(args.out, "sweep_int_conv2d.json"), "w") as f:
            json.dump(dict(environment=env, epilogue=EPILOGUE, records=records), f, indent=1)
        with open(os.path.join(args.out, "sweep_int_conv2d.md"), "w") as f:
            f.write(markdown(records, env))
        with open(policy_path, "w") as f:
            json.dump(policy_from(records, args.device), f, indent=1)

    for model, batch in sweep_plan(args):
        for name, c, h, o, k, stride, count in MODELS[model]:
            if args.layers and name not in args.layers:
                continue
            if args.budget and time.perf_counter() - t0 > args.budget:
                print(f"budget of {args.budget:.0f} s spent: {model} b{batch} {name} not swept")
                continue
            try:
                records.append(sweep_layer(model, name, c, h, o, k, stride, count, batch, args, backends, tc))
            except Exception as e:  # noqa: BLE001 - one layer's failure must not end the sweep
                print(f"[{model} b{batch}] {name}: FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
            save()  # a sweep cut short still leaves what it measured
            if args.device == "cuda":
                torch.cuda.empty_cache()
    save()
    print(markdown(records, env))
    print(f"policy: {policy_path} ({len(policy_from(records, args.device)['layers'])} layers)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
