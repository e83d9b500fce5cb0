"""``student_loss`` / ``student_loss_backward``: L_Q = -T^2 mean_i H(softmax((t_i - s_i) / T)), one launch each.

Forward: a single program walks the batch in tiles of [ROWS, BLOCK_C] (columns in chunks with an online
softmax, so any C works), writes ``row_stats = [H; lse]`` and the loss. The game loop's batches are small
(B = 16), where one program is cheaper than any cross-program reduction; a large B only costs a longer loop.
Backward: one program per tile of rows, ``dL/ds = g T / B * (-p (log p + H))`` with p from the saved lse.
"""
from __future__ import annotations

from typing import Tuple

import torch
import triton
import triton.language as tl

from ._common import FAST, TL_DTYPES, cast_out, next_pow2, online_softmax_update, row_entropy_lse

# Tile of [rows, columns]: whole rows up to 2048 classes (more are processed in chunks), 4096 elements a tile.
MAX_BLOCK_C = 2048
TILE = 4096


def tile_shape(batch: int, classes: int) -> Tuple[int, int]:
    block_c = min(next_pow2(classes), MAX_BLOCK_C)
    rows = max(1, min(next_pow2(batch), TILE // block_c))
    return rows, block_c


@triton.jit
def _student_fwd_kernel(
    t_ptr, s_ptr, rs_ptr, loss_ptr, batch, batch_f, classes, inv_t, neg_t2,
    ROWS: tl.constexpr, BLOCK_C: tl.constexpr,
):
    h_acc = tl.zeros([ROWS], tl.float32)
    for r0 in range(0, batch, ROWS):
        r = r0 + tl.arange(0, ROWS)
        rmask = r < batch
        m = tl.full([ROWS], float("-inf"), tl.float32)
        se = tl.zeros([ROWS], tl.float32)
        sez = tl.zeros([ROWS], tl.float32)
        for c0 in range(0, classes, BLOCK_C):
            cols = c0 + tl.arange(0, BLOCK_C)
            mask = rmask[:, None] & (cols < classes)[None, :]
            idx = r[:, None] * classes + cols[None, :]
            t = tl.load(t_ptr + idx, mask=mask, other=0.0).to(tl.float32)
            s = tl.load(s_ptr + idx, mask=mask, other=0.0).to(tl.float32)
            m, se, sez = online_softmax_update(m, se, sez, (t - s) * inv_t, mask, True)
        h, lse = row_entropy_lse(m, se, sez)
        tl.store(rs_ptr + r, h, mask=rmask)
        tl.store(rs_ptr + batch + r, lse, mask=rmask)
        h_acc += tl.where(rmask, h, 0.0)
    loss = neg_t2 * (tl.sum(h_acc, axis=0) / batch_f)
    tl.store(loss_ptr, loss)


@triton.jit
def _student_bwd_kernel(
    grad_ptr, t_ptr, s_ptr, rs_ptr, gs_ptr, batch, classes, inv_t, t_over_b,
    OUT_DT: tl.constexpr, ROWS: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)
    r = pid * ROWS + tl.arange(0, ROWS)
    rmask = r < batch
    h = tl.load(rs_ptr + r, mask=rmask, other=0.0)
    lse = tl.load(rs_ptr + batch + r, mask=rmask, other=0.0)
    coef = tl.load(grad_ptr).to(tl.float32) * t_over_b
    for c0 in range(0, classes, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        mask = rmask[:, None] & (cols < classes)[None, :]
        idx = r[:, None] * classes + cols[None, :]
        t = tl.load(t_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        s = tl.load(s_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        logp = (t - s) * inv_t - lse[:, None]
        p = tl.exp(logp)
        g = coef * (-p * (logp + h[:, None]))
        tl.store(gs_ptr + idx, cast_out(g, OUT_DT), mask=mask)


def student_loss(t: torch.Tensor, s: torch.Tensor, temperature: float) -> Tuple[torch.Tensor, torch.Tensor]:
    t, s = t.contiguous(), s.contiguous()
    batch, classes = t.shape
    row_stats = torch.empty((2, batch), dtype=torch.float32, device=t.device)
    loss = torch.empty((), dtype=torch.float32, device=t.device)
    rows, block_c = tile_shape(batch, classes)
    _student_fwd_kernel[(1,)](
        t, s, row_stats, loss, batch, float(batch), classes, 1.0 / temperature, -(temperature**2),
        ROWS=rows, BLOCK_C=block_c, num_warps=8, **FAST,
    )
    return loss, row_stats


def student_loss_backward(
    grad: torch.Tensor, t: torch.Tensor, s: torch.Tensor, row_stats: torch.Tensor, temperature: float
) -> torch.Tensor:
    t, s, row_stats = t.contiguous(), s.contiguous(), row_stats.contiguous()
    batch, classes = t.shape
    grad_s = torch.empty_like(s)
    if batch == 0:
        return grad_s
    rows, block_c = tile_shape(batch, classes)
    _student_bwd_kernel[(triton.cdiv(batch, rows),)](
        grad, t, s, row_stats, grad_s, batch, classes, 1.0 / temperature, temperature / batch,
        OUT_DT=TL_DTYPES[s.dtype], ROWS=rows, BLOCK_C=block_c, num_warps=8, **FAST,
    )
    return grad_s
