"""Backend kernels. Each module registers the kernels it implements with ``adadfq_fast._backend``.

Import order matters only for availability reporting; every module is safe to import on any machine: a native
library or Triton that cannot load marks its backend unavailable with the reason, and never raises here.
"""
from . import reference  # noqa: F401
from . import cpp  # noqa: F401
from . import cuda  # noqa: F401
from . import triton  # noqa: F401
