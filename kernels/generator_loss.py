"""``generator_loss`` / ``generator_loss_backward``: AdaDFQ's (L_margin, L_bal) and their gradients, one launch
each.

Forward: a single program (see student_loss.py for why) walks the batch in [ROWS, BLOCK_C] tiles computing, per
row, H and lse of softmax(t - s), lse of softmax(t + s) and the two cross-entropies (the label's logits are
gathered directly); it stores ``row_stats = [H; lse(t - s); lse(t + s)]``, then re-reads H (after a barrier: other
threads of the program wrote it) for the batch-level H' = (H - min H) / (ln C - min H) and the margins.
Backward: one program per row tile. Each program first recomputes the batch-level terms (min H, its ties and
sum_i m_i (H_i - ln C) for the gradient through the undetached minimum) from row_stats, O(B) per program,
which avoids a second launch.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
import triton
import triton.language as tl

from ._common import FAST, TL_DTYPES, cast_out, next_pow2, online_softmax_update, row_entropy_lse
from .student_loss import tile_shape

# Chunk of row_stats reduced at a time for the batch-level terms.
BATCH_BLOCK = 1024


@triton.jit
def _relu_keep_nan(v):
    return tl.where(v < 0.0, 0.0, v)


@triton.jit
def _generator_fwd_kernel(
    t_ptr, s_ptr, y_ptr, rs_ptr, margin_ptr, bal_ptr, batch, batch_f, classes, log_c, lambda_l, lambda_u,
    alpha_ds, alpha_as,
    ROWS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_B: tl.constexpr,
):
    ce_d_acc = tl.zeros([ROWS], tl.float32)
    ce_a_acc = tl.zeros([ROWS], tl.float32)
    h_min_acc = tl.full([ROWS], float("inf"), tl.float32)
    nan_acc = tl.zeros([ROWS], tl.int32)
    for r0 in range(0, batch, ROWS):
        r = r0 + tl.arange(0, ROWS)
        rmask = r < batch
        m_d = tl.full([ROWS], float("-inf"), tl.float32)
        se_d = tl.zeros([ROWS], tl.float32)
        sez_d = tl.zeros([ROWS], tl.float32)
        m_a = tl.full([ROWS], float("-inf"), tl.float32)
        se_a = tl.zeros([ROWS], tl.float32)
        for c0 in range(0, classes, BLOCK_C):
            cols = c0 + tl.arange(0, BLOCK_C)
            mask = rmask[:, None] & (cols < classes)[None, :]
            idx = r[:, None] * classes + cols[None, :]
            t = tl.load(t_ptr + idx, mask=mask, other=0.0).to(tl.float32)
            s = tl.load(s_ptr + idx, mask=mask, other=0.0).to(tl.float32)
            m_d, se_d, sez_d = online_softmax_update(m_d, se_d, sez_d, t - s, mask, True)
            m_a, se_a, se_a_unused = online_softmax_update(m_a, se_a, se_a, t + s, mask, False)
        h, lse_d = row_entropy_lse(m_d, se_d, sez_d)
        h_unused, lse_a = row_entropy_lse(m_a, se_a, se_a)
        # Cross-entropies: lse - logit of the label (labels outside [0, C) are not read; the public op checks them).
        label = tl.load(y_ptr + r, mask=rmask, other=0)
        lmask = rmask & (label >= 0) & (label < classes)
        t_y = tl.load(t_ptr + r * classes + label, mask=lmask, other=0.0).to(tl.float32)
        s_y = tl.load(s_ptr + r * classes + label, mask=lmask, other=0.0).to(tl.float32)
        ce_d_acc += tl.where(rmask, lse_d - (t_y - s_y), 0.0)
        ce_a_acc += tl.where(rmask, lse_a - (t_y + s_y), 0.0)
        h_min_acc = tl.minimum(h_min_acc, tl.where(rmask, h, float("inf")))
        nan_acc = nan_acc | (rmask & (h != h)).to(tl.int32)
        tl.store(rs_ptr + r, h, mask=rmask)
        tl.store(rs_ptr + batch + r, lse_d, mask=rmask)
        tl.store(rs_ptr + 2 * batch + r, lse_a, mask=rmask)
    inv_b = 1.0 / batch_f
    bal = alpha_ds * (tl.sum(ce_d_acc, axis=0) * inv_b) + alpha_as * (tl.sum(ce_a_acc, axis=0) * inv_b)
    tl.store(bal_ptr, bal)
    # torch.amin propagates NaN.
    h_min = tl.where(tl.max(nan_acc, axis=0) > 0, float("nan"), tl.min(h_min_acc, axis=0))
    denom = log_c - h_min
    tl.debug_barrier()  # H was stored by other threads of this program
    low = tl.zeros([BLOCK_B], tl.float32)
    high = tl.zeros([BLOCK_B], tl.float32)
    for b0 in range(0, batch, BLOCK_B):
        b = b0 + tl.arange(0, BLOCK_B)
        bmask = b < batch
        h_norm = (tl.load(rs_ptr + b, mask=bmask, other=0.0) - h_min) / denom
        low += tl.where(bmask, _relu_keep_nan(lambda_l - h_norm), 0.0)
        high += tl.where(bmask, _relu_keep_nan(h_norm - lambda_u), 0.0)
    tl.store(margin_ptr, tl.sum(low, axis=0) * inv_b + tl.sum(high, axis=0) * inv_b)


@triton.jit
def _generator_bwd_kernel(
    gm_ptr, gb_ptr, t_ptr, s_ptr, y_ptr, rs_ptr, gt_ptr, gs_ptr, batch, batch_f, classes, log_c, lambda_l, lambda_u,
    alpha_ds, alpha_as,
    T_DT: tl.constexpr, S_DT: tl.constexpr, ROWS: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_B: tl.constexpr,
):
    pid = tl.program_id(0)
    # --- batch-level terms, identical in every program ---
    h_min_acc = tl.full([BLOCK_B], float("inf"), tl.float32)
    nan_acc = tl.zeros([BLOCK_B], tl.int32)
    for b0 in range(0, batch, BLOCK_B):
        b = b0 + tl.arange(0, BLOCK_B)
        bmask = b < batch
        hb = tl.load(rs_ptr + b, mask=bmask, other=float("inf"))
        h_min_acc = tl.minimum(h_min_acc, tl.where(hb != hb, float("inf"), hb))
        nan_acc = nan_acc | (hb != hb).to(tl.int32)
    h_min = tl.where(tl.max(nan_acc, axis=0) > 0, float("nan"), tl.min(h_min_acc, axis=0))
    denom = log_c - h_min
    through_acc = tl.zeros([BLOCK_B], tl.float32)
    ties_acc = tl.zeros([BLOCK_B], tl.float32)
    for b0 in range(0, batch, BLOCK_B):
        b = b0 + tl.arange(0, BLOCK_B)
        bmask = b < batch
        hb = tl.load(rs_ptr + b, mask=bmask, other=0.0)
        hn = (hb - h_min) / denom
        mb = ((hn - lambda_u > 0.0).to(tl.float32) - (lambda_l - hn > 0.0).to(tl.float32)) / batch_f
        through_acc += tl.where(bmask, mb * (hb - log_c), 0.0)
        ties_acc += tl.where(bmask & (hb == h_min), 1.0, 0.0)
    through = tl.sum(through_acc, axis=0)
    ties = tl.sum(ties_acc, axis=0)
    grad_margin = tl.load(gm_ptr).to(tl.float32)
    grad_bal = tl.load(gb_ptr).to(tl.float32)
    c_d = grad_bal * alpha_ds / batch_f
    c_a = grad_bal * alpha_as / batch_f
    # --- this program's rows ---
    r = pid * ROWS + tl.arange(0, ROWS)
    rmask = r < batch
    h = tl.load(rs_ptr + r, mask=rmask, other=0.0)
    lse_d = tl.load(rs_ptr + batch + r, mask=rmask, other=0.0)
    lse_a = tl.load(rs_ptr + 2 * batch + r, mask=rmask, other=0.0)
    hn = (h - h_min) / denom
    m = ((hn - lambda_u > 0.0).to(tl.float32) - (lambda_l - hn > 0.0).to(tl.float32)) / batch_f
    is_min = (h == h_min).to(tl.float32)
    dh = m / denom + is_min / ties * through / (denom * denom)
    g_h = grad_margin * dh
    label = tl.load(y_ptr + r, mask=rmask, other=-1)
    for c0 in range(0, classes, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        mask = rmask[:, None] & (cols < classes)[None, :]
        idx = r[:, None] * classes + cols[None, :]
        t = tl.load(t_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        s = tl.load(s_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        onehot = (cols[None, :] == label[:, None]).to(tl.float32)
        logp_d = (t - s) - lse_d[:, None]
        p_d = tl.exp(logp_d)
        p_a = tl.exp((t + s) - lse_a[:, None])
        g_d = g_h[:, None] * (-p_d * (logp_d + h[:, None])) + c_d * (p_d - onehot)
        g_a = c_a * (p_a - onehot)
        tl.store(gt_ptr + idx, cast_out(g_d + g_a, T_DT), mask=mask)
        tl.store(gs_ptr + idx, cast_out(g_a - g_d, S_DT), mask=mask)


def generator_loss(
    t: torch.Tensor, s: torch.Tensor, y: torch.Tensor, lambda_l: float, lambda_u: float, alpha_ds: float,
    alpha_as: float,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    t, s, y = t.contiguous(), s.contiguous(), y.contiguous()
    batch, classes = t.shape
    device = t.device
    row_stats = torch.empty((3, batch), dtype=torch.float32, device=device)
    margin = torch.empty((), dtype=torch.float32, device=device)
    bal = torch.empty((), dtype=torch.float32, device=device)
    rows, block_c = tile_shape(batch, classes)
    _generator_fwd_kernel[(1,)](
        t, s, y, row_stats, margin, bal, batch, float(batch), classes, math.log(classes),
        lambda_l, lambda_u, alpha_ds, alpha_as,
        ROWS=rows, BLOCK_C=block_c, BLOCK_B=min(next_pow2(batch), BATCH_BLOCK), num_warps=8, **FAST,
    )
    return margin, bal, row_stats


def generator_loss_backward(
    grad_margin: torch.Tensor, grad_bal: torch.Tensor, t: torch.Tensor, s: torch.Tensor, y: torch.Tensor,
    row_stats: torch.Tensor, lambda_l: float, lambda_u: float, alpha_ds: float, alpha_as: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    t, s, y, row_stats = t.contiguous(), s.contiguous(), y.contiguous(), row_stats.contiguous()
    batch, classes = t.shape
    grad_t, grad_s = torch.empty_like(t), torch.empty_like(s)
    if batch == 0:
        return grad_t, grad_s
    rows, block_c = tile_shape(batch, classes)
    _generator_bwd_kernel[(triton.cdiv(batch, rows),)](
        grad_margin, grad_bal, t, s, y, row_stats, grad_t, grad_s, batch, float(batch), classes, math.log(classes),
        lambda_l, lambda_u, alpha_ds, alpha_as,
        T_DT=TL_DTYPES[t.dtype], S_DT=TL_DTYPES[s.dtype], ROWS=rows, BLOCK_C=block_c,
        BLOCK_B=min(next_pow2(batch), BATCH_BLOCK),
        num_warps=8, **FAST,
    )
    return grad_t, grad_s
