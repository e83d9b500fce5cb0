"""``adadfq-fast bench int --device cuda``: the integer model on a GPU against the float16 channels_last model,
each in its fastest form: eager, replayed from a CUDA graph (batch 1: where launches dominate) and under
``torch.compile`` (the throughput batch). The speedup that counts is ``integer_vs_best_fp16``: the best integer
variant against the best float16 one at the same batch. Nothing touches CUDA at import; ``adadfq_fast.bench.int`` holds the command line
and the CPU benchmark."""
from __future__ import annotations

import copy
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

from .int import MODELS, _build_fp, _build_integer, _profile_lines, environment, profile_layers
from .timer import time_variants


# ---------------------------------------------------------------------------------------------------------------
# GPU: integer (eager, CUDA graph) vs float16 channels_last (eager, torch.compile)
# ---------------------------------------------------------------------------------------------------------------
CUDA_MODELS = ("resnet20_cifar", "resnet18_imagenet")


def triton_tiles() -> List[Dict]:
    """The int_conv2d tiles the Triton launcher's tuning picked so far (empty without Triton)."""
    try:
        from adadfq_fast.kernels.int_conv2d import tuned_tiles
    except Exception:  # noqa: BLE001 - no Triton: nothing was tuned
        return []
    return tuned_tiles()


class Fp16GraphRunner:
    """The float16 model's forward captured into a CUDA graph, called like ``CudaGraphRunner``: copy the input
    into the static buffer, replay, clone the output (so both captured variants pay the same copies)."""

    def __init__(self, model, example, warmup_iters: int = 3):
        self.static_input = example.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.no_grad(), torch.cuda.stream(side):
            for _ in range(warmup_iters):
                model(self.static_input)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        self.graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(self.graph):
            self.static_output = model(self.static_input)

    def __call__(self, x):
        self.static_input.copy_(x)
        self.graph.replay()
        return self.static_output.clone()


def best_ratio(times: Dict[str, float]) -> Optional[float]:
    """Best float16 time over best integer time (both over every variant measured), or None without both."""
    fp16 = [v for k, v in times.items() if k.startswith("fp16")]
    integer = [v for k, v in times.items() if k.startswith("integer")]
    return min(fp16) / min(integer) if fp16 and integer else None


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
    * ``fp16_channels_last_graph`` (batch 1): that model replayed from a CUDA graph (``Fp16GraphRunner``: the
      captured baseline, what ``torch.compile(mode="reduce-overhead")`` would replay, without its compile time);
    * ``fp16_channels_last_compiled`` (the throughput batch): ``torch.compile`` (default mode, ``dynamic=False``)
      of that model, for the models in ``compile_models`` (the compile time is recorded, not timed).
    ``integer_vs_best_fp16`` compares the fastest of each side.

    Each record is handed to ``on_record`` as soon as it is measured (the caller saves partial results).
    ``device="cpu"`` runs the same code without the CUDA graph and with the CPU timer: a smoke test of this
    function on machines without a GPU, not a benchmark."""
    from adadfq_fast import _backend
    from adadfq_fast.deploy import CudaGraphRunner

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
            extra: Dict = {"backend": _backend.describe("int_conv2d", dev)}
            # Every int_conv2d backend of this device, so the numbers say which one `auto` should prefer.
            backends = [b for b in _backend.implementations("int_conv2d", dev.type) if b != "reference"]
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
                    try:
                        fp16_runner = Fp16GraphRunner(fp16, x16)
                        fns["fp16_channels_last_graph"] = lambda: fp16_runner(x16)
                    except Exception as e:  # noqa: BLE001 - recorded in the results
                        extra["fp16_graph_error"] = f"{type(e).__name__}: {e}"[:500]
                if compiled is not None and compile_error is None and batch > 1:
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
                times = time_variants(fns, device="cuda" if on_gpu else "cpu", repeats=n, min_seconds=0,
                                      cuda_events=on_gpu)
            rec = {"model": name, "zoo": zoo, "input": [cin, *size], "batch": batch, "device": device, "ms": times,
                   "images_per_s": {k: 1000.0 * batch / v for k, v in times.items()},
                   "integer_vs_fp16": times["fp16_channels_last"] / times["integer"],
                   "compiled": name in compile_models, "compile_error": compile_error, **extra}
            if "integer_cuda_graph" in times:
                rec["integer_cuda_graph_vs_fp16"] = times["fp16_channels_last"] / times["integer_cuda_graph"]
            rec["integer_vs_best_fp16"] = best_ratio(times)
            rec["best"] = {side: min((k for k in times if k.startswith(side)), key=times.get)
                           for side in ("integer", "fp16")}
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
           "channels_last, eager; fp16 graph (batch 1) = that model replayed from a CUDA graph the same way; "
           "compiled (throughput batch) = `torch.compile` of it (default mode, dynamic=False). Median ms per forward "
           "(CUDA events), interleaved rounds. best vs best = fastest fp16 variant / fastest integer variant (the "
           "per-backend integer runs included). torch.ao int8 is CPU-only (not run). " + data.get("note", ""), "",
           "| model | input | batch | backend | integer ms | integer graph ms | fp16 CL ms | fp16 CL graph ms | "
           "fp16 CL compiled ms | integer vs fp16 eager | best vs best (integer / fp16 variant) |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["records"]:
        ms = r["ms"]

        def f(k):
            return f"{ms[k]:.3f}" if k in ms else "n/a"

        best = r.get("integer_vs_best_fp16")
        best_s = (f"{best:.2f}x ({r['best']['integer']} / {r['best']['fp16']})" if best is not None else "n/a")
        out.append(f"| {r['model']} | {'x'.join(map(str, r['input']))} | {r['batch']} | {r.get('backend', '')} | "
                   f"{f('integer')} | {f('integer_cuda_graph')} | {f('fp16_channels_last')} | "
                   f"{f('fp16_channels_last_graph')} | {f('fp16_channels_last_compiled')} | "
                   f"{r['integer_vs_fp16']:.2f}x | {best_s} |")
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
        if r.get("fp16_graph_error"):
            out.append(f"\nfloat16 CUDA-graph capture failed on {r['model']}: {r['fp16_graph_error']}")
        if r.get("compile_error"):
            out.append(f"\ntorch.compile failed on {r['model']}: {r['compile_error']}")
    out += _profile_lines(data.get("profiles", {}))
    return "\n".join(out) + "\n"
