"""The ``triton`` backend: Triton kernels from ``kernels/`` (package ``adadfq_fast.kernels``).

Runs on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1`` (how CI tests the kernels)."""
from .._backend import mark_available, register_kernel

try:
    import triton  # noqa: F401

    from .. import kernels as _kernels
except Exception as e:  # noqa: BLE001 - no Triton (or a broken one) only turns this backend off
    LOAD_ERROR = f"Triton is unavailable: {type(e).__name__}: {e}"
else:
    LOAD_ERROR = None
    for _kernel, _fn in _kernels.KERNELS.items():
        register_kernel(_kernel, "triton")(_fn)
mark_available("triton", LOAD_ERROR)
