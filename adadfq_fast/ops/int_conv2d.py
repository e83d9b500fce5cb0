"""``adadfq::int_conv2d``: convolution of integer codes with a fused float32 epilogue (integer inference).

Inputs are the integers of the spec's quantizer (design: docs/integer_design.md): activations as uint8 codes
m = q + zp (dequantized value m / s_x), weights as int8 levels q_w with an integer zero point z_w per output
channel (w^ = (q_w + z_w) / s_w). The kernel computes, per output channel o and pixel p,

    y = float(acc[o,p] + z_w[o] * box[p]) * out_mult[o] + out_bias[o]
    acc = sum q_w * m_x over the window,  box = sum m_x over the window (of o's group)

then optionally ``y += residual`` (float32) or ``y += float(codes) / residual_scale`` (uint8 codes), ``relu``,
and a requantization to ``out_bits`` codes ``clamp(round(out_scale * y - out_zero), -2^(k-1), 2^(k-1)-1) +
out_zero`` as uint8 (``out_bits = 0``: float32 ``y``). Inference only: there is no autograd formula.
The output is channels_last when ``x`` is (the fast layout of the CPU kernel), else contiguous.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..reference import int_conv2d_output_channels_last
from . import _checks
from ._eager import FusedOp

IntPair = Union[int, Sequence[int]]


def _pair(name: str, v: IntPair, minimum: int) -> List[int]:
    vals = [v, v] if isinstance(v, int) and not isinstance(v, bool) else list(v)
    if len(vals) != 2 or any(isinstance(i, bool) or not isinstance(i, int) or i < minimum for i in vals):
        raise ValueError(f"{name}: expected an integer >= {minimum} or a pair of them, got {v!r}")
    return vals


def _check_tensor(name: str, t, dtype: torch.dtype, shape: Tuple[int, ...], x: Tensor) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a tensor, got {type(t).__name__}")
    if t.dtype != dtype:
        raise TypeError(f"{name}: expected {dtype}, got {t.dtype}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(t.shape)}")
    _checks.check_same_device(name, t, "x", x)


def _check_4d(name: str, t, dtype: torch.dtype, what: str, dims: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a tensor, got {type(t).__name__}")
    if t.dtype != dtype:
        raise TypeError(f"{name}: expected {what}, got {t.dtype}")
    if t.dim() != 4:
        raise ValueError(f"{name}: expected shape {dims}, got {tuple(t.shape)}")


def _out_size(size: int, k: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def _check(
    x, weight, weight_zero, stride, padding, dilation, groups, out_mult, out_bias, residual, residual_scale,
    relu, out_bits, out_scale, out_zero,
) -> Tuple[int, int, int, int]:
    """Metadata checks (also run by the fake implementation). Returns the output shape."""
    _check_4d("x", x, torch.uint8, "uint8 activation codes", "[N, C, H, W]")
    _check_4d("weight", weight, torch.int8, "int8 weight levels", "[O, C/groups, kh, kw]")
    _checks.check_same_device("weight", weight, "x", x)
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups: expected a positive integer, got {groups!r}")
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    if c % groups != 0 or o % groups != 0:
        raise ValueError(f"groups: {groups} must divide the input channels ({c}) and output channels ({o})")
    if cg != c // groups:
        raise ValueError(
            f"weight: expected {c // groups} input channels per group (x has {c} channels, groups={groups}), "
            f"got weight of shape {tuple(weight.shape)}"
        )
    if kh < 1 or kw < 1:
        raise ValueError(f"weight: expected a kernel of at least 1x1, got shape {tuple(weight.shape)}")
    _check_tensor("weight_zero", weight_zero, torch.int32, (o,), x)
    _check_tensor("out_mult", out_mult, torch.float32, (o,), x)
    _check_tensor("out_bias", out_bias, torch.float32, (o,), x)
    if len(stride) != 2 or min(stride) < 1:
        raise ValueError(f"stride: expected two integers >= 1, got {list(stride)}")
    if len(padding) != 2 or min(padding) < 0:
        raise ValueError(f"padding: expected two integers >= 0, got {list(padding)}")
    if len(dilation) != 2 or min(dilation) < 1:
        raise ValueError(f"dilation: expected two integers >= 1, got {list(dilation)}")
    ho = _out_size(h, kh, stride[0], padding[0], dilation[0])
    wo = _out_size(w, kw, stride[1], padding[1], dilation[1])
    if ho < 1 or wo < 1:
        raise ValueError(
            f"x: input of {h}x{w} is too small for a {kh}x{kw} kernel with padding {list(padding)} and dilation "
            f"{list(dilation)} (output would be {ho}x{wo})"
        )
    out_shape = (n, o, ho, wo)
    if residual is not None:
        if not isinstance(residual, Tensor):
            raise TypeError(f"residual: expected a tensor or None, got {type(residual).__name__}")
        if residual.dtype not in (torch.float32, torch.uint8):
            raise TypeError(f"residual: expected float32 values or uint8 codes, got {residual.dtype}")
        if tuple(residual.shape) != out_shape:
            raise ValueError(f"residual: expected the output shape {out_shape}, got {tuple(residual.shape)}")
        _checks.check_same_device("residual", residual, "x", x)
        if residual.dtype == torch.uint8 and not (math.isfinite(residual_scale) and residual_scale > 0):
            raise ValueError(f"residual_scale: expected a finite positive scale for uint8 residual codes, got {residual_scale}")
    if isinstance(out_bits, bool) or not isinstance(out_bits, int) or not (out_bits == 0 or 2 <= out_bits <= 8):
        raise ValueError(f"out_bits: expected 0 (float32 output) or an integer from 2 to 8, got {out_bits!r}")
    if out_bits:
        _checks.check_codes_quantizer("out_scale", out_scale, "out_zero", out_zero, out_bits)
    return out_shape


def _prepare(*args):
    """Checks; the kernel takes the arguments as they are."""
    _check(*args)
    return args


def _fake(x, weight, weight_zero, stride, padding, dilation, groups, out_mult, out_bias, residual, residual_scale,
          relu, out_bits, out_scale, out_zero):
    shape = _check(x, weight, weight_zero, stride, padding, dilation, groups, out_mult, out_bias, residual,
                   residual_scale, relu, out_bits, out_scale, out_zero)
    dtype = torch.uint8 if out_bits else torch.float32
    fmt = torch.channels_last if int_conv2d_output_channels_last(x) else torch.contiguous_format
    return torch.empty(shape, dtype=dtype, device=x.device, memory_format=fmt)


# Inference only: no autograd formula.
int_conv2d_op = FusedOp("int_conv2d", "int_conv2d", _prepare, _fake)


def int_conv2d(
    x: Tensor, weight: Tensor, weight_zero: Tensor, stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1,
    groups: int = 1, out_mult: Optional[Tensor] = None, out_bias: Optional[Tensor] = None,
    residual: Optional[Tensor] = None, residual_scale: float = 1.0, relu: bool = False, out_bits: int = 0,
    out_scale: float = 1.0, out_zero: float = 0.0,
) -> Tensor:
    """Integer convolution of uint8 activation codes ``x`` [N, C, H, W] with int8 weight levels ``weight``
    [O, C/groups, kh, kw] and int32 zero points ``weight_zero`` [O], with the fused epilogue described in the
    module docstring. ``out_mult``/``out_bias`` (float32 [O]) default to ones/zeros. Returns float32 when
    ``out_bits == 0``, else uint8 codes; channels_last when ``x`` is channels_last."""
    if isinstance(weight, Tensor) and weight.dim() >= 1:
        o = weight.shape[0]
        dev = x.device if isinstance(x, Tensor) else weight.device
        if out_mult is None:
            out_mult = torch.ones(o, dtype=torch.float32, device=dev)
        if out_bias is None:
            out_bias = torch.zeros(o, dtype=torch.float32, device=dev)
    args = (x, weight, weight_zero, _pair("stride", stride, 1), _pair("padding", padding, 0),
            _pair("dilation", dilation, 1), groups, out_mult, out_bias, residual, float(residual_scale),
            bool(relu), out_bits, float(out_scale), float(out_zero))
    tensors = [t for t in (x, weight, weight_zero, out_mult, out_bias, residual) if isinstance(t, Tensor)]
    return int_conv2d_op.call(args, tensors)
