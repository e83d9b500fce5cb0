"""adadfq_fast.adadfq_generator_loss: (L_margin, L_bal) and gradients to t and s against autograd of the spec."""
import math

import pytest
import torch

import adadfq_fast
from adadfq_fast import reference as ref
from conftest import TOL
from helpers import FLOAT_DTYPES, both_paths

SHAPES = [(16, 10), (16, 100), (256, 1000), (5, 3), (1, 10)]


def _logits(shape, dtype=torch.float32, spread=3.0):
    t = (torch.randn(shape) * spread).to(dtype)
    s = (t.float() + torch.randn(shape) * spread * torch.rand(shape[0], 1)).to(dtype)  # varied disagreement
    y = torch.randint(0, shape[1], (shape[0],))
    return t, s, y


def _check(t, s, y, weights=(1.3, 0.7), **kw):
    tt, ss = t.clone().requires_grad_(), s.clone().requires_grad_()
    margin, bal = adadfq_fast.adadfq_generator_loss(tt, ss, y, **kw)
    gt, gs = torch.autograd.grad(weights[0] * margin + weights[1] * bal, (tt, ss))
    tr, sr = t.float().requires_grad_(), s.float().requires_grad_()
    margin_r, bal_r = ref.adadfq_generator_loss(tr, sr, y, **kw)
    gtr, gsr = torch.autograd.grad(weights[0] * margin_r + weights[1] * bal_r, (tr, sr))
    torch.testing.assert_close(margin, margin_r, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bal, bal_r, rtol=1e-5, atol=1e-6)
    tol = TOL[t.dtype]
    scale = max(gtr.abs().max().item(), 1e-12)
    torch.testing.assert_close(gt.float(), gtr, rtol=tol["rtol"], atol=scale * 1e-4)
    torch.testing.assert_close(gs.float(), gsr, rtol=tol["rtol"], atol=scale * 1e-4)
    assert gt.dtype == t.dtype and gs.dtype == s.dtype


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_values_and_gradients(cpu_backend, dtype, shape):
    _check(*_logits(shape, dtype))


@pytest.mark.parametrize("kw", [dict(lambda_l=0.4), dict(lambda_u=0.3, alpha_ds=0.1), dict(alpha_as=0.0)])
def test_hyperparameters(cpu_backend, kw):
    _check(*_logits((32, 10)), **kw)


def test_only_one_loss_used(cpu_backend):
    """A loss that does not reach the output contributes nothing (its gradient arrives as None)."""
    t, s, y = _logits((16, 10))
    tt = t.clone().requires_grad_()
    margin, _ = adadfq_fast.adadfq_generator_loss(tt, s, y)
    (g,) = torch.autograd.grad(margin, tt)
    tr = t.clone().requires_grad_()
    (gr,) = torch.autograd.grad(ref.adadfq_generator_loss(tr, s, y)[0], tr)
    torch.testing.assert_close(g, gr, rtol=1e-4, atol=1e-7)


def test_entropy_and_paths(cpu_backend):
    t, s, y = _logits((16, 10))
    _, _, h = adadfq_fast.adadfq_generator_loss_with_entropy(t, s, y)
    torch.testing.assert_close(h, ref.row_entropy(t - s), rtol=1e-5, atol=1e-6)
    assert (h <= math.log(10) + 1e-5).all()
    eager, via_op = both_paths(lambda: adadfq_fast.adadfq_generator_loss(t, s, y))
    assert torch.equal(eager[0], via_op[0]) and torch.equal(eager[1], via_op[1])


def test_large_magnitudes(cpu_backend):
    _check(*_logits((16, 10), spread=200.0))


def test_tied_minimum_entropy(cpu_backend):
    """Two samples share the minimum H (identical rows): its gradient is split between them, as torch.amin's."""
    t, s, y = _logits((8, 10))
    t[3], s[3], y[3] = t[0], s[0], y[0]
    _check(t, s, y)


