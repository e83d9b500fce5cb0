"""Backend registry and selection.

Every fused op is computed by a *kernel* (``fake_quant``, ``bn_stat_loss_backward``, ...) that each backend may
implement with the same signature as ``adadfq_native::<kernel>`` (see ``ops/native.py``):

* ``reference``: pure PyTorch (``adadfq_fast.reference``); always available, any device.
* ``cpp``: the compiled C++ CPU library (``adadfq_fast._C``); CPU tensors.
* ``cuda``: the compiled CUDA C++ library (``adadfq_fast._C_cuda``); CUDA tensors.
* ``triton``: Triton kernels (``kernels/``); CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``.

The backend is chosen per call, at run time, from ``use_backend(...)`` / ``set_backend(...)`` /
``ADADFQ_BACKEND`` (default ``auto``). Because the choice is read inside the custom op's kernel (not while
tracing), it also applies to code compiled with ``torch.compile`` and to captured CUDA graphs' *capture*.
"""
from __future__ import annotations

import contextlib
import os
import threading
from typing import Callable, Dict, Iterator, List, Optional

import torch

BACKENDS = ("reference", "cpp", "triton", "cuda")
CHOICES = BACKENDS + ("auto",)
# Backends whose kernels are the compiled adadfq_native ops (which also carry C++ autograd formulas).
NATIVE_BACKENDS = ("cpp", "cuda")

# Preference of ``auto`` per device type: fastest first (measured in benchmarks/, see README).
AUTO_ORDER = {
    "cpu": ("cpp", "reference"),
    "cuda": ("cuda", "triton", "reference"),
}

_KERNELS: Dict[str, Dict[str, Callable]] = {}
# Why a backend cannot run, per backend name (None = available). Filled by the backend modules at import.
_UNAVAILABLE: Dict[str, Optional[str]] = {name: "not loaded" for name in BACKENDS}
_UNAVAILABLE["reference"] = None

_local = threading.local()
# Triton reads this once too (when kernels are decorated), so a later change would not take effect anyway.
_TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _check_choice(name: str) -> str:
    if not isinstance(name, str) or name.lower() not in CHOICES:
        raise ValueError(f"backend must be one of {CHOICES}, got {name!r}")
    return name.lower()


def _env_default() -> str:
    name = os.environ.get("ADADFQ_BACKEND", "auto")
    try:
        return _check_choice(name)
    except ValueError as e:
        raise ValueError(f"ADADFQ_BACKEND: {e}") from None


_global_choice: Optional[str] = None


def set_backend(name: str) -> None:
    """Select the backend for all later calls in this process (``auto`` restores the default)."""
    global _global_choice
    _global_choice = _check_choice(name)


# ADADFQ_BACKEND is read once, at import: reading the environment on every op call costs more than small kernels.
_ENV_CHOICE = _env_default()


def current_backend() -> str:
    stack: List[str] = getattr(_local, "stack", [])
    if stack:
        return stack[-1]
    return _global_choice or _ENV_CHOICE


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[str]:
    """Context manager choosing ``reference``, ``cpp``, ``triton``, ``cuda`` or ``auto`` for the ops inside."""
    name = _check_choice(name)
    stack = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    stack.append(name)
    try:
        yield name
    finally:
        stack.pop()


def register_kernel(kernel: str, backend: str) -> Callable[[Callable], Callable]:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}")

    def decorator(fn: Callable) -> Callable:
        _KERNELS.setdefault(kernel, {})[backend] = fn
        return fn

    return decorator


def mark_available(backend: str, reason_unavailable: Optional[str]) -> None:
    _UNAVAILABLE[backend] = reason_unavailable


def why_unavailable(backend: str, device_type: str) -> Optional[str]:
    """None if ``backend`` can run on tensors of ``device_type``, else a sentence saying why not."""
    reason = _UNAVAILABLE.get(backend)
    if reason is not None:
        return reason
    if backend == "cpp" and device_type != "cpu":
        return f"the cpp backend runs on CPU tensors, got {device_type} tensors"
    if backend == "cuda" and device_type != "cuda":
        return f"the cuda backend runs on CUDA tensors, got {device_type} tensors"
    if backend == "triton" and device_type != "cuda":
        if device_type != "cpu" or not _TRITON_INTERPRET:
            return f"the triton backend runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1; got {device_type} tensors"
    return None


def available_backends(device_type: str) -> List[str]:
    return [b for b in BACKENDS if why_unavailable(b, device_type) is None]


def kernel_names() -> List[str]:
    """Every kernel some backend implements."""
    return sorted(_KERNELS)


