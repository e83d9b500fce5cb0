"""Integer deployment of a trained Q: ``export`` (Q -> :class:`IntegerModel`), the ``.adq`` file format
(``save``/``load``), CUDA-graph replay on a GPU (``CudaGraphRunner``) and the ``adadfq-fast export``/``infer``
commands (``cli``)."""
from .cuda_graph import CudaGraphRunner
from .export import UnsupportedModuleError, export, quantize_weight
from .format import FormatError, load, pack_bits, save, unpack_bits
from .modules import IntegerModel, Layer

__all__ = ["export", "IntegerModel", "Layer", "UnsupportedModuleError", "quantize_weight", "save", "load",
           "FormatError", "pack_bits", "unpack_bits", "CudaGraphRunner"]
