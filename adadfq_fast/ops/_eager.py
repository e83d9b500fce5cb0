"""The eager fast path shared by the public ops.

Calling a ``torch.library.custom_op`` costs tens of microseconds of Python (argument flattening, the autograd
wrapper, two dispatcher hops), which is more than the fused kernels themselves take at the game loop's sizes
(e.g. both losses at batch 16). So in plain eager mode the public functions call the *same* checked kernels
through a light ``torch.autograd.Function``; under ``torch.compile``/export tracing, inside a dispatch mode
(fake tensors, functionalization) or with tensor subclasses, they call the registered custom op, which is what
those systems understand. Both paths run the same implementation functions; tests compare them.
"""
import torch

from .. import _backend
from .native import native_op


def use_custom_op(*tensors: torch.Tensor) -> bool:
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0:
        return True
    return any(type(t) not in _PLAIN for t in tensors)


# Plain tensors and parameters run eagerly; any other subclass (FakeTensor, FunctionalTensor, user subclasses)
# goes through the custom op, whose dispatch those subclasses implement.
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def native_kernel(kernel: str, device: torch.device):
    """The kernel-level native op when a compiled backend (cpp, cuda) serves ``kernel`` on ``device``, else None.

    The native ops carry their own C++ autograd formulas (csrc/cpu/autograd.cpp), so calling one directly is the
    whole eager forward, and its backward runs without Python.
    """
    if _backend.resolve(kernel, device) in _backend.NATIVE_BACKENDS:
        return native_op(kernel)
    return None


def call(kernel: str, custom_op, eager_fn, prepare, args, tensors):
    """The public ops' dispatch: the custom op under tracing/modes/subclasses; else the native op (C++ autograd)
    when a compiled backend serves ``kernel``; else the Python ``autograd.Function`` (reference, Triton)."""
    if use_custom_op(*tensors):
        return custom_op(*args)
    native = native_kernel(kernel, tensors[0].device)
    if native is not None:
        return native(*prepare(*args))
    return eager_fn(*args)
