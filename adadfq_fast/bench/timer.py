"""Timing helpers: median of repeated runs, variants interleaved so machine noise hits all of them alike."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict

import torch


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_variants(fns: Dict[str, Callable[[], object]], device: str = "cpu", repeats: int = 30,
                  min_seconds: float = 0.2, warmup: int = 3, block: int = 1, block_warmup: int = 0) -> Dict[str, float]:
    """Median milliseconds per call of each function. Rounds run every variant in turn (interleaved): first
    `block_warmup` untimed calls, then `block` timed back-to-back calls (a sample is their mean). Runtimes that keep
    their own thread pools (ONNX Runtime, OpenVINO, OpenMP) leave those threads spinning for a while after their
    last call, which taxes whichever variant runs next on the same cores: the untimed calls let them go idle."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    samples: Dict[str, list] = {k: [] for k in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds < repeats or (time.perf_counter() - start < min_seconds and rounds < 10 * repeats):
        for name, fn in fns.items():
            for _ in range(block_warmup):
                fn()
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(block):
                fn()
            _sync(device)
            samples[name].append((time.perf_counter() - t0) * 1e3 / block)
        rounds += 1
    return {k: statistics.median(v) for k, v in samples.items()}
