"""``int_conv2d``: convolution of uint8 activation codes with int8 weight levels, fused float32 epilogue.

Implicit GEMM (no im2col buffer): a program owns BLOCK_M output pixels x BLOCK_N output channels of one group and
walks K = (kernel row, kernel column, input-channel chunk). The dot is an int8 x int8 -> int32 ``tl.dot`` (exact
in the interpreter too). Activations are codes m in [0, 255], so they enter the dot as ``m - 128`` (an int8) and
the accumulator gets ``128 * sum_k q_w[o, k]`` back per output channel. Padding loads m = 0 (the value of float
0, see the design), so a padded tap contributes ``-128 * q_w`` to the dot and ``+128 * q_w`` to the correction:
exactly nothing, like in the reference. The box sum (sum of m over the window) comes from the same x tiles.

Epilogue (same float32 steps as ``reference.int_conv2d_epilogue``, launched with ``enable_fp_fusion=False`` so
no multiply-add is contracted):
    y = float32(int64(acc) + z_w[o] * box) * out_mult[o] + out_bias[o]
    y += residual  |  y += float32(codes) / residual_scale   (an IEEE division: tl.math.div_rn)
    relu: y = y < 0 ? 0 : y  (NaN passes, like torch.relu)
    requant: clamp(round(out_scale * y - out_zero), -2^(k-1), 2^(k-1)-1) + out_zero -> uint8 (rounding by the
             1.5 * 2^23 trick: libdevice does not run in the interpreter)

Channels with one input channel per group (depthwise and channel multipliers) use a direct kernel instead: a dot
needs K >= 16, which would waste 15/16 of it.

Layouts: every tensor is read through its strides (contiguous, channels_last, or any view), so nothing is copied
except the weight, which is brought to channels_last (input channels contiguous, the K order of the loop) when it
is not already. The output follows x: channels_last when x is, else contiguous.
"""
from __future__ import annotations

import os
from typing import List, Optional

import torch
import triton
import triton.language as tl

from adadfq_fast.reference import int_conv2d_output_channels_last

from ._common import INT32_LIMIT, next_pow2

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# The int32 accumulator: |q_w| <= 128 and m <= 255, so K taps stay below 2^31 for K <= 65793 (the design's bound).
MAX_K = (2**31 - 1) // (128 * 255)

# GEMM tiles. On a GPU: 128 pixels x up to 128 channels, K chunks of 64 (int8 MMA wants K a multiple of 32).
# Under the interpreter, which pays per program and per loop iteration, larger tiles.
GPU_TILES = dict(BLOCK_M=128, MAX_BLOCK_N=128, MAX_BLOCK_K=64, MIN_BLOCK_K=32, num_warps=8, num_stages=3)
INTERPRET_TILES = dict(BLOCK_M=256, MAX_BLOCK_N=128, MAX_BLOCK_K=128, MIN_BLOCK_K=16, num_warps=4, num_stages=1)
# Direct (one input channel per group) kernel tiles: pixels x channels.
DW_BLOCK_P, DW_MAX_BLOCK_C = (256, 128) if _INTERPRET else (64, 64)

RESIDUAL_NONE, RESIDUAL_FLOAT, RESIDUAL_CODES = 0, 1, 2
# Sizes that change from layer to layer but tell the compiler nothing useful (unlike the strides, whose
# divisibility gives aligned vector loads): not specialized on, so a network compiles a handful of variants.
_VARYING = ["n_pixels", "height", "width", "out_h", "out_w", "kernel_h", "kernel_w", "pad_h", "pad_w"]


