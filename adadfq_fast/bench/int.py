"""``adadfq-fast bench int``: the exported integer model against float32 eager and torch.ao int8, on CPU.

Per model (ResNet-20 at Fashion-MNIST 1x28x28 and CIFAR 3x32x32 shapes, pytorchcv ResNet-18 at 3x224x224):

* ``integer``: ``adadfq_fast.deploy.export`` of the W4A4 Q (VNNI int_conv2d kernels; the speed does not depend
  on the bit width: every k <= 8 runs the same int8 x uint8 kernels);
* ``fp32``: the full-precision model in eager mode, NCHW and channels_last; the faster one is the baseline;
* ``ao_int8``: torch.ao eager-mode post-training static quantization, x86 backend (QuantStub/DeQuantStub, conv+bn
  (+relu) fused, residual adds as FloatFunctional.add_relu, per-channel weights, calibrated on random images).

Batch-1 latency (median ms) and batch-B throughput (images/s; B = 256 for ResNet-20, 16 for ResNet-18 by
default: a batch of 256 224-px images takes minutes on 2 cores), interleaved rounds so machine noise hits all
variants alike, plus a per-layer profile of the integer model. Writes JSON and Markdown (``--json``, ``--md``).
Weights are random (BN statistics and activation ranges calibrated on random images): speed does not depend on
them; the shipped Fashion-MNIST teacher is used for ResNet-20/Fashion-MNIST when present.

``--device cuda`` (GPU; see ``run_bench_cuda``): the integer model eager (and at batch 1 also replayed from a CUDA
graph, ``adadfq_fast.deploy.CudaGraphRunner``) vs the float16 channels_last model eager and its ``torch.compile``;
ResNet-20 (CIFAR shape) and ResNet-18 (224 px) by default, batch-1 latency and batch-256 throughput, CUDA-event
timing, medians of interleaved rounds. torch.ao int8 is CPU-only and skipped. Nothing touches CUDA at import.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import time
import subprocess
import sys
import tempfile
import types
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from . import int_peers
from .timer import time_variants

MODELS = {
    # name: (zoo name, in_channels, in_size, num_classes, throughput batch)
    "resnet20_fmnist": ("resnet20", 1, (28, 28), 10, 256),
    "resnet20_cifar": ("resnet20", 3, (32, 32), 10, 256),
    "resnet18_imagenet": ("resnet18", 3, (224, 224), 1000, 16),
}
WEIGHTS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "weights", "resnet20_fashion_mnist.pt")


def _build_fp(name: str) -> nn.Module:
    from adadfq_fast.models import build_model, measure_bn_statistics

    zoo, cin, size, classes, _ = MODELS[name]
    if name == "resnet20_fmnist" and os.path.isfile(WEIGHTS):
        return build_model(zoo, num_classes=classes, in_channels=cin, in_size=size, checkpoint=WEIGHTS)
    fp = build_model(zoo, num_classes=classes, in_channels=cin, in_size=size)
    # Realistic statistics: BN running statistics measured on random images.
    return measure_bn_statistics(fp, torch.randn(8 if size[0] > 64 else 64, cin, *size))


def _build_integer(fp: nn.Module, name: str, bits: int = 4):
    from adadfq_fast.deploy import export
    from adadfq_fast.nn import freeze_act_ranges, quantize_model

    _, cin, size, _, _ = MODELS[name]
    q = quantize_model(fp, bits, bits, example_input=torch.zeros(1, cin, *size)).eval()
    with torch.no_grad():
        q(torch.randn(8 if size[0] > 64 else 64, cin, *size))
    freeze_act_ranges(q)
    return export(q).eval()


# ---------------------------------------------------------------------------------------------------------------
# torch.ao eager-mode static quantization
# ---------------------------------------------------------------------------------------------------------------
def _ao_res_unit_forward(self, x):
    y = self.body(x)
    identity = self.identity_conv(x) if self.resize_identity else x
    return self.skip_add.add_relu(y, identity)  # add + ReLU on quantized tensors (a plain `+` fails)


class _AoWrapper(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        from torch.ao.quantization import DeQuantStub, QuantStub

        self.quant, self.model, self.dequant = QuantStub(), model, DeQuantStub()

    def forward(self, x):
        return self.dequant(self.model(self.quant(x)))


def build_ao_int8(fp: nn.Module, example: torch.Tensor, calib_batches: int = 2) -> nn.Module:
    """torch.ao eager-mode PTQ of our CIFAR ResNets / pytorchcv ResNets (x86 backend, per-channel weights)."""
    from torch.ao.nn.quantized import FloatFunctional
    from torch.ao.quantization import convert, fuse_modules, get_default_qconfig, prepare

    torch.backends.quantized.engine = "x86"
    m = copy.deepcopy(fp).eval()
    for mod in m.modules():
        name = type(mod).__name__
        if name == "ResUnit":
            mod.skip_add = FloatFunctional()
            mod.activ = nn.Identity()
            mod.forward = types.MethodType(_ao_res_unit_forward, mod)
        elif name in ("ConvBN", "ConvBlock") and isinstance(getattr(mod, "bn", None), nn.BatchNorm2d):
            act = getattr(mod, "activ", None)
            if isinstance(act, nn.ReLU) and getattr(mod, "activate", True):
                fuse_modules(mod, [["conv", "bn", "activ"]], inplace=True)
            else:
                fuse_modules(mod, [["conv", "bn"]], inplace=True)
    w = _AoWrapper(m).eval()
    w.qconfig = get_default_qconfig("x86")
    prepare(w, inplace=True)
    with torch.no_grad():
        for _ in range(calib_batches):
            w(torch.randn_like(example))
    convert(w, inplace=True)
    return w.eval()


# ---------------------------------------------------------------------------------------------------------------
# Integer model profile
# ---------------------------------------------------------------------------------------------------------------
def profile_layers(model, x: torch.Tensor, repeats: int = 5) -> List[Dict]:
    """Median ms per layer of the integer model's forward (its prepared layer calls, timed one by one, in order)."""
    kernel = model.conv_kernel(x.device)
    regs = [None] * model.num_registers
    regs[0] = x.contiguous(memory_format=torch.channels_last)  # as IntegerModel.forward hands it to the first layer
    # One round is one forward: each layer reads what the layers before it wrote in this round.
    layers = {i: (lambda run=run: run(regs, kernel)) for i, run in enumerate(model._runners)}
    with torch.no_grad():  # a GPU layer is timed to its last kernel (the timer drains the queue after each call)
        ms = time_variants(layers, device=x.device.type, repeats=repeats, min_seconds=0.0, warmup=1)
    lines = model.summary()
    return [{"layer": lines[i].strip(), "ms": ms[i]} for i in range(len(lines))]


