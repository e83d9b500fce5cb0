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
                  min_seconds: float = 0.2, warmup: int = 3, block: int = 1) -> Dict[str, float]:
    """Median milliseconds per call of each function. Rounds run every variant in turn (interleaved), `block`
    back-to-back calls each (a sample is their mean): with block > 1 a variant's first call after another runtime's
    is a small share of its sample (thread pools that spin after their last call, e.g. ONNX Runtime's and OpenMP's,
    would otherwise tax whichever variant runs next on the same cores)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    samples: Dict[str, list] = {k: [] for k in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds < repeats or (time.perf_counter() - start < min_seconds and rounds < 10 * repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(block):
                fn()
            _sync(device)
            samples[name].append((time.perf_counter() - t0) * 1e3 / block)
        rounds += 1
    return {k: statistics.median(v) for k, v in samples.items()}
