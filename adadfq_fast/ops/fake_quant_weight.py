"""``adadfq::fake_quant_weight``: per-output-channel (dim 0) min/max and quantization, fused.

The range is recomputed at every call from the weights themselves, with no gradient through it; the gradient
to ``w`` is the straight-through identity.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import _checks
from ._eager import FusedOp, straight_through


def _check(w: Tensor, bits: int) -> None:
    _checks.check_float("w", w)
    _checks.check_bits(bits)
    if w.dim() < 1:
        raise ValueError("w: expected at least 1 dim (output channels first), got a 0-d tensor")


def _prepare(w: Tensor, bits: int):
    """Checks, then the kernel's arguments (w dense)."""
    _check(w, bits)
    return _checks.dense(w), bits


def _fake(w, bits):
    _check(w, bits)
    return torch.empty_like(w)


fake_quant_weight_op = FusedOp("fake_quant_weight", "fake_quant_weight", _prepare, _fake,
                               empty=lambda w, bits: torch.empty_like(w), backward=straight_through(2))


def fake_quant_weight(w: Tensor, bits: int) -> Tensor:
    """Quantize-dequantize a weight per output channel (dim 0) over its own min/max."""
    return fake_quant_weight_op.call((w, bits), (w,))
