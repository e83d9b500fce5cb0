"""Pure-PyTorch AdaDFQ math, written line by line from ``docs/spec.md`` (the project's spec).

This module has two jobs:

* **The oracle.** The spec-level functions (``fake_quant``, ``fake_quant_weight``, ``fake_quant_act``,
  ``bn_stat_loss``, ``adadfq_generator_loss``, ``adadfq_student_loss``) are ordinary differentiable
  PyTorch code. Tests compare every backend's values against them, and every backend's gradients against
  autograd *through* them, so a hand-derived backward formula is never its own judge.
* **The fallback backend.** The ``*_forward`` / ``*_backward`` functions at the bottom have exactly the
  signatures of the native kernels (``adadfq_native::*``); they are what the ``reference`` backend runs
  when no compiled kernel is available. The backward formulas are written out explicitly (autograd does not
  run inside a custom op's kernel) and are tested against autograd of the spec functions.

All arithmetic is float32 whatever the input dtype; the float32 expression order here is the contract
that the C++, CUDA and Triton kernels reproduce bit for bit (fake-quant) or to rounding (reductions).
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ._layout import is_dense
# The quantizer's parameters and levels and the entropy of the margin: one home, shared with the library.
from .quant_math import RANGE_EPS, normalized_entropy, quant_levels, quant_params, row_entropy, weight_range  # noqa: F401


def _acc(x: Tensor) -> Tensor:
    """Computation dtype: float32, except that float64 stays float64 (so gradcheck can test the formulas)."""
    return x if x.dtype == torch.float64 else x.float()


# ----------------------------------------------------------------------------------------------------------
# Quantizer
# ----------------------------------------------------------------------------------------------------------
def _broadcast_range(t: Tensor, x: Tensor, axis: Optional[int]) -> Tensor:
    if axis is None or t.dim() == 0:
        return t.reshape(())
    shape = [1] * x.dim()
    shape[axis] = -1
    return t.reshape(shape)


def _quantize_dequantize(x: Tensor, bits: int, lo: Tensor, hi: Tensor, axis: Optional[int]) -> Tensor:
    scale, zero_point = quant_params(bits, lo, hi)
    scale = _broadcast_range(scale, x, axis)
    zero_point = _broadcast_range(zero_point, x, axis)
    q = quant_levels(x, bits, scale, zero_point)
    return ((q + zero_point) / scale).to(x.dtype)


class _StraightThrough(torch.autograd.Function):
    """Forward: the quantizer. Backward: identity to ``x`` (faithful STE, no clipping mask)."""

    @staticmethod
    def forward(ctx, x, bits, lo, hi, axis):
        return _quantize_dequantize(x, bits, lo, hi, axis)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None, None, None


def fake_quant(x: Tensor, bits: int, lo: Tensor, hi: Tensor, axis: Optional[int] = None) -> Tensor:
    """Spec quantizer with a given range; per tensor (0-d lo/hi) or per channel along ``axis``."""
    return _StraightThrough.apply(x, bits, lo.detach(), hi.detach(), axis)


def fake_quant_weight(w: Tensor, bits: int) -> Tensor:
    lo, hi = weight_range(w)
    return fake_quant(w, bits, lo, hi, axis=0)


ACT_RANGE_UPDATES = ("faithful", "standard")
STES = ("identity", "clipped")


def standard_ema_prescale(state: Tensor) -> Tensor:
    """``[x_min, x_max]`` of ``state`` turned back into the raw (uncorrected) EMA: stored * (1 - beta_t).

    The standard bias-corrected EMA keeps ``m_t = beta m_(t-1) + (1 - beta) v_t`` and uses ``m_t / (1 - beta^t)``.
    The state stores the corrected range (the value the quantizer reads, frozen or not), so ``m_(t-1)`` is
    ``stored * (1 - beta_t)``; feeding that to the faithful formula gives exactly the standard update. At the
    start (beta_t = 1) the raw EMA is 0 and the first update stores this batch's min/max.
    """
    return torch.cat([state[:2] * (1.0 - state[2]), state[2:]])


def ema_range_update(state: Tensor, x: Tensor, beta: float, mode: str = "faithful") -> None:
    """The QuantAct range update, in place on ``state = [x_min, x_max, beta_t]`` (float32).

    ``faithful`` (the original): the bias correction divides the *stored* value, so it compounds.
    ``standard`` (opt-in fix): a standard bias-corrected EMA, see :func:`standard_ema_prescale`.
    ``beta`` and ``1 - beta`` are rounded to float32 separately, as the original's Python floats are when
    they meet a float32 tensor. An empty ``x`` leaves the state untouched.
    """
    if mode not in ACT_RANGE_UPDATES:
        raise ValueError(f"act_range_update: expected one of {list(ACT_RANGE_UPDATES)}, got {mode!r}")
    if x.numel() == 0:
        return
    prev = standard_ema_prescale(state) if mode == "standard" else state
    b = torch.tensor(beta, dtype=torch.float32, device=state.device)
    one_minus_b = torch.tensor(1.0 - beta, dtype=torch.float32, device=state.device)
    xf = x.detach().float()
    beta_t = prev[2] * b
    denom = 1.0 - beta_t
    new_min = (prev[0] * b + xf.min() * one_minus_b) / denom
    new_max = (prev[1] * b + xf.max() * one_minus_b) / denom
    state.copy_(torch.stack([new_min, new_max, beta_t]))


def clip_mask(x: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Where the clipped STE lets the gradient through: inside the quantizer's range, lo <= x <= hi."""
    return (x >= lo) & (x <= hi)


