"""``adadfq::bn_stat_loss``: L_BNS over the inputs of a network's BatchNorm layers.

Forward: one reduction pass per tensor (per-channel mean and biased variance, float32 accumulation).
Backward (``adadfq::bn_stat_loss_backward``): one fused elementwise pass writing each input's gradient. The
per-channel statistics travel from forward to backward as one float32 tensor ``[2, sum C]``.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import Tensor

from . import _checks
from ._eager import FusedOp


def _prepare(feats: List[Tensor], running_means: List[Tensor], running_vars: List[Tensor]):
    """Checks, then the kernel's arguments (dense inputs, contiguous statistics)."""
    _checks.check_bn_inputs(feats, running_means, running_vars)
    _checks.check_bn_values(running_means, running_vars)
    return _dense(feats), _contig(running_means), _contig(running_vars)


def _fake(feats, running_means, running_vars):
    _checks.check_bn_inputs(feats, running_means, running_vars)
    total_channels = sum(x.shape[1] for x in feats)
    device = feats[0].device
    return (
        torch.empty((), dtype=torch.float32, device=device),
        torch.empty((2, total_channels), dtype=torch.float32, device=device),
    )


def _dense(ts: Sequence[Tensor]) -> List[Tensor]:
    return [_checks.dense(x) for x in ts]


def _contig(ts: Sequence[Tensor]) -> List[Tensor]:
    return [t.contiguous() for t in ts]


def _save(ctx, inputs, output):
    feats, running_means, running_vars = inputs
    ctx.num_feats = len(feats)
    ctx.save_for_backward(*feats, *running_means, *running_vars, output[1])


def _backward(ctx, bwd, grad_loss, grad_stats):
    n = ctx.num_feats
    saved = ctx.saved_tensors
    feats, rms, rvs, stats = list(saved[:n]), list(saved[n : 2 * n]), list(saved[2 * n : 3 * n]), saved[3 * n]
    return bwd(grad_loss, feats, rms, rvs, stats), [None] * n, [None] * n


bn_stat_loss_op = FusedOp(
    "bn_stat_loss", "bn_stat_loss", _prepare, _fake, backward=_backward, save=_save,
    backward_fake=lambda grad, feats, *rest: [torch.empty_like(_checks.dense(x)) for x in feats],
    backward_prepare=lambda grad, feats, rms, rvs, stats: (grad, _dense(feats), _contig(rms), _contig(rvs), stats),
    non_differentiable=(1,), list_args=True,
)


def bn_stat_loss(
    feats: Sequence[Tensor], running_means: Sequence[Tensor], running_vars: Sequence[Tensor]
) -> Tensor:
    """(1/L) sum_l [mean_c (mu_c - running_mean_c)^2 + mean_c (var_c - running_var_c)^2], float32 scalar.

    ``feats``: the inputs of the L BatchNorm layers ([N, C, ...], any dense layout); mu and var are the
    per-channel mean and biased variance over every dim but 1. Gradients flow to ``feats`` only.
    """
    feats, running_means, running_vars = list(feats), list(running_means), list(running_vars)
    if not feats:
        _checks.check_bn_inputs(feats, running_means, running_vars)  # raises the error that names the argument
    return bn_stat_loss_op.call((feats, running_means, running_vars), (*feats, *running_means, *running_vars))[0]