# ---------------------------------------------------------------------------------------------------------------
def _affinity_report() -> Dict:
    """The cores this process may run on, as the OS and as ``taskset -p`` report them (the pinning check)."""
    rep: Dict = {"cores": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None}
    try:
        out = subprocess.run(["taskset", "-cp", str(os.getpid())], capture_output=True, text=True, timeout=5)
        rep["taskset"] = out.stdout.strip().rpartition(":")[2].strip() or out.stderr.strip()
    except (OSError, subprocess.SubprocessError) as e:
        rep["taskset"] = f"unavailable ({type(e).__name__})"
    return rep


def run_bench(names: Sequence[str], repeats: int, batch_override: Optional[int], progress: bool = True,
              peers: bool = True) -> Dict:
    results = []
    profiles = {}
    peer_why = int_peers.available() if peers else {p: "--no-peers" for p in int_peers.PEERS}
    for name in names:
        zoo, cin, size, classes, big = MODELS[name]
        big = batch_override or big
        if progress:
            print(f"[{name}] building models ...", flush=True)
        fp = _build_fp(name)
        fp_cl = copy.deepcopy(fp).to(memory_format=torch.channels_last)
        integer = _build_integer(fp, name)
        ao_error = None
        try:
            ao = build_ao_int8(fp, torch.randn(8 if size[0] > 64 else 32, cin, *size))
        except Exception as e:  # noqa: BLE001 - recorded in the results
            ao, ao_error = None, f"{type(e).__name__}: {e}"
        peer_models, peer_fns, peer_settings = None, {}, {}
        if any(why is None for why in peer_why.values()):
            if progress:
                print(f"[{name}] exporting to ONNX and quantizing with ONNX Runtime (QDQ int8) ...", flush=True)
            peer_models = int_peers.PeerModels(fp, torch.randn(8 if size[0] > 64 else 32, cin, *size))
            peer_fns, peer_settings = peer_models.callables(torch.get_num_threads(),
                                                            [p for p, why in peer_why.items() if why is None])
        for batch in (1, big):
            x = torch.randn(batch, cin, *size)
            x_cl = x.contiguous(memory_format=torch.channels_last)
            fns = {
                "integer": lambda: integer(x),
                "fp32_nchw": lambda: fp(x),
                "fp32_channels_last": lambda: fp_cl(x_cl),
            }
            if ao is not None:
                fns["ao_int8"] = lambda: ao(x)
            x_np = x.numpy()
            for peer, fn in peer_fns.items():
                fns[peer] = (lambda fn=fn: fn(x_np))
            if progress:
                print(f"[{name}] batch {batch}: timing {', '.join(fns)} ...", flush=True)
            with torch.no_grad():
                times = time_variants(fns, repeats=repeats if batch == 1 else max(3, repeats // 4),
                                      min_seconds=0.5 if batch == 1 else 0.0, warmup=2, block=50 if batch == 1 else 1,
                                      block_warmup=10 if batch == 1 else 0)
                y_fp = fp(x)
                # The peers compute the same network: their output's distance to FP32 (relative, max-norm).
                peer_err = {p: float((torch.from_numpy(np.asarray(fn(x_np))) - y_fp).abs().max() /
                                     y_fp.abs().max().clamp_min(1e-12)) for p, fn in peer_fns.items()}
            fp32_best = min(times["fp32_nchw"], times["fp32_channels_last"])
            present = [p for p in int_peers.PEERS if p in times]
            best_peer = min(present, key=lambda p: times[p]) if present else None
            rec = {"model": name, "zoo": zoo, "input": [cin, *size], "batch": batch,
                   "threads": torch.get_num_threads(), "affinity": _affinity_report(), "ms": times,
                   "peers": {p: {"settings": peer_settings.get(p), "skipped": peer_why[p],
                                 "rel_err_vs_fp32": peer_err.get(p)} for p in int_peers.PEERS},
                   "best_peer": best_peer,
                   "integer_vs_best_peer_latency": times["integer"] / times[best_peer] if best_peer else None,
                   "integer_vs_openvino_throughput": (times["openvino_int8"] / times["integer"]
                                                      if "openvino_int8" in times else None),
                   "fp32_best_ms": fp32_best, "ao_error": ao_error,
                   "integer_vs_fp32": fp32_best / times["integer"],
                   "integer_vs_ao": (times["ao_int8"] / times["integer"]) if ao is not None else None,
                   "images_per_s": {k: 1000.0 * batch / v for k, v in times.items()}}
            results.append(rec)
            with torch.no_grad():
                profiles[f"{name}_b{batch}_t{torch.get_num_threads()}"] = profile_layers(integer, x, repeats=3 if batch > 1 else 10)
        if peer_models is not None:
            peer_models.close()
        if progress:
            print(f"[{name}] done", flush=True)
    return {"records": results, "profiles": profiles}


def environment() -> Dict:
    return {"torch": torch.__version__, "python": platform.python_version(), "cpu": platform.processor() or
            platform.machine(), "threads": torch.get_num_threads(), "quantized_engine": "x86",
            "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}


def _ms(ms: Dict, key: str) -> str:
    return f"{ms[key]:.2f}" if key in ms else "n/a"


def markdown(data: Dict) -> str:
    env = data["environment"]
    out = [f"# bench int (CPU {env['cpu']}, torch {env['torch']}, threads {env['threads']}, {env['time']}, load "
           f"average at the end {', '.join(f'{v:.1f}' for v in env.get('load_average', ()))})", "",
           "Integer model = `adadfq_fast.deploy.export` of the W4A4 Q; fp32 = eager float32 (best of NCHW and "
           "channels_last); ao int8 = torch.ao eager-mode static quantization (x86); ORT / OpenVINO int8 = "
           "`onnxruntime.quantization.quantize_static` of the FP32 ONNX export (QDQ, per-channel int8 weights, "
           "uint8 activations) run by ONNX Runtime's CPU provider and by OpenVINO. Median ms per forward, "
           "interleaved rounds in one run; the process is pinned to as many cores as threads. "
           "**int / best peer** = integer ms / the faster peer's ms (lower is better; issue target at batch 1: "
           "<= 0.8); **vs OpenVINO** = OpenVINO ms / integer ms (throughput ratio; target at batch 256: >= 1.0).",
           "", "| model | input | threads | cores | batch | integer ms | ORT int8 ms | OpenVINO int8 ms | ao int8 ms | "
           "fp32 best ms | integer img/s | int / best peer | vs OpenVINO | vs fp32 |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["records"]:
        ms = r["ms"]
        aff = r.get("affinity", {}).get("taskset", "")
        ratio = f"{r['integer_vs_best_peer_latency']:.2f}" if r.get("integer_vs_best_peer_latency") else "n/a"
        vs_ov = f"{r['integer_vs_openvino_throughput']:.2f}x" if r.get("integer_vs_openvino_throughput") else "n/a"
        out.append(f"| {r['model']} | {'x'.join(map(str, r['input']))} | {r['threads']} | {aff} | {r['batch']} | "
                   f"{ms['integer']:.2f} | {_ms(ms, 'ort_int8')} | {_ms(ms, 'openvino_int8')} | "
                   f"{_ms(ms, 'ao_int8')} | {r['fp32_best_ms']:.2f} | {r['images_per_s']['integer']:.0f} | {ratio} | "
                   f"{vs_ov} | {r['integer_vs_fp32']:.2f}x |")
    errors = {r["model"]: r["ao_error"] for r in data["records"] if r["ao_error"]}
    for model, err in errors.items():
        out.append(f"\ntorch.ao failed on {model}: {err}")
    skipped = {p: why for r in data["records"] for p, v in r.get("peers", {}).items() if (why := v["skipped"])}
    for peer, why in skipped.items():
        out.append(f"\n{peer} skipped: {why}")
    settings = {}
    for r in data["records"]:
        for p, v in r.get("peers", {}).items():
            if v.get("settings"):
                settings.setdefault(p, set()).add(
                    ", ".join(f"{k}={val}" for k, val in v["settings"].items() if k != "version"))
    if settings:
        out += ["", "Thread settings the runtimes report back: " + "; ".join(
            f"{p}: " + " | ".join(sorted(v)) for p, v in settings.items())]
    errs = [f"{r['model']} b{r['batch']} {p} {v['rel_err_vs_fp32']:.3f}" for r in data["records"]
            for p, v in r.get("peers", {}).items() if v.get("rel_err_vs_fp32") is not None]
    if errs:
        out += ["", "Peers' output against FP32 (max |diff| / max |fp32|; they compute the same network): "
                + ", ".join(errs)]
    out += _profile_lines(data["profiles"])
    return "\n".join(out) + "\n"


def _profile_lines(profiles: Dict) -> List[str]:
    if not profiles:
        return []
    out = ["", "## Where the integer model's time goes (per layer, median ms)", ""]
    for key, rows in profiles.items():
        total = sum(r["ms"] for r in rows)
        first = rows[0]["ms"]
        head = rows[-1]["ms"]
        convs = sum(r["ms"] for r in rows if " conv " in f" {r['layer']} " and "int w" in r["layer"])
        other = total - first - head - convs
        top = sorted(rows, key=lambda r: -r["ms"])[:3]
        out.append(f"* {key}: sum of layers {total:.2f} ms = first (float) conv {first:.2f} + integer convs "
                   f"{convs:.2f} + head {head:.2f} + other {other:.2f}; largest: "
                   + "; ".join(f"`{t['layer']}` {t['ms']:.2f}" for t in top))
    return out


def _write(data: Dict, json_path: Optional[str], md_path: Optional[str], table: str) -> None:
    if json_path:
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        with open(json_path, "w") as f:
            json.dump(data, f, indent=1)
    if md_path:
        os.makedirs(os.path.dirname(os.path.abspath(md_path)), exist_ok=True)
        with open(md_path, "w") as f:
            f.write(table)


def _report(data: Dict, json_path: Optional[str], md_path: Optional[str], table: str) -> int:
    """Print the table, write the JSON/Markdown files asked for, say where; the command's exit code."""
    print(table)
    _write(data, json_path, md_path, table)
    if json_path or md_path:
        print(f"wrote {', '.join(p for p in (json_path, md_path) if p)}")
    return 0


def _run_child(argv: Sequence[str], threads: int) -> Dict:
    """``bench int`` for one thread count in a fresh process (same arguments otherwise); its JSON records."""
    argv = list(argv)
    keep, skip = [], False
    for a in argv:  # drop --threads/--json/--md and their values: the child gets its own
        if skip and not a.startswith("-"):
            continue
        skip = a in ("--threads", "--json", "--md")
        if not skip:
            keep.append(a)
    with tempfile.TemporaryDirectory(prefix="adadfq_bench_int_") as tmp:
        path = os.path.join(tmp, "part.json")
        cmd = [sys.executable, "-m", "adadfq_fast", "bench", "int", *keep, "--threads", str(threads), "--json", path,
               "--child"]
        subprocess.run(cmd, check=True, stdout=None if "--no-progress" not in keep else subprocess.DEVNULL)
        with open(path) as f:
            return json.load(f)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="adadfq-fast bench int", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="cpu: integer vs fp32 eager vs torch.ao int8; cuda: integer (eager, CUDA graph) vs float16 "
                        "channels_last eager and torch.compile")
    p.add_argument("--models", nargs="*", default=None, choices=list(MODELS),
                   help="default: all on cpu, resnet20_cifar and resnet18_imagenet on cuda")
    p.add_argument("--repeats", type=int, default=20,
                   help="timed rounds at batch 1 (a quarter at the large batch on cpu, half on cuda)")
    p.add_argument("--batch", type=int, default=None,
                   help="throughput batch (default 256; on cpu 16 for ResNet-18)")
    p.add_argument("--threads", type=int, nargs="*", default=None,
                   help="torch thread counts to run (e.g. --threads 1 2; default: torch's default; cpu only)")
    p.add_argument("--compile-models", nargs="*", default=None, choices=list(MODELS),
                   help="cuda: the models whose float16 model is also timed under torch.compile (default: all run)")
    p.add_argument("--no-compile", action="store_true", help="cuda: skip torch.compile")
    p.add_argument("--note", default="", help="cuda: a sentence added to the Markdown (e.g. reduced settings)")
    p.add_argument("--no-peers", action="store_true",
                   help="cpu: skip ONNX Runtime and OpenVINO int8 (by default they run where installed: "
                        "pip install '.[peers]')")
    p.add_argument("--no-pin", action="store_true",
                   help="cpu: do not restrict the process to as many cores as threads while timing a thread count")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # one thread count of a parent run
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--md", default=None, help="write the Markdown table here (default: beside --json)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    md_path = args.md or (os.path.splitext(args.json)[0] + ".md" if args.json else None)
    if args.device == "cuda":
        from .int_cuda import CUDA_MODELS, environment_cuda, markdown_cuda, run_bench_cuda, triton_tiles

        if not torch.cuda.is_available():
            p.error(f"--device cuda: no CUDA device is available (torch.cuda.is_available() is False; torch "
                    f"{torch.__version__}, built with CUDA {torch.version.cuda}); run on a GPU machine, or use "
                    "--device cpu")
        names = args.models or list(CUDA_MODELS)
        compile_models = [] if args.no_compile else (names if args.compile_models is None else args.compile_models)
        data = {"records": [], "profiles": {}, "note": args.note, "environment": environment_cuda(),
                "compile_models": compile_models}

        def save_partial(rec: Dict) -> None:  # a run cut short by a timeout still leaves what it measured
            data["records"].append(rec)
            data["triton_tiles"] = triton_tiles()
            _write(data, args.json, md_path, markdown_cuda(data))

        run_bench_cuda(names, args.repeats, args.batch, compile_models, progress=not args.no_progress,
                       on_record=save_partial, profiles=data["profiles"])
        return _report(data, args.json, md_path, markdown_cuda(data))
    data = {"records": [], "profiles": {}}
    thread_counts = args.threads or [torch.get_num_threads()]
    if len(thread_counts) > 1:
        # One process per thread count: runtimes size their thread pools once per process (OpenVINO kept the
        # pool of the first, pinned, count), so a second count in the same process would not be what it says.
        for threads in thread_counts:
            part = _run_child(argv if argv is not None else sys.argv[2:], threads)
            data["records"] += part["records"]
            data["profiles"].update(part["profiles"])
    else:
        threads = thread_counts[0]
        torch.set_num_threads(threads)
        with (int_peers.pinned_cores(threads) if not args.no_pin else contextlib.nullcontext()):
            part = run_bench(args.models or list(MODELS), args.repeats, args.batch, progress=not args.no_progress,
                             peers=not args.no_peers)
        data["records"] += part["records"]
        data["profiles"].update(part["profiles"])
    data["environment"] = environment()
    data["environment"]["threads"] = args.threads or [torch.get_num_threads()]
    data["environment"]["load_average"] = os.getloadavg()
    if args.child:  # the parent prints the combined table
        _write(data, args.json, None, "")
        return 0
    return _report(data, args.json, md_path, markdown(data))
