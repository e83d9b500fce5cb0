"""adadfq_fast.fake_quant against the reference: bit-exact values, STE gradient, layouts, dtypes, errors."""
import pytest
import torch

import adadfq_fast
from adadfq_fast import reference as ref
from helpers import FLOAT_DTYPES, both_paths, layouts


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("shape", [(16, 16, 32, 32), (4, 64, 8, 8), (7, 33)])
def test_per_tensor_bit_exact(cpu_backend, dtype, bits, shape):
    x = (torch.randn(shape) * 3).to(dtype)
    lo, hi = x.float().amin() * 0.8, x.float().amax() * 0.9  # some values fall outside: clamping is exercised
    for name, xl in layouts(x).items():
        out = adadfq_fast.fake_quant(xl, bits, lo, hi)
        assert out.dtype == dtype and out.shape == x.shape, name
        torch.testing.assert_close(out, ref.fake_quant(x, bits, lo, hi), rtol=0, atol=0, msg=name)
        if name == "channels_last":
            assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_per_channel_bit_exact(cpu_backend, bits, axis):
    x = torch.randn(8, 16, 5, 6) * torch.rand(1, 16, 1, 1) * 4
    dims = [d for d in range(4) if d != axis % 4]
    lo, hi = x.amin(dim=dims), x.amax(dim=dims)
    expected = ref.fake_quant(x, bits, lo, hi, axis=axis % 4)
    for name, xl in layouts(x).items():
        torch.testing.assert_close(adadfq_fast.fake_quant(xl, bits, lo, hi, axis=axis), expected, rtol=0, atol=0, msg=name)


def test_levels_are_the_reference_levels(cpu_backend):
    """Integer levels recovered from the output equal the reference's and lie in [-2^(k-1), 2^(k-1)-1]."""
    x = torch.randn(4096) * 5
    lo, hi = torch.tensor(-3.0), torch.tensor(4.0)
    for bits in range(2, 9):
        scale, zp = ref.quant_params(bits, lo, hi)
        q = torch.round(adadfq_fast.fake_quant(x, bits, lo, hi) * scale - zp)
        assert torch.equal(q, ref.quant_levels(x, bits, scale, zp))
        assert q.min() >= -(2 ** (bits - 1)) and q.max() <= 2 ** (bits - 1) - 1
        assert len(torch.unique(q)) <= 2**bits


def test_straight_through_gradient(cpu_backend):
    x = torch.randn(3, 8, 5, 5, requires_grad=True)
    g = torch.randn_like(x)
    adadfq_fast.fake_quant(x, 4, torch.tensor(-1.0), torch.tensor(1.0)).backward(g)
    assert torch.equal(x.grad, g)  # identity, no clipping mask (faithful STE)


def test_eager_path_equals_custom_op(cpu_backend):
    x = torch.randn(4, 8, 6, 6)
    lo, hi = x.amin((0, 2, 3)), x.amax((0, 2, 3))
    eager, via_op = both_paths(lambda: adadfq_fast.fake_quant(x, 3, lo, hi, axis=1))
    assert torch.equal(eager, via_op)


def test_constant_tensor_and_degenerate_range(cpu_backend):
    x = torch.full((5, 7), 0.25)
    out = adadfq_fast.fake_quant(x, 4, torch.tensor(0.25), torch.tensor(0.25))  # width 0 -> eps, finite scale
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref.fake_quant(x, 4, torch.tensor(0.25), torch.tensor(0.25)), rtol=0, atol=0)


def test_empty_nan_inf_large(cpu_backend):
    lo, hi = torch.tensor(-2.0), torch.tensor(2.0)
    assert adadfq_fast.fake_quant(torch.empty(0, 3, 4, 4), 4, lo, hi).shape == (0, 3, 4, 4)
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30, -1e30, 0.3])
    out = adadfq_fast.fake_quant(x, 4, lo, hi)
    torch.testing.assert_close(out, ref.fake_quant(x, 4, lo, hi), rtol=0, atol=0, equal_nan=True)
    assert torch.isnan(out[0]) and torch.isfinite(out[1:]).all()


def test_errors_name_the_argument():
    x = torch.randn(4, 3)
    lo, hi = torch.tensor(-1.0), torch.tensor(1.0)
    with pytest.raises(TypeError, match="x: expected float32"):
        adadfq_fast.fake_quant(x.double(), 4, lo, hi)
    with pytest.raises(TypeError, match="x: expected float32"):
        adadfq_fast.fake_quant(x.to(torch.int32), 4, lo, hi)
    for bad_bits in (1, 9, 4.0):
        with pytest.raises(ValueError, match="bits: expected an integer from 2 to 8"):
            adadfq_fast.fake_quant(x, bad_bits, lo, hi)
    with pytest.raises(ValueError, match="lo > hi"):
        adadfq_fast.fake_quant(x, 4, hi, lo)
    with pytest.raises(ValueError, match="lo: NaN"):
        adadfq_fast.fake_quant(x, 4, torch.tensor(float("nan")), hi)
    with pytest.raises(ValueError, match=r"lo/hi: per-channel quantization along axis 1 expects shape \(3,\)"):
        adadfq_fast.fake_quant(x, 4, torch.zeros(4), torch.ones(4), axis=1)
    with pytest.raises(ValueError, match="axis"):
        adadfq_fast.fake_quant(x, 4, lo, hi, axis=2)
    with pytest.raises(ValueError, match="lo: expected a tensor on"):
        adadfq_fast.fake_quant(x, 4, lo.to("meta"), hi)


def test_opcheck():
    x = torch.randn(4, 6, 5, 5, requires_grad=True)
    torch.library.opcheck(torch.ops.adadfq.fake_quant.default, (x, 4, torch.tensor(-1.0), torch.tensor(1.0), -1))
    torch.library.opcheck(torch.ops.adadfq.fake_quant.default, (x, 3, -torch.rand(6), torch.rand(6), 1))


def test_compile_fullgraph_forward_backward():
    lo, hi = torch.tensor(-1.5), torch.tensor(1.5)

    def f(x):
        return (adadfq_fast.fake_quant(x, 4, lo, hi) * x).sum()

    x = torch.randn(4, 8, 6, 6, requires_grad=True)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    (gx,) = torch.autograd.grad(out, x)
    x2 = x.detach().clone().requires_grad_()
    expected = f(x2)
    (gx2,) = torch.autograd.grad(expected, x2)
    assert torch.equal(out, expected) and torch.equal(gx, gx2)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_values_next_to_rounding_ties(cpu_backend, bits):
    """Inputs a few ulps around each level's half-way point: the rounding must be the reference's exactly
    (a kernel that rounds after shifting by the lowest level rounds twice and gets some of these wrong)."""
    lo, hi = torch.tensor(-2.2373886), torch.tensor(2.3331504)
    scale, zp = ref.quant_params(bits, lo, hi)
    half = torch.arange(-(2 ** (bits - 1)) - 1, 2 ** (bits - 1) + 1, dtype=torch.float32) + 0.5
    x = ((half + zp) / scale).repeat_interleave(9)
    steps = torch.arange(-4, 5, dtype=torch.float32).repeat(len(half))
    x = x + steps * torch.finfo(torch.float32).eps * x.abs().clamp_min(1e-3)  # walk a few ulps each side
    torch.testing.assert_close(adadfq_fast.fake_quant(x, bits, lo, hi), ref.fake_quant(x, bits, lo, hi), rtol=0, atol=0)