def fake_quant_act(x: Tensor, bits: int, state: Tensor, beta: float = 0.9, update: bool = True,
                   ste: str = "identity", range_update: str = "faithful") -> Tensor:
    """The activation quantizer; ``ste="clipped"`` zeroes the gradient where x lies outside [x_min, x_max]
    (where the quantizer clamps), ``range_update`` chooses the EMA (see :func:`ema_range_update`)."""
    if ste not in STES:
        raise ValueError(f"ste: expected one of {list(STES)}, got {ste!r}")
    if update:
        ema_range_update(state, x, beta, range_update)
    out = fake_quant(x, bits, state[0], state[1])
    if ste == "clipped":
        mask = clip_mask(x.detach(), state[0], state[1]).to(x.dtype)
        out = out.detach() + (x - x.detach()) * mask  # value: out; gradient: mask
    return out


# ----------------------------------------------------------------------------------------------------------
# L_BNS
# ----------------------------------------------------------------------------------------------------------
def _bn_reduce_dims(x: Tensor) -> Tuple[int, ...]:
    return tuple(d for d in range(x.dim()) if d != 1)


def bn_stat_loss(feats: Sequence[Tensor], running_means: Sequence[Tensor], running_vars: Sequence[Tensor]) -> Tensor:
    """(1/L) sum_l [ mean_c (mu_c - rm_c)^2 + mean_c (var_c - rv_c)^2 ], biased var over all dims but 1."""
    terms = []
    for x, rm, rv in zip(feats, running_means, running_vars):
        xf = _acc(x)
        dims = _bn_reduce_dims(xf)
        mu = xf.mean(dim=dims)
        var = xf.var(dim=dims, unbiased=False)
        terms.append(((mu - _acc(rm)) ** 2).mean() + ((var - _acc(rv)) ** 2).mean())
    return torch.stack(terms).sum() / len(terms)


# ----------------------------------------------------------------------------------------------------------
# AdaDFQ losses
# ----------------------------------------------------------------------------------------------------------
def adadfq_generator_loss(
    t: Tensor,
    s: Tensor,
    y: Tensor,
    lambda_l: float = 0.1,
    lambda_u: float = 0.8,
    alpha_ds: float = 0.2,
    alpha_as: float = 0.1,
) -> Tuple[Tensor, Tensor]:
    """Returns (L_margin, L_bal) of the generator objective, any batch size."""
    t = _acc(t)
    s = _acc(s)
    h_norm = normalized_entropy(row_entropy(t - s), t.shape[1])
    l_margin = torch.relu(lambda_l - h_norm).mean() + torch.relu(h_norm - lambda_u).mean()
    l_bal = alpha_ds * torch.nn.functional.cross_entropy(t - s, y) + alpha_as * torch.nn.functional.cross_entropy(
        t + s, y
    )
    return l_margin, l_bal


