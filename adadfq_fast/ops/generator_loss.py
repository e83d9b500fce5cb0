"""``adadfq::adadfq_generator_loss``: the generator's (L_margin, L_bal), one fused pass each direction.

Forward returns, besides the two losses, ``row_stats = [H; lse(t - s); lse(t + s)]`` (float32 [3, B]) so the
backward (``adadfq::adadfq_generator_loss_backward``) needs no second reduction over the logits. ``H`` is the
per-sample entropy behind H' (useful for logging its distribution).
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from . import _checks
from ._eager import FusedOp


def _check(t: Tensor, s: Tensor, y: Tensor) -> None:
    _checks.check_logits(t, s)
    _checks.check_labels(y, t)


def _prepare(t: Tensor, s: Tensor, y: Tensor, lambda_l: float, lambda_u: float, alpha_ds: float, alpha_as: float):
    """Checks, then the kernel's arguments (contiguous logits and labels)."""
    _check(t, s, y)
    _checks.check_margins(lambda_l, lambda_u)
    _checks.check_label_values(y, t.shape[1])
    return t.contiguous(), s.contiguous(), y.contiguous(), lambda_l, lambda_u, alpha_ds, alpha_as


def _fake(t, s, y, lambda_l, lambda_u, alpha_ds, alpha_as):
    _check(t, s, y)
    _checks.check_margins(lambda_l, lambda_u)
    scalar = torch.empty((), dtype=torch.float32, device=t.device)
    return scalar, torch.empty_like(scalar), torch.empty((3, t.shape[0]), dtype=torch.float32, device=t.device)


def _save(ctx, inputs, output):
    t, s, y, ctx.lambda_l, ctx.lambda_u, ctx.alpha_ds, ctx.alpha_as = inputs
    ctx.save_for_backward(t.contiguous(), s.contiguous(), y.contiguous(), output[2])


def _backward(ctx, bwd, grad_margin, grad_bal, grad_row_stats):
    t, s, y, row_stats = ctx.saved_tensors
    # A loss that did not reach the output gets no gradient: treat it as zero (device-side, no sync).
    zero = torch.zeros((), dtype=torch.float32, device=t.device)
    grad_margin = zero if grad_margin is None else grad_margin
    grad_bal = zero if grad_bal is None else grad_bal
    grad_t, grad_s = bwd(grad_margin, grad_bal, t, s, y, row_stats, ctx.lambda_l, ctx.lambda_u, ctx.alpha_ds,
                         ctx.alpha_as)
    return grad_t, grad_s, None, None, None, None, None


generator_loss_op = FusedOp(
    "adadfq_generator_loss", "generator_loss", _prepare, _fake, backward=_backward, save=_save,
    backward_fake=lambda grad_margin, grad_bal, t, s, *rest: (torch.empty_like(t), torch.empty_like(s)),
    non_differentiable=(2,),
)


def adadfq_generator_loss_with_entropy(
    t: Tensor, s: Tensor, y: Tensor, lambda_l: float = 0.1, lambda_u: float = 0.8, alpha_ds: float = 0.2,
    alpha_as: float = 0.1,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Like :func:`adadfq_generator_loss`, also returning the per-sample entropy H of softmax(t - s)."""
    _checks.check_logits(t, s)
    t, s = _checks.common_logit_dtype(t, s)
    args = (t, s, y, float(lambda_l), float(lambda_u), float(alpha_ds), float(alpha_as))
    margin, bal, row_stats = generator_loss_op.call(args, (t, s, y))
    return margin, bal, row_stats[0]


def adadfq_generator_loss(
    t: Tensor, s: Tensor, y: Tensor, lambda_l: float = 0.1, lambda_u: float = 0.8, alpha_ds: float = 0.2,
    alpha_as: float = 0.1,
) -> Tuple[Tensor, Tensor]:
    """(L_margin, L_bal) of AdaDFQ's generator objective for teacher logits ``t``, student logits ``s``, labels ``y``.

    L_margin keeps the normalised disagreement entropy H' of each sample inside [lambda_l, lambda_u];
    L_bal = alpha_ds * CE(t - s, y) + alpha_as * CE(t + s, y). Gradients flow to both ``t`` and ``s``.
    """
    margin, bal, _ = adadfq_generator_loss_with_entropy(t, s, y, lambda_l, lambda_u, alpha_ds, alpha_as)
    return margin, bal
