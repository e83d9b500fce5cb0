"""``adadfq-fast bench step``: one full game iteration (G step + Q step), both schedules, in one run.

Random-initialised models (no weights needed): the teacher P from the model zoo, Q = quantize_model(P), and the
generator of the model's kind. Ranges are calibrated on a few generated batches and frozen, and Q is stepped: the
steady state of epochs >= 4, which is 99% of a run. Variants, timed interleaved (median ms per iteration):

* ``faithful``: the official order on the ``reference`` backend, i.e. the authors' math as chains of PyTorch ops
  (what their code computes, minus its defects); this is the baseline of the speedup;
* ``faithful_fused``: the official order on the fused kernels (isolates the kernels' share);
* ``fast``: the fast schedule on the fused kernels, channels_last (as the trainer runs it);
* ``fast_bf16`` (opt-in ``--bf16``): fast with G and P under bfloat16 autocast;
* ``fast_cuda_graph`` (``--device cuda`` only): fast with the whole iteration captured into a CUDA graph and
  replayed (``capture=cuda_graph`` in the trainer; :class:`adadfq_fast.game.cuda_graph.CudaGraphStep`).
On cuda the result also carries ``full_run_minutes_estimate``: 400 x 200 iterations (the CIFAR preset) at the
fastest variant's time per iteration. It counts every iteration as a steady-state one (the 4 warm-up epochs
step G only, so they cost less) and leaves out the per-epoch evaluations.
Writes ``{"faithful_ms", "fast_ms", "speedup", ...}`` plus the settings and every variant's time to JSON.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
from typing import Optional, Sequence

import torch

import adadfq_fast

from .ops import environment
from .timer import time_variants


def build_players(model: str, batch: int, wbits: int, abits: int, device: str, seed: int = 0):
    from adadfq_fast.game.generators import build_generator
    from adadfq_fast.models import build_model
    from adadfq_fast.nn import freeze_act_ranges, quantize_model

    torch.manual_seed(seed)
    teacher = build_model(model).to(device).eval()
    cifar = "cifar" in model or model.startswith("resnet20")
    img, classes = (32, 10 if model.endswith("10") else 100) if cifar else (224, 1000)
    channels = 3
    classes = _num_classes(teacher, classes)
    example = torch.zeros(1, channels, img, img, device=device)
    q = quantize_model(teacher, wbits, abits, example_input=example).to(device).eval()
    g = build_generator("cifar" if cifar else "imagenet", classes, img, channels).to(device)
    with torch.no_grad():  # calibrate the ranges on generated images, then freeze (the steady state)
        for _ in range(2):
            q(g(torch.randn(batch, 100, device=device), torch.randint(0, classes, (batch,), device=device)))
    freeze_act_ranges(q)
    return teacher, g, q, classes


def _num_classes(model, default):
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return last[-1].out_features if last else default


def make_game(players, schedule: str, batch: int, autocast_dtype=None, channels_last: bool = False):
    from adadfq_fast.game.schedules import GameStep, LossWeights

    teacher, g, q, classes = (copy.deepcopy(p) if isinstance(p, torch.nn.Module) else p for p in players)
    opt_g = torch.optim.Adam(g.parameters(), lr=1e-3, betas=(0.5, 0.999))
    opt_q = torch.optim.SGD(q.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4, nesterov=True)
    return GameStep(teacher, g, q, opt_g, opt_q, classes, 100, batch, LossWeights(), schedule=schedule,
                    autocast_dtype=autocast_dtype, channels_last=channels_last)


def run_bench_step(model="resnet20_cifar10", batch=16, wbits=4, abits=4, device="cpu", iters=10,
                   bf16=False, seed=0) -> dict:
    players = build_players(model, batch, wbits, abits, device, seed)
    variants = {
        "faithful": ("faithful", "reference", None),
        "faithful_fused": ("faithful", "auto", None),
        "fast": ("fast", "auto", None),
    }
    if bf16:
        variants["fast_bf16"] = ("fast", "auto", torch.bfloat16)
    fns = {}
    graph_error = None
    for name, (schedule, backend, dtype) in variants.items():
        # fast as the trainer runs it: channels_last (cfg.channels_last, on by default for fast)
        game = make_game(players, schedule, batch, dtype, channels_last=schedule == "fast")

        def run(game=game, backend=backend):
            with adadfq_fast.use_backend(backend):
                game(step_q=True, ranges_frozen=True)

        fns[name] = run
    if torch.device(device).type == "cuda":
        from adadfq_fast.game.cuda_graph import CudaGraphStep

        graph_step = CudaGraphStep(make_game(players, "fast", batch, None, channels_last=True))

        def run_graph():
            graph_step(step_q=True, ranges_frozen=True)

        # CudaGraphStep runs 3 eager iterations and records on the 4th call: 5 calls before timing keep both out
        # of it. A capture that fails is reported in the result; the other variants are still timed.
        try:
            for _ in range(5):
                run_graph()
            fns["fast_cuda_graph"] = run_graph
        except Exception as e:  # noqa: BLE001 - recorded in the results
            graph_error = f"{type(e).__name__}: {e}"[:1000]
            print(f"fast_cuda_graph failed: {graph_error}")
    times = time_variants(fns, device=device, repeats=iters, min_seconds=0.0, warmup=2)
    result = dict(
        faithful_ms=times["faithful"], fast_ms=times["fast"], speedup=times["faithful"] / times["fast"],
        variants_ms=times, model=model, batch=batch, wbits=wbits, abits=abits, device=device, iters=iters,
        environment=environment(device),
    )
    if graph_error:
        result["fast_cuda_graph_error"] = graph_error
    if "fast_cuda_graph" in times:
        result["fast_cuda_graph_ms"] = times["fast_cuda_graph"]
        result["speedup_cuda_graph"] = times["faithful"] / times["fast_cuda_graph"]
        result["full_run_minutes_estimate"] = 400 * 200 * min(times.values()) / 60000.0
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="adadfq-fast bench step", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet20_cifar10")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--wbits", type=int, default=4)
    p.add_argument("--abits", type=int, default=4)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--iters", type=int, default=10, help="timed iterations per variant (median reported)")
    p.add_argument("--bf16", action="store_true", help="also time fast with bfloat16 autocast for G and P")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    r = run_bench_step(args.model, args.batch, args.wbits, args.abits, args.device, args.iters, args.bf16)
    print(f"{args.model} batch {args.batch} W{args.wbits}A{args.abits} on {args.device}:")
    for name, ms in r["variants_ms"].items():
        print(f"  {name:<15} {ms:9.2f} ms/iter   {r['faithful_ms'] / ms:5.2f}x vs faithful")
    if "full_run_minutes_estimate" in r:
        print(f"  400 x 200 iterations at the fastest variant: about {r['full_run_minutes_estimate']:.1f} min "
              "(steady-state iterations, evaluations left out)")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(r, f, indent=1)
        print(f"wrote {args.json}")
    return 0
