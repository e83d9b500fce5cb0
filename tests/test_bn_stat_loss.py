"""adadfq_fast.bn_stat_loss (L_BNS) against the reference: value, gradients, layouts, dtypes, errors."""
import pytest
import torch

import adadfq_fast
from adadfq_fast import reference as ref
from adadfq_fast.bench.shapes import resnet20_feature_shapes
from conftest import TOL
from helpers import FLOAT_DTYPES, both_paths

NETWORKS = {
    "resnet20_b16": resnet20_feature_shapes(16),
    "mixed": [(4, 8, 6, 6), (4, 16), (2, 3, 5, 5, 5), (1, 1, 7, 7)],  # 2-D, 5-D, one channel, batch of one
}


def _inputs(shapes, dtype=torch.float32, channels_last=False):
    feats = [(torch.randn(s) * 2 + torch.randn(1)).to(dtype) for s in shapes]
    if channels_last:
        feats = [f.contiguous(memory_format=torch.channels_last) if f.dim() == 4 else f for f in feats]
    rms = [torch.randn(s[1]) for s in shapes]
    rvs = [torch.rand(s[1]) + 0.5 for s in shapes]
    return feats, rms, rvs


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("network", list(NETWORKS))
@pytest.mark.parametrize("channels_last", [False, True])
def test_value_and_gradients(cpu_backend, dtype, network, channels_last):
    feats, rms, rvs = _inputs(NETWORKS[network], dtype, channels_last)
    xs = [f.clone().requires_grad_() for f in feats]
    loss = adadfq_fast.bn_stat_loss(xs, rms, rvs)
    grads = torch.autograd.grad(loss * 3.0, xs)
    # Oracle: autograd through the spec, on the same (rounded) inputs upcast to float32.
    xr = [f.float().requires_grad_() for f in feats]
    expected = ref.bn_stat_loss(xr, rms, rvs)
    grads_ref = torch.autograd.grad(expected * 3.0, xr)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected, **TOL[torch.float32])
    for g, gr, x in zip(grads, grads_ref, xs):
        assert g.dtype == dtype and g.stride() == x.stride()
        # float16 gradients this small are subnormal: allow two float16 subnormal steps (2^-24 each).
        atol = max(gr.abs().max().item() * 1e-4, 2.0**-23 if dtype == torch.float16 else 0.0)
        torch.testing.assert_close(g.float(), gr, rtol=TOL[dtype]["rtol"], atol=atol)


def test_non_dense_inputs_and_paths(cpu_backend):
    feats, rms, rvs = _inputs([(4, 8, 6, 6), (4, 16, 3, 3)])
    views = [torch.stack([f, f], dim=-1)[..., 1] for f in feats]
    torch.testing.assert_close(adadfq_fast.bn_stat_loss(views, rms, rvs), ref.bn_stat_loss(feats, rms, rvs))
    eager, via_op = both_paths(lambda: adadfq_fast.bn_stat_loss(feats, rms, rvs))
    assert torch.equal(eager, via_op)


def test_shifted_data_is_stable(cpu_backend):
    """Data far from zero (mean 1e3, std 1): the one-pass variance must not cancel."""
    feats, rms, rvs = _inputs([(16, 8, 16, 16)])
    feats = [f + 1000.0 for f in feats]
    rms = [r + 1000.0 for r in rms]
    torch.testing.assert_close(adadfq_fast.bn_stat_loss(feats, rms, rvs), ref.bn_stat_loss(feats, rms, rvs), rtol=1e-4, atol=1e-5)


def test_reference_backward_formula_gradcheck_float64():
    """The explicit backward of the reference backend equals the numerical Jacobian (float64)."""
    shapes = [(3, 4, 2, 3), (5, 2)]
    feats = [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in shapes]
    rms = [torch.randn(s[1], dtype=torch.float64) for s in shapes]
    rvs = [torch.rand(s[1], dtype=torch.float64) for s in shapes]

    class Formula(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *xs):
            loss, stats = ref.bn_stat_loss_forward(list(xs), rms, rvs)
            ctx.save_for_backward(*xs, stats)
            return loss

        @staticmethod
        def backward(ctx, g):
            *xs, stats = ctx.saved_tensors
            return tuple(ref.bn_stat_loss_backward(g, list(xs), rms, rvs, stats))

    assert torch.autograd.gradcheck(Formula.apply, tuple(feats))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_constant_and_empty(cpu_backend):
    feats = [torch.full((4, 3, 5, 5), 2.0)]
    rms, rvs = [torch.zeros(3)], [torch.ones(3)]
    torch.testing.assert_close(adadfq_fast.bn_stat_loss(feats, rms, rvs), ref.bn_stat_loss(feats, rms, rvs))
    # An empty batch has no statistics: NaN, as PyTorch's mean/var of nothing.
    assert torch.isnan(adadfq_fast.bn_stat_loss([torch.empty(0, 3, 4, 4)], rms, rvs))
    assert torch.isnan(ref.bn_stat_loss([torch.empty(0, 3, 4, 4)], rms, rvs))


def test_errors():
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(ValueError, match="feats: expected at least one"):
        adadfq_fast.bn_stat_loss([], [], [])
    with pytest.raises(ValueError, match="expected one per feature"):
        adadfq_fast.bn_stat_loss([x], [torch.zeros(3)], [])
    with pytest.raises(ValueError, match=r"running_means\[0\]: expected shape \(3,\)"):
        adadfq_fast.bn_stat_loss([x], [torch.zeros(4)], [torch.ones(3)])
    with pytest.raises(TypeError, match=r"feats\[0\]: expected float32"):
        adadfq_fast.bn_stat_loss([x.long()], [torch.zeros(3)], [torch.ones(3)])
    with pytest.raises(ValueError, match=r"feats\[0\]: expected at least 2 dims"):
        adadfq_fast.bn_stat_loss([torch.randn(3)], [torch.zeros(3)], [torch.ones(3)])


def test_opcheck():
    feats, rms, rvs = _inputs([(4, 8, 6, 6), (4, 16, 3, 3)])
    feats = [f.requires_grad_() for f in feats]
    torch.library.opcheck(torch.ops.adadfq.bn_stat_loss.default, (feats, rms, rvs))
    _, stats = ref.bn_stat_loss_forward(feats, rms, rvs)
    # The backward op is not differentiable itself (no double backward): check it on plain tensors.
    plain = [f.detach() for f in feats]
    torch.library.opcheck(torch.ops.adadfq.bn_stat_loss_backward.default, (torch.tensor(1.0), plain, rms, rvs, stats.detach()))


def test_compile_fullgraph_forward_backward():
    feats, rms, rvs = _inputs([(4, 8, 6, 6), (4, 16, 3, 3)])
    conv = torch.nn.Conv2d(8, 8, 3, padding=1)

    def f(x):
        y = conv(x)
        return adadfq_fast.bn_stat_loss([x, y], [rms[0], rms[0]], [rvs[0], rvs[0]])

    x = feats[0].requires_grad_()
    out = torch.compile(f, fullgraph=True, backend="aot_eager")(x)
    (gx,) = torch.autograd.grad(out, x)
    expected = f(x)
    (gx2,) = torch.autograd.grad(expected, x)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(gx, gx2)
