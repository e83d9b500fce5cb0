"""``adadfq::adadfq_student_loss``: L_Q = -T^2 mean_i entropy(softmax((t_i - s_i) / T)), t constant.

Forward returns ``row_stats = [H; lse((t - s) / T)]`` (float32 [2, B]) for the fused backward
(``adadfq::adadfq_student_loss_backward``), which writes the gradient to ``s`` in one pass.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from .. import _backend
from . import _checks
from ._eager import call


def _check(t: Tensor, s: Tensor, temperature: float) -> None:
    _checks.check_logits(t, s)
    if not temperature > 0:
        raise ValueError(f"T: expected a positive temperature, got {temperature!r}")


def _prepare(t: Tensor, s: Tensor, temperature: float):
    """Checks, then the kernel's arguments (contiguous logits)."""
    _check(t, s, temperature)
    return t.contiguous(), s.contiguous(), temperature


def _forward(t: Tensor, s: Tensor, temperature: float) -> Tuple[Tensor, Tensor]:
    return _backend.kernel_for("student_loss", t.device)(*_prepare(t, s, temperature))


student_loss_op = torch.library.custom_op("adadfq::adadfq_student_loss", _forward, mutates_args=())


@student_loss_op.register_fake
def _(t, s, temperature):
    _check(t, s, temperature)
    return torch.empty((), dtype=torch.float32, device=t.device), torch.empty(
        (2, t.shape[0]), dtype=torch.float32, device=t.device
    )


def _backward_impl(grad: Tensor, t: Tensor, s: Tensor, row_stats: Tensor, temperature: float) -> Tensor:
    return _backend.kernel_for("student_loss_backward", t.device)(grad, t, s, row_stats, temperature)


student_loss_backward_op = torch.library.custom_op(
    "adadfq::adadfq_student_loss_backward", _backward_impl, mutates_args=()
)


@student_loss_backward_op.register_fake
def _(grad, t, s, row_stats, temperature):
    return torch.empty_like(s)


def _setup_context(ctx, inputs, output):
    t, s, ctx.temperature = inputs
    ctx.save_for_backward(t.contiguous(), s.contiguous(), output[1])


def _make_backward(backward_fn):
    def backward(ctx, grad_loss, grad_row_stats):
        t, s, row_stats = ctx.saved_tensors
        return None, backward_fn(grad_loss, t, s, row_stats, ctx.temperature), None

    return backward


student_loss_op.register_autograd(_make_backward(student_loss_backward_op), setup_context=_setup_context)


class _EagerStudentLoss(torch.autograd.Function):
    # Old-style forward(ctx, ...): the setup_context style re-inspects the signature on every call (~40 us).
    @staticmethod
    def forward(ctx, *args):
        output = _forward(*args)
        _setup_context(ctx, args, output)
        ctx.mark_non_differentiable(output[1])
        return output

    backward = staticmethod(_make_backward(_backward_impl))


def adadfq_student_loss(t: Tensor, s: Tensor, T: float = 20.0) -> Tensor:
    """L_Q for teacher logits ``t`` (treated as constant) and student logits ``s``; gradient to ``s`` only."""
    _checks.check_logits(t, s)
    t, s = _checks.common_logit_dtype(t, s)
    args = (t, s, float(T))
    return call("student_loss", student_loss_op, _EagerStudentLoss.apply, _prepare, args, (t, s))[0]
