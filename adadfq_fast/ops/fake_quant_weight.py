"""``adadfq::fake_quant_weight``: per-output-channel (dim 0) min/max and quantization, fused.

The range is recomputed at every call from the weights themselves, with no gradient through it; the gradient
to ``w`` is the straight-through identity.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .. import _backend
from . import _checks
from ._eager import call


def _check(w: Tensor, bits: int) -> None:
    _checks.check_float("w", w)
    _checks.check_bits(bits)
    if w.dim() < 1:
        raise ValueError("w: expected at least 1 dim (output channels first), got a 0-d tensor")


def _prepare(w: Tensor, bits: int):
    """Checks, then the kernel's arguments (w dense)."""
    _check(w, bits)
    return _checks.dense(w), bits


def _forward(w: Tensor, bits: int) -> Tensor:
    args = _prepare(w, bits)
    if w.numel() == 0:
        return torch.empty_like(w)
    return _backend.kernel_for("fake_quant_weight", w.device)(*args)


fake_quant_weight_op = torch.library.custom_op("adadfq::fake_quant_weight", _forward, mutates_args=())


@fake_quant_weight_op.register_fake
def _(w, bits):
    _check(w, bits)
    return torch.empty_like(w)


def _backward(ctx, grad):
    return grad, None


fake_quant_weight_op.register_autograd(_backward)


class _EagerFakeQuantWeight(torch.autograd.Function):
    forward = staticmethod(lambda ctx, *args: _forward(*args))
    backward = staticmethod(_backward)


def fake_quant_weight(w: Tensor, bits: int) -> Tensor:
    """Quantize-dequantize a weight per output channel (dim 0) over its own min/max."""
    return call("fake_quant_weight", fake_quant_weight_op, _EagerFakeQuantWeight.apply, _prepare, (w, bits), (w,))
