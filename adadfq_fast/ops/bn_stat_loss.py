"""``adadfq::bn_stat_loss``: L_BNS over the inputs of a network's BatchNorm layers.

Forward: one reduction pass per tensor (per-channel mean and biased variance, float32 accumulation).
Backward (``adadfq::bn_stat_loss_backward``): one fused elementwise pass writing each input's gradient. The
per-channel statistics travel from forward to backward as one float32 tensor ``[2, sum C]``.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from torch import Tensor

from .. import _backend
from . import _checks
from ._eager import use_custom_op


def _forward(feats: List[Tensor], running_means: List[Tensor], running_vars: List[Tensor]) -> Tuple[Tensor, Tensor]:
    _checks.check_bn_inputs(feats, running_means, running_vars)
    _checks.check_bn_values(running_means, running_vars)
    kernel = _backend.kernel_for("bn_stat_loss", feats[0].device)
    return kernel([_checks.dense(x) for x in feats], _contig(running_means), _contig(running_vars))


bn_stat_loss_op = torch.library.custom_op("adadfq::bn_stat_loss", _forward, mutates_args=())


@bn_stat_loss_op.register_fake
def _(feats, running_means, running_vars):
    _checks.check_bn_inputs(feats, running_means, running_vars)
    total_channels = sum(x.shape[1] for x in feats)
    device = feats[0].device
    return (
        torch.empty((), dtype=torch.float32, device=device),
        torch.empty((2, total_channels), dtype=torch.float32, device=device),
    )


def _backward_impl(
    grad: Tensor, feats: List[Tensor], running_means: List[Tensor], running_vars: List[Tensor], stats: Tensor
) -> List[Tensor]:
    kernel = _backend.kernel_for("bn_stat_loss_backward", feats[0].device)
    return kernel(grad, [_checks.dense(x) for x in feats], _contig(running_means), _contig(running_vars), stats)


bn_stat_loss_backward_op = torch.library.custom_op("adadfq::bn_stat_loss_backward", _backward_impl, mutates_args=())


@bn_stat_loss_backward_op.register_fake
def _(grad, feats, running_means, running_vars, stats):
    return [torch.empty_like(_checks.dense(x)) for x in feats]


def _contig(ts: Sequence[Tensor]) -> List[Tensor]:
    return [t.contiguous() for t in ts]


def _setup_context(ctx, inputs, output):
    feats, running_means, running_vars = inputs
    ctx.num_feats = len(feats)
    ctx.save_for_backward(*feats, *running_means, *running_vars, output[1])


def _backward(ctx, grad_loss, grad_stats):
    n = ctx.num_feats
    saved = ctx.saved_tensors
    feats, rms, rvs, stats = list(saved[:n]), list(saved[n : 2 * n]), list(saved[2 * n : 3 * n]), saved[3 * n]
    grads = bn_stat_loss_backward_op(grad_loss, feats, rms, rvs, stats)
    return grads, [None] * n, [None] * n


bn_stat_loss_op.register_autograd(_backward, setup_context=_setup_context)


class _EagerBnStatLoss(torch.autograd.Function):
    """Inputs flattened as (num_feats, *feats, *running_means, *running_vars): Function takes tensors, not lists."""

    @staticmethod
    def forward(ctx, n, *tensors):
        feats, rms, rvs = list(tensors[:n]), list(tensors[n : 2 * n]), list(tensors[2 * n :])
        loss, stats = _forward(feats, rms, rvs)
        ctx.num_feats = n
        ctx.save_for_backward(*feats, *rms, *rvs, stats)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        n = ctx.num_feats
        saved = ctx.saved_tensors
        grads = _backward_impl(grad_loss, list(saved[:n]), list(saved[n : 2 * n]), list(saved[2 * n : 3 * n]), saved[3 * n])
        return (None, *grads) + (None,) * (2 * n)


def bn_stat_loss(
    feats: Sequence[Tensor], running_means: Sequence[Tensor], running_vars: Sequence[Tensor]
) -> Tensor:
    """(1/L) sum_l [mean_c (mu_c - running_mean_c)^2 + mean_c (var_c - running_var_c)^2], float32 scalar.

    ``feats``: the inputs of the L BatchNorm layers ([N, C, ...], any dense layout); mu and var are the
    per-channel mean and biased variance over every dim but 1. Gradients flow to ``feats`` only.
    """
    feats, running_means, running_vars = list(feats), list(running_means), list(running_vars)
    if use_custom_op(*feats, *running_means, *running_vars):
        return bn_stat_loss_op(feats, running_means, running_vars)[0]
    if len(running_means) != len(feats) or len(running_vars) != len(feats):
        _checks.check_bn_inputs(feats, running_means, running_vars)  # raises the error that names the argument
    return _EagerBnStatLoss.apply(len(feats), *feats, *running_means, *running_vars)
