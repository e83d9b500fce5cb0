"""``quantize_codes``: float32 activations -> uint8 activation codes in one pass (optional ReLU first).

The integer model's float layers (the first conv, which reads the float image) end with Q's QuantAct steps:
``relu``, ``v = s * y`` then ``v - zp``, round half to even, clamp to ``[-2^(k-1), 2^(k-1) - 1]``, code ``q + zp``.
As PyTorch ops (``reference.quantize_codes_forward``) that is six passes over a float32 map; at ResNet-18's
112 x 112 x 64 first-layer output and batch 256 (822 MB) those passes took longer than all integer convolutions
together on an H200. Here they are one read of the floats and one write of the bytes.

Bit-identical to the PyTorch steps: every float32 operation rounds on its own (``enable_fp_fusion=False``: no
FMA for ``s * y - zp``), clamping before rounding is exact (the bounds are integers), and the rounding uses the
1.5 * 2^23 trick (half to even, like ``torch.round``; libdevice does not run in the interpreter). The optional
per-channel affine is one ``tl.fma`` (one rounding, as the C++ kernel's ``std::fma``). The ``triton`` backend's
kernel of ``adadfq::quantize_codes`` (signature: ``adadfq_fast.ops.native.SCHEMAS``).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._common import BLOCK, EXACT, INT32_LIMIT, dense


@triton.jit
def _quantize_codes_kernel(y_ptr, out_ptr, mult_ptr, add_ptr, n, channels, channel_stride, scale, zero, half,
                           RELU: tl.constexpr, AFFINE: tl.constexpr, WIDE: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    if WIDE:
        pid = pid.to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    y = tl.load(y_ptr + offs, mask=mask, other=0.0)
    if AFFINE:
        # Dense memory in any dimension order: the channel of flat offset o is (o // stride(1)) % C.
        c = (offs // channel_stride) % channels
        y = tl.fma(y, tl.load(mult_ptr + c, mask=mask, other=1.0), tl.load(add_ptr + c, mask=mask, other=0.0))
    if RELU:
        y = tl.where(y < 0.0, 0.0, y)  # NaN passes, like torch.relu
    v = y * scale
    v = v - zero
    v = tl.where(v < -half, -half, v)
    v = tl.where(v > half - 1.0, half - 1.0, v)
    q = (v + 12582912.0) - 12582912.0
    tl.store(out_ptr + offs, (q + zero).to(tl.int32).to(tl.uint8), mask=mask)


def quantize_codes(y: torch.Tensor, scale: float, zero: float, bits: int, relu: bool,
                   channel_mult: Optional[torch.Tensor] = None, channel_add: Optional[torch.Tensor] = None
                   ) -> torch.Tensor:
    """uint8 codes of float32 ``y`` (any dense layout; the codes keep it), after ``fma(y, channel_mult[c],
    channel_add[c])`` per channel (dim 1) when given."""
    if y.dtype != torch.float32:
        raise TypeError(f"y: expected float32, got {y.dtype}")
    if not 2 <= bits <= 8:
        raise ValueError(f"bits: expected 2..8, got {bits}")
    if (channel_mult is None) != (channel_add is None):
        raise ValueError("channel_mult/channel_add: give both or neither")
    y = dense(y)
    out = torch.empty_like(y, dtype=torch.uint8)
    n = y.numel()
    if n == 0:
        return out
    affine = channel_mult is not None
    if affine:
        channels, channel_stride = y.shape[1], y.stride(1)
        mult, add = channel_mult.contiguous(), channel_add.contiguous()
    else:
        channels, channel_stride, mult, add = 1, 1, y, y  # unused pointers
    grid = (triton.cdiv(n, BLOCK),)
    _quantize_codes_kernel[grid](y, out, mult, add, n, channels, channel_stride, float(scale), float(zero),
                                 float(2 ** (bits - 1)), RELU=bool(relu), AFFINE=affine,
                                 WIDE=n + BLOCK >= INT32_LIMIT, BLOCK=BLOCK, **EXACT)
    return out
