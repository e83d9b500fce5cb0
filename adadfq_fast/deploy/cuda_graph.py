"""Batch-1 latency on a GPU: an :class:`~adadfq_fast.deploy.IntegerModel` forward replayed from a CUDA graph.

At batch 1 the integer forward is launch-bound: a ResNet is a few dozen small kernels (the float first conv, one
fused ``int_conv2d`` per conv, pooling, the head), each costing more to launch from Python than to run. Every
forward on inputs of one shape launches the same kernels on buffers of the same sizes, so it can be recorded
once into a ``torch.cuda.CUDAGraph`` and replayed with one launch.

:class:`CudaGraphRunner` (opt-in; the model itself is unchanged):

* checks that the model and the example input are on the same CUDA device (CPU models are refused with an error
  that says to run them eagerly: there is no CPU fallback hidden behind the runner);
* runs ``warmup_iters`` eager forwards on a side stream (cuDNN/cuBLAS pick their algorithms and allocate their
  workspaces there: capture forbids both), then records one forward on a static input buffer;
* ``runner(x)`` copies ``x`` into the static input, replays, and returns a clone of the static output (the next
  replay overwrites it); ``x`` must have the captured shape (a different shape is an error: build another
  runner for it). ``runner.replay()`` skips the copy and the clone, for benchmarks that reuse the static buffers.

What is baked in at capture: the kernel backend chosen then (``use_backend``/``set_backend``), the model's
tensors (a model moved or rebuilt afterwards, e.g. ``.to()``, is detected and refused) and the input shape.
Nothing in the replay synchronises with the host.

CI has no GPU: tests/test_deploy_gpu.py compares captured and eager logits bit for bit on a GPU and is skipped
without one; it passed on an H200 (benchmarks/gpu_check.sh), where the captured ResNet-20 forward at batch 1
took 0.47-0.51 ms against 0.75-1.64 ms eager.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from .modules import IntegerModel


def model_device(model: IntegerModel) -> torch.device:
    """The device the integer model's tensors live on (the first layer's weights)."""
    for layer in model.layers:
        for t in layer.tensors.values():
            return t.device
    return torch.device("cpu")


def check_replay_input(x, shape: Tuple[int, ...], device: torch.device) -> None:
    """The checks ``CudaGraphRunner.__call__`` makes on ``x`` against the captured ``shape`` and ``device``."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise ValueError(f"x: expected a float image batch of shape {list(shape)}, got "
                         f"{type(x).__name__ if not isinstance(x, Tensor) else x.dtype}")
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"x: the CUDA graph was captured for input shape {list(shape)}, got {list(x.shape)}; "
                         "a graph replays fixed shapes: build another CudaGraphRunner for this shape (or run "
                         "the model eagerly)")
    if x.device != device:
        raise ValueError(f"x: the CUDA graph runs on {device}, got a tensor on {x.device} (move it there first)")


class CudaGraphRunner:
    """``CudaGraphRunner(model, example_input)``: the integer model's forward captured into a CUDA graph.

    ``model`` is an :class:`IntegerModel` already on a CUDA device (``model.cuda()``); ``example_input`` a float
    image batch on the same device, whose shape every later call must have. Call it like the model:
    ``logits = runner(x)`` (a fresh tensor each call). ``pool`` is passed to ``torch.cuda.graph`` (share a memory
    pool between runners of several shapes)."""

    def __init__(self, model: IntegerModel, example_input: Tensor, warmup_iters: int = 3, pool=None):
        if not isinstance(model, IntegerModel):
            raise TypeError(f"model: expected an adadfq_fast.deploy.IntegerModel, got {type(model).__name__}")
        if not torch.cuda.is_available():
            raise RuntimeError("CudaGraphRunner: CUDA graph capture needs a CUDA device and none is available "
                               "(torch.cuda.is_available() is False); run the IntegerModel eagerly: model(x)")
        device = model_device(model)
        if device.type != "cuda":
            raise ValueError(f"CudaGraphRunner: the model is on {device}; CUDA graph capture needs a model on a CUDA "
                             "device (model.cuda()), or run it eagerly on the CPU: model(x)")
        if not isinstance(example_input, Tensor):
            raise ValueError(f"example_input: expected a tensor, got {type(example_input).__name__}")
        model._check_input(example_input)
        if example_input.device != device:
            raise ValueError(f"example_input: on {example_input.device}, the model is on {device}")
        if warmup_iters < 1:
            raise ValueError("warmup_iters: at least 1 eager forward must run before capture")
        self.model = model
        self.device = device
        self.shape = tuple(example_input.shape)
        self._runners = model._runners  # rebuilt by .to()/.cuda(): the graph would hold the old tensors
        self.static_input = example_input.detach().to(torch.float32).clone()
        current = torch.cuda.current_stream(device)
        side = torch.cuda.Stream(device=device)
        side.wait_stream(current)
        with torch.no_grad(), torch.cuda.stream(side):
            for _ in range(warmup_iters):
                model(self.static_input)
        current.wait_stream(side)
        torch.cuda.synchronize(device)
        self.graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(self.graph, pool=pool):
            self.static_output: Tensor = model(self.static_input)

    def _check_model(self) -> None:
        if self.model._runners is not self._runners:
            raise RuntimeError("CudaGraphRunner: the model was moved or rebuilt since capture (its tensors are "
                               "new); build a new CudaGraphRunner")

    def replay(self) -> Tensor:
        """Replay on whatever ``static_input`` holds; returns ``static_output`` itself (overwritten next replay)."""
        self._check_model()
        self.graph.replay()
        return self.static_output

    def __call__(self, x: Tensor) -> Tensor:
        check_replay_input(x, self.shape, self.device)
        self.static_input.copy_(x)
        return self.replay().clone()

    def pool(self):
        """The graph's memory pool handle (pass as ``pool=`` to share it with another runner)."""
        return self.graph.pool()

    def __repr__(self) -> str:
        return f"CudaGraphRunner(input={list(self.shape)}, device={self.device})"

