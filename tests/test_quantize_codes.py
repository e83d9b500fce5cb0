"""``adadfq::quantize_codes`` (the one-pass codes of the integer model's float layers): the C++ kernel
(csrc/cpu/quantize_codes.cpp) against the PyTorch steps it replaces (``reference.quantize_codes_forward``: relu,
s*y, - zp, round, clamp, + zp), equal byte for byte; and the public op's checks, tracing and backend selection."""
import math

import pytest
import torch

import adadfq_fast
from adadfq_fast import _backend
from adadfq_fast import reference as ref

pytestmark = pytest.mark.skipif("cpp" not in _backend.implementations("quantize_codes", "cpu"),
                                reason="the C++ CPU library is not built")


def _torch_codes(y, scale, zero, bits, relu, *affine):
    return ref.quantize_codes_forward(y, scale, zero, bits, relu, *affine)


def _codes(*args):
    """The C++ kernel itself (its own argument checks raise RuntimeError)."""
    return _backend.backend_kernel("quantize_codes", "cpp")(*args)


def _input(shape, scale, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(shape, generator=g) * 4
    flat = y.view(-1)
    k = min(200, flat.numel())
    # Exact ties after scaling ((j + 0.5) / scale), where rounding half to even matters, and values far out of range.
    flat[:k] = (torch.randint(-20, 20, (k,), generator=g).float() + 0.5) / scale
    flat[k:2 * k] *= 1e3
    return y


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("relu", [True, False])
def test_matches_torch_steps(bits, relu):
    # 3*5*17*19 = 4845 elements: not a multiple of the 16-lane vectors, so the scalar tail runs too.
    y = _input((3, 5, 17, 19), 2.5, seed=bits)
    zero = float(2 ** (bits - 1) + (3 if bits < 8 else 0))
    torch.testing.assert_close(_codes(y, 2.5, zero, bits, relu), _torch_codes(y, 2.5, zero, bits, relu),
                               rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced"])
def test_layouts(layout):
    y = _input((4, 6, 9, 11), 1.75, seed=1)
    if layout == "channels_last":
        y = y.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":
        y = y.transpose(2, 3)  # dense, neither contiguous nor channels_last
    else:
        y = y[:, ::2]  # not dense: copied first
    got = _codes(y, 1.75, 8.0, 4, True)
    want = _torch_codes(y, 1.75, 8.0, 4, True)
    assert got.dtype == torch.uint8 and got.shape == y.shape
    if layout != "sliced":
        assert got.stride() == y.stride()
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_large_map_threads_split():
    # Several parallel chunks (32768 elements each) plus a tail.
    y = _input((2, 16, 64, 65), 3.0, seed=2).contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(_codes(y, 3.0, 8.0, 4, True), _torch_codes(y, 3.0, 8.0, 4, True), rtol=0, atol=0)


@pytest.mark.parametrize("relu", [True, False])
def test_nan_inf_and_constant(relu):
    y = torch.tensor([math.nan, math.inf, -math.inf, -0.0, 0.0, 1e30, -1e30] * 5)
    torch.testing.assert_close(_codes(y, 2.0, 8.0, 4, relu), _torch_codes(y, 2.0, 8.0, 4, relu), rtol=0, atol=0)
    const = torch.full((33,), 0.7)
    torch.testing.assert_close(_codes(const, 2.0, 8.0, 4, relu), _torch_codes(const, 2.0, 8.0, 4, relu),
                               rtol=0, atol=0)


def test_empty_and_errors():
    assert _codes(torch.empty(0, 4, 3, 3), 1.0, 8.0, 4, True).shape == (0, 4, 3, 3)
    with pytest.raises(RuntimeError, match="y: expected float32"):
        _codes(torch.zeros(2, dtype=torch.float16), 1.0, 8.0, 4, True)
    with pytest.raises(RuntimeError, match="bits: expected 2..8"):
        _codes(torch.zeros(2), 1.0, 8.0, 9, True)
    with pytest.raises(RuntimeError, match="scale"):
        _codes(torch.zeros(2), math.nan, 8.0, 4, True)
    with pytest.raises(RuntimeError, match="zero"):
        _codes(torch.zeros(2), 1.0, 2.0, 4, True)  # codes q + 2 with q >= -8 would be negative
    with pytest.raises(RuntimeError, match="zero"):
        _codes(torch.zeros(2), 1.0, 8.5, 4, True)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "sliced"])
def test_opcheck(layout):
    y = _input((2, 3, 5, 7), 2.0, seed=3)
    y = {"contiguous": y, "channels_last": y.contiguous(memory_format=torch.channels_last), "sliced": y[:, ::2]}[layout]
    torch.library.opcheck(torch.ops.adadfq.quantize_codes.default, (y, 2.0, 8.0, 4, True))


