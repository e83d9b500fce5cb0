"""``int_conv2d`` for tensor cores (backend ``triton_tc``): an NHWC implicit GEMM with the zero point folded into
the weights, and a ``torch._int_mm`` path for 1x1 convolutions.

Why a second kernel next to ``int_conv2d.py``: that one reads any layout and computes the box sum (sum of the
codes over the window, for the ``z_w * box`` term) with a second dot per K step. Here the integer identity

    acc + z_w * box = sum_k q_w[o, k] * m[k] + z_w[o] * sum_k m[k] = sum_k (q_w[o, k] + z_w[o]) * m[k]

removes the box sum: the weight enters the dot as ``w' = q_w + z_w``, which is an int8 whenever every sum lies in
[-128, 127] (W4 levels with the usual zero points; checked once per weight). One dot per K step, no box
registers, fewer instructions. Activations are read as NHWC (channels contiguous: each pixel's channel chunk is
one coalesced, 16-byte-aligned load) and the weight as an [O, K] matrix (K = kernel row, column, input channel;
K contiguous: an 8-bit wgmma reads both operands K-major from shared memory, so the tiles go there by cp.async,
pipelined, with no transpose).

As in the first kernel, the codes m in [0, 255] enter the dot as ``m - 128`` (top bit flipped, an int8) and the
accumulator gets ``128 * sum_k w'[o, k]`` back; padding loads m = 0, whose ``-128 * w'`` the correction cancels.
The final int32 sum is exact (|w'| <= 128, m <= 255, K <= MAX_K taps: below 2^31; wrapping partial sums are
exact modulo 2^32), and its conversion to float32 rounds like the reference's int64 one. The epilogue is the
first kernel's ``_epilogue_store`` (same float32 steps, no contracted multiply-add).

Two K orders, chosen per layer:
* per tap (``FLAT=False``): input channels a multiple of ``BLOCK_K``; a step reads one tap's channel chunk, and
  the padding mask is per pixel;
* flat (``FLAT=True``): K = kh * kw * C walked in chunks that span taps (few channels, e.g. 16: a per-tap chunk of
  32 would waste half the MMA); tap and channel per K column, from the compile-time channel count.

Not handled here (delegated to the first kernel, bit-exact too): groups > 1, folded weights outside int8.

1x1 convolutions may instead run as ``torch._int_mm`` (cuBLASLt int8 GEMM) of the shifted codes with the folded
weight, followed by a Triton kernel applying the same epilogue; the launcher's tuning (or the measured policy,
``adadfq_fast._backend``) picks between the two per layer. Where ``_int_mm`` cannot run (shapes cuBLASLt rejects;
a CPU build without it) the tensor-core kernel runs instead.
"""
from __future__ import annotations

import importlib
import os
import weakref
from typing import List, Optional

import torch
import triton
import triton.language as tl

from ._common import INT32_LIMIT, next_pow2
from .int_conv2d import _epilogue_store, _memo_get, _memo_put, _pixels

# The first kernel's module (the package attribute of that name is its launcher function).
_base = importlib.import_module(".int_conv2d", __package__)

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_VARYING = ["n_pixels", "height", "width", "out_h", "out_w", "kernel_h", "kernel_w", "pad_h", "pad_w", "k_steps",
            "n_blocks_m", "n_blocks_n", "n_chunks"]
# Programs that share a weight block run next to each other (GROUP_M pixel blocks per group): L2 reuse.
GROUP_M = 8


