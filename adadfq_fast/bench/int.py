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
import copy
import json
import os
import platform
import statistics
import time
import types
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from .timer import time_variants

MODELS = {
    # name: (zoo name, in_channels, in_size, num_classes, throughput batch)
    "resnet20_fmnist": ("resnet20", 1, (28, 28), 10, 256),
    "resnet20_cifar": ("resnet20", 3, (32, 32), 10, 256),
    "resnet18_imagenet": ("resnet18", 3, (224, 224), 1000, 16),
}
WEIGHTS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "weights", "resnet20_fashion_mnist.pt")


def _build_fp(name: str) -> nn.Module:
    from adadfq_fast.models import build_model

    zoo, cin, size, classes, _ = MODELS[name]
    if name == "resnet20_fmnist" and os.path.isfile(WEIGHTS):
        return build_model(zoo, num_classes=classes, in_channels=cin, in_size=size, checkpoint=WEIGHTS)
    fp = build_model(zoo, num_classes=classes, in_channels=cin, in_size=size)
    # Realistic statistics: BN running statistics measured on random images.
    for m in fp.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    fp.train()
    with torch.no_grad():
        fp(torch.randn(8 if size[0] > 64 else 64, cin, *size))
    return fp.eval()


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
    """Median ms per layer of the integer model's forward (its prepared layer calls, timed one by one)."""
    kernel = model.conv_kernel(x.device)
    x = x.contiguous(memory_format=torch.channels_last)  # as IntegerModel.forward hands it to the first layer
    samples = [[] for _ in model.layers]
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)  # a GPU layer is timed to its last kernel
    with torch.no_grad():
        for it in range(repeats + 1):
            regs = [None] * model.num_registers
            regs[0] = x
            for i, run in enumerate(model._runners):
                sync()
                t0 = time.perf_counter()
                run(regs, kernel)
                sync()
                if it:
                    samples[i].append((time.perf_counter() - t0) * 1e3)
    lines = model.summary()
    return [{"layer": lines[i].strip(), "ms": sorted(s)[len(s) // 2]} for i, s in enumerate(samples)]


# ---------------------------------------------------------------------------------------------------------------
def run_bench(names: Sequence[str], repeats: int, batch_override: Optional[int], progress: bool = True) -> Dict:
    results = []
    profiles = {}
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
            if progress:
                print(f"[{name}] batch {batch}: timing {', '.join(fns)} ...", flush=True)
            with torch.no_grad():
                times = time_variants(fns, repeats=repeats if batch == 1 else max(3, repeats // 4),
                                      min_seconds=0.5 if batch == 1 else 0.0, warmup=2)
            fp32_best = min(times["fp32_nchw"], times["fp32_channels_last"])
            rec = {"model": name, "zoo": zoo, "input": [cin, *size], "batch": batch,
                   "threads": torch.get_num_threads(), "ms": times,
                   "fp32_best_ms": fp32_best, "ao_error": ao_error,
                   "integer_vs_fp32": fp32_best / times["integer"],
                   "integer_vs_ao": (times["ao_int8"] / times["integer"]) if ao is not None else None,
                   "images_per_s": {k: 1000.0 * batch / v for k, v in times.items()}}
            results.append(rec)
            with torch.no_grad():
                profiles[f"{name}_b{batch}_t{torch.get_num_threads()}"] = profile_layers(integer, x, repeats=3 if batch > 1 else 10)
        if progress:
            print(f"[{name}] done", flush=True)
    return {"records": results, "profiles": profiles}


def environment() -> Dict:
    return {"torch": torch.__version__, "python": platform.python_version(), "cpu": platform.processor() or
            platform.machine(), "threads": torch.get_num_threads(), "quantized_engine": "x86",
            "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}


def markdown(data: Dict) -> str:
    env = data["environment"]
    out = [f"# bench int (CPU {env['cpu']}, torch {env['torch']}, threads {env['threads']}, {env['time']}, load "
           f"average at the end {', '.join(f'{v:.1f}' for v in env.get('load_average', ()))})", "",
           "Integer model = `adadfq_fast.deploy.export` of the W4A4 Q; fp32 = eager float32 (best of NCHW and "
           "channels_last); ao int8 = torch.ao eager-mode static quantization (x86). Median ms per forward, "
           "interleaved rounds in one run; speedup = other / integer.", "",
           "| model | input | threads | batch | integer ms | fp32 NCHW ms | fp32 CL ms | ao int8 ms | integer img/s | "
           "vs fp32 | vs ao int8 |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["records"]:
        ms = r["ms"]
        ao = f"{ms['ao_int8']:.2f}" if "ao_int8" in ms else "n/a"
        vs_ao = f"{r['integer_vs_ao']:.2f}x" if r["integer_vs_ao"] else "n/a"
        out.append(f"| {r['model']} | {'x'.join(map(str, r['input']))} | {r['threads']} | {r['batch']} | "
                   f"{ms['integer']:.2f} | "
                   f"{ms['fp32_nchw']:.2f} | {ms['fp32_channels_last']:.2f} | {ao} | "
                   f"{r['images_per_s']['integer']:.0f} | {r['integer_vs_fp32']:.2f}x | {vs_ao} |")
    errors = {r["model"]: r["ao_error"] for r in data["records"] if r["ao_error"]}
    for model, err in errors.items():
        out.append(f"\ntorch.ao failed on {model}: {err}")
    out += ["", "Batch-1 latency ratio integer / fp32: " + ", ".join(
        f"{r['model']} ({r['threads']} thr) {r['ms']['integer'] / r['fp32_best_ms']:.2f}"
        for r in data["records"] if r["batch"] == 1)]
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


# ---------------------------------------------------------------------------------------------------------------
# GPU: integer (eager, CUDA graph) vs float16 channels_last (eager, torch.compile)
# ---------------------------------------------------------------------------------------------------------------
CUDA_MODELS = ("resnet20_cifar", "resnet18_imagenet")


def time_variants_cuda(fns: Dict[str, Callable[[], object]], repeats: int = 30, warmup: int = 3) -> Dict[str, float]:
    """Median ms per call on the GPU: CUDA events around each call, rounds interleaved over the variants.

    The events measure from when the GPU reaches the start event to when it finishes the call's last kernel, with
    the queue drained before each call, so a launch-bound call (batch 1, eager) counts its launch gaps."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    torch.cuda.synchronize()
    samples: Dict[str, list] = {k: [] for k in fns}
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    for _ in range(repeats):
        for name, fn in fns.items():
            torch.cuda.synchronize()
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples[name].append(start.elapsed_time(end))
    return {k: statistics.median(v) for k, v in samples.items()}


def triton_tiles() -> List[Dict]:
    """The int_conv2d tiles the Triton launcher's tuning picked so far (empty without Triton)."""
    try:
        from adadfq_fast.kernels.int_conv2d import tuned_tiles
    except Exception:  # noqa: BLE001 - no Triton: nothing was tuned
        return []
    return tuned_tiles()


def _with_backend(backend: str, model, x):
    from adadfq_fast import use_backend

    with use_backend(backend):
        return model(x)


def run_bench_cuda(names: Sequence[str], repeats: int, batch_override: Optional[int], compile_models: Sequence[str],
                   progress: bool = True, on_record: Optional[Callable[[Dict], None]] = None,
                   device: str = "cuda", profiles: Optional[Dict] = None) -> Dict:
    """Per model and batch (1, then the throughput batch): median ms of

    * ``integer``: the exported W4A4 integer model on cuda, eager (the backend ``auto`` picks on cuda);
    * ``integer_cuda_graph`` (batch 1): the same replayed by ``CudaGraphRunner`` (copy in, replay, clone out);
    * ``fp16_channels_last``: the float model in float16, channels_last weights and input, eager;
    * ``fp16_channels_last_compiled``: ``torch.compile`` (default mode, ``dynamic=False``) of that model, for the
      models in ``compile_models`` (the compile time is recorded, not timed).

    Each record is handed to ``on_record`` as soon as it is measured (the caller saves partial results).
    ``device="cpu"`` runs the same code without the CUDA graph and with the CPU timer: a smoke test of this
    function on machines without a GPU, not a benchmark."""
    from adadfq_fast import _backend
    from adadfq_fast.deploy import CudaGraphRunner
    from adadfq_fast.deploy.modules import cuda_auto_int_conv2d

    dev = torch.device(device)
    on_gpu = dev.type == "cuda"
    results = []
    profiles: Dict = {} if profiles is None else profiles
    for name in names:
        zoo, cin, size, classes, _ = MODELS[name]
        big = batch_override or 256
        if progress:
            print(f"[{name}] building models (calibration on CPU) ...", flush=True)
        fp = _build_fp(name)
        integer = _build_integer(fp, name).to(dev)
        fp16 = copy.deepcopy(fp).to(dev).half().to(memory_format=torch.channels_last).eval()
        compiled, compile_error = None, None
        if name in compile_models:
            compiled = torch.compile(fp16, dynamic=False)
        for batch in (1, big):
            x = torch.randn(batch, cin, *size, device=dev)
            x16 = x.half().contiguous(memory_format=torch.channels_last)
            fns = {"integer": lambda: integer(x), "fp16_channels_last": lambda: fp16(x16)}
            chosen = integer.conv_kernel(dev)
            extra: Dict = {"backend": "auto: triton for big 3x3, else cuda" if chosen is cuda_auto_int_conv2d
                           else _backend.resolve("int_conv2d", dev)}
            # Every int_conv2d backend of this device, so the numbers say which one `auto` should prefer.
            backends = [b for b in _backend.available_backends(dev.type)
                        if b != "reference" and b in _backend._KERNELS.get("int_conv2d", {})]
            if on_gpu and len(backends) > 1:
                for b in backends:
                    fns[f"integer[{b}]"] = lambda b=b: _with_backend(b, integer, x)
            with torch.no_grad():
                runner = None
                if batch == 1 and on_gpu:
                    try:
                        runner = CudaGraphRunner(integer, x)
                        out_graph, out_eager = runner(x), integer(x)
                        extra["cuda_graph_bit_exact"] = bool(torch.equal(out_graph, out_eager))
                        fns["integer_cuda_graph"] = lambda: runner(x)
                    except Exception as e:  # noqa: BLE001 - recorded in the results
                        extra["cuda_graph_error"] = f"{type(e).__name__}: {e}"[:500]
                if compiled is not None and compile_error is None:
                    t0 = time.perf_counter()
                    try:
                        compiled(x16)
                        if on_gpu:
                            torch.cuda.synchronize()
                        extra[f"compile_s_b{batch}"] = time.perf_counter() - t0
                        fns["fp16_channels_last_compiled"] = lambda: compiled(x16)
                    except Exception as e:  # noqa: BLE001 - recorded in the results
                        compile_error = f"{type(e).__name__}: {e}"[:500]
                if progress:
                    print(f"[{name}] batch {batch}: timing {', '.join(fns)} ...", flush=True)
                n = repeats if batch == 1 else max(3, repeats // 2)
                times = time_variants_cuda(fns, repeats=n) if on_gpu else time_variants(fns, repeats=n, min_seconds=0)
            rec = {"model": name, "zoo": zoo, "input": [cin, *size], "batch": batch, "device": device, "ms": times,
                   "images_per_s": {k: 1000.0 * batch / v for k, v in times.items()},
                   "integer_vs_fp16": times["fp16_channels_last"] / times["integer"],
                   "compiled": name in compile_models, "compile_error": compile_error, **extra}
            if "integer_cuda_graph" in times:
                rec["integer_cuda_graph_vs_fp16"] = times["fp16_channels_last"] / times["integer_cuda_graph"]
            if batch > 1:  # where the time goes: each layer timed alone (synchronised), auto backend
                profiles[f"{name}_b{batch}_{device}"] = profile_layers(integer, x, repeats=3)
            results.append(rec)
            if on_record is not None:
                on_record(rec)
            del runner
        del integer, fp16, compiled
        if on_gpu:
            torch.cuda.empty_cache()
        if progress:
            print(f"[{name}] done", flush=True)
    return {"records": results, "profiles": profiles}


def environment_cuda() -> Dict:
    env = environment()
    env.pop("quantized_engine", None)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    env.update(device="cuda", gpu=gpu, cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return env


def markdown_cuda(data: Dict) -> str:
    env = data["environment"]
    out = [f"# bench int (GPU {env['gpu']}, torch {env['torch']}, CUDA {env['cuda']}, {env['time']})", "",
           "Integer model = `adadfq_fast.deploy.export` of the W4A4 Q on cuda (eager; at batch 1 also replayed from a "
           "CUDA graph by `CudaGraphRunner`, copy in + replay + clone out); fp16 CL = the float model in float16, "
           "channels_last, eager; compiled = `torch.compile` of it (default mode, dynamic=False). Median ms per "
           "forward (CUDA events), interleaved rounds; speedup = fp16 eager / integer. torch.ao int8 is CPU-only "
           "(not run). " + data.get("note", ""), "",
           "| model | input | batch | backend | integer ms | integer graph ms | fp16 CL ms | fp16 CL compiled ms | "
           "integer img/s | fp16 CL img/s | integer vs fp16 | graph vs fp16 |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["records"]:
        ms = r["ms"]

        def f(k):
            return f"{ms[k]:.3f}" if k in ms else "n/a"

        graph_vs = f"{r['integer_cuda_graph_vs_fp16']:.2f}x" if "integer_cuda_graph_vs_fp16" in r else "n/a"
        out.append(f"| {r['model']} | {'x'.join(map(str, r['input']))} | {r['batch']} | {r.get('backend', '')} | "
                   f"{f('integer')} | {f('integer_cuda_graph')} | {f('fp16_channels_last')} | "
                   f"{f('fp16_channels_last_compiled')} | {r['images_per_s']['integer']:.0f} | "
                   f"{r['images_per_s']['fp16_channels_last']:.0f} | {r['integer_vs_fp16']:.2f}x | {graph_vs} |")
    for r in data["records"]:
        per_backend = {k[len("integer["):-1]: v for k, v in r["ms"].items() if k.startswith("integer[")}
        if per_backend:
            out.append(f"\n{r['model']} batch {r['batch']}, integer model per int_conv2d backend: " + ", ".join(
                f"{b} {ms:.3f} ms ({r['ms']['fp16_channels_last'] / ms:.2f}x vs fp16 CL)"
                for b, ms in per_backend.items()))
        if "cuda_graph_bit_exact" in r:
            out.append(f"\n{r['model']} batch {r['batch']}: CUDA-graph logits equal eager bit for bit: "
                       f"{r['cuda_graph_bit_exact']}")
        if r.get("cuda_graph_error"):
            out.append(f"\nCUDA-graph capture failed on {r['model']}: {r['cuda_graph_error']}")
        if r.get("compile_error"):
            out.append(f"\ntorch.compile failed on {r['model']}: {r['compile_error']}")
    out += _profile_lines(data.get("profiles", {}))
    return "\n".join(out) + "\n"


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


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="adadfq-fast bench int", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="cpu: integer vs fp32 eager vs torch.ao int8; cuda: integer (eager, CUDA graph) vs float16 "
                        "channels_last eager and torch.compile")
    p.add_argument("--models", nargs="*", default=None, choices=list(MODELS),
                   help=f"default: all on cpu, {' '.join(CUDA_MODELS)} on cuda")
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
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--md", default=None, help="write the Markdown table here (default: beside --json)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    md_path = args.md or (os.path.splitext(args.json)[0] + ".md" if args.json else None)
    if args.device == "cuda":
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
    for threads in args.threads or [torch.get_num_threads()]:
        torch.set_num_threads(threads)
        part = run_bench(args.models or list(MODELS), args.repeats, args.batch, progress=not args.no_progress)
        data["records"] += part["records"]
        data["profiles"].update(part["profiles"])
    data["environment"] = environment()
    data["environment"]["threads"] = args.threads or [torch.get_num_threads()]
    data["environment"]["load_average"] = os.getloadavg()
    return _report(data, args.json, md_path, markdown(data))