def test_reference_backward_formula_gradcheck_float64():
    t, s, y = _logits((6, 5))
    t, s = t.double().requires_grad_(), s.double().requires_grad_()

    class Formula(torch.autograd.Function):
        @staticmethod
        def forward(ctx, t, s):
            margin, bal, stats = ref.generator_loss_forward(t, s, y, 0.1, 0.8, 0.2, 0.1)
            ctx.save_for_backward(t, s, stats)
            return margin, bal

        @staticmethod
        def backward(ctx, gm, gb):
            t, s, stats = ctx.saved_tensors
            return ref.generator_loss_backward(gm, gb, t, s, y, stats, 0.1, 0.8, 0.2, 0.1)

    assert torch.autograd.gradcheck(Formula.apply, (t, s))


def test_mixed_dtypes(cpu_backend):
    """A bfloat16 teacher with a float32 student: computed in float32, each gradient in its input's dtype."""
    t, s, y = _logits((16, 10))
    tt, ss = t.bfloat16().requires_grad_(), s.clone().requires_grad_()
    margin, bal = adadfq_fast.adadfq_generator_loss(tt, ss, y)
    gt, gs = torch.autograd.grad(margin + bal, (tt, ss))
    assert gt.dtype == torch.bfloat16 and gs.dtype == torch.float32
    m_ref, b_ref = ref.adadfq_generator_loss(tt.detach().float(), s, y)
    torch.testing.assert_close(margin, m_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bal, b_ref, rtol=1e-5, atol=1e-6)


def test_errors():
    t, s, y = _logits((4, 10))
    with pytest.raises(ValueError, match="t: empty batch"):
        adadfq_fast.adadfq_generator_loss(t[:0], s[:0], y[:0])
    with pytest.raises(ValueError, match=r"y: labels must lie in \[0, 9\]"):
        adadfq_fast.adadfq_generator_loss(t, s, torch.tensor([0, 1, 2, 10]))
    with pytest.raises(ValueError, match="y: labels must lie"):
        adadfq_fast.adadfq_generator_loss(t, s, torch.tensor([0, -1, 2, 3]))
    with pytest.raises(TypeError, match="y: expected int64"):
        adadfq_fast.adadfq_generator_loss(t, s, y.int())
    with pytest.raises(ValueError, match=r"y: expected shape \(4,\)"):
        adadfq_fast.adadfq_generator_loss(t, s, y[:3])
    with pytest.raises(ValueError, match="s: expected the shape of t"):
        adadfq_fast.adadfq_generator_loss(t, s[:, :5], y)
    with pytest.raises(ValueError, match=r"t: expected logits of shape \[batch, classes\]"):
        adadfq_fast.adadfq_generator_loss(t[0], s[0], y)
    with pytest.raises(TypeError, match="t: expected float32"):
        adadfq_fast.adadfq_generator_loss(t.double(), s, y)


def test_opcheck():
    t, s, y = _logits((16, 10))
    args = (t.requires_grad_(), s.requires_grad_(), y, 0.1, 0.8, 0.2, 0.1)
    torch.library.opcheck(torch.ops.adadfq.adadfq_generator_loss.default, args)
    t, s = t.detach(), s.detach()  # the backward op has no double backward: check it on plain tensors
    _, _, stats = ref.generator_loss_forward(t, s, y, 0.1, 0.8, 0.2, 0.1)
    torch.library.opcheck(
        torch.ops.adadfq.adadfq_generator_loss_backward.default,
        (torch.tensor(1.0), torch.tensor(0.5), t, s, y, stats, 0.1, 0.8, 0.2, 0.1),
    )


def test_compile_fullgraph_forward_backward():
    t, s, y = _logits((16, 10))
    lin = torch.nn.Linear(10, 10)

    def f(t, s):
        margin, bal = adadfq_fast.adadfq_generator_loss(t, lin(s), y)
        return margin + bal

    tt, ss = t.clone().requires_grad_(), s.clone().requires_grad_()
    out = torch.compile(f, fullgraph=True, backend="aot_eager")(tt, ss)
    g = torch.autograd.grad(out, (tt, ss))
    expected = f(tt, ss)
    g2 = torch.autograd.grad(expected, (tt, ss))
    torch.testing.assert_close(out, expected)
    for a, b in zip(g, g2):
        torch.testing.assert_close(a, b)