def implementations(kernel: str, device_type: str) -> List[str]:
    """The backends that implement ``kernel`` and can run on ``device_type`` now (``reference`` included)."""
    impls = _KERNELS.get(kernel, {})
    return [b for b in BACKENDS if b in impls and why_unavailable(b, device_type) is None]


def backend_kernel(kernel: str, backend: str) -> Callable:
    """``backend``'s own kernel for ``kernel``, whatever the selection (benchmarks and tests compare backends)."""
    impls = _KERNELS.get(kernel, {})
    if backend not in impls:
        raise RuntimeError(f"adadfq_fast: backend {backend!r} has no kernel for {kernel}")
    return impls[backend]


# ---------------------------------------------------------------------------------------------------------------
# Per-call policy: int_conv2d under ``auto`` on CUDA, where both GPU kernels are loaded, picks by problem size.
# ---------------------------------------------------------------------------------------------------------------
# Per layer on an H200 at batch 256 (benchmarks/results/gpu_h200/run2/bench_int_conv2d_gpu.md), Triton's int8
# tensor-core GEMM beat the CUDA dp4a kernel on every 3x3 conv of ResNet-18 (0.39-0.86 ms vs 0.62-1.27), the dp4a
# kernel won every 1x1 projection (0.16-0.22 ms vs 0.35-0.56) and whole small models, where the Python launch of
# a Triton kernel costs more than the work (ResNet-20 at batch 256: 2.3 ms vs 3.4; any model at batch 1).
# Those 3x3 convs are 29.6 G multiply-adds each, ResNet-20's at batch 256 0.6 G: the threshold sits between.
TRITON_MIN_MACS = 2**32


def int_conv2d_cuda_choice(x_shape, weight_shape, stride) -> str:
    """The backend ``auto`` runs one CUDA int_conv2d call on: ``triton`` for convolutions wider than 1x1 with at
    least ``TRITON_MIN_MACS`` multiply-adds, ``cuda`` otherwise (both are bit-exact; only the speed differs)."""
    o, cg, kh, kw = weight_shape
    macs = x_shape[0] * (x_shape[2] // stride[0]) * (x_shape[3] // stride[1]) * o * cg * kh * kw
    return "triton" if kh * kw > 1 and macs >= TRITON_MIN_MACS else "cuda"


def _cuda_auto_int_conv2d(x, weight, weight_zero, stride, padding, dilation, groups, *epilogue):
    backend = int_conv2d_cuda_choice(x.shape, weight.shape, stride)
    return _KERNELS["int_conv2d"][backend](x, weight, weight_zero, stride, padding, dilation, groups, *epilogue)


def _per_call_policy(kernel: str, device_type: str) -> Optional[Callable]:
    """A kernel that chooses its backend per call, where ``auto`` has such a policy for ``kernel`` here."""
    if (kernel == "int_conv2d" and device_type == "cuda" and current_backend() == "auto"
            and {"triton", "cuda"} <= set(implementations(kernel, device_type))):
        return _cuda_auto_int_conv2d
    return None


def resolve(kernel: str, device: torch.device) -> str:
    """The backend that will run ``kernel`` for tensors on ``device`` under the current selection."""
    choice = current_backend()
    impls = _KERNELS.get(kernel, {})
    device_type = device.type
    if choice == "auto":
        for backend in AUTO_ORDER.get(device_type, ("reference",)):
            if backend in impls and why_unavailable(backend, device_type) is None:
                return backend
        return "reference"
    reason = why_unavailable(choice, device_type)
    if reason is not None:
        raise RuntimeError(f"adadfq_fast: backend {choice!r} cannot run {kernel}: {reason}")
    if choice not in impls:
        raise RuntimeError(f"adadfq_fast: backend {choice!r} has no kernel for {kernel}")
    return choice


def kernel_for(kernel: str, device: torch.device) -> Callable:
    """The one query for "which function computes ``kernel`` on ``device`` now": the selected backend's kernel, or,
    under ``auto`` where a per-call policy exists (int_conv2d on CUDA), a kernel that applies it."""
    policy = _per_call_policy(kernel, device.type)
    return policy if policy is not None else _KERNELS[kernel][resolve(kernel, device)]


def describe(kernel: str, device: torch.device) -> str:
    """What :func:`kernel_for` picks, in words (``adadfq-fast env``, benchmark records)."""
    if _per_call_policy(kernel, device.type) is not None:
        return f"auto per call: triton for convs wider than 1x1 of >= 2^{TRITON_MIN_MACS.bit_length() - 1} MACs, else cuda"
    return resolve(kernel, device)


def kernels_of(backend: str) -> List[str]:
    return sorted(k for k, impls in _KERNELS.items() if backend in impls)
