"""``adadfq::fake_quant``: the spec's quantizer with a given range, per tensor or per channel.

Gradient: straight-through identity to ``x`` (faithful STE); none to ``lo``/``hi``.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from . import _checks
from ._eager import FusedOp, straight_through


def _check(x: Tensor, bits: int, lo: Tensor, hi: Tensor, axis: int) -> None:
    _checks.check_float("x", x)
    _checks.check_bits(bits)
    for name, r in (("lo", lo), ("hi", hi)):
        _checks.check_float(name, r)
        _checks.check_same_device(name, r, "x", x)
    if axis < 0:
        if lo.numel() != 1 or hi.numel() != 1:
            raise ValueError(
                f"lo/hi: per-tensor quantization (axis=None) expects one value each, got shapes "
                f"{tuple(lo.shape)} and {tuple(hi.shape)}"
            )
    else:
        if axis >= x.dim():
            raise ValueError(f"axis: {axis} is out of range for x of {x.dim()} dims")
        c = x.shape[axis]
        if lo.shape != (c,) or hi.shape != (c,):
            raise ValueError(
                f"lo/hi: per-channel quantization along axis {axis} expects shape ({c},), got "
                f"{tuple(lo.shape)} and {tuple(hi.shape)}"
            )


def _prepare(x: Tensor, bits: int, lo: Tensor, hi: Tensor, axis: int):
    """Checks, then the kernel's arguments (x dense, ranges flat)."""
    _check(x, bits, lo, hi, axis)
    _checks.check_range_values(lo, hi)
    return _checks.dense(x), bits, lo.reshape(-1).contiguous(), hi.reshape(-1).contiguous(), axis


def _fake(x, bits, lo, hi, axis):
    _check(x, bits, lo, hi, axis)
    return torch.empty_like(x)


fake_quant_op = FusedOp("fake_quant", "fake_quant", _prepare, _fake, empty=lambda x, *rest: torch.empty_like(x),
                        backward=straight_through(5))


def _as_range(v: Union[Tensor, float], x: Tensor) -> Tensor:
    return v if isinstance(v, Tensor) else torch.tensor(float(v), dtype=torch.float32, device=x.device)


def fake_quant(
    x: Tensor, bits: int, lo: Union[Tensor, float], hi: Union[Tensor, float], axis: Optional[int] = None
) -> Tensor:
    """Quantize-dequantize ``x`` to ``bits`` bits over ``[lo, hi]`` (spec "zeroq-asym").

    ``lo``/``hi``: 0-d tensors (or floats) for one range over the tensor, or 1-d tensors of ``x.shape[axis]``
    entries for one range per channel along ``axis``. Straight-through gradient to ``x``.
    """
    _checks.check_float("x", x)
    lo, hi = _as_range(lo, x), _as_range(hi, x)
    args = (x, bits, lo, hi, _checks.normalize_axis(axis, x.dim()))
    return fake_quant_op.call(args, (x, lo, hi))
