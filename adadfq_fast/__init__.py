"""adadfq_fast: fused kernels and an engine for Adaptive Data-Free Quantization (AdaDFQ, CVPR 2023).

Public ops (torch custom ops in the ``adadfq`` namespace, with autograd, fake tensors and torch.compile support):
``fake_quant``, ``fake_quant_weight``, ``fake_quant_act``, ``bn_stat_loss``, ``adadfq_generator_loss``,
``adadfq_student_loss``; for integer inference ``int_conv2d`` and ``quantize_codes``. Choose the
implementation with ``use_backend(...)`` or ``ADADFQ_BACKEND``.
"""
from ._version import __version__
from ._backend import available_backends, current_backend, set_backend, use_backend
from .ops import *  # noqa: F401,F403  (the public ops: ops.__all__)
from .ops import __all__ as _OPS
from . import backends  # noqa: F401  (registers every backend's kernels; never raises)

__all__ = ["__version__", *_OPS, "use_backend", "set_backend", "current_backend", "available_backends"]
