"""Pieces shared by the Triton kernels: the quantizer's float32 steps, exact output casts, launch helpers.

Everything here must behave identically on a GPU and in Triton's numpy interpreter (``TRITON_INTERPRET=1``):
* no libdevice (``rint`` etc. do not run in the interpreter): rounding uses the 2^23 trick below;
* divisions of the quantizer use ``tl.math.div_rn`` (IEEE round-to-nearest); a plain ``/`` on float32 compiles
  to the approximate ``div.full.f32`` on NVIDIA GPUs;
* quantizer kernels are launched with ``enable_fp_fusion=False`` so ``scale * x - zp`` is not contracted into
  one FMA (the reference rounds the product first);
* float32 -> bfloat16 is rounded by hand (the interpreter truncates, GPUs round to nearest even).
"""
from __future__ import annotations

import collections
from typing import Dict, Sequence, Tuple

import torch
import triton
import triton.language as tl

from adadfq_fast._layout import is_dense

# torch dtype -> Triton dtype of the kernels' element pointers.
TL_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}

# Elements per program of the elementwise passes: large enough that the interpreter (which pays per program
# instance) runs few programs, and 16 elements per thread at 8 warps on a GPU.
BLOCK = 4096
NUM_WARPS = 8
# Quantizer launches: no FMA contraction (see the module docstring). Ignored by the interpreter.
EXACT = dict(num_warps=NUM_WARPS, enable_fp_fusion=False)
# Reductions and losses (compared to the reference with a tolerance): contraction allowed, said explicitly because
# Triton 3.9 warns when it is left to the default (which changes in 3.10).
FAST = dict(enable_fp_fusion=True)

INT32_LIMIT = 2**31


def tl_dtype(t: torch.Tensor):
    try:
        return TL_DTYPES[t.dtype]
    except KeyError:
        raise TypeError(f"adadfq_fast triton kernels: unsupported dtype {t.dtype}") from None


def next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()




def dense(x: torch.Tensor) -> torch.Tensor:
    return x if is_dense(x) else x.contiguous()


def inner_size(x: torch.Tensor, axis: int, channels: int) -> int:
    """Flat element i of dense ``x`` lies in channel ``(i // inner) % channels`` along ``axis``."""
    if axis < 0 or channels <= 1:
        return max(x.numel(), 1)
    return x.stride(axis)


# --------------------------------------------------------------------------------------------------------------
# Small int64 tables (pointers, sizes) describing a list of tensors, on the tensors' device.
# --------------------------------------------------------------------------------------------------------------
_TABLE_CACHE: "collections.OrderedDict[Tuple, torch.Tensor]" = collections.OrderedDict()
_TABLE_CACHE_SIZE = 256
# Tables uploaded while a CUDA graph is being captured: the graph's copy node reads the host values again at every
# replay, so they live in a pinned arena that is only ever appended to (allocated before any capture, on the
# first CUDA call, so that capturing allocates no host memory).
_ARENA_SIZE = 1 << 16
_arena: Dict[str, object] = {"host": None, "used": 0}
_CAPTURED_TABLES: Dict[Tuple, torch.Tensor] = {}


def _captured_upload(key: Tuple, values: Tuple[int, ...], device: torch.device) -> torch.Tensor:
    n = len(values)
    host = _arena["host"]
    if host is not None and _arena["used"] + n <= _ARENA_SIZE:
        staging = host[_arena["used"] : _arena["used"] + n]
        _arena["used"] += n
        staging.copy_(torch.tensor(values, dtype=torch.int64))
    else:  # no room left: a fresh pinned buffer, kept alive with the table
        staging = torch.tensor(values, dtype=torch.int64).pin_memory()
    table = torch.empty(n, dtype=torch.int64, device=device)
    table.copy_(staging, non_blocking=True)
    _CAPTURED_TABLES[key] = table
    _CAPTURED_TABLES[key + ("staging",)] = staging
    return table


