"""``adadfq::adadfq_student_loss``: L_Q = -T^2 mean_i entropy(softmax((t_i - s_i) / T)), t constant.

Forward returns ``row_stats = [H; lse((t - s) / T)]`` (float32 [2, B]) for the fused backward
(``adadfq::adadfq_student_loss_backward``), which writes the gradient to ``s`` in one pass.
"""
from __future__ import annotations


import torch
from torch import Tensor

from . import _checks
from ._eager import FusedOp


def _check(t: Tensor, s: Tensor, temperature: float) -> None:
    _checks.check_logits(t, s)
    if not temperature > 0:
        raise ValueError(f"T: expected a positive temperature, got {temperature!r}")


def _prepare(t: Tensor, s: Tensor, temperature: float):
    """Checks, then the kernel's arguments (contiguous logits)."""
    _check(t, s, temperature)
    return t.contiguous(), s.contiguous(), temperature


def _fake(t, s, temperature):
    _check(t, s, temperature)
    return torch.empty((), dtype=torch.float32, device=t.device), torch.empty(
        (2, t.shape[0]), dtype=torch.float32, device=t.device
    )


def _save(ctx, inputs, output):
    t, s, ctx.temperature = inputs
    ctx.save_for_backward(t.contiguous(), s.contiguous(), output[1])


def _backward(ctx, bwd, grad_loss, grad_row_stats):
    t, s, row_stats = ctx.saved_tensors
    return None, bwd(grad_loss, t, s, row_stats, ctx.temperature), None


student_loss_op = FusedOp(
    "adadfq_student_loss", "student_loss", _prepare, _fake, backward=_backward, save=_save,
    backward_fake=lambda grad, t, s, *rest: torch.empty_like(s), non_differentiable=(1,),
)


def adadfq_student_loss(t: Tensor, s: Tensor, T: float = 20.0) -> Tensor:
    """L_Q for teacher logits ``t`` (treated as constant) and student logits ``s``; gradient to ``s`` only."""
    _checks.check_logits(t, s)
    t, s = _checks.common_logit_dtype(t, s)
    args = (t, s, float(T))
    return student_loss_op.call(args, (t, s))[0]
