"""Backend registry and selection.

Every fused op is computed by a *kernel* (``fake_quant``, ``bn_stat_loss_backward``, ...) that each backend may
implement with the same signature as ``adadfq_native::<kernel>`` (see ``ops/native.py``):

* ``reference``: pure PyTorch (``adadfq_fast.reference``); always available, any device.
* ``cpp``: the compiled C++ CPU library (``adadfq_fast._C``); CPU tensors.
* ``cuda``: the compiled CUDA C++ library (``adadfq_fast._C_cuda``); CUDA tensors.
* ``triton``: Triton kernels (``kernels/``); CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``.
* ``triton_tc``: the tensor-core int_conv2d (``kernels/int_conv2d_tc.py``); every other kernel falls back to
  ``triton`` (see ``FALLBACK``). Same devices as ``triton``.

The backend is chosen per call, at run time, from ``use_backend(...)`` / ``set_backend(...)`` /
``ADADFQ_BACKEND`` (default ``auto``). Because the choice is read inside the custom op's kernel (not while
tracing), it also applies to code compiled with ``torch.compile`` and to captured CUDA graphs' *capture*.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import threading
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch

BACKENDS = ("reference", "cpp", "triton", "cuda", "triton_tc")
CHOICES = BACKENDS + ("auto",)
# Backends whose kernels are the compiled adadfq_native ops (which also carry C++ autograd formulas).
NATIVE_BACKENDS = ("cpp", "cuda")

# A backend that implements only some kernels runs the others on its fallback when selected explicitly.
FALLBACK = {"triton_tc": "triton"}

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
        _RESOLVED.clear()
        return fn

    return decorator


def mark_available(backend: str, reason_unavailable: Optional[str]) -> None:
    _UNAVAILABLE[backend] = reason_unavailable
    _RESOLVED.clear()


def why_unavailable(backend: str, device_type: str) -> Optional[str]:
    """None if ``backend`` can run on tensors of ``device_type``, else a sentence saying why not."""
    reason = _UNAVAILABLE.get(backend)
    if reason is not None:
        return reason
    if backend == "cpp" and device_type != "cpu":
        return f"the cpp backend runs on CPU tensors, got {device_type} tensors"
    if backend == "cuda" and device_type != "cuda":
        return f"the cuda backend runs on CUDA tensors, got {device_type} tensors"
    if backend in ("triton", "triton_tc") and device_type != "cuda":
        if device_type != "cpu" or not _TRITON_INTERPRET:
            return (f"the {backend} backend runs on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1; got "
                    f"{device_type} tensors")
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
# Per-call policy: int_conv2d under ``auto`` on CUDA, where several GPU kernels are loaded, picks per layer.
# ---------------------------------------------------------------------------------------------------------------
# 1. A measured policy, when one is found (``int_conv2d_policy``): a JSON file written by the GPU sweep
#    (benchmarks/bench_int_conv2d_gpu.py --sweep) holding, per measured layer and batch, the fastest backend and,
#    for triton_tc, the fastest tile. Looked up by the layer's exact geometry, at the nearest measured batch (in
#    log2 distance).
# 2. Else the heuristic from the H200 measurement in benchmarks/results/gpu_h200/run2/bench_int_conv2d_gpu.md:
#    Triton's int8 tensor-core GEMM beat the CUDA dp4a kernel on every 3x3 conv of ResNet-18 at batch 256
#    (0.39-0.86 ms vs 0.62-1.27), the dp4a kernel won every 1x1 projection (0.16-0.22 ms vs 0.35-0.56) and whole
#    small models, where the Python launch of a Triton kernel costs more than the work (ResNet-20 at batch 256:
#    2.3 ms vs 3.4; any model at batch 1). Those 3x3 convs are 29.6 G multiply-adds each, ResNet-20's at batch 256
#    0.6 G: the threshold sits between. (triton_tc is never picked without a measurement.)
TRITON_MIN_MACS = 2**32
GPU_INT_CONV_BACKENDS = ("cuda", "triton", "triton_tc")
POLICY_FORMAT = "adadfq_int_conv2d_policy/1"
POLICY_ENV = "ADADFQ_INT_CONV_POLICY"  # a path; "none" turns the measured policy off
POLICY_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "policies")


def policy_file_name(capability) -> str:
    """The file shipped for a GPU of compute capability ``(major, minor)``: ``int_conv2d_sm90.json`` for Hopper."""
    return f"int_conv2d_sm{capability[0]}{capability[1]}.json"


def _layer_key(x_shape, weight_shape, stride, padding, dilation, groups) -> tuple:
    return (*map(int, x_shape[1:]), *map(int, weight_shape), *map(int, stride), *map(int, padding),
            *map(int, dilation), int(groups))


class IntConvPolicy:
    """A measured int_conv2d policy (see ``load_int_conv2d_policy``): per layer geometry, the measured batches and
    their entries (``backend``, ``tile``, ``ms``)."""

    def __init__(self, data: dict, source: str):
        self.source = source
        self.device = data.get("device", "")
        self.capability = tuple(data["capability"]) if data.get("capability") is not None else None
        self._layers: Dict[tuple, List[tuple]] = {}
        for i, e in enumerate(data["layers"]):
            try:
                key = _layer_key([e["batch"], *e["x"]], e["weight"], e["stride"], e["padding"], e["dilation"],
                                 e.get("groups", 1))
                backend = e["backend"]
                batch = int(e["batch"])
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(f"{source}: layer {i}: expected batch, x [C, H, W], weight, stride, padding, "
                                 f"dilation and backend ({type(err).__name__}: {err})") from None
            if backend not in GPU_INT_CONV_BACKENDS:
                raise ValueError(f"{source}: layer {i}: backend must be one of {GPU_INT_CONV_BACKENDS}, got {backend!r}")
            tile = e.get("tile")
            if tile is not None and tile != "int_mm" and (not isinstance(tile, list) or len(tile) != 5):
                raise ValueError(f"{source}: layer {i}: tile must be null, \"int_mm\" or [BLOCK_M, BLOCK_N, BLOCK_K, "
                                 f"num_warps, num_stages], got {tile!r}")
            if batch < 1:
                raise ValueError(f"{source}: layer {i}: batch must be >= 1, got {batch}")
            self._layers.setdefault(key, []).append((batch, e))
        self._cache: Dict[tuple, Optional[dict]] = {}

    def __len__(self) -> int:
        return sum(len(v) for v in self._layers.values())

    def lookup(self, x_shape, weight_shape, stride, padding, dilation, groups) -> Optional[dict]:
        """The entry measured for this layer geometry at the batch nearest ``x_shape[0]`` (log2 distance; ties go
        to the larger batch), or None when the layer was not measured."""
        key = (int(x_shape[0]), *_layer_key(x_shape, weight_shape, stride, padding, dilation, groups))
        if key in self._cache:
            return self._cache[key]
        entries = self._layers.get(key[1:])
        hit = None
        if entries:
            n = max(key[0], 1)
            hit = min(entries, key=lambda be: (abs(math.log2(be[0] / n)), -be[0]))[1]
        self._cache[key] = hit
        return hit


def load_int_conv2d_policy(path: str) -> IntConvPolicy:
    """Read and check a measured-policy JSON file (format ``POLICY_FORMAT``)."""
    with open(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not JSON: {e}") from None
    if not isinstance(data, dict) or data.get("format") != POLICY_FORMAT or not isinstance(data.get("layers"), list):
        raise ValueError(f"{path}: expected a JSON object with format {POLICY_FORMAT!r} and a list 'layers'")
    return IntConvPolicy(data, path)


_POLICY: Dict[tuple, Optional[IntConvPolicy]] = {}  # (env, capability or "current") -> policy


def int_conv2d_policy(capability=None) -> Optional[IntConvPolicy]:
    """The measured policy ``auto`` uses on a GPU of compute capability ``capability`` (default: the current
    CUDA device's): the file named by ``ADADFQ_INT_CONV_POLICY`` (``none``: no policy), else the shipped
    ``adadfq_fast/policies/int_conv2d_sm<XY>.json`` where one exists; None otherwise. A file measured on another
    capability is ignored. Read once per process (``reset_int_conv2d_policy`` forgets it)."""
    env = os.environ.get(POLICY_ENV, "")
    if capability is None:  # per conv call: the current device's answer is remembered under this key too
        hit = _POLICY.get((env, "current"), False)
        if hit is not False:
            return hit
        policy = int_conv2d_policy(torch.cuda.get_device_capability()) if torch.cuda.is_available() else None
        _POLICY[(env, "current")] = policy
        return policy
    key = (env, tuple(capability))
    if key in _POLICY:
        return _POLICY[key]
    policy = None
    if env.lower() != "none":
        path = env or os.path.join(POLICY_DIR, policy_file_name(capability))
        if env and not os.path.isfile(env):
            raise FileNotFoundError(f"{POLICY_ENV}: no file {env!r}")
        if path and os.path.isfile(path):
            policy = load_int_conv2d_policy(path)
            if policy.capability is not None and policy.capability != tuple(capability):
                policy = None  # measured on another GPU generation
    _POLICY[key] = policy
    return policy


def reset_int_conv2d_policy() -> None:
    _POLICY.clear()


def _heuristic_choice(x_shape, weight_shape, stride) -> str:
    o, cg, kh, kw = weight_shape
    macs = x_shape[0] * (x_shape[2] // stride[0]) * (x_shape[3] // stride[1]) * o * cg * kh * kw
    return "triton" if kh * kw > 1 and macs >= TRITON_MIN_MACS else "cuda"


def int_conv2d_cuda_choice(x_shape, weight_shape, stride, padding=(0, 0), dilation=(1, 1), groups=1,
                           available=GPU_INT_CONV_BACKENDS, policy="auto") -> str:
    """The backend ``auto`` runs one CUDA int_conv2d call on (all are bit-exact; only the speed differs): the
    measured policy's choice for this layer when it has one and that backend is in ``available``; else
    ``triton`` for convolutions wider than 1x1 with at least ``TRITON_MIN_MACS`` multiply-adds, ``cuda``
    otherwise (the other one when only one of them is available). ``policy``: an ``IntConvPolicy``, None, or
    ``"auto"`` (``int_conv2d_policy()``)."""
    if policy == "auto":
        policy = int_conv2d_policy()
    if policy is not None:
        entry = policy.lookup(x_shape, weight_shape, stride, padding, dilation, groups)
        if entry is not None and entry["backend"] in available:
            return entry["backend"]
    choice = _heuristic_choice(x_shape, weight_shape, stride)
    if choice not in available:
        choice = next(b for b in ("cuda", "triton", "triton_tc") if b in available)
    return choice


def measured_tile(x_shape, weight_shape, stride, padding, dilation, groups):
    """The triton_tc tile the measured policy names for this layer (a 5-tuple or ``"int_mm"``), else None."""
    policy = int_conv2d_policy()
    entry = policy.lookup(x_shape, weight_shape, stride, padding, dilation, groups) if policy is not None else None
    tile = entry.get("tile") if entry is not None else None
    return tile if tile is None or tile == "int_mm" else tuple(tile)


def _gpu_int_conv_backends() -> tuple:
    return tuple(b for b in GPU_INT_CONV_BACKENDS if b in implementations("int_conv2d", "cuda"))


def _cuda_auto_int_conv2d(x, weight, weight_zero, stride, padding, dilation, groups, *epilogue):
    backend = int_conv2d_cuda_choice(x.shape, weight.shape, stride, padding, dilation, groups,
                                     available=_gpu_int_conv_backends())
    return _KERNELS["int_conv2d"][backend](x, weight, weight_zero, stride, padding, dilation, groups, *epilogue)


def _per_call_policy(kernel: str, device_type: str) -> Optional[Callable]:
    """A kernel that chooses its backend per call, where ``auto`` has such a policy for ``kernel`` here."""
    if (kernel == "int_conv2d" and device_type == "cuda" and current_backend() == "auto"
            and len(_gpu_int_conv_backends()) > 1):
        return _cuda_auto_int_conv2d
    return None


def resolve(kernel: str, device: torch.device) -> str:
    """The backend that will run ``kernel`` for tensors on ``device`` under the current selection."""
    choice = current_backend()
    key = (kernel, device.type, choice)
    hit = _RESOLVED.get(key)  # memoized: the integer model asks on every forward (a few us of a 0.4 ms call)
    if hit is None:
        hit = _RESOLVED[key] = _resolve(kernel, device.type, choice)
    return hit


# (kernel, device type, selection) -> backend; cleared whenever a kernel or an availability is registered.
_RESOLVED: Dict[Tuple[str, str, str], str] = {}


def _resolve(kernel: str, device_type: str, choice: str) -> str:
    impls = _KERNELS.get(kernel, {})
    if choice == "auto":
        for backend in AUTO_ORDER.get(device_type, ("reference",)):
            if backend in impls and why_unavailable(backend, device_type) is None:
                return backend
        return "reference"
    reason = why_unavailable(choice, device_type)
    if reason is not None:
        raise RuntimeError(f"adadfq_fast: backend {choice!r} cannot run {kernel}: {reason}")
    if choice not in impls and choice in FALLBACK and FALLBACK[choice] in impls:
        choice = FALLBACK[choice]
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
        heuristic = f"triton for convs wider than 1x1 of >= 2^{TRITON_MIN_MACS.bit_length() - 1} MACs, else cuda"
        policy = int_conv2d_policy()
        if policy is None:
            return f"auto per call: {heuristic}"
        return (f"auto per call: measured policy {os.path.basename(policy.source)} ({len(policy)} layers), "
                f"else {heuristic}")
    return resolve(kernel, device)


def kernels_of(backend: str) -> List[str]:
    return sorted(k for k, impls in _KERNELS.items() if backend in impls)
