"""``adadfq::quantize_codes``: float32 activations -> uint8 activation codes in one pass (integer inference).

The integer model's float layers (the first conv, which reads the float image) end with Q's QuantAct steps:
optional ReLU, ``v = scale * y``, ``v - zero``, round half to even, clamp to ``[-2^(k-1), 2^(k-1) - 1]``, code
``q + zero`` (``adadfq_fast.reference.quantize_codes_forward`` writes them as PyTorch ops). Optionally a
per-channel affine ``fma(y, channel_mult[c], channel_add[c])`` (one rounding; ``c`` the index along dim 1) comes
first: a float layer's eval BatchNorm. Every backend gives the same bytes. The output keeps a dense input's
strides (any dimension order); anything else is made contiguous first. Inference only: there is no autograd.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _checks
from ._eager import FusedOp


def _check(y: Tensor, scale: float, zero: float, bits: int, relu: bool, channel_mult: Optional[Tensor] = None,
           channel_add: Optional[Tensor] = None) -> None:
    if not isinstance(y, Tensor):
        raise TypeError(f"y: expected a tensor, got {type(y).__name__}")
    if y.dtype != torch.float32:
        raise TypeError(f"y: expected float32, got {y.dtype}")
    _checks.check_bits(bits)
    _checks.check_codes_quantizer("scale", scale, "zero", zero, bits)
    if (channel_mult is None) != (channel_add is None):
        raise ValueError("channel_mult/channel_add: give both or neither")
    if channel_mult is None:
        return
    if y.dim() < 2:
        raise ValueError(f"y: the per-channel affine needs a channel dimension (dim 1), got shape {tuple(y.shape)}")
    for name, t in (("channel_mult", channel_mult), ("channel_add", channel_add)):
        if not isinstance(t, Tensor) or t.dtype != torch.float32 or tuple(t.shape) != (y.shape[1],):
            got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{name}: expected float32 [{y.shape[1]}], got {got}")
        _checks.check_same_device(name, t, "y", y)


def _prepare(y, scale, zero, bits, relu, channel_mult=None, channel_add=None):
    """Checks, then the kernel's arguments (y dense, the affine contiguous)."""
    _check(y, scale, zero, bits, relu, channel_mult, channel_add)
    if channel_mult is not None:
        channel_mult, channel_add = channel_mult.contiguous(), channel_add.contiguous()
    return _checks.dense(y), scale, zero, bits, relu, channel_mult, channel_add


def _fake(y, scale, zero, bits, relu, channel_mult=None, channel_add=None):
    _check(y, scale, zero, bits, relu, channel_mult, channel_add)
    return torch.empty_like(_checks.dense(y), dtype=torch.uint8)


quantize_codes_op = FusedOp("quantize_codes", "quantize_codes", _prepare, _fake,
                            empty=lambda y, *rest: torch.empty_like(y, dtype=torch.uint8))


def quantize_codes(y: Tensor, scale: float, zero: float, bits: int, relu: bool = False,
                   channel_mult: Optional[Tensor] = None, channel_add: Optional[Tensor] = None) -> Tensor:
    """uint8 codes ``clamp(round(scale * y - zero), -2^(bits-1), 2^(bits-1) - 1) + zero`` of float32 ``y`` (after
    ``relu`` when set, and after the per-channel affine ``fma(y, channel_mult, channel_add)`` when given)."""
    args = (y, float(scale), float(zero), bits, bool(relu), channel_mult, channel_add)
    tensors = [t for t in (y, channel_mult, channel_add) if isinstance(t, Tensor)]
    return quantize_codes_op.call(args, tensors)
