"""Whole-iteration CUDA-graph capture of the ``fast`` schedule (opt-in: ``capture="cuda_graph"``).

On a GPU at batch 16 the iteration is launch-bound: hundreds of small kernels (G, P, Q forward and backward, the
fused losses, two optimiser steps) each cost more to launch than to run. Once Q's ranges are frozen and Q is
stepped, every iteration launches the same kernels on tensors of the same shapes, so it can be recorded once
and replayed: :class:`CudaGraphStep` wraps a :class:`~adadfq_fast.game.schedules.GameStep` and

* runs the warm-up phases (ranges unfrozen, or Q not stepped yet) and any non-CUDA device eagerly, unchanged;
* in the steady phase, runs ``warmup_iters`` eager iterations on a side stream (they allocate the optimisers'
  state and let cuDNN/cuBLAS pick their algorithms: capture forbids both), then records one iteration into a
  ``torch.cuda.CUDAGraph`` and replays it for every later call. Recording does not execute anything, so the
  capturing call replays once: every call is exactly one game iteration, as without capture;
* re-records when a learning rate changes (optimisers read lr as a Python number, which the graph bakes in).

Requirements it sets up: G's Adam uses ``capturable=True`` (its step count lives on the device). The sampling
(``torch.randn``/``randint``) is graph-safe: PyTorch advances the Philox offset on every replay, so each replay
draws fresh noise. The metrics returned are clones (the graph's output tensors are overwritten by the next
replay). Nothing here synchronises with the host.

CI has no GPU: tests/test_cuda_graph_step.py holds the GPU test (a captured run against two eager ones, skipped
without a GPU). On an H200 (benchmarks/gpu_check.sh) the captured run's G and Q equalled the eager run's bit for
bit, and the captured ResNet-20 batch-16 iteration took 3.75 ms against 17-24 ms eager.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import Tensor

from .schedules import GameStep


class CudaGraphStep:
    def __init__(self, step: GameStep, warmup_iters: int = 3):
        if step.schedule != "fast":
            raise ValueError("CUDA-graph capture needs schedule='fast' (faithful calls backward() on P and Q, "
                             "whose gradient buffers change between iterations)")
        if step.after_q_forward is not None or step.reduce_grads is not None:
            raise ValueError("CUDA-graph capture is single-process only (the distributed hooks issue collectives "
                             "that the graph would have to record)")
        self.step = step
        self.warmup_iters = warmup_iters
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.static_out: Dict[str, Tensor] = {}
        self._lrs: Optional[List[float]] = None
        self._eager_steady = 0
        for group in step.opt_g.param_groups:  # Adam's step count must live on the device inside a graph
            if "capturable" in group and step.device.type == "cuda":
                group["capturable"] = True

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def _current_lrs(self) -> List[float]:
        return [float(g["lr"]) for opt in (self.step.opt_g, self.step.opt_q) for g in opt.param_groups]

    def __call__(self, step_q: bool, ranges_frozen: bool) -> Dict[str, Tensor]:
        if self.step.device.type != "cuda" or not (step_q and ranges_frozen):
            return self.step(step_q, ranges_frozen)
        if self.graph is not None and self._current_lrs() != self._lrs:
            self.graph, self._eager_steady = None, 0  # an lr milestone: record again with the new value
        if self.graph is None and self._eager_steady < self.warmup_iters:
            self._eager_steady += 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                out = self.step(True, True)
            torch.cuda.current_stream().wait_stream(side)
            return out
        if self.graph is None:
            self._record()
        self.graph.replay()
        return {k: v.clone() for k, v in self.static_out.items()}

    def _record(self) -> None:
        # Gradients are assigned (p.grad = g) inside the step; drop the eager ones so the graph's pool owns them.
        for opt in (self.step.opt_g, self.step.opt_q):
            opt.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.static_out = self.step(True, True)
        self.graph = graph
        self._lrs = self._current_lrs()