@triton.jit
def _epilogue_store(
    total, n_idx, oh, ow, pmask, o, omask, mult_ptr, bias_ptr, res_ptr, out_ptr,
    rs_n, rs_c, rs_h, rs_w, os_n, os_c, os_h, os_w, residual_scale, out_scale, out_zero, half,
    RESIDUAL: tl.constexpr, RELU: tl.constexpr, REQUANT: tl.constexpr,
):
    """total: exact int64 sums acc + z_w * box, [P, C]; o: output channels [C]; pixels given by (n, oh, ow)."""
    mult = tl.load(mult_ptr + o, mask=omask, other=0.0)
    bias = tl.load(bias_ptr + o, mask=omask, other=0.0)
    y = total.to(tl.float32) * mult[None, :]
    y = y + bias[None, :]
    mask = pmask[:, None] & omask[None, :]
    if RESIDUAL != 0:
        r_off = n_idx * rs_n + oh * rs_h + ow * rs_w
        r = tl.load(res_ptr + (r_off[:, None] + o[None, :] * rs_c), mask=mask, other=0)
        if RESIDUAL == 2:
            y = y + tl.math.div_rn(r.to(tl.float32), tl.zeros_like(y) + residual_scale)
        else:
            y = y + r
    if RELU:
        y = tl.where(y < 0.0, 0.0, y)
    o_off = n_idx * os_n + oh * os_h + ow * os_w
    ptrs = out_ptr + (o_off[:, None] + o[None, :] * os_c)
    if REQUANT:
        v = out_scale * y - out_zero
        # Clamping before rounding is exact (integer bounds) and brings |v| under 2^22 for the rounding trick.
        v = tl.where(v < -half, -half, v)
        v = tl.where(v > half - 1.0, half - 1.0, v)
        q = (v + 12582912.0) - 12582912.0
        tl.store(ptrs, (q + out_zero).to(tl.int32).to(tl.uint8), mask=mask)
    else:
        tl.store(ptrs, y, mask=mask)


@triton.jit
def _pixels(pid_m, n_pixels, out_h, out_w, BLOCK: tl.constexpr, WIDE: tl.constexpr):
    pix = pid_m * BLOCK + tl.arange(0, BLOCK)
    pmask = pix < n_pixels
    pix = tl.where(pmask, pix, 0)
    if WIDE:
        pix = pix.to(tl.int64)
    ow = pix % out_w
    t = pix // out_w
    oh = t % out_h
    n_idx = t // out_h
    return pix, pmask, n_idx, oh, ow


