"""The ``reference`` backend: pure PyTorch, any device (``adadfq_fast.reference``)."""
from .. import reference as ref
from .._backend import register_kernel
from ..ops.native import SCHEMAS

for _kernel in SCHEMAS:
    # reference.py names forward kernels "<op>_forward" and backward kernels "<op>_backward".
    _name = _kernel if _kernel.endswith("_backward") else _kernel + "_forward"
    register_kernel(_kernel, "reference")(getattr(ref, _name))