def device_table(values: Sequence[int], device: torch.device) -> torch.Tensor:
    """``values`` as an int64 tensor on ``device``, without a host synchronisation.

    On CUDA the values go through pinned memory with an asynchronous copy (a pageable copy would synchronise
    and is not allowed during graph capture). Tables are cached by content, so a repeated call with the same
    tensors (the usual case inside a captured or compiled loop) uploads nothing.
    """
    values = tuple(int(v) for v in values)
    if device.type != "cuda":
        return torch.tensor(values, dtype=torch.int64, device=device)
    key = (str(device), values)
    hit = _CAPTURED_TABLES.get(key)
    if hit is not None:
        return hit
    capturing = torch.cuda.is_current_stream_capturing()
    hit = _TABLE_CACHE.get(key)
    if hit is not None:
        if capturing:  # a graph will read this table at every replay: never evict it
            _CAPTURED_TABLES[key] = _TABLE_CACHE.pop(key)
        else:
            _TABLE_CACHE.move_to_end(key)
        return hit
    if capturing:
        return _captured_upload(key, values, device)
    if _arena["host"] is None:
        _arena["host"] = torch.empty(_ARENA_SIZE, dtype=torch.int64, pin_memory=True)
    # The pinned staging buffer may be dropped right away: the caching host allocator keeps it until the copy ran.
    table = torch.tensor(values, dtype=torch.int64).pin_memory().to(device, non_blocking=True)
    _TABLE_CACHE[key] = table
    if len(_TABLE_CACHE) > _TABLE_CACHE_SIZE:
        _TABLE_CACHE.popitem(last=False)
    return table


# --------------------------------------------------------------------------------------------------------------
# Device helpers
# --------------------------------------------------------------------------------------------------------------
@triton.jit
def round_half_even(v):
    """torch.round for any float32: values with |v| >= 2^23 are integers already (inf and NaN pass through)."""
    a = tl.abs(v)
    r = (a + 8388608.0) - 8388608.0
    r = tl.where(v < 0.0, -r, r)
    return tl.where(a < 8388608.0, r, v)


@triton.jit
def quant_params(lo, hi, n_levels, half):
    """scale = (1 / max(hi - lo, 1e-8)) * (2^k - 1);  zp = round(scale * lo) + 2^(k-1)  (reference order)."""
    width = hi - lo
    width = tl.where(width < 1e-8, 1e-8, width)  # NaN stays NaN, as torch.clamp(min=) keeps it
    scale = tl.math.div_rn(1.0, width) * n_levels
    zero_point = round_half_even(scale * lo) + half
    return scale, zero_point


@triton.jit
def fake_quant_value(x, scale, zero_point, half):
    """(clamp(round(scale * x - zp), -half, half - 1) + zp) / scale.

    Clamping before rounding is exact (integer bounds) and brings |v| under 2^22, where adding and removing
    1.5 * 2^23 rounds half to even. The clamp is two selects so that NaN passes through like torch.clamp.
    """
    v = scale * x - zero_point
    v = tl.where(v < -half, -half, v)
    v = tl.where(v > half - 1.0, half - 1.0, v)
    q = (v + 12582912.0) - 12582912.0
    return tl.math.div_rn(q + zero_point, scale)


@triton.jit
def cast_out(v, OUT_DT: tl.constexpr):
    """float32 -> OUT_DT with round-to-nearest-even. bfloat16 is rounded by hand (the interpreter's cast
    truncates); after that the cast is exact everywhere."""
    if OUT_DT == tl.bfloat16:
        bits = v.to(tl.uint32, bitcast=True)
        bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000
        v = tl.where(v != v, v, bits.to(tl.float32, bitcast=True))
    return v.to(OUT_DT)


@triton.jit
def online_softmax_update(m, se, sez, z, mask, WITH_SEZ: tl.constexpr):
    """Fold a chunk of columns into running row statistics around the running max ``m``:
    se = sum exp(z - m), sez = sum exp(z - m) * (z - m). A row with nothing folded yet has m = -inf, se = 0.
    Masked lanes never produce inf or NaN (so padding rows stay quiet in the interpreter); NaN data propagates."""
    m_new = tl.maximum(m, tl.max(tl.where(mask, z, float("-inf")), axis=1))
    m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # all-padding rows
    zs = tl.where(mask, z - m_ref[:, None], 0.0)
    e = tl.where(mask, tl.exp(zs), 0.0)
    fresh = m == float("-inf")
    delta = tl.where(fresh, 0.0, m - m_ref)
    alpha = tl.where(fresh, 0.0, tl.exp(delta))
    se_new = alpha * se + tl.sum(e, axis=1)
    if WITH_SEZ:
        sez = alpha * (sez + delta * se) + tl.sum(e * zs, axis=1)
    return m_new, se_new, sez


@triton.jit
def row_entropy_lse(m, se, sez):
    """(entropy, log-sum-exp) of a row from its running statistics: H = log se - sez / se, lse = m + log se.
    se >= 1 for a real row (its max contributes exp(0)); 0 only for padding rows, which are not stored."""
    se = tl.where(se == 0.0, 1.0, se)
    log_se = tl.log(se)
    return log_se - sez / se, m + log_se
