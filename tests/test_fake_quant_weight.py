"""adadfq_fast.fake_quant_weight: per-output-channel min/max + quantization, bit-exact with the reference."""
import pytest
import torch

import adadfq_fast
from adadfq_fast import reference as ref
from helpers import FLOAT_DTYPES, both_paths, layouts

WEIGHT_SHAPES = [(16, 3, 3, 3), (64, 32, 3, 3), (512, 256, 3, 3), (10, 64), (1000, 512), (5,)]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("shape", WEIGHT_SHAPES)
def test_bit_exact(cpu_backend, dtype, bits, shape):
    w = (torch.randn(shape) * torch.rand(shape[0]).reshape(-1, *[1] * (len(shape) - 1))).to(dtype)
    expected = ref.fake_quant_weight(w, bits)
    for name, wl in layouts(w).items():
        out = adadfq_fast.fake_quant_weight(wl, bits)
        assert out.dtype == dtype
        torch.testing.assert_close(out, expected, rtol=0, atol=0, msg=name)


def test_dim0_not_outermost(cpu_backend):
    """A transposed weight is dense with dim 0 inside: each channel's elements are spread through memory."""
    w = torch.randn(24, 10).t()  # shape (10, 24), dim 0 has stride 1
    torch.testing.assert_close(adadfq_fast.fake_quant_weight(w, 4), ref.fake_quant_weight(w, 4), rtol=0, atol=0)


def test_straight_through_and_paths(cpu_backend):
    w = torch.randn(8, 4, 3, 3, requires_grad=True)
    g = torch.randn_like(w)
    adadfq_fast.fake_quant_weight(w, 3).backward(g)
    assert torch.equal(w.grad, g)
    eager, via_op = both_paths(lambda: adadfq_fast.fake_quant_weight(w.detach(), 3))
    assert torch.equal(eager, via_op)


def test_edge_cases(cpu_backend):
    const = torch.full((4, 9), -0.5)
    torch.testing.assert_close(adadfq_fast.fake_quant_weight(const, 4), ref.fake_quant_weight(const, 4), rtol=0, atol=0)
    assert adadfq_fast.fake_quant_weight(torch.empty(0, 3, 3, 3), 4).shape == (0, 3, 3, 3)
    big = torch.randn(6, 20) * 1e6
    torch.testing.assert_close(adadfq_fast.fake_quant_weight(big, 8), ref.fake_quant_weight(big, 8), rtol=0, atol=0)
    w = torch.randn(3, 5)
    w[1, 2] = float("nan")
    out = adadfq_fast.fake_quant_weight(w, 4)
    torch.testing.assert_close(out, ref.fake_quant_weight(w, 4), rtol=0, atol=0, equal_nan=True)
    assert torch.isnan(out[1]).all() and torch.isfinite(out[[0, 2]]).all()  # NaN poisons only its channel


def test_errors():
    with pytest.raises(TypeError, match="w: expected float32"):
        adadfq_fast.fake_quant_weight(torch.randn(3, 3).double(), 4)
    with pytest.raises(ValueError, match="bits"):
        adadfq_fast.fake_quant_weight(torch.randn(3, 3), 0)
    with pytest.raises(ValueError, match="w: expected at least 1 dim"):
        adadfq_fast.fake_quant_weight(torch.tensor(1.0), 4)


def test_opcheck():
    torch.library.opcheck(torch.ops.adadfq.fake_quant_weight.default, (torch.randn(8, 4, 3, 3, requires_grad=True), 4))


def test_compile_fullgraph_forward_backward():
    def f(w, x):
        return torch.nn.functional.conv2d(x, adadfq_fast.fake_quant_weight(w, 4)).square().mean()

    w = torch.randn(8, 4, 3, 3, requires_grad=True)
    x = torch.randn(2, 4, 6, 6)
    out = torch.compile(f, fullgraph=True, backend="aot_eager")(w, x)
    (gw,) = torch.autograd.grad(out, w)
    w2 = w.detach().clone().requires_grad_()
    expected = f(w2, x)
    (gw2,) = torch.autograd.grad(expected, w2)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(gw, gw2)
