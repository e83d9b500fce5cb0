"""``bn_stat_loss`` / ``bn_stat_loss_backward``: L_BNS over all BatchNorm inputs of a network, few launches.

Every layer is described by one row of a small int64 table (data pointers, sizes, offsets) uploaded once per
call, so one grid covers all layers:

* forward, launch 1 (``_bn_partials_kernel``): one program per work item (layer, block of BLOCK_C channels,
  split of the channel's elements). It sums ``x - shift`` and ``(x - shift)^2`` per channel (shift = the
  channel's first element, which keeps the one-pass variance free of cancellation for data far from zero) and
  stores the partial sums; split 0 also stores shift and the running statistics as float32.
* forward, launch 2 (``_bn_finalize_kernel``, one program): combines the partial sums in a fixed order
  (deterministic), writes ``stats = [mean; biased var]`` and the loss.
* backward, one launch (``_bn_backward_kernel``): one program per block of BLOCK elements of any layer, writes
  ``g/L * [2 (mu - rm) / (C M) + 4 (var - rv) (x - mu) / (C M)]``.

A layer's input is dense flat memory viewed as [outer, C, inner] (inner = stride of dim 1): NCHW, channels_last
and [N, C] all fit. Launch 1 and the backward run once per distinct (x, running_mean, running_var) dtype
combination (element types are compile-time constants); a network normally has one.
"""
from __future__ import annotations

import functools
import os
from typing import Dict, List, Tuple

import torch
import triton
import triton.language as tl

from ._common import (
    BLOCK, FAST, INT32_LIMIT, NUM_WARPS, TL_DTYPES, cast_out, dense, device_table, inner_size, next_pow2,
)

# Forward tile [BLOCK_C channels, BLOCK_K elements]: 4096 elements, as the elementwise kernels.
BLOCK_C = 16
BLOCK_K = 256
# Elements per forward work item: a layer with more elements per channel block is split, so that the large
# early layers spread over many programs (GPU) while small layers stay one program each.
ITEM_ELEMS = 1 << 16
FINALIZE_BLOCK = 1024

# Forward table columns.
F_X, F_C, F_INNER, F_M, F_OFF, F_RM, F_RV, F_START, F_CBLOCKS, F_CHUNK, F_SPLITS = range(11)
F_NCOL = 11
# Backward table columns.
B_X, B_OUT, B_C, B_INNER, B_NUMEL, B_OFF, B_RM, B_RV, B_START, B_DENOM = range(10)
B_NCOL = 10


@triton.jit
def _find_row(table_ptr, n_rows, col, pid, NCOL: tl.constexpr, BLOCK_L: tl.constexpr):
    """Index of the last table row whose ``col`` (first work item, ascending) is <= pid."""
    rows = tl.arange(0, BLOCK_L)
    starts = tl.load(table_ptr + rows * NCOL + col, mask=rows < n_rows, other=2**62)
    return tl.sum((starts <= pid).to(tl.int32), axis=0) - 1


