"""``fake_quant_weight``: per-output-channel (dim 0) min/max and quantization fused in one launch.

Each program owns a block of output channels: it scans them once for min/max (NaN-aware, like torch.amin), then
quantizes them in a second loop over the same (cache-hot) elements. The weight is read as flat memory viewed
as [outer, C, inner] (outer is 1 unless dim 0 is not the outermost dimension in memory)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    EXACT, INT32_LIMIT, cast_out, dense, fake_quant_value, inner_size, next_pow2, quant_params, tl_dtype,
)

# Elements per [channels, elements] tile: big tiles keep the interpreter's program count low; on a GPU a tile is
# 16 elements per thread at 8 warps.
TILE = 4096
MAX_BLOCK_K = 1024


@triton.jit
def _fake_quant_weight_kernel(
    w_ptr, out_ptr, channels, inner, per_channel, n_levels, half,
    WIDE: tl.constexpr, OUT_DT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    if WIDE:
        pid = pid.to(tl.int64)
    c = pid * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < channels
    mn = tl.full([BLOCK_C, BLOCK_K], float("inf"), tl.float32)
    mx = tl.full([BLOCK_C, BLOCK_K], float("-inf"), tl.float32)
    nan = tl.zeros([BLOCK_C, BLOCK_K], tl.int32)
    for k0 in range(0, per_channel, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        o = k // inner
        addr = (o[None, :] * channels + c[:, None]) * inner + (k - o * inner)[None, :]
        m = cmask[:, None] & (k < per_channel)[None, :]
        x = tl.load(w_ptr + addr, mask=m, other=0.0).to(tl.float32)
        mn = tl.minimum(mn, tl.where(m, x, float("inf")))
        mx = tl.maximum(mx, tl.where(m, x, float("-inf")))
        nan = nan | (x != x).to(tl.int32)
    # min/max of a NaN-free row, then NaN wherever the row held one (tl.min's NaN handling differs by target).
    has_nan = tl.max(nan, axis=1) > 0
    lo = tl.where(has_nan, float("nan"), tl.min(mn, axis=1))
    hi = tl.where(has_nan, float("nan"), tl.max(mx, axis=1))
    lo = tl.where(cmask, lo, 0.0)  # padding rows: any finite range
    hi = tl.where(cmask, hi, 1.0)
    scale, zero_point = quant_params(lo, hi, n_levels, half)
    for k0 in range(0, per_channel, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        o = k // inner
        addr = (o[None, :] * channels + c[:, None]) * inner + (k - o * inner)[None, :]
        m = cmask[:, None] & (k < per_channel)[None, :]
        x = tl.load(w_ptr + addr, mask=m, other=0.0).to(tl.float32)
        y = fake_quant_value(x, scale[:, None], zero_point[:, None], half)
        tl.store(out_ptr + addr, cast_out(y, OUT_DT), mask=m)


def fake_quant_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    w = dense(w)
    out = torch.empty_like(w)
    numel = w.numel()
    if numel == 0:
        return out
    channels = w.shape[0]
    per_channel = numel // channels
    block_k = min(next_pow2(per_channel), MAX_BLOCK_K)
    block_c = max(1, min(next_pow2(channels), TILE // block_k))
    grid = (triton.cdiv(channels, block_c),)
    _fake_quant_weight_kernel[grid](
        w, out, channels, inner_size(w, 0, channels), per_channel, float(2**bits - 1), float(2 ** (bits - 1)),
        WIDE=numel + TILE >= INT32_LIMIT, OUT_DT=tl_dtype(w), BLOCK_C=block_c, BLOCK_K=block_k, **EXACT,
    )
    return out
