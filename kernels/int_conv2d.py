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
import weakref
from typing import List, Optional

import torch
import triton
import triton.language as tl

from adadfq_fast.reference import int_conv2d_output_channels_last

from ._common import INT32_LIMIT, next_pow2

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# The int32 accumulator: |q_w| <= 128 and m <= 255, so K taps stay below 2^31 for K <= 65793 (the design's bound).
MAX_K = (2**31 - 1) // (128 * 255)

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


@triton.jit(do_not_specialize=_VARYING + ["n_blocks_n", "n_chunks", "k_real"])
def _int_conv2d_gemm_kernel(
    x_ptr, w_ptr, zero_ptr, wsum_ptr, mult_ptr, bias_ptr, res_ptr, out_ptr,
    n_pixels, height, width, out_h, out_w, cin_g, cout_g, n_blocks_n, n_chunks, kernel_h, kernel_w, k_real,
    xs_n, xs_c, xs_h, xs_w, ws_o, ws_c, ws_h, ws_w,
    rs_n, rs_c, rs_h, rs_w, os_n, os_c, os_h, os_w,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    residual_scale, out_scale, out_zero, half,
    RESIDUAL: tl.constexpr, RELU: tl.constexpr, REQUANT: tl.constexpr, WIDE: tl.constexpr,
    EVEN_K: tl.constexpr, EXACT32: tl.constexpr,
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
    # The box sum comes out of the tensor cores too: a second dot against a [K, 16] tile whose first column is
    # ones (an MMA needs N >= 16; the other columns are zero). 1/8 of the main dot's work at BLOCK_N = 128,
    # where a row sum of every x tile on the CUDA cores cost more than the main dot itself.
    ones = ((tl.arange(0, 16)[None, :] == 0) & (kk[:, None] >= 0)).to(tl.int8)
    shift = tl.full([BLOCK_M, BLOCK_K], 128, tl.uint8)

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    box16 = tl.zeros([BLOCK_M, 16], dtype=tl.int32)
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
        x_ptrs = (x_pix + ih * xs_h + iw * xs_w)[:, None] + (c_base + c)[None, :] * xs_c
        w_ptrs = (w_out + r * ws_h + s * ws_w)[None, :] + c[:, None] * ws_c
        if EVEN_K:  # no channel mask: the loads stay 16 bytes wide
            xm = tl.load(x_ptrs, mask=ok[:, None], other=0)
            wt = tl.load(w_ptrs, mask=omask[None, :], other=0)
            ones_k = ones
        else:
            cmask = c < cin_g
            xm = tl.load(x_ptrs, mask=ok[:, None] & cmask[None, :], other=0)
            wt = tl.load(w_ptrs, mask=cmask[:, None] & omask[None, :], other=0)
            ones_k = tl.where(cmask[:, None], ones, 0).to(tl.int8)
        # m - 128 as an int8, by flipping the top bit (exact for every m in [0, 255]; padding m = 0 -> -128).
        a = (xm ^ shift).to(tl.int8, bitcast=True)
        acc += tl.dot(a, wt, out_dtype=tl.int32)
        box16 += tl.dot(a, ones_k, out_dtype=tl.int32)
    # Undo the shift: sum (m - 128) q = acc - 128 * sum q over the real taps (padding included: m = 0 there);
    # box = sum (m - 128) + 128 * k_real. wsum[o] = sum of q_w[o] over its k_real taps, from the launcher.
    wsum = tl.load(wsum_ptr + o, mask=omask, other=0)
    acc += 128 * wsum[None, :]
    box = tl.sum(box16, axis=1) + 128 * k_real
    z = tl.load(zero_ptr + o, mask=omask, other=0)
    if EXACT32:
        # The launcher checked |acc + z_w * box| < 2^31 for every output: int32 arithmetic, which wraps in the
        # partial product and is still exact in the sum, and an exact int32 -> float32 rounding; no 64-bit
        # multiplies or conversions per output. (It did not bring the kernel under 255 registers: the sm_90
        # compile still spills at the larger tiles, see README "Integer inference".)
        total = acc + z[None, :] * box[:, None]
    else:
        # int64: z_w * box may exceed int32 where acc does not (the reference sums in int64 too).
        total = acc.to(tl.int64) + z.to(tl.int64)[None, :] * box.to(tl.int64)[:, None]
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


def launch_output(x: torch.Tensor, out_shape, out_bits: int) -> torch.Tensor:
    """The op's output for a launcher: uint8 codes (out_bits 2..8) or float32 (0), in the op's output layout."""
    if not 0 <= out_bits <= 8 or out_bits == 1:
        raise ValueError(f"out_bits: expected 0 or 2..8, got {out_bits}")
    fmt = torch.channels_last if int_conv2d_output_channels_last(x) else torch.contiguous_format
    return torch.empty(out_shape, dtype=torch.uint8 if out_bits else torch.float32, device=x.device,
                       memory_format=fmt)


def epilogue_operands(out_mult: torch.Tensor, out_bias: torch.Tensor, residual: Optional[torch.Tensor],
                      out: torch.Tensor):
    """The epilogue's kernel arguments: flat per-channel mult and bias, the residual kind, and the residual tensor
    (`out` where there is none: a valid pointer, never read)."""
    res_kind = (RESIDUAL_NONE if residual is None
                else (RESIDUAL_CODES if residual.dtype == torch.uint8 else RESIDUAL_FLOAT))
    res = residual if residual is not None else out
    return out_mult.reshape(-1).contiguous(), out_bias.reshape(-1).contiguous(), res_kind, res


def conv_output_shape(x: torch.Tensor, weight: torch.Tensor, stride, padding, dilation) -> tuple:
    """``(N, O, Ho, Wo)`` of a convolution of ``x`` [N, C, H, W] with ``weight`` [O, C/g, kh, kw]."""
    n, _, h, w = x.shape
    o, _, kh, kw = weight.shape
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return (n, o, ho, wo)


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
    out_shape = conv_output_shape(x, weight, stride, padding, dilation)
    ho, wo = out_shape[2:]
    _check_launch(x, weight, weight_zero, out_mult, out_bias, residual, groups, out_shape)
    out = launch_output(x, out_shape, out_bits)
    if out.numel() == 0:
        return out
    zero_arg = weight_zero  # the caller's tensor object: the key of the zero-point bound cache
    weight_zero = weight_zero.reshape(-1).contiguous()
    out_mult, out_bias, res_kind, res = epilogue_operands(out_mult, out_bias, residual, out)
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
    weight, wsum = prepared_weight(weight)
    exact32 = int32_total_is_exact(zero_arg, cg * kh * kw)
    args = (x, weight, weight_zero, wsum, out_mult, out_bias, res, out, n_pixels, h, w, ho, wo, cg, cout_g)
    tail = (kh, kw, cg * kh * kw,
            x.stride(0), x.stride(1), x.stride(2), x.stride(3),
            weight.stride(0), weight.stride(1), weight.stride(2), weight.stride(3), *common)

    def launch(config):
        block_m, block_n, block_k, num_warps, num_stages = config
        n_blocks_n = triton.cdiv(cout_g, block_n)
        grid = (triton.cdiv(n_pixels, block_m), n_blocks_n * groups)
        _int_conv2d_gemm_kernel[grid](
            *args, n_blocks_n, triton.cdiv(cg, block_k), *tail, **flags, EVEN_K=cg % block_k == 0, EXACT32=exact32,
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=num_warps, num_stages=num_stages,
            enable_fp_fusion=False,
        )

    if _INTERPRET:
        launch(fit_config(INTERPRET_CONFIG, cg, cout_g, INTERPRET_MIN_BLOCK_K))
        return out
    key = (x.device, n_pixels, cg, cout_g, groups, kh, kw, sh, sw, dh, dw, res_kind, bool(relu), out_bits > 0, wide)
    launch(tuned_config(key, launch, GPU_CONFIGS, cg, cout_g, GPU_MIN_BLOCK_K))
    return out


# Tile configurations (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages). On a GPU the launcher times each that fits
# the layer on its first call with a new shape and keeps the fastest (no timing inside a CUDA-graph capture, or
# with ADADFQ_TRITON_TUNE=0: then the first one). Several, because one tile cannot suit both ResNet-18's
# 56 x 56 x 64 layers (many pixels, few channels) and its 7 x 7 x 512 ones (few pixels, many channels).
GPU_CONFIGS = [
    (128, 128, 64, 8, 3),
    (128, 128, 128, 8, 3),
    (128, 256, 64, 8, 3),
    (256, 128, 64, 8, 3),
    (128, 64, 64, 4, 4),
]
GPU_MIN_BLOCK_K = 32  # int8 MMA wants K a multiple of 32
# The interpreter pays per program and per loop iteration: large tiles, one stage.
INTERPRET_CONFIG = (256, 128, 128, 4, 1)
INTERPRET_MIN_BLOCK_K = 16
TUNE_REPEATS = 5
_TUNED: dict = {}


# Values derived from a launcher argument, memoized per tensor: id -> (weak reference, tensor version, value). An
# integer model passes the same weight tensors at every call, so they are derived once. Not memoized: inference
# tensors (torch.inference_mode: they have no version counter to notice an in-place change) and anything computed
# while a CUDA graph is being captured (its tensors would only be filled when the graph replays).
_ZERO_BOUND: dict = {}  # weight_zero -> max |z_w| (reading it is a host synchronisation)
_WEIGHT_PREP: dict = {}  # weight -> (its channels_last copy or None when it already is one, per-channel level sums)


def _memo_get(cache: dict, t: torch.Tensor):
    if t.is_inference():
        return None
    hit = cache.get(id(t))
    return hit[2] if hit is not None and hit[0]() is t and hit[1] == t._version else None


def _memo_put(cache: dict, t: torch.Tensor, value) -> None:
    if t.is_inference() or (t.is_cuda and torch.cuda.is_current_stream_capturing()):
        return
    if len(cache) > 4096:  # drop the entries of tensors that are gone
        for key in [k for k, v in cache.items() if v[0]() is None]:
            del cache[key]
    cache[id(t)] = (weakref.ref(t), t._version, value)


def int32_total_is_exact(weight_zero: torch.Tensor, k_real: int) -> bool:
    """Whether acc + z_w * box fits int32 for every possible input: |m| <= 255, |q_w| <= 128, k_real taps, so
    |acc + z_w * box| <= 255 * k_real * (128 + max |z_w|). Unknown bound inside a CUDA-graph capture (no host
    read possible there): False, the int64 path, which is always exact."""
    z_max = _memo_get(_ZERO_BOUND, weight_zero)
    if z_max is None:
        if weight_zero.is_cuda and torch.cuda.is_current_stream_capturing():
            return False
        z_max = int(weight_zero.abs().max()) if weight_zero.numel() else 0
        _memo_put(_ZERO_BOUND, weight_zero, z_max)
    return 255 * k_real * (128 + z_max) < 2**31


def prepared_weight(weight: torch.Tensor):
    """``(weight in channels_last, sum of each output channel's levels as int32)``: input channels contiguous (the
    GEMM loop's K order: coalesced weight tiles on a GPU), and the sums that undo the kernel's m - 128. Two extra
    kernel launches per call when computed, so memoized per weight tensor."""
    hit = _memo_get(_WEIGHT_PREP, weight)
    if hit is not None:
        copy, wsum = hit
        return (weight if copy is None else copy), wsum
    weight_cl = weight.contiguous(memory_format=torch.channels_last)
    wsum = weight_cl.sum(dim=(1, 2, 3), dtype=torch.int32)
    # The cache must not hold the weight itself (its weak reference would never die): None stands for it.
    _memo_put(_WEIGHT_PREP, weight, (None if weight_cl is weight else weight_cl, wsum))
    return weight_cl, wsum


def tuned_tiles() -> list:
    """What the tuning chose so far: one dict per shape key (for benchmark reports)."""
    names = ("device", "n_pixels", "cin_g", "cout_g", "groups", "kh", "kw", "sh", "sw", "dh", "dw", "residual",
             "relu", "requant", "wide")
    return [dict(zip(names, map(str, key)), tile=list(config)) for key, config in _TUNED.items()]


def fit_config(config, cin_g: int, cout_g: int, min_block_k: int):
    """Shrink a tile's N and K to the layer (no wider than the next power of two of its channels)."""
    block_m, block_n, block_k, num_warps, num_stages = config
    block_n = min(block_n, max(next_pow2(cout_g), 16))
    block_k = min(block_k, max(next_pow2(cin_g), min_block_k))
    return block_m, block_n, block_k, num_warps, num_stages


def time_launch(launch, config) -> float:
    """Milliseconds per launch of ``config`` (CUDA events, after one launch that compiles and warms up)."""
    launch(config)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(TUNE_REPEATS):
        launch(config)
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / TUNE_REPEATS


def tuned_config(key, launch, configs, cin_g: int, cout_g: int, min_block_k: int):
    """The fastest of ``configs`` (fitted to the layer) for ``key``, timed once per key with CUDA events."""
    if key in _TUNED:
        return _TUNED[key]
    candidates = list(dict.fromkeys(fit_config(c, cin_g, cout_g, min_block_k) for c in configs))
    if (len(candidates) == 1 or os.environ.get("ADADFQ_TRITON_TUNE", "1") == "0"
            or torch.cuda.is_current_stream_capturing()):
        return candidates[0]  # not remembered: a later call outside the capture still tunes
    times = {config: time_launch(launch, config) for config in candidates}
    best = min(times, key=times.get)
    _TUNED[key] = best
    return best