@triton.jit(do_not_specialize=_VARYING + ["n_blocks_n", "n_chunks"])
def _int_conv2d_gemm_kernel(
    x_ptr, w_ptr, zero_ptr, mult_ptr, bias_ptr, res_ptr, out_ptr,
    n_pixels, height, width, out_h, out_w, cin_g, cout_g, n_blocks_n, n_chunks, kernel_h, kernel_w,
    xs_n, xs_c, xs_h, xs_w, ws_o, ws_c, ws_h, ws_w,
    rs_n, rs_c, rs_h, rs_w, os_n, os_c, os_h, os_w,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    residual_scale, out_scale, out_zero, half,
    RESIDUAL: tl.constexpr, RELU: tl.constexpr, REQUANT: tl.constexpr, WIDE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_gn = tl.program_id(1)
    group = pid_gn // n_blocks_n
    pid_n = pid_gn - group * n_blocks_n
    pix, pmask, n_idx, oh, ow = _pixels(pid_m, n_pixels, out_h, out_w, BLOCK_M, WIDE)
    oc = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # channel within the group
    omask = oc < cout_g
    o = group * cout_g + tl.where(omask, oc, 0)
    kk = tl.arange(0, BLOCK_K)
    c_base = group * cin_g

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    box = tl.zeros([BLOCK_M], dtype=tl.int32)
    wsum = tl.zeros([BLOCK_N], dtype=tl.int32)
    x_pix = x_ptr + n_idx * xs_n
    w_out = w_ptr + o * ws_o
    # One flat K loop over (tap, channel chunk), so the compiler pipelines the loads of every step (num_stages).
    for step in range(0, kernel_h * kernel_w * n_chunks):
        tap = step // n_chunks
        c = (step - tap * n_chunks) * BLOCK_K + kk
        r = tap // kernel_w
        s = tap - r * kernel_w
        ih = oh * stride_h - pad_h + r * dil_h
        iw = ow * stride_w - pad_w + s * dil_w
        ok = pmask & (ih >= 0) & (ih < height) & (iw >= 0) & (iw < width)
        cmask = c < cin_g
        xm = tl.load((x_pix + ih * xs_h + iw * xs_w)[:, None] + (c_base + c)[None, :] * xs_c,
                     mask=ok[:, None] & cmask[None, :], other=0)
        xi = xm.to(tl.int32)
        box += tl.sum(xi, axis=1)
        wt = tl.load((w_out + r * ws_h + s * ws_w)[None, :] + c[:, None] * ws_c,
                     mask=cmask[:, None] & omask[None, :], other=0)
        wsum += tl.sum(wt.to(tl.int32), axis=0)
        acc += tl.dot((xi - 128).to(tl.int8), wt, out_dtype=tl.int32)
    acc += 128 * wsum[None, :]
    # int64: z_w * box may exceed int32 where acc does not (the reference sums in int64 too).
    z = tl.load(zero_ptr + o, mask=omask, other=0).to(tl.int64)
    total = acc.to(tl.int64) + z[None, :] * box.to(tl.int64)[:, None]
    _epilogue_store(
        total, n_idx, oh, ow, pmask, o, omask, mult_ptr, bias_ptr, res_ptr, out_ptr,
        rs_n, rs_c, rs_h, rs_w, os_n, os_c, os_h, os_w, residual_scale, out_scale, out_zero, half,
        RESIDUAL, RELU, REQUANT,
    )


@triton.jit(do_not_specialize=_VARYING)
def _int_conv2d_direct_kernel(
    x_ptr, w_ptr, zero_ptr, mult_ptr, bias_ptr, res_ptr, out_ptr,
    n_pixels, height, width, out_h, out_w, out_channels, cout_g, kernel_h, kernel_w,
    xs_n, xs_c, xs_h, xs_w, ws_o, ws_h, ws_w,
    rs_n, rs_c, rs_h, rs_w, os_n, os_c, os_h, os_w,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    residual_scale, out_scale, out_zero, half,
    RESIDUAL: tl.constexpr, RELU: tl.constexpr, REQUANT: tl.constexpr, WIDE: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """One input channel per group: output channel o reads input channel o // cout_g (elementwise int32 MACs)."""
    pid_p = tl.program_id(0)
    pid_c = tl.program_id(1)
    pix, pmask, n_idx, oh, ow = _pixels(pid_p, n_pixels, out_h, out_w, BLOCK_P, WIDE)
    o = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    omask = o < out_channels
    o = tl.where(omask, o, 0)
    cin = o // cout_g
    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.int32)
    box = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.int32)
    x_pix = x_ptr + n_idx * xs_n
    for tap in range(0, kernel_h * kernel_w):
        r = tap // kernel_w
        s = tap - r * kernel_w
        ih = oh * stride_h - pad_h + r * dil_h
        iw = ow * stride_w - pad_w + s * dil_w
        ok = pmask & (ih >= 0) & (ih < height) & (iw >= 0) & (iw < width)
        xm = tl.load((x_pix + ih * xs_h + iw * xs_w)[:, None] + (cin * xs_c)[None, :],
                     mask=ok[:, None] & omask[None, :], other=0).to(tl.int32)
        wt = tl.load(w_ptr + o * ws_o + r * ws_h + s * ws_w, mask=omask, other=0).to(tl.int32)
        acc += xm * wt[None, :]
        box += xm
    z = tl.load(zero_ptr + o, mask=omask, other=0).to(tl.int64)
    total = acc.to(tl.int64) + z[None, :] * box.to(tl.int64)
    _epilogue_store(
        total, n_idx, oh, ow, pmask, o, omask, mult_ptr, bias_ptr, res_ptr, out_ptr,
        rs_n, rs_c, rs_h, rs_w, os_n, os_c, os_h, os_w, residual_scale, out_scale, out_zero, half,
        RESIDUAL, RELU, REQUANT,
    )


