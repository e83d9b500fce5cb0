"""adadfq_fast.adadfq_student_loss: L_Q and its gradient to s (t constant) against autograd of the spec."""
import pytest
import torch

import adadfq_fast
from adadfq_fast import reference as ref
from conftest import TOL
from helpers import FLOAT_DTYPES, both_paths


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(16, 10), (256, 1000), (3, 2), (1, 100)])
@pytest.mark.parametrize("T", [20.0, 5.0, 1.0])
def test_value_and_gradient(cpu_backend, dtype, shape, T):
    t = (torch.randn(shape) * 5).to(dtype)
    s = (torch.randn(shape) * 5).to(dtype)
    tt, ss = t.clone().requires_grad_(), s.clone().requires_grad_()
    loss = adadfq_fast.adadfq_student_loss(tt, ss, T=T)
    (gs,) = torch.autograd.grad(loss, ss)
    tr, sr = t.float().requires_grad_(), s.float().requires_grad_()
    expected = ref.adadfq_student_loss(tr, sr, T)
    (gsr,) = torch.autograd.grad(expected, sr)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    # Saturated rows (p near 0 or 1) make the gradient a difference of nearly equal float32 terms of size
    # ~|d| = |t - s| / T: allow that absolute rounding, scaled by the gradient's T / B factor.
    d_max = ((tr - sr).abs().max() / T).item()
    atol = max(gsr.abs().max().item() * 1e-4, T / shape[0] * 2e-6 * (1 + d_max))
    torch.testing.assert_close(gs.float(), gsr, rtol=TOL[dtype]["rtol"], atol=atol)
    assert gs.dtype == dtype


def test_no_gradient_to_teacher(cpu_backend):
    t = torch.randn(8, 10, requires_grad=True)
    s = torch.randn(8, 10, requires_grad=True)
    adadfq_fast.adadfq_student_loss(t, s).backward()
    assert t.grad is None and s.grad is not None


def test_paths_and_extremes(cpu_backend):
    t, s = torch.randn(16, 10) * 300, torch.randn(16, 10) * 300
    torch.testing.assert_close(adadfq_fast.adadfq_student_loss(t, s), ref.adadfq_student_loss(t, s), rtol=1e-5, atol=1e-4)
    const = torch.zeros(4, 10)
    torch.testing.assert_close(adadfq_fast.adadfq_student_loss(const, const), ref.adadfq_student_loss(const, const))
    eager, via_op = both_paths(lambda: adadfq_fast.adadfq_student_loss(t, s))
    assert torch.equal(eager, via_op)


def test_reference_backward_formula_gradcheck_float64():
    t = torch.randn(5, 7, dtype=torch.float64)
    s = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)

    class Formula(torch.autograd.Function):
        @staticmethod
        def forward(ctx, s):
            loss, stats = ref.student_loss_forward(t, s, 3.0)
            ctx.save_for_backward(s, stats)
            return loss

        @staticmethod
        def backward(ctx, g):
            s, stats = ctx.saved_tensors
            return ref.student_loss_backward(g, t, s, stats, 3.0)

    assert torch.autograd.gradcheck(Formula.apply, (s,))


def test_mixed_dtypes(cpu_backend):
    t, s = torch.randn(8, 10), torch.randn(8, 10).half().requires_grad_()
    loss = adadfq_fast.adadfq_student_loss(t, s)
    (g,) = torch.autograd.grad(loss, s)
    assert g.dtype == torch.float16
    torch.testing.assert_close(loss, ref.adadfq_student_loss(t, s.detach().float()), rtol=1e-5, atol=1e-5)


def test_errors():
    t, s = torch.randn(4, 10), torch.randn(4, 10)
    with pytest.raises(ValueError, match="t: empty batch"):
        adadfq_fast.adadfq_student_loss(t[:0], s[:0])
    with pytest.raises(ValueError, match="T: expected a positive temperature"):
        adadfq_fast.adadfq_student_loss(t, s, T=0.0)
    with pytest.raises(ValueError, match="s: expected the shape of t"):
        adadfq_fast.adadfq_student_loss(t, s.t())
    with pytest.raises(ValueError, match="t: expected at least 2 classes"):
        adadfq_fast.adadfq_student_loss(t[:, :1], s[:, :1])


def test_opcheck():
    t, s = torch.randn(16, 10), torch.randn(16, 10, requires_grad=True)
    torch.library.opcheck(torch.ops.adadfq.adadfq_student_loss.default, (t, s, 20.0))
    s = s.detach()  # the backward op has no double backward: check it on plain tensors
    _, stats = ref.student_loss_forward(t, s, 20.0)
    torch.library.opcheck(torch.ops.adadfq.adadfq_student_loss_backward.default, (torch.tensor(1.0), t, s, stats, 20.0))


def test_compile_fullgraph_forward_backward():
    t, s = torch.randn(16, 10), torch.randn(16, 10, requires_grad=True)
    f = lambda s: adadfq_fast.adadfq_student_loss(t, s * 2.0)  # noqa: E731
    out = torch.compile(f, fullgraph=True, backend="aot_eager")(s)
    (g,) = torch.autograd.grad(out, s)
    expected = f(s)
    (g2,) = torch.autograd.grad(expected, s)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(g, g2)