@triton.jit
def _bn_partials_kernel(
    table_ptr, n_rows, part_ptr, aux_ptr, total_c,
    X_DT: tl.constexpr, RM_DT: tl.constexpr, RV_DT: tl.constexpr,
    NCOL: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    row = table_ptr + _find_row(table_ptr, n_rows, 7, pid, NCOL, BLOCK_L) * NCOL  # 7 = F_START
    x_ptr = tl.load(row + 0).to(tl.pointer_type(X_DT))
    channels = tl.load(row + 1)
    inner = tl.load(row + 2)
    per_channel = tl.load(row + 3)
    offset = tl.load(row + 4)
    item = pid - tl.load(row + 7)
    n_cblocks = tl.load(row + 8)
    chunk = tl.load(row + 9)
    cb = item % n_cblocks
    split = item // n_cblocks

    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < channels
    # The channel's first element (outer 0, inner 0); absent for an empty batch.
    shift = tl.load(x_ptr + c * inner, mask=cmask & (c * 0 < per_channel), other=0.0).to(tl.float32)
    s1 = tl.zeros([BLOCK_C, BLOCK_K], tl.float32)
    s2 = tl.zeros([BLOCK_C, BLOCK_K], tl.float32)
    k_begin = split * chunk
    k_end = tl.minimum(per_channel, k_begin + chunk)
    for k0 in range(k_begin, k_end, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        o = k // inner
        addr = (o[None, :] * channels + c[:, None]) * inner + (k - o * inner)[None, :]
        m = cmask[:, None] & (k < k_end)[None, :]
        v = tl.load(x_ptr + addr, mask=m, other=0.0).to(tl.float32)
        d = tl.where(m, v - shift[:, None], 0.0)
        s1 += d
        s2 += d * d
    col = offset + c
    tl.store(part_ptr + split * 2 * total_c + col, tl.sum(s1, axis=1), mask=cmask)
    tl.store(part_ptr + split * 2 * total_c + total_c + col, tl.sum(s2, axis=1), mask=cmask)
    if split == 0:
        rm_ptr = tl.load(row + 5).to(tl.pointer_type(RM_DT))
        rv_ptr = tl.load(row + 6).to(tl.pointer_type(RV_DT))
        tl.store(aux_ptr + col, shift, mask=cmask)
        tl.store(aux_ptr + total_c + col, tl.load(rm_ptr + c, mask=cmask, other=0.0).to(tl.float32), mask=cmask)
        tl.store(aux_ptr + 2 * total_c + col, tl.load(rv_ptr + c, mask=cmask, other=0.0).to(tl.float32), mask=cmask)


@triton.jit
def _bn_finalize_kernel(
    table_ptr, n_layers, n_layers_f, part_ptr, aux_ptr, stats_ptr, loss_ptr, total_c,
    NCOL: tl.constexpr, BLOCK: tl.constexpr,
):
    loss = tl.zeros([1], tl.float32)
    for layer in range(0, n_layers):
        row = table_ptr + layer * NCOL
        channels = tl.load(row + 1)
        per_channel = tl.load(row + 3).to(tl.float32)
        offset = tl.load(row + 4)
        splits = tl.load(row + 10)
        acc_m = tl.zeros([BLOCK], tl.float32)
        acc_v = tl.zeros([BLOCK], tl.float32)
        for c0 in range(0, channels, BLOCK):
            col = offset + c0 + tl.arange(0, BLOCK)
            cmask = col < offset + channels
            s1 = tl.zeros([BLOCK], tl.float32)
            s2 = tl.zeros([BLOCK], tl.float32)
            for split in range(0, splits):
                s1 += tl.load(part_ptr + split * 2 * total_c + col, mask=cmask, other=0.0)
                s2 += tl.load(part_ptr + split * 2 * total_c + total_c + col, mask=cmask, other=0.0)
            e1 = s1 / per_channel
            mean = tl.load(aux_ptr + col, mask=cmask, other=0.0) + e1
            var = s2 / per_channel - e1 * e1
            var = tl.where(var < 0.0, 0.0, var)  # rounding can dip below zero; NaN passes
            tl.store(stats_ptr + col, mean, mask=cmask)
            tl.store(stats_ptr + total_c + col, var, mask=cmask)
            dm = mean - tl.load(aux_ptr + total_c + col, mask=cmask, other=0.0)
            dv = var - tl.load(aux_ptr + 2 * total_c + col, mask=cmask, other=0.0)
            acc_m += tl.where(cmask, dm * dm, 0.0)
            acc_v += tl.where(cmask, dv * dv, 0.0)
        c_f = channels.to(tl.float32)
        loss += tl.sum(acc_m, axis=0) / c_f + tl.sum(acc_v, axis=0) / c_f
    tl.store(loss_ptr + tl.arange(0, 1), loss / n_layers_f)


@triton.jit
def _bn_backward_kernel(
    grad_ptr, table_ptr, n_rows, stats_ptr, total_c,
    X_DT: tl.constexpr, RM_DT: tl.constexpr, RV_DT: tl.constexpr, WIDE: tl.constexpr,
    NCOL: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    row = table_ptr + _find_row(table_ptr, n_rows, 8, pid, NCOL, BLOCK_L) * NCOL  # 8 = B_START
    x_ptr = tl.load(row + 0).to(tl.pointer_type(X_DT))
    out_ptr = tl.load(row + 1).to(tl.pointer_type(X_DT))
    channels = tl.load(row + 2)
    inner = tl.load(row + 3)
    numel = tl.load(row + 4)
    offset = tl.load(row + 5)
    rm_ptr = tl.load(row + 6).to(tl.pointer_type(RM_DT))
    rv_ptr = tl.load(row + 7).to(tl.pointer_type(RV_DT))
    block = pid - tl.load(row + 8)
    denom = tl.load(row + 9).to(tl.float32)  # L * C * M
    if not WIDE:
        # 32-bit index arithmetic: 64-bit integer division is many times slower on a GPU.
        block = block.to(tl.int32)
        channels = channels.to(tl.int32)
        inner = inner.to(tl.int32)
        numel = numel.to(tl.int32)
    i = block * BLOCK + tl.arange(0, BLOCK)
    mask = i < numel
    c = (i // inner) % channels
    coef = tl.load(grad_ptr).to(tl.float32) / denom
    mu = tl.load(stats_ptr + offset + c, mask=mask, other=0.0)
    var = tl.load(stats_ptr + total_c + offset + c, mask=mask, other=0.0)
    rm = tl.load(rm_ptr + c, mask=mask, other=0.0).to(tl.float32)
    rv = tl.load(rv_ptr + c, mask=mask, other=0.0).to(tl.float32)
    a = (2.0 * coef) * (mu - rm)
    b = (4.0 * coef) * (var - rv)
    x = tl.load(x_ptr + i, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + i, cast_out(a + b * (x - mu), X_DT), mask=mask)


def _interpreted_on_host(fn):
    """Under TRITON_INTERPRET=1 the interpreter copies tensor *arguments* to the host, but not the tensors this
    module reaches through its pointer tables: run on host copies instead (tests only; a real GPU launch never
    takes this path)."""

    @functools.wraps(fn)
    def wrapper(*args):
        tensors = [a for a in args if isinstance(a, torch.Tensor)] + [t for a in args if isinstance(a, list) for t in a]
        device = tensors[0].device
        if os.environ.get("TRITON_INTERPRET") != "1" or device.type == "cpu":
            return fn(*args)
        def to_host(a):
            if isinstance(a, torch.Tensor):
                return a.cpu()
            return [t.cpu() for t in a] if isinstance(a, list) else a

        out = fn(*[to_host(a) for a in args])
        return [t.to(device) for t in out] if isinstance(out, list) else tuple(t.to(device) for t in out)

    return wrapper


def _layout(x: torch.Tensor) -> Tuple[int, int, int]:
    """(C, inner, M): channels, the stride of dim 1 in flat memory, elements per channel."""
    c = x.shape[1]
    return c, inner_size(x, 1, c), (x.numel() // c if c > 0 else 0)


def _groups(feats, running_means, running_vars) -> Dict[tuple, List[int]]:
    groups: Dict[tuple, List[int]] = {}
    for i, (x, rm, rv) in enumerate(zip(feats, running_means, running_vars)):
        groups.setdefault((x.dtype, rm.dtype, rv.dtype), []).append(i)
    return groups


@_interpreted_on_host
def bn_stat_loss(
    feats: List[torch.Tensor], running_means: List[torch.Tensor], running_vars: List[torch.Tensor]
) -> Tuple[torch.Tensor, torch.Tensor]:
    feats = [dense(x) for x in feats]
    running_means = [r.contiguous() for r in running_means]
    running_vars = [r.contiguous() for r in running_vars]
    device = feats[0].device
    layouts = [_layout(x) for x in feats]
    offsets, total_c = [], 0
    for c, _, _ in layouts:
        offsets.append(total_c)
        total_c += c
    # Work items per layer: channel blocks x splits of the elements per channel (chunks are BLOCK_K-aligned).
    items = []
    for c, _, m in layouts:
        n_cblocks = triton.cdiv(c, BLOCK_C)
        k_blocks = max(1, triton.cdiv(m, BLOCK_K))
        splits = max(1, min(k_blocks, (min(c, BLOCK_C) * m) // ITEM_ELEMS))
        chunk = triton.cdiv(k_blocks, splits) * BLOCK_K
        splits = max(1, triton.cdiv(m, chunk))
        items.append((n_cblocks, chunk, splits))
    max_splits = max(s for _, _, s in items)
    parts = torch.empty((max_splits, 2, total_c), dtype=torch.float32, device=device)
    aux = torch.empty((3, total_c), dtype=torch.float32, device=device)

    rows_all = []
    for (dt_x, dt_rm, dt_rv), idx in _groups(feats, running_means, running_vars).items():
        rows, start = [], 0
        for i in idx:
            c, inner, m = layouts[i]
            n_cblocks, chunk, splits = items[i]
            rows.append([feats[i].data_ptr(), c, inner, m, offsets[i], running_means[i].data_ptr(),
                         running_vars[i].data_ptr(), start, max(n_cblocks, 1), chunk, splits])
            start += n_cblocks * splits
        rows_all.append((dt_x, dt_rm, dt_rv, rows, start))
    # The finalize kernel walks the layers in order; its table follows the per-group tables (one upload).
    final_rows = []
    for i, (c, inner, m) in enumerate(layouts):
        n_cblocks, chunk, splits = items[i]
        final_rows.append([0, c, inner, m, offsets[i], 0, 0, 0, n_cblocks, chunk, splits])
    flat, bases = [], []
    for _, _, _, rows, _ in rows_all:
        bases.append(len(flat))
        flat.extend(v for r in rows for v in r)
    final_base = len(flat)
    flat.extend(v for r in final_rows for v in r)
    table = device_table(flat, device)

    for (dt_x, dt_rm, dt_rv, rows, n_items), base in zip(rows_all, bases):
        if n_items == 0:
            continue
        _bn_partials_kernel[(n_items,)](
            table[base:], len(rows), parts, aux, total_c,
            X_DT=TL_DTYPES[dt_x], RM_DT=TL_DTYPES[dt_rm], RV_DT=TL_DTYPES[dt_rv],
            NCOL=F_NCOL, BLOCK_L=next_pow2(len(rows)), BLOCK_C=BLOCK_C, BLOCK_K=BLOCK_K, num_warps=NUM_WARPS, **FAST,
        )
    stats = torch.empty((2, total_c), dtype=torch.float32, device=device)
    loss = torch.empty((), dtype=torch.float32, device=device)
    _bn_finalize_kernel[(1,)](
        table[final_base:], len(feats), float(len(feats)), parts, aux, stats, loss, total_c,
        NCOL=F_NCOL, BLOCK=FINALIZE_BLOCK, num_warps=4, **FAST,
    )
    return loss, stats


@_interpreted_on_host
def bn_stat_loss_backward(
    grad: torch.Tensor,
    feats: List[torch.Tensor],
    running_means: List[torch.Tensor],
    running_vars: List[torch.Tensor],
    stats: torch.Tensor,
) -> List[torch.Tensor]:
    feats = [dense(x) for x in feats]
    running_means = [r.contiguous() for r in running_means]
    running_vars = [r.contiguous() for r in running_vars]
    stats = stats.contiguous()
    device = feats[0].device
    num_layers = len(feats)
    grads = [torch.empty_like(x) for x in feats]
    offsets, total_c = [], 0
    for x in feats:
        offsets.append(total_c)
        total_c += x.shape[1]

    launches, flat = [], []
    for (dt_x, dt_rm, dt_rv), idx in _groups(feats, running_means, running_vars).items():
        rows, start, wide = [], 0, False
        for i in idx:
            x = feats[i]
            c, inner, m = _layout(x)
            n_blocks = triton.cdiv(x.numel(), BLOCK)
            wide = wide or x.numel() + BLOCK >= INT32_LIMIT
            rows.append([x.data_ptr(), grads[i].data_ptr(), max(c, 1), inner, x.numel(), offsets[i],
                         running_means[i].data_ptr(), running_vars[i].data_ptr(), start,
                         num_layers * c * max(m, 1)])
            start += n_blocks
        launches.append((dt_x, dt_rm, dt_rv, len(flat), len(rows), start, wide))
        flat.extend(v for r in rows for v in r)
    table = device_table(flat, device)
    for dt_x, dt_rm, dt_rv, base, n_rows, n_blocks, wide in launches:
        if n_blocks == 0:
            continue
        _bn_backward_kernel[(n_blocks,)](
            grad, table[base:], n_rows, stats, total_c,
            X_DT=TL_DTYPES[dt_x], RM_DT=TL_DTYPES[dt_rm], RV_DT=TL_DTYPES[dt_rv], WIDE=wide,
            NCOL=B_NCOL, BLOCK_L=next_pow2(n_rows), BLOCK=BLOCK, num_warps=NUM_WARPS, **FAST,
        )
    return grads