def adadfq_student_loss(t: Tensor, s: Tensor, temperature: float = 20.0) -> Tensor:
    """L_Q = -T^2 mean_i entropy(softmax((t_i - s_i) / T)), with t treated as a constant."""
    d = (_acc(t.detach()) - _acc(s)) / temperature
    return -(temperature**2) * row_entropy(d).mean()


# ----------------------------------------------------------------------------------------------------------
# Kernel-shaped fallbacks: same signatures as the native kernels (see adadfq_fast/ops/native.py).
# ----------------------------------------------------------------------------------------------------------
def fake_quant_forward(x: Tensor, bits: int, lo: Tensor, hi: Tensor, axis: int) -> Tensor:
    return _quantize_dequantize(x, bits, lo, hi, None if axis < 0 else axis)


def fake_quant_weight_forward(w: Tensor, bits: int) -> Tensor:
    lo, hi = weight_range(w)
    return _quantize_dequantize(w, bits, lo, hi, 0)


def fake_quant_act_forward(x: Tensor, bits: int, state: Tensor, beta: float, update: bool) -> Tuple[Tensor, Tensor]:
    """Returns (out, new_state); ``state`` itself is left untouched."""
    new_state = state.clone()
    if update:
        ema_range_update(new_state, x, beta)
    return _quantize_dequantize(x, bits, new_state[0], new_state[1], None), new_state


def bn_stat_loss_forward(
    feats: List[Tensor], running_means: List[Tensor], running_vars: List[Tensor]
) -> Tuple[Tensor, Tensor]:
    """Returns (loss, stats) with stats = [mean; biased var] of every layer, concatenated: float32 [2, sum C]."""
    means, variances = [], []
    for x in feats:
        xf = _acc(x)
        dims = _bn_reduce_dims(xf)
        means.append(xf.mean(dim=dims))
        variances.append(xf.var(dim=dims, unbiased=False))
    terms = [
        ((mu - _acc(rm)) ** 2).mean() + ((var - _acc(rv)) ** 2).mean()
        for mu, var, rm, rv in zip(means, variances, running_means, running_vars)
    ]
    loss = torch.stack(terms).sum() / len(terms)
    return loss, torch.stack([torch.cat(means), torch.cat(variances)])


def bn_stat_loss_backward(
    grad: Tensor, feats: List[Tensor], running_means: List[Tensor], running_vars: List[Tensor], stats: Tensor
) -> List[Tensor]:
    """dL/dx = g/L * [ 2 (mu - rm) / (C M) + 4 (var - rv) (x - mu) / (C M) ],  M = elements per channel."""
    num_layers = len(feats)
    grads = []
    offset = 0
    for x, rm, rv in zip(feats, running_means, running_vars):
        c = x.shape[1]
        mu = stats[0, offset : offset + c]
        var = stats[1, offset : offset + c]
        offset += c
        m = x.numel() // max(c, 1)
        coef = _acc(grad) / (num_layers * c * m)
        shape = [1, c] + [1] * (x.dim() - 2)
        a = (2.0 * coef * (mu - _acc(rm))).reshape(shape)
        b = (4.0 * coef * (var - _acc(rv))).reshape(shape)
        grads.append((a + b * (_acc(x) - mu.reshape(shape))).to(x.dtype))
    return grads


def generator_loss_forward(
    t: Tensor, s: Tensor, y: Tensor, lambda_l: float, lambda_u: float, alpha_ds: float, alpha_as: float
) -> Tuple[Tensor, Tensor, Tensor]:
    """Returns (L_margin, L_bal, row_stats) with row_stats = [H; lse(t - s); lse(t + s)], float32 [3, B]."""
    tf, sf = _acc(t), _acc(s)
    d, a = tf - sf, tf + sf
    lse_d = torch.logsumexp(d, dim=1)
    lse_a = torch.logsumexp(a, dim=1)
    h = row_entropy(d)
    l_margin, l_bal = adadfq_generator_loss(tf, sf, y, lambda_l, lambda_u, alpha_ds, alpha_as)
    return l_margin, l_bal, torch.stack([h, lse_d, lse_a])


def _entropy_grad(p: Tensor, logp: Tensor, h: Tensor) -> Tensor:
    """dH/dlogits for H = -sum p log p: -p (log p + H)."""
    return -p * (logp + h[:, None])