def _check_launch(x, weight, weight_zero, out_mult, out_bias, residual, groups, out_shape):
    """Shape/dtype/device checks of the launcher (the public op checks more; this guards direct calls)."""
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise TypeError(f"x: expected uint8 [N, C, H, W] codes, got {x.dtype} of shape {tuple(x.shape)}")
    if weight.dtype != torch.int8 or weight.dim() != 4:
        raise TypeError(f"weight: expected int8 [O, C/groups, kh, kw], got {weight.dtype} {tuple(weight.shape)}")
    n, c, _, _ = x.shape
    o, cg, kh, kw = weight.shape
    if groups < 1 or c % groups or o % groups or cg * groups != c:
        raise ValueError(f"groups: {groups} does not fit x of {c} channels and weight {tuple(weight.shape)}")
    for name, t, dt in (("weight_zero", weight_zero, torch.int32), ("out_mult", out_mult, torch.float32),
                        ("out_bias", out_bias, torch.float32)):
        if t.dtype != dt or t.numel() != o:
            raise ValueError(f"{name}: expected {dt} [{o}], got {t.dtype} {tuple(t.shape)}")
    if residual is not None:
        if residual.dtype not in (torch.float32, torch.uint8) or tuple(residual.shape) != tuple(out_shape):
            raise ValueError(f"residual: expected float32 or uint8 {tuple(out_shape)}, got {residual.dtype} "
                             f"{tuple(residual.shape)}")
    for name, t in (("weight", weight), ("weight_zero", weight_zero), ("out_mult", out_mult),
                    ("out_bias", out_bias), ("residual", residual)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{name}: expected a tensor on {x.device}, got {t.device}")
    if cg * kh * kw > MAX_K:
        raise ValueError(f"weight: {cg * kh * kw} taps per output exceed the int32 accumulator's bound ({MAX_K})")


def int_conv2d(
    x: torch.Tensor, weight: torch.Tensor, weight_zero: torch.Tensor, stride: List[int], padding: List[int],
    dilation: List[int], groups: int, out_mult: torch.Tensor, out_bias: torch.Tensor,
    residual: Optional[torch.Tensor], residual_scale: float, relu: bool, out_bits: int, out_scale: float,
    out_zero: float,
) -> torch.Tensor:
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    sh, sw = stride
    ph, pw = padding
    dh, dw = dilation
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out_shape = (n, o, ho, wo)
    _check_launch(x, weight, weight_zero, out_mult, out_bias, residual, groups, out_shape)
    if not 0 <= out_bits <= 8 or out_bits == 1:
        raise ValueError(f"out_bits: expected 0 or 2..8, got {out_bits}")
    fmt = torch.channels_last if int_conv2d_output_channels_last(x) else torch.contiguous_format
    out = torch.empty(out_shape, dtype=torch.uint8 if out_bits else torch.float32, device=x.device,
                      memory_format=fmt)
    if out.numel() == 0:
        return out
    weight_zero = weight_zero.reshape(-1).contiguous()
    out_mult = out_mult.reshape(-1).contiguous()
    out_bias = out_bias.reshape(-1).contiguous()
    res_kind = RESIDUAL_NONE if residual is None else (RESIDUAL_CODES if residual.dtype == torch.uint8 else RESIDUAL_FLOAT)
    res = residual if residual is not None else out  # never read without a residual
    wide = max(x.numel(), out.numel(), res.numel()) + 2**20 >= INT32_LIMIT
    n_pixels = n * ho * wo
    cout_g = o // groups
    common = (
        res.stride(0), res.stride(1), res.stride(2), res.stride(3),
        out.stride(0), out.stride(1), out.stride(2), out.stride(3),
        sh, sw, ph, pw, dh, dw,
        float(residual_scale), float(out_scale), float(out_zero), float(2 ** (out_bits - 1)) if out_bits else 1.0,
    )
    flags = dict(RESIDUAL=res_kind, RELU=bool(relu), REQUANT=out_bits > 0, WIDE=wide)
    if cg == 1:
        block_c = min(next_pow2(o), DW_MAX_BLOCK_C)
        grid = (triton.cdiv(n_pixels, DW_BLOCK_P), triton.cdiv(o, block_c))
        _int_conv2d_direct_kernel[grid](
            x, weight, weight_zero, out_mult, out_bias, res, out,
            n_pixels, h, w, ho, wo, o, cout_g, kh, kw,
            x.stride(0), x.stride(1), x.stride(2), x.stride(3),
            weight.stride(0), weight.stride(2), weight.stride(3),
            *common, **flags, BLOCK_P=DW_BLOCK_P, BLOCK_C=block_c, num_warps=4, enable_fp_fusion=False,
        )
        return out
    # Input channels contiguous in the weight (the loop's K order): coalesced weight tiles on a GPU.
    weight = weight.contiguous(memory_format=torch.channels_last)
    t = INTERPRET_TILES if _INTERPRET else GPU_TILES
    block_n = min(max(next_pow2(cout_g), 16), t["MAX_BLOCK_N"])
    block_k = min(max(next_pow2(cg), t["MIN_BLOCK_K"]), t["MAX_BLOCK_K"])
    n_blocks_n = triton.cdiv(cout_g, block_n)
    grid = (triton.cdiv(n_pixels, t["BLOCK_M"]), n_blocks_n * groups)
    _int_conv2d_gemm_kernel[grid](
        x, weight, weight_zero, out_mult, out_bias, res, out,
        n_pixels, h, w, ho, wo, cg, cout_g, n_blocks_n, triton.cdiv(cg, block_k), kh, kw,
        x.stride(0), x.stride(1), x.stride(2), x.stride(3),
        weight.stride(0), weight.stride(1), weight.stride(2), weight.stride(3),
        *common, **flags, BLOCK_M=t["BLOCK_M"], BLOCK_N=block_n, BLOCK_K=block_k,
        num_warps=t["num_warps"], num_stages=t["num_stages"], enable_fp_fusion=False,
    )
    return out
