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
                 cuda_events: bool = False, block: int = 1, block_warmup: int = 0) -> Dict[Hashable, List[float]]:
    """Milliseconds per call of each function, after ``warmup`` calls each. A round runs every variant in turn, in
    order (so dependent steps, like the layers of one forward, may be timed as variants): ``block_warmup`` untimed
    calls, then ``block`` timed back-to-back calls (a sample is their mean). Rounds repeat ``repeats`` times, and
    on until ``min_seconds`` have passed (at most ``10 * repeats``). Runtimes that keep their own thread pools
    (ONNX Runtime, OpenVINO, OpenMP) leave those threads spinning for a while after their last call, which taxes
    whichever variant runs next on the same cores: the untimed calls let them go idle.

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
            for _ in range(block_warmup):
                fn()
            _sync(device)
            if events is not None:
                events[0].record()
                for _ in range(block):
                    fn()
                events[1].record()
                events[1].synchronize()
                samples[name].append(events[0].elapsed_time(events[1]) / block)
                continue
            t0 = clock()
            for _ in range(block):
                fn()
            _sync(device)
            samples[name].append((clock() - t0) * 1e3 / block)
        rounds += 1
    return samples


def time_variants(fns: Dict[Hashable, Callable[[], object]], device: str = "cpu", repeats: int = 30,
                  min_seconds: float = 0.2, warmup: int = 3, **options) -> Dict[Hashable, float]:
    """Median milliseconds per call of each function (see :func:`time_samples`)."""
    samples = time_samples(fns, device, repeats, min_seconds, warmup, **options)
    return {k: statistics.median(v) for k, v in samples.items()}
