"""``fake_quant``: the spec quantizer with a given range, per tensor or per channel (one elementwise pass)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import BLOCK, EXACT, INT32_LIMIT, cast_out, dense, fake_quant_value, inner_size, quant_params, tl_dtype


@triton.jit
def _fake_quant_kernel(
    x_ptr, out_ptr, lo_ptr, hi_ptr, numel, inner, channels, n_levels, half,
    PER_CHANNEL: tl.constexpr, WIDE: tl.constexpr, OUT_DT: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    if WIDE:
        pid = pid.to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    if PER_CHANNEL:
        # Recomputing the (cheap) parameters per element avoids a separate launch for a per-channel table.
        ch = (offs // inner) % channels
        lo = tl.load(lo_ptr + ch, mask=mask, other=0.0).to(tl.float32)
        hi = tl.load(hi_ptr + ch, mask=mask, other=1.0).to(tl.float32)
    else:
        lo = tl.load(lo_ptr).to(tl.float32)
        hi = tl.load(hi_ptr).to(tl.float32)
    scale, zero_point = quant_params(lo, hi, n_levels, half)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = fake_quant_value(x, scale, zero_point, half)
    tl.store(out_ptr + offs, cast_out(y, OUT_DT), mask=mask)


def fake_quant(x: torch.Tensor, bits: int, lo: torch.Tensor, hi: torch.Tensor, axis: int) -> torch.Tensor:
    x = dense(x)
    out = torch.empty_like(x)  # same strides as the dense x: flat memory maps one to one
    numel = x.numel()
    if numel == 0:
        return out
    lo = lo.reshape(-1).contiguous()
    hi = hi.reshape(-1).contiguous()
    channels = lo.numel() if axis >= 0 else 1
    per_channel = channels > 1
    grid = (triton.cdiv(numel, BLOCK),)
    _fake_quant_kernel[grid](
        x, out, lo, hi, numel, inner_size(x, axis, channels), channels,
        float(2**bits - 1), float(2 ** (bits - 1)),
        PER_CHANNEL=per_channel, WIDE=numel + BLOCK >= INT32_LIMIT, OUT_DT=tl_dtype(x), BLOCK=BLOCK, **EXACT,
    )
    return out
