"""The ``triton`` backend: Triton kernels from ``kernels/`` (package ``adadfq_fast.kernels``).

Runs on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1`` (how CI tests the kernels)."""
from .._backend import mark_available, register_kernel

try:
    import triton  # noqa: F401

    from .. import kernels as _kernels
    from ..kernels.int_conv2d_tc import int_conv2d as _int_conv2d_tc
except Exception as e:  # noqa: BLE001 - no Triton (or a broken one) only turns this backend off
    LOAD_ERROR = f"Triton is unavailable: {type(e).__name__}: {e}"
else:
    LOAD_ERROR = None
    for _kernel, _fn in _kernels.KERNELS.items():
        register_kernel(_kernel, "triton")(_fn)
    # triton_tc: the tensor-core int_conv2d; its other kernels are triton's (_backend.FALLBACK).
    register_kernel("int_conv2d", "triton_tc")(_int_conv2d_tc)
mark_available("triton", LOAD_ERROR)
mark_available("triton_tc", LOAD_ERROR)