@triton.jit
def _swizzle(pid, n_blocks_m, n_blocks_n, GROUP: tl.constexpr):
    per_group = GROUP * n_blocks_n
    first_m = (pid // per_group) * GROUP
    size_m = tl.minimum(n_blocks_m - first_m, GROUP)
    pid_m = first_m + (pid % per_group) % size_m
    pid_n = (pid % per_group) // size_m
    return pid_m, pid_n


@triton.jit(do_not_specialize=_VARYING)
def _int_conv2d_tc_kernel(
    x_ptr, w_ptr, wsum_ptr, mult_ptr, bias_ptr, res_ptr, out_ptr,
    n_pixels, height, width, out_h, out_w, cout, n_blocks_m, n_blocks_n, kernel_h, kernel_w, k_steps, n_chunks,
    xs_n, xs_h, xs_w, ws_o,
    rs_n, rs_c, rs_h, rs_w, os_n, os_c, os_h, os_w,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    residual_scale, out_scale, out_zero, half,
    RESIDUAL: tl.constexpr, RELU: tl.constexpr, REQUANT: tl.constexpr, WIDE: tl.constexpr,
    FLAT: tl.constexpr, CIN: tl.constexpr, KW: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr,
    EPI_SPLIT: tl.constexpr,
):
    """x: uint8 NHWC codes (channel stride 1); w: int8 [cout, K] folded levels (row stride ws_o = K, K
    contiguous), column k = (r * kw + s) * CIN + c; wsum: int32 [cout] row sums of w. FLAT: k_steps chunks over all K; else
    kernel_h * kernel_w taps x n_chunks channel chunks (CIN a multiple of BLOCK_K)."""
    pid_m, pid_n = _swizzle(tl.program_id(0), n_blocks_m, n_blocks_n, GROUP)
    pix, pmask, n_idx, oh, ow = _pixels(pid_m, n_pixels, out_h, out_w, BLOCK_M, WIDE)
    # Not clamped with tl.where (the masks cover the tail): a clamp hides the contiguity of o from the compiler,
    # and the weight tile then loads byte by byte, unpipelined, with a pointer register per byte (ptxas spilled).
    o = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    omask = o < cout
    kk = tl.arange(0, BLOCK_K)
    shift = tl.full([BLOCK_M, BLOCK_K], 128, tl.uint8)
    x_pix = x_ptr + n_idx * xs_n
    ih0 = oh * stride_h - pad_h
    iw0 = ow * stride_w - pad_w
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    if FLAT:
        k_total = kernel_h * KW * CIN
        for step in range(0, k_steps):
            k = step * BLOCK_K + kk
            kmask = k < k_total
            tap = k // CIN  # compile-time divisors: shifts and multiplies
            c = k - tap * CIN
            r = tap // KW
            s = tap - r * KW
            ih = ih0[:, None] + (r * dil_h)[None, :]
            iw = iw0[:, None] + (s * dil_w)[None, :]
            ok = (pmask[:, None] & kmask[None, :] & (ih >= 0) & (ih < height) & (iw >= 0) & (iw < width))
            xm = tl.load(x_pix[:, None] + ih * xs_h + iw * xs_w + c[None, :], mask=ok, other=0)
            wt = tl.load(w_ptr + o[None, :] * ws_o + k[:, None], mask=kmask[:, None] & omask[None, :], other=0)
            acc += tl.dot((xm ^ shift).to(tl.int8, bitcast=True), wt, out_dtype=tl.int32)
    else:
        # One flat loop over (tap, channel chunk), so the compiler pipelines every step's loads (num_stages).
        for step in range(0, kernel_h * kernel_w * n_chunks):
            tap = step // n_chunks
            c0 = (step - tap * n_chunks) * BLOCK_K
            r = tap // kernel_w
            s = tap - r * kernel_w
            ih = ih0 + r * dil_h
            iw = iw0 + s * dil_w
            ok = pmask & (ih >= 0) & (ih < height) & (iw >= 0) & (iw < width)
            c = tl.max_contiguous(tl.multiple_of(c0 + kk, BLOCK_K), BLOCK_K)
            xm = tl.load((x_pix + ih * xs_h + iw * xs_w)[:, None] + c[None, :], mask=ok[:, None], other=0)
            k = tap * (n_chunks * BLOCK_K) + c  # weight column: the tap's CIN columns, then the channel
            wt = tl.load(w_ptr + o[None, :] * ws_o + k[:, None], mask=omask[None, :], other=0)
            acc += tl.dot((xm ^ shift).to(tl.int8, bitcast=True), wt, out_dtype=tl.int32)
    wsum = tl.load(wsum_ptr + o, mask=omask, other=0)
    total = acc + 128 * wsum[None, :]  # exact: see the module docstring
    if EPI_SPLIT:
        # The epilogue in two halves of the output channels, one after the other: the residual and output address
        # tensors of only half the tile are live at a time (the full tile's spilled at BLOCK_N >= 128).
        halves = tl.permute(tl.reshape(total, [BLOCK_M, 2, BLOCK_N // 2]), (0, 2, 1))
        t0, t1 = tl.split(halves)
        o0 = pid_n * BLOCK_N + tl.arange(0, BLOCK_N // 2)
        _epilogue_store(
            t0, n_idx, oh, ow, pmask, o0, o0 < cout, mult_ptr, bias_ptr, res_ptr, out_ptr,
            rs_n, rs_c, rs_h, rs_w, os_n, os_c, os_h, os_w, residual_scale, out_scale, out_zero, half,
            RESIDUAL, RELU, REQUANT,
        )
        o1 = o0 + BLOCK_N // 2
        _epilogue_store(
            t1, n_idx, oh, ow, pmask, o1, o1 < cout, mult_ptr, bias_ptr, res_ptr, out_ptr,
            rs_n, rs_c, rs_h, rs_w, os_n, os_c, os_h, os_w, residual_scale, out_scale, out_zero, half,
            RESIDUAL, RELU, REQUANT,
        )
    else:
        _epilogue_store(
            total, n_idx, oh, ow, pmask, o, omask, mult_ptr, bias_ptr, res_ptr, out_ptr,
            rs_n, rs_c, rs_h, rs_w, os_n, os_c, os_h, os_w, residual_scale, out_scale, out_zero, half,
            RESIDUAL, RELU, REQUANT,
        )


@triton.jit(do_not_specialize=["n_pixels", "out_h", "out_w"])
def _int_mm_epilogue_kernel(
    acc_ptr, wsum_ptr, mult_ptr, bias_ptr, res_ptr, out_ptr,
    n_pixels, out_h, out_w, cout,
    rs_n, rs_c, rs_h, rs_w, os_n, os_c, os_h, os_w,
    residual_scale, out_scale, out_zero, half,
    RESIDUAL: tl.constexpr, RELU: tl.constexpr, REQUANT: tl.constexpr, WIDE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """The epilogue after ``torch._int_mm``: acc is the int32 [n_pixels, cout] product (row-major)."""
    pix, pmask, n_idx, oh, ow = _pixels(tl.program_id(0), n_pixels, out_h, out_w, BLOCK_M, WIDE)
    o = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    omask = o < cout
    o = tl.where(omask, o, 0)
    acc = tl.load(acc_ptr + pix[:, None] * cout + o[None, :], mask=pmask[:, None] & omask[None, :], other=0)
    wsum = tl.load(wsum_ptr + o, mask=omask, other=0)
    total = acc + 128 * wsum[None, :]
    _epilogue_store(
        total, n_idx, oh, ow, pmask, o, omask, mult_ptr, bias_ptr, res_ptr, out_ptr,
        rs_n, rs_c, rs_h, rs_w, os_n, os_c, os_h, os_w, residual_scale, out_scale, out_zero, half,
        RESIDUAL, RELU, REQUANT,
    )


# ---------------------------------------------------------------------------------------------------------------
# Tiles: (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages), or INT_MM (the cuBLASLt path, 1x1 only). A short list
# per layer class; on a GPU the launcher times the candidates that fit a layer on its first call with a new shape
# and keeps the fastest, unless the measured policy (written by benchmarks/bench_int_conv2d_gpu.py --sweep) names
# the tile for that layer. BLOCK_M 128 = two wgmma warpgroups' rows at 8 warps; BLOCK_N and BLOCK_K as wide as the
# registers allow (the int32 accumulator of a 128 x 256 tile is 128 registers per thread at 8 warps).
# ---------------------------------------------------------------------------------------------------------------
INT_MM = "int_mm"
# The 64-row tiles are for batch 1, where a layer has few pixels (ResNet-18's last stage: 49) and 128-row tiles
# would leave most SMs idle. (256, 128) was dropped: it spilled with a float residual (sm_90 compile, ptxas -v).
TC_CONFIGS = {
    "3x3": [(128, 128, 64, 8, 3), (128, 256, 64, 8, 3), (128, 128, 128, 8, 3), (128, 64, 64, 4, 4),
            (64, 64, 64, 4, 3)],
    "stride2": [(128, 128, 64, 8, 3), (128, 64, 64, 4, 4), (128, 128, 128, 8, 4), (64, 128, 64, 4, 3),
                (64, 64, 64, 4, 3)],
    "1x1": [(128, 128, 64, 8, 3), (128, 256, 64, 8, 4), (128, 64, 128, 4, 4), (64, 64, 64, 4, 3), INT_MM],
    "small_n": [(128, 64, 64, 4, 4), (128, 32, 64, 4, 4), (64, 64, 64, 4, 3), (128, 64, 32, 4, 4)],
}
GPU_MIN_BLOCK_K = 32  # int8 MMA wants K a multiple of 32
# The interpreter pays per program and per loop step: large tiles, one stage.
INTERPRET_CONFIG = (256, 128, 64, 4, 1)
INTERPRET_MIN_BLOCK_K = 16
MM_EPILOGUE_BLOCK = (256, 64) if _INTERPRET else (64, 128)
_TUNED: dict = {}


def layer_class(kh: int, kw: int, sh: int, sw: int, cout: int) -> str:
    """The tile list a layer draws from: ``1x1``, ``stride2`` (a strided kxk), ``small_n`` (<= 64 output
    channels), else ``3x3``."""
    if kh * kw == 1:
        return "1x1"
    if sh > 1 or sw > 1:
        return "stride2"
    return "small_n" if cout <= 64 else "3x3"


def fit_config(config, cin: int, k_total: int, cout: int, min_block_k: int):
    """Shrink a tile to the layer: N to the next power of two of the output channels, K to that of the input
    channels (or of all K, when one chunk spans taps). INT_MM stays as it is."""
    if config == INT_MM:
        return config
    block_m, block_n, block_k, num_warps, num_stages = config
    block_n = min(block_n, max(next_pow2(cout), 16))
    if cin % block_k:  # flat K: chunks span taps, so the whole K is what one chunk may cover
        block_k = min(block_k, max(next_pow2(k_total), min_block_k))
    return block_m, block_n, block_k, num_warps, num_stages


def int_mm_eligible(x: torch.Tensor, n_pixels: int, cin: int, cout: int) -> bool:
    """Whether ``torch._int_mm`` takes the 1x1 GEMM: cuBLASLt wants more than 16 rows and K, N multiples of 8
    (any shape runs on CPU)."""
    if not hasattr(torch, "_int_mm"):
        return False
    if x.is_cuda:
        return n_pixels > 16 and cin >= 16 and cin % 8 == 0 and cout % 8 == 0
    return True


# ---------------------------------------------------------------------------------------------------------------
# The folded weight, memoized per (weight, zero point) tensor pair like the first kernel's preparation.
# ---------------------------------------------------------------------------------------------------------------
_FOLDED: dict = {}  # weight -> (weak ref. to the zero-point tensor, its version, folded_weight's value)


def folded_weight(weight: torch.Tensor, weight_zero: torch.Tensor):
    """``(w', wsum)``: ``w' = q_w + z_w`` as an int8 [O, kh * kw * C] matrix (columns tap-major, then input
    channel; the transpose of a 1x1's is ``_int_mm``'s column-major B) and its int32 row sums; ``(None, None)`` where some ``q_w + z_w`` leaves [-128, 127] (then the first kernel
    runs). Reading the range is a host synchronisation, hence the memo (keyed by both tensors' versions)."""
    hit = _memo_get(_FOLDED, weight)
    if hit is not None and hit[0]() is weight_zero and hit[1] == weight_zero._version:
        return hit[2]
    if weight.is_cuda and torch.cuda.is_current_stream_capturing():
        # No host read of the range inside a capture (CudaGraphRunner's warm-up calls fill the memo first; inference
        # tensors are never memoized): the first kernel, exact for any weight, is captured instead.
        return None, None
    o = weight.shape[0]
    wide = weight.to(torch.int32) + weight_zero.reshape(o, 1, 1, 1).to(torch.int32)
    if wide.numel() and (int(wide.min()) < -128 or int(wide.max()) > 127):
        value = (None, None)
    else:
        folded = wide.permute(0, 2, 3, 1).reshape(o, -1).to(torch.int8).contiguous()
        value = (folded, folded.sum(dim=1, dtype=torch.int32))
    if not weight_zero.is_inference():
        _memo_put(_FOLDED, weight, (weakref.ref(weight_zero), weight_zero._version, value))
    return value


def _as_nhwc(x: torch.Tensor) -> torch.Tensor:
    """x itself when its channels are already contiguous per pixel, else a channels_last copy."""
    return x if x.permute(0, 2, 3, 1).is_contiguous() else x.contiguous(memory_format=torch.channels_last)


def _shifted_rows(x: torch.Tensor, stride) -> torch.Tensor:
    """The 1x1 GEMM's A: the codes at the strided pixels as m - 128 (int8), [N * Ho * Wo, C], in one pass."""
    sub = x[:, :, :: stride[0], :: stride[1]].permute(0, 2, 3, 1)
    return torch.bitwise_xor(sub, 128).contiguous().view(torch.int8).reshape(-1, x.shape[1])


def int_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """int8 [M, K] x int8 [K, N] -> int32, through ``torch._int_mm``; on CPU, where a build rejects it, an exact
    int32 matmul instead (CUDA has no integer matmul besides _int_mm: there its errors propagate)."""
    try:
        return torch._int_mm(a, b)
    except (RuntimeError, AttributeError):
        if a.is_cuda:
            raise
        return a.to(torch.int32) @ b.to(torch.int32)


def int_conv2d(
    x: torch.Tensor, weight: torch.Tensor, weight_zero: torch.Tensor, stride: List[int], padding: List[int],
    dilation: List[int], groups: int, out_mult: torch.Tensor, out_bias: torch.Tensor,
    residual: Optional[torch.Tensor], residual_scale: float, relu: bool, out_bits: int, out_scale: float,
    out_zero: float, config=None,
) -> torch.Tensor:
    """Same contract as ``kernels.int_conv2d.int_conv2d``. ``config`` forces a tile (or INT_MM) instead of the
    measured policy / tuning (the sweep and the tests use it)."""
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    sh, sw = stride
    ph, pw = padding
    dh, dw = dilation
    out_shape = _base.conv_output_shape(x, weight, stride, padding, dilation)
    ho, wo = out_shape[2:]
    _base._check_launch(x, weight, weight_zero, out_mult, out_bias, residual, groups, out_shape)
    args = (x, weight, weight_zero, stride, padding, dilation, groups, out_mult, out_bias, residual,
            residual_scale, relu, out_bits, out_scale, out_zero)
    if groups != 1:
        return _base.int_conv2d(*args)
    folded, wsum = folded_weight(weight, weight_zero)
    if folded is None:
        return _base.int_conv2d(*args)
    out = _base.launch_output(x, out_shape, out_bits)
    if out.numel() == 0:
        return out
    xn = _as_nhwc(x)
    out_mult, out_bias, res_kind, res = _base.epilogue_operands(out_mult, out_bias, residual, out)
    n_pixels = n * ho * wo
    wide = max(x.numel(), out.numel(), res.numel(), n_pixels * o) + 2**20 >= INT32_LIMIT
    epilogue = (
        res.stride(0), res.stride(1), res.stride(2), res.stride(3),
        out.stride(0), out.stride(1), out.stride(2), out.stride(3),
    )
    scalars = (float(residual_scale), float(out_scale), float(out_zero),
               float(2 ** (out_bits - 1)) if out_bits else 1.0)
    flags = dict(RESIDUAL=res_kind, RELU=bool(relu), REQUANT=out_bits > 0, WIDE=wide)
    k_total = c * kh * kw
    one_by_one = kh == 1 and kw == 1 and ph == 0 and pw == 0
    mm_ok = one_by_one and int_mm_eligible(x, n_pixels, c, o)

    def launch(cfg):
        if cfg == INT_MM:
            acc = int_mm(_shifted_rows(xn, stride), folded.t())
            block_m, block_n = MM_EPILOGUE_BLOCK
            grid = (triton.cdiv(n_pixels, block_m), triton.cdiv(o, block_n))
            _int_mm_epilogue_kernel[grid](
                acc, wsum, out_mult, out_bias, res, out, n_pixels, ho, wo, o, *epilogue, *scalars, **flags,
                BLOCK_M=block_m, BLOCK_N=block_n, num_warps=4, enable_fp_fusion=False,
            )
            return
        block_m, block_n, block_k, num_warps, num_stages = cfg
        flat = c % block_k != 0
        n_blocks_m, n_blocks_n = triton.cdiv(n_pixels, block_m), triton.cdiv(o, block_n)
        _int_conv2d_tc_kernel[(n_blocks_m * n_blocks_n,)](
            xn, folded, wsum, out_mult, out_bias, res, out,
            n_pixels, h, w, ho, wo, o, n_blocks_m, n_blocks_n, kh, kw, triton.cdiv(k_total, block_k),
            c // block_k, xn.stride(0), xn.stride(2), xn.stride(3), k_total, *epilogue, sh, sw, ph, pw, dh, dw, *scalars,
            **flags, FLAT=flat, CIN=c if flat else 0, KW=kw if flat else 0,
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP=GROUP_M, EPI_SPLIT=block_n >= 32,
            num_warps=num_warps, num_stages=num_stages, enable_fp_fusion=False,
        )

    if config is None:
        config = choose_config(x, weight.shape, stride, padding, dilation, n_pixels, k_total, res_kind,
                               bool(relu), out_bits > 0, wide, mm_ok, launch)
    elif config == INT_MM and not mm_ok:
        raise ValueError(f"config: int_mm runs 1x1 convolutions without padding whose shapes _int_mm takes, got "
                         f"weight {tuple(weight.shape)}, padding {padding}, {n_pixels} pixels")
    launch(config)
    return out


def choose_config(x, weight_shape, stride, padding, dilation, n_pixels, k_total, res_kind, relu, requant, wide,
                  mm_ok, launch):
    """The tile of this call: the interpreter's one tile; else the measured policy's tile for this layer; else the
    fastest candidate of its class, timed once per shape (not during a CUDA-graph capture or with
    ADADFQ_TRITON_TUNE=0: then the class's first candidate, or INT_MM for an eligible 1x1)."""
    o, c, kh, kw = weight_shape
    if _INTERPRET:
        return fit_config(INTERPRET_CONFIG, c, k_total, o, INTERPRET_MIN_BLOCK_K)
    from adadfq_fast import _backend

    measured = _backend.measured_tile(x.shape, weight_shape, stride, padding, dilation, 1)
    if measured is not None and (measured != INT_MM or mm_ok):
        return measured if measured == INT_MM else fit_config(tuple(measured), c, k_total, o, GPU_MIN_BLOCK_K)
    key = (x.device, n_pixels, c, o, kh, kw, *stride, *padding, *dilation, res_kind, relu, requant, wide)
    if key in _TUNED:
        return _TUNED[key]
    configs = [cfg for cfg in TC_CONFIGS[layer_class(kh, kw, stride[0], stride[1], o)] if cfg != INT_MM or mm_ok]
    candidates = list(dict.fromkeys(fit_config(cfg, c, k_total, o, GPU_MIN_BLOCK_K) for cfg in configs))
    if (len(candidates) == 1 or os.environ.get("ADADFQ_TRITON_TUNE", "1") == "0"
            or torch.cuda.is_current_stream_capturing()):
        return INT_MM if mm_ok else candidates[0]  # not remembered: a later call outside the capture still tunes
    times = {cfg: _base.time_launch(launch, cfg) for cfg in candidates}
    best = min(times, key=times.get)
    _TUNED[key] = best
    return best


def tuned_tiles() -> list:
    """What the tuning chose so far: one dict per shape key (for benchmark reports)."""
    names = ("device", "n_pixels", "cin", "cout", "kh", "kw", "sh", "sw", "ph", "pw", "dh", "dw", "residual",
             "relu", "requant", "wide")
    return [dict(zip(names, map(str, key)), tile=cfg if cfg == INT_MM else list(cfg)) for key, cfg in _TUNED.items()]