@pytest.mark.parametrize("backend", ["reference", "cpp"])
@pytest.mark.parametrize("affine", [False, True])
def test_public_op_per_backend(backend, affine):
    g = torch.Generator().manual_seed(7)
    y = _input((3, 6, 7, 9), 2.5, seed=7).contiguous(memory_format=torch.channels_last)
    extra = (torch.randn(6, generator=g) * 2, torch.randn(6, generator=g)) if affine else ()
    with adadfq_fast.use_backend(backend):
        got = adadfq_fast.quantize_codes(y, 2.5, 8.0, 4, True, *extra)
    assert got.stride() == y.stride()
    torch.testing.assert_close(got, _codes(y, 2.5, 8.0, 4, True, *extra), rtol=0, atol=0)


def _native_calls(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for e in prof.events() if e.name == "adadfq_native::quantize_codes")


def test_use_backend_reaches_it():
    y = torch.randn(2, 3, 4, 4)

    def run():
        adadfq_fast.quantize_codes(y, 2.0, 8.0, 4, True)

    with adadfq_fast.use_backend("cpp"):
        assert _native_calls(run) == 1
    with adadfq_fast.use_backend("reference"):
        assert _native_calls(run) == 0
    with adadfq_fast.use_backend("auto"):
        assert _backend.describe("quantize_codes", y.device) == "cpp" and _native_calls(run) == 1
    with adadfq_fast.use_backend("cuda"), pytest.raises(RuntimeError, match="backend 'cuda' cannot run quantize_codes"):
        run()


def test_traced_and_compiled():
    y = _input((2, 4, 6, 6), 2.0, seed=9)

    def f(y):
        return adadfq_fast.quantize_codes(y * 1.0, 2.0, 8.0, 4, True, torch.full((4,), 1.5), torch.zeros(4))

    want = f(y)
    torch.testing.assert_close(torch.compile(f, fullgraph=True, backend="aot_eager")(y), want, rtol=0, atol=0)


def test_public_op_errors():
    y = torch.zeros(2, 3, 4, 4)
    with pytest.raises(TypeError, match="y: expected float32"):
        adadfq_fast.quantize_codes(y.half(), 1.0, 8.0, 4)
    with pytest.raises(ValueError, match="bits"):
        adadfq_fast.quantize_codes(y, 1.0, 8.0, 9)
    with pytest.raises(ValueError, match="scale: expected a finite positive"):
        adadfq_fast.quantize_codes(y, -1.0, 8.0, 4)
    with pytest.raises(ValueError, match="zero: expected an integer zero point"):
        adadfq_fast.quantize_codes(y, 1.0, 2.0, 4)
    with pytest.raises(ValueError, match="give both or neither"):
        adadfq_fast.quantize_codes(y, 1.0, 8.0, 4, True, torch.ones(3))
    with pytest.raises(ValueError, match=r"channel_add: expected float32 \[3\]"):
        adadfq_fast.quantize_codes(y, 1.0, 8.0, 4, True, torch.ones(3), torch.ones(4))
    assert adadfq_fast.quantize_codes(torch.empty(0, 3, 2, 2), 1.0, 8.0, 4).shape == (0, 3, 2, 2)


# ---------------------------------------------------------------------------------------------------------------
# The optional per-channel affine (a float layer's eval BN folded into the pass)
# ---------------------------------------------------------------------------------------------------------------
def _fma_emulated(y, mult, add):
    """float32 fma per channel (dim 1), exact: a product of two float32 values is exact in float64."""
    shape = (1, -1) + (1,) * (y.dim() - 2)
    return (y.double() * mult.double().reshape(shape) + add.double().reshape(shape)).float()


@pytest.mark.parametrize("channels", [1, 3, 16, 20])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("relu", [True, False])
def test_affine_is_one_fma_then_the_steps(channels, layout, relu):
    g = torch.Generator().manual_seed(channels)
    y = _input((3, channels, 7, 9), 2.5, seed=channels)
    if layout == "channels_last":
        y = y.contiguous(memory_format=torch.channels_last)
    mult, add = torch.randn(channels, generator=g) * 3, torch.randn(channels, generator=g)
    got = _codes(y, 2.5, 8.0, 4, relu, mult, add)
    torch.testing.assert_close(got, _torch_codes(_fma_emulated(y, mult, add), 2.5, 8.0, 4, relu), rtol=0, atol=0)
    torch.testing.assert_close(got, _torch_codes(y, 2.5, 8.0, 4, relu, mult, add), rtol=0, atol=0)
    assert got.stride() == y.stride()


