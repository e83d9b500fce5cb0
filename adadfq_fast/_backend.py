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
    return _KERNELS[kernel][resolve(kernel, device)]


def kernels_of(backend: str) -> List[str]:
    return sorted(k for k, impls in _KERNELS.items() if backend in impls)