def generator_loss_backward(
    grad_margin: Tensor,
    grad_bal: Tensor,
    t: Tensor,
    s: Tensor,
    y: Tensor,
    row_stats: Tensor,
    lambda_l: float,
    lambda_u: float,
    alpha_ds: float,
    alpha_as: float,
) -> Tuple[Tensor, Tensor]:
    """Gradients of g_m * L_margin + g_b * L_bal with respect to t and s.

    The batch minimum of H is not detached, so the sample(s) holding it receive the extra term
    sum_i m_i (H_i - ln C) / D^2 (split evenly among ties, as torch.amin's backward does), with
    D = ln C - min H and m_i = dL_margin/dH'_i.
    """
    tf, sf = _acc(t), _acc(s)
    batch, num_classes = tf.shape
    h, lse_d, lse_a = row_stats[0], row_stats[1], row_stats[2]
    h_min = h.amin()
    denom = math.log(num_classes) - h_min
    h_norm = (h - h_min) / denom
    m = ((h_norm - lambda_u > 0).to(tf.dtype) - (lambda_l - h_norm > 0).to(tf.dtype)) / batch
    is_min = (h == h_min).to(tf.dtype)
    dh = m / denom + is_min / is_min.sum() * (m * (h - math.log(num_classes))).sum() / denom**2
    d, a = tf - sf, tf + sf
    logp_d = d - lse_d[:, None]
    p_d = logp_d.exp()
    p_a = (a - lse_a[:, None]).exp()
    onehot = torch.nn.functional.one_hot(y, num_classes).to(tf.dtype)
    grad_d = _acc(grad_margin) * dh[:, None] * _entropy_grad(p_d, logp_d, h)
    grad_d = grad_d + _acc(grad_bal) * alpha_ds / batch * (p_d - onehot)
    grad_a = _acc(grad_bal) * alpha_as / batch * (p_a - onehot)
    return (grad_d + grad_a).to(t.dtype), (grad_a - grad_d).to(s.dtype)


def student_loss_forward(t: Tensor, s: Tensor, temperature: float) -> Tuple[Tensor, Tensor]:
    """Returns (L_Q, row_stats) with row_stats = [H; lse((t - s) / T)], float32 [2, B]."""
    d = (_acc(t) - _acc(s)) / temperature
    h = row_entropy(d)
    loss = -(temperature**2) * h.mean()
    return loss, torch.stack([h, torch.logsumexp(d, dim=1)])


def student_loss_backward(grad: Tensor, t: Tensor, s: Tensor, row_stats: Tensor, temperature: float) -> Tensor:
    """dL_Q/ds = -T^2/B * dH/dd * (-1/T) = T/B * (-p (log p + H)) ... times the upstream gradient."""
    d = (_acc(t) - _acc(s)) / temperature
    h, lse = row_stats[0], row_stats[1]
    logp = d - lse[:, None]
    p = logp.exp()
    batch = t.shape[0]
    grad_s = _acc(grad) * (temperature / batch) * _entropy_grad(p, logp, h)
    return grad_s.to(s.dtype)


