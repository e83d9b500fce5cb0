"""``fake_quant_act``: the original QuantAct (EMA range update from the batch min/max, then quantization).

Two launches, no host synchronisation:
1. ``_minmax_partials_kernel``: each of P programs reduces a strided set of blocks to a partial (min, max);
   a NaN anywhere makes that program's partials NaN (torch.amin/amax propagate NaN).
2. ``_act_quant_kernel``: every program reduces the P partials again (P <= MAX_PARTS, a few KB from cache),
   applies the range update in the reference's float32 order and quantizes its block with the new range;
   program 0 writes ``new_state``. All programs compute the same update, so they agree bit for bit.
With ``update=False`` only the second launch runs, on the stored range.
"""
from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

from ._common import BLOCK, EXACT, INT32_LIMIT, cast_out, dense, fake_quant_value, next_pow2, quant_params, tl_dtype

# Upper bound on the min/max partials: enough programs to fill a GPU, few enough that re-reducing them in every
# quantization program stays cheap.
MAX_PARTS = 256


@triton.jit
def _minmax_partials_kernel(x_ptr, part_ptr, numel, n_parts, iters, WIDE: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    if WIDE:
        pid = pid.to(tl.int64)
    mn = tl.full([BLOCK], float("inf"), tl.float32)
    mx = tl.full([BLOCK], float("-inf"), tl.float32)
    nan = tl.zeros([BLOCK], tl.int32)
    for it in range(0, iters):
        offs = (pid + it * n_parts) * BLOCK + tl.arange(0, BLOCK)
        m = offs < numel
        x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
        mn = tl.minimum(mn, tl.where(m, x, float("inf")))
        mx = tl.maximum(mx, tl.where(m, x, float("-inf")))
        nan = nan | (x != x).to(tl.int32)
    has_nan = tl.max(nan, axis=0) > 0
    tl.store(part_ptr + pid, tl.where(has_nan, float("nan"), tl.min(mn, axis=0)))
    tl.store(part_ptr + n_parts + pid, tl.where(has_nan, float("nan"), tl.max(mx, axis=0)))


@triton.jit
def _act_quant_kernel(
    x_ptr, out_ptr, state_ptr, new_state_ptr, part_ptr, numel, n_parts, beta, one_minus_beta, n_levels, half,
    UPDATE: tl.constexpr, WIDE: tl.constexpr, OUT_DT: tl.constexpr, BLOCK: tl.constexpr, BLOCK_P: tl.constexpr,
):
    pid = tl.program_id(0)
    if WIDE:
        pid = pid.to(tl.int64)
    x_min = tl.load(state_ptr)
    x_max = tl.load(state_ptr + 1)
    beta_t = tl.load(state_ptr + 2)
    if UPDATE:
        p = tl.arange(0, BLOCK_P)
        pm = p < n_parts
        pmin = tl.load(part_ptr + p, mask=pm, other=float("inf"))
        pmax = tl.load(part_ptr + n_parts + p, mask=pm, other=float("-inf"))
        has_nan = tl.max(((pmin != pmin) | (pmax != pmax)).to(tl.int32), axis=0) > 0
        batch_min = tl.where(has_nan, float("nan"), tl.min(tl.where(pmin != pmin, float("inf"), pmin), axis=0))
        batch_max = tl.where(has_nan, float("nan"), tl.max(tl.where(pmax != pmax, float("-inf"), pmax), axis=0))
        # Reference order (each step one float32 rounding; fusion is off for this launch):
        # beta_t *= b;  x = (x * b + batch * (1 - b)) / (1 - beta_t)
        beta_t = beta_t * beta
        denom = 1.0 - beta_t
        x_min = tl.math.div_rn(x_min * beta + batch_min * one_minus_beta, denom)
        x_max = tl.math.div_rn(x_max * beta + batch_max * one_minus_beta, denom)
    if pid == 0:
        tl.store(new_state_ptr, x_min)
        tl.store(new_state_ptr + 1, x_max)
        tl.store(new_state_ptr + 2, beta_t)
    scale, zero_point = quant_params(x_min, x_max, n_levels, half)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = fake_quant_value(x, scale, zero_point, half)
    tl.store(out_ptr + offs, cast_out(y, OUT_DT), mask=mask)


def fake_quant_act(
    x: torch.Tensor, bits: int, state: torch.Tensor, beta: float, update: bool
) -> Tuple[torch.Tensor, torch.Tensor]:
    x = dense(x)
    out = torch.empty_like(x)
    numel = x.numel()
    if numel == 0:  # the reference leaves the state untouched for an empty batch
        return out, state.clone()
    state = state.contiguous()
    new_state = torch.empty_like(state)
    blocks = triton.cdiv(numel, BLOCK)
    wide = numel + BLOCK * MAX_PARTS >= INT32_LIMIT
    n_parts = min(blocks, MAX_PARTS)
    if update:
        parts = torch.empty(2 * n_parts, dtype=torch.float32, device=x.device)
        _minmax_partials_kernel[(n_parts,)](
            x, parts, numel, n_parts, triton.cdiv(blocks, n_parts),
            WIDE=wide, BLOCK=BLOCK, num_warps=8, enable_fp_fusion=False,
        )
    else:
        parts = state  # not read
    _act_quant_kernel[(blocks,)](
        x, out, state, new_state, parts, numel, n_parts,
        # beta and 1 - beta rounded to float32 separately from the double momentum, as in the original.
        float(beta), float(1.0 - beta), float(2**bits - 1), float(2 ** (bits - 1)),
        UPDATE=bool(update), WIDE=wide, OUT_DT=tl_dtype(x), BLOCK=BLOCK, BLOCK_P=next_pow2(n_parts), **EXACT,
    )
    return out, new_state
