"""The ``cpp`` backend: C++ CPU kernels from ``csrc/cpu`` (``adadfq_fast._C``), registered through the
kernel-level schemas of ``adadfq_fast.ops.native`` for the CPU dispatch key."""
import warnings

from .._backend import mark_available, register_kernel
from ..ops.native import SCHEMAS, has_native_kernel, native_op
from ._loader import load_library

LOAD_ERROR = load_library("_C")
mark_available("cpp", LOAD_ERROR)
if LOAD_ERROR is None:
    for _kernel in SCHEMAS:
        if has_native_kernel(_kernel, "CPU"):  # a schema whose C++ kernel has not landed falls back to another backend
            register_kernel(_kernel, "cpp")(native_op(_kernel))
else:
    warnings.warn(
        f"adadfq_fast: the C++ CPU kernels are unavailable ({LOAD_ERROR}); ops on CPU use the PyTorch reference.",
        RuntimeWarning,
        stacklevel=2,
    )