# ----------------------------------------------------------------------------------------------------------
# Integer convolution (integer inference, see the int_conv2d schema in adadfq_fast/ops/native.py)
# ----------------------------------------------------------------------------------------------------------
def int_conv2d_output_channels_last(x: Tensor) -> bool:
    """The output's memory format follows x: channels_last when x is channels_last (and not also contiguous)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def int_conv2d_accumulate(
    x: Tensor, weight: Tensor, weight_zero: Tensor, stride, padding, dilation, groups: int
) -> Tensor:
    """Exact integer sums acc[o,p] + z_w[o] * box[p] as int64 [N, O, Ho, Wo].

    Computed as float64 convolutions of integer values: every partial sum is an integer below 2^53
    (|q_w| <= 128, m_x <= 255, so up to 2^38 terms), hence exact in any summation order.
    """
    xd = x.to(torch.float64)
    acc = torch.nn.functional.conv2d(xd, weight.to(torch.float64), None, stride, padding, dilation, groups)
    out_channels = weight.shape[0]
    ones = torch.ones((groups, weight.shape[1], weight.shape[2], weight.shape[3]), dtype=torch.float64, device=x.device)
    box = torch.nn.functional.conv2d(xd, ones, None, stride, padding, dilation, groups)  # [N, groups, Ho, Wo]
    box = box.repeat_interleave(out_channels // groups, dim=1)
    return acc.to(torch.int64) + weight_zero.to(torch.int64).reshape(1, -1, 1, 1) * box.to(torch.int64)


def int_conv2d_epilogue(
    total: Tensor,
    out_mult: Tensor,
    out_bias: Tensor,
    residual: Optional[Tensor],
    residual_scale: float,
    relu: bool,
    out_bits: int,
    out_scale: float,
    out_zero: float,
) -> Tensor:
    """The float32 epilogue, one rounding per step in this order (the kernels reproduce it bit for bit)."""
    f32 = dict(dtype=torch.float32, device=total.device)
    y = total.to(torch.float32) * out_mult.to(torch.float32).reshape(1, -1, 1, 1)
    y = y + out_bias.to(torch.float32).reshape(1, -1, 1, 1)
    if residual is not None:
        if residual.dtype == torch.uint8:
            # A full tensor, not a scalar, so that this is an element-wise IEEE division (never a reciprocal).
            y = y + residual.to(torch.float32) / torch.full(residual.shape, residual_scale, **f32)
        else:
            y = y + residual.to(torch.float32)
    if relu:
        y = torch.relu(y)
    if out_bits == 0:
        return y
    half = 2 ** (out_bits - 1)
    zero = torch.tensor(out_zero, **f32)
    q = torch.clamp(torch.round(torch.tensor(out_scale, **f32) * y - zero), -half, half - 1)
    return (q + zero).to(torch.uint8)


def int_conv2d_forward(
    x: Tensor,
    weight: Tensor,
    weight_zero: Tensor,
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    groups: int,
    out_mult: Tensor,
    out_bias: Tensor,
    residual: Optional[Tensor],
    residual_scale: float,
    relu: bool,
    out_bits: int,
    out_scale: float,
    out_zero: float,
) -> Tensor:
    """Convolution of uint8 activation codes m_x with int8 weight levels q_w (zero points z_w), then the fused
    epilogue: y = float(acc + z_w box) * out_mult + out_bias [+ residual] [relu] [requant to uint8 codes]."""
    total = int_conv2d_accumulate(x, weight, weight_zero, list(stride), list(padding), list(dilation), groups)
    out = int_conv2d_epilogue(
        total, out_mult, out_bias, residual, residual_scale, relu, out_bits, out_scale, out_zero
    )
    if int_conv2d_output_channels_last(x):
        return out.contiguous(memory_format=torch.channels_last)
    return out.contiguous()


# ----------------------------------------------------------------------------------------------------------
# Activation codes of the integer model's float layers (see adadfq_fast/ops/quantize_codes.py)
# ----------------------------------------------------------------------------------------------------------
def quantize_codes_forward(
    y: Tensor,
    scale: float,
    zero: float,
    bits: int,
    relu: bool,
    channel_mult: Optional[Tensor] = None,
    channel_add: Optional[Tensor] = None,
) -> Tensor:
    """uint8 codes of float32 ``y``: [fma(y, channel_mult[c], channel_add[c])], [relu], ``s*y``, ``- zp``, round half
    to even, clamp to ``[-2^(k-1), 2^(k-1) - 1]``, then the code ``q + zp``: the QuantAct's float32 steps.

    The fma is computed in float64, where the product of two float32 values is exact, then rounded to float32:
    that is the fma's single rounding except where the float64 sum itself rounds to a float32 halfway point
    (double rounding), which no test has met. The level q fits int8; float -> int8 is a fast conversion (float ->
    uint8 is not), and adding zp in uint8 arithmetic (mod 256) gives q + zp exactly, since the code lies in
    [0, 255]. NaN gives q = 0 (code ``zp``) on x86, which the kernels reproduce."""
    y = y if is_dense(y) else y.contiguous()
    if channel_mult is not None:
        shape = (1, -1) + (1,) * (y.dim() - 2)
        y = (y.double() * channel_mult.double().reshape(shape) + channel_add.double().reshape(shape)).float()
    else:
        y = y.clone()  # the steps below work in place
    if relu:
        y = torch.relu_(y)
    half = 2 ** (bits - 1)
    q = y.mul_(scale).sub_(zero).round_().clamp_(-half, half - 1).to(torch.int8)
    return q.view(torch.uint8).add_(int(zero))
