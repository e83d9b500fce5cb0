"""The benchmarks' one timer: per-call milliseconds of several variants, run in interleaved rounds so machine
noise hits all of them alike. Every benchmark (``adadfq-fast bench ...``, ``benchmarks/*.py``) times through it."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, Hashable, List

import torch


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_samples(fns: Dict[Hashable, Callable[[], object]], device: str = "cpu", repeats: int = 30,
                 min_seconds: float = 0.0, warmup: int = 3, clock: Callable[[], float] = time.perf_counter,
                 cuda_events: bool = False) -> Dict[Hashable, List[float]]:
    """Milliseconds of every call of each function, after ``warmup`` calls each. A round calls every variant once,
    in order (so dependent steps, like the layers of one forward, may be timed as variants); rounds repeat
    ``repeats`` times, and on until ``min_seconds`` have passed (at most ``10 * repeats``).

    On ``device="cuda"`` the queue is drained after every call, so each call starts on an idle GPU; with
    ``cuda_events`` the time is taken by CUDA events around the call (from when the GPU reaches the call to its
    last kernel, launch gaps included) instead of by ``clock`` on the host. ``clock``: e.g. ``time.thread_time``
    for CPU time of this thread only."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    samples: Dict[Hashable, List[float]] = {k: [] for k in fns}
    events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) if cuda_events else None
    start = time.perf_counter()
    rounds = 0
    while rounds < repeats or (time.perf_counter() - start < min_seconds and rounds < 10 * repeats):
        for name, fn in fns.items():
            if events is not None:
                events[0].record()
                fn()
                events[1].record()
                events[1].synchronize()
                samples[name].append(events[0].elapsed_time(events[1]))
                continue
            t0 = clock()
            fn()
            _sync(device)
            samples[name].append((clock() - t0) * 1e3)
        rounds += 1
    return samples


def time_variants(fns: Dict[Hashable, Callable[[], object]], device: str = "cpu", repeats: int = 30,
                  min_seconds: float = 0.2, warmup: int = 3, **options) -> Dict[Hashable, float]:
    """Median milliseconds per call of each function (see :func:`time_samples`)."""
    samples = time_samples(fns, device, repeats, min_seconds, warmup, **options)
    return {k: statistics.median(v) for k, v in samples.items()}
