"""The ``cuda`` backend: CUDA C++ kernels from ``csrc/cuda`` (``adadfq_fast._C_cuda``), registered through the
kernel-level schemas of ``adadfq_fast.ops.native`` for the CUDA dispatch key. Built only where a CUDA-enabled
torch and nvcc exist; its absence on a CPU-only machine is expected and silent."""
import torch

from .._backend import mark_available, register_kernel
from ..ops.native import SCHEMAS, has_native_kernel, native_op
from ._loader import find_library, load_library

if torch.version.cuda is None:
    LOAD_ERROR = "this torch build has no CUDA support"
elif find_library("_C_cuda") is None:
    LOAD_ERROR = "adadfq_fast/_C_cuda*.so was not built (no nvcc at install time, or ADADFQ_BUILD_CUDA=0)"
else:
    LOAD_ERROR = load_library("_C_cuda")
mark_available("cuda", LOAD_ERROR)
if LOAD_ERROR is None:
    for _kernel in SCHEMAS:
        # A library built before a kernel landed (e.g. int_conv2d) lacks it: that op falls back to triton/reference.
        if has_native_kernel(_kernel, "CUDA"):
            register_kernel(_kernel, "cuda")(native_op(_kernel))
