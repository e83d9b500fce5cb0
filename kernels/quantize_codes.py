"""``quantize_codes``: float32 activations -> uint8 activation codes in one pass (optional ReLU first).

The integer model's float layers (the first conv, which reads the float image) end with Q's QuantAct steps:
``relu``, ``v = s * y`` then ``v - zp``, round half to even, clamp to ``[-2^(k-1), 2^(k-1) - 1]``, code ``q + zp``.
As PyTorch ops (``deploy.modules.quantize_codes_steps``) that is six passes over a float32 map; at ResNet-18's
112 x 112 x 64 first-layer output and batch 256 (822 MB) those passes took longer than all integer convolutions
together on an H200. Here they are one read of the floats and one write of the bytes.

Bit-identical to the PyTorch steps: every float32 operation rounds on its own (``enable_fp_fusion=False``: no
FMA for ``s * y - zp``), clamping before rounding is exact (the bounds are integers), and the rounding uses the
1.5 * 2^23 trick (half to even, like ``torch.round``; libdevice does not run in the interpreter). Internal to
``adadfq_fast.deploy`` (no custom op): the deploy path calls it on CUDA tensors, or under the interpreter in tests.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import BLOCK, EXACT, INT32_LIMIT, dense


@triton.jit
def _quantize_codes_kernel(y_ptr, out_ptr, n, scale, zero, half, RELU: tl.constexpr, WIDE: tl.constexpr,
                           BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    if WIDE:
        pid = pid.to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    y = tl.load(y_ptr + offs, mask=mask, other=0.0)
    if RELU:
        y = tl.where(y < 0.0, 0.0, y)  # NaN passes, like torch.relu
    v = y * scale
    v = v - zero
    v = tl.where(v < -half, -half, v)
    v = tl.where(v > half - 1.0, half - 1.0, v)
    q = (v + 12582912.0) - 12582912.0
    tl.store(out_ptr + offs, (q + zero).to(tl.int32).to(tl.uint8), mask=mask)


def quantize_codes(y: torch.Tensor, scale: float, zero: float, bits: int, relu: bool) -> torch.Tensor:
    """uint8 codes of float32 ``y`` (any dense layout; the codes keep it)."""
    if y.dtype != torch.float32:
        raise TypeError(f"y: expected float32, got {y.dtype}")
    if not 2 <= bits <= 8:
        raise ValueError(f"bits: expected 2..8, got {bits}")
    y = dense(y)
    out = torch.empty_like(y, dtype=torch.uint8)
    n = y.numel()
    if n == 0:
        return out
    grid = (triton.cdiv(n, BLOCK),)
    _quantize_codes_kernel[grid](y, out, n, float(scale), float(zero), float(2 ** (bits - 1)), RELU=bool(relu),
                                 WIDE=n + BLOCK >= INT32_LIMIT, BLOCK=BLOCK, **EXACT)
    return out