def test_bn_fold_equals_torch_batch_norm():
    """The deploy layer folds an eval BN into the pass only when its probe says torch's BN is that fma; on this
    project's CPU it is, and the codes then equal batch_norm followed by the PyTorch steps."""
    from adadfq_fast.deploy.modules import _bn_as_fma

    g = torch.Generator().manual_seed(5)
    c = 16
    bn = (torch.randn(c, generator=g), torch.rand(c, generator=g) + 0.05, torch.randn(c, generator=g),
          torch.randn(c, generator=g), False, 0.0, 1e-5)
    folded = _bn_as_fma(bn, c)
    if folded is None:
        pytest.skip("torch's batch norm is not one fma per element on this machine (the fold is then not used)")
    y = (torch.randn(8, c, 12, 12, generator=g) * 5).contiguous(memory_format=torch.channels_last)
    want = _torch_codes(torch.nn.functional.batch_norm(y, *bn), 3.0, 8.0, 4, True)
    torch.testing.assert_close(_codes(y, 3.0, 8.0, 4, True, *folded), want, rtol=0, atol=0)


def test_bn_fold_refused_when_the_probe_differs(monkeypatch):
    from adadfq_fast.deploy import modules

    c = 8
    bn = (torch.randn(c), torch.rand(c) + 0.05, torch.randn(c), torch.randn(c), False, 0.0, 1e-5)
    real = torch.nn.functional.batch_norm

    def two_roundings(x, mean, var, w, b, training, momentum, eps):  # a BN computed as (x - mean) * ... instead
        if x.shape[0] == 1:
            return real(x, mean, var, w, b, training, momentum, eps)
        shape = (1, -1, 1, 1)
        return (x - mean.reshape(shape)) * (torch.rsqrt(var + eps) * w).reshape(shape) + b.reshape(shape)

    monkeypatch.setattr(modules.F, "batch_norm", two_roundings)
    assert modules._bn_as_fma(bn, c) is None


def test_affine_errors():
    y = torch.zeros(2, 3, 4, 4)
    with pytest.raises(RuntimeError, match="give both or neither"):
        _codes(y, 1.0, 8.0, 4, True, torch.ones(3), None)
    with pytest.raises(RuntimeError, match=r"channel_mult: expected float32 \[3\]"):
        _codes(y, 1.0, 8.0, 4, True, torch.ones(4), torch.zeros(3))
    with pytest.raises(RuntimeError, match="channel_add: expected float32"):
        _codes(y, 1.0, 8.0, 4, True, torch.ones(3), torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_opcheck_affine(layout):
    y = _input((2, 3, 5, 7), 2.0, seed=4)
    if layout == "channels_last":
        y = y.contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(torch.ops.adadfq.quantize_codes.default,
                          (y, 2.0, 8.0, 4, True, torch.rand(3) + 0.5, torch.randn(3)))


@pytest.mark.parametrize("negative_scale", [False, True])
def test_bn_moves_after_the_fused_max_pool_only_when_monotone(negative_scale):
    """A float first layer with BN, ReLU and a fused 3x3/2 max pool: with every BN scale >= 0 the layer pools the
    raw conv output and applies BN to the pooled values (max commutes with a non-decreasing map); a negative scale
    keeps BN before the pool. Either way the codes equal Q's order: BN, pool, ReLU, quantizer."""
    from adadfq_fast.deploy import modules
    from adadfq_fast.deploy.modules import Layer, _FloatConv

    g = torch.Generator().manual_seed(11)
    c = 16
    w = torch.randn(c, generator=g).abs() + 0.1
    if negative_scale:
        w[3] = -w[3]
    bn = dict(bn_mean=torch.randn(c, generator=g), bn_var=torch.rand(c, generator=g) + 0.05, bn_weight=w,
              bn_bias=torch.randn(c, generator=g))
    q_w = torch.randint(-8, 8, (c, 3, 3, 3), dtype=torch.int8, generator=g)
    tensors = dict(q_w=q_w, z_w=torch.zeros(c, dtype=torch.int32), s_w=torch.full((c,), 4.0), **bn)
    cfg = dict(inp=0, out=1, in_kind="float", relu=True, out_bits=4, out_scale=3.0, out_zero=8.0, stride=[1, 1],
               padding=[1, 1], dilation=[1, 1], groups=1, bn_eps=1e-5, has_bias=False, int=False, wbits=4)
    layer = Layer("conv", cfg, tensors)
    run = _FloatConv(layer)
    run.pool = ((3, 3), (2, 2), (1, 1), (1, 1), False)
    if modules._bn_as_fma(run.bn, c) is None:
        pytest.skip("torch's batch norm is not one fma per element on this machine (the fold is then not used)")
    run.bn_fma = modules._bn_fold(run)  # as IntegerModel._build sets it
    assert (run.bn_fma is None) == negative_scale
    x = (torch.randn(4, 3, 20, 20, generator=g) * 3).contiguous(memory_format=torch.channels_last)
    regs = [x, None]
    run(regs, None)
    y = torch.nn.functional.conv2d(x, run.weight, None, 1, 1)
    y = torch.nn.functional.batch_norm(y, *run.bn)
    y = torch.nn.functional.max_pool2d(y, *run.pool)
    want = _torch_codes(y, 3.0, 8.0, 4, True)
    assert torch.equal(regs[1], want)
