"""adadfq_fast.int_conv2d: the int64 reference against an independent float64 computation of the dequantized conv,
every CPU backend bit-exact against the reference (edge cases, layouts), argument errors, opcheck."""
import math
import os

import pytest
import torch
import torch.nn.functional as F

import adadfq_fast
from adadfq_fast import _backend
from adadfq_fast import reference as ref

# Backends that implement the kernel on CPU tensors here (the cpp kernel may be absent from an older build).
INT_BACKENDS = [b for b in _backend.implementations("int_conv2d", "cpu") if b in ("reference", "cpp")]


@pytest.fixture(params=INT_BACKENDS)
def int_backend(request):
    with adadfq_fast.use_backend(request.param):
        yield request.param


def _cpp_isas():
    """The C++ kernel's micro-kernel families this build has besides its best one (which the plain runs use):
    ADADFQ_INT_CONV_ISA picks a slower one, and refuses one that was not compiled in."""
    if "cpp" not in INT_BACKENDS:
        return []
    x, q, z = torch.zeros(1, 16, 3, 3, dtype=torch.uint8), torch.zeros(16, 16, 1, 1, dtype=torch.int8), \
        torch.zeros(16, dtype=torch.int32)
    found = []
    with adadfq_fast.use_backend("cpp"):
        for isa in ("vnni", "avx2", "generic"):
            os.environ["ADADFQ_INT_CONV_ISA"] = isa
            try:
                adadfq_fast.int_conv2d(x, q, z, 1, 0, 1, 1)
                found.append(isa)
            except RuntimeError as e:
                assert "does not have it" in str(e), e
            finally:
                del os.environ["ADADFQ_INT_CONV_ISA"]
    return found[1:]


# The C++ kernel's visiting order (row-major with per-image padded copies, or weight-major with a batch copy) is
# chosen by input size, which would leave the row-major path to large inputs only: both are also forced. So are its
# slower micro-kernel families (AVX2 on a VNNI build, the portable loop), which other CPUs run.
BACKEND_ORDERS = ([(b, "auto", "best") for b in INT_BACKENDS]
                  + [("cpp", o, "best") for o in ("row", "weight") if "cpp" in INT_BACKENDS]
                  + [("cpp", "auto", isa) for isa in _cpp_isas()])


@pytest.fixture(params=BACKEND_ORDERS, ids=lambda p: "-".join(p))
def backend_order(request, monkeypatch):
    backend, order, isa = request.param
    if order != "auto":
        monkeypatch.setenv("ADADFQ_INT_CONV_ORDER", order)
    if isa != "best":
        monkeypatch.setenv("ADADFQ_INT_CONV_ISA", isa)
    with adadfq_fast.use_backend(backend):
        yield request.param


def _codes(shape, bits, offset=0):
    """Activation codes m = q + zp of a `bits`-bit QuantAct whose range starts at round(s*lo) = offset."""
    return (torch.randint(0, 2**bits, shape) + offset).to(torch.uint8)


def _weights(o, cg, kh, kw, bits):
    """int8 levels in [-2^(k-1), 2^(k-1)-1] and int32 zero points in [-(2^(k-1)-1), 2^(k-1)] (the spec's range for
    a channel whose lo <= 0 <= hi), with the extreme levels present."""
    half = 2 ** (bits - 1)
    q = torch.randint(-half, half, (o, cg, kh, kw), dtype=torch.int8)
    q.view(-1)[0], q.view(-1)[-1] = -half, half - 1
    z = torch.randint(-(half - 1), half + 1, (o,), dtype=torch.int32)
    return q, z


def _epilogue_args(o, seed_scale=1.0):
    return dict(out_mult=(torch.rand(o) * 0.02 + 1e-3) * seed_scale, out_bias=torch.randn(o))


def _call(x, q, z, stride=1, padding=0, dilation=1, groups=1, **kw):
    return adadfq_fast.int_conv2d(x, q, z, stride, padding, dilation, groups, **kw)


def _ref(x, q, z, stride=1, padding=0, dilation=1, groups=1, out_mult=None, out_bias=None, residual=None,
         residual_scale=1.0, relu=False, out_bits=0, out_scale=1.0, out_zero=0.0):
    pair = lambda v: [v, v] if isinstance(v, int) else list(v)  # noqa: E731
    o = q.shape[0]
    out_mult = torch.ones(o) if out_mult is None else out_mult
    out_bias = torch.zeros(o) if out_bias is None else out_bias
    return ref.int_conv2d_forward(x, q, z, pair(stride), pair(padding), pair(dilation), groups, out_mult, out_bias,
                                  residual, residual_scale, relu, out_bits, out_scale, out_zero)


# ------------------------------------------------------------------------------------------------------------
# The reference against independent computations
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("groups", [1, 2, 8])
def test_reference_sums_are_the_folded_weight_conv(groups):
    """acc + z_w*box == conv(m_x, q_w + z_w) exactly (no box decomposition on this side), at 8-bit extremes."""
    x = _codes((3, 8, 9, 7), 8)
    x[0, :, :3, :3] = 255
    q, z = _weights(16, 8 // groups, 3, 3, 8)
    q[:2] = -128
    z[0] = 128
    total = ref.int_conv2d_accumulate(x, q, z, [2, 1], [1, 2], [1, 2], groups)
    folded = (q.to(torch.int64) + z.to(torch.int64).reshape(-1, 1, 1, 1)).double()
    expected = F.conv2d(x.double(), folded, None, [2, 1], [1, 2], [1, 2], groups)
    assert total.dtype == torch.int64
    assert torch.equal(total, expected.to(torch.int64))


def test_reference_is_the_dequantized_conv_bn_relu():
    """From float tensors through the spec's quantizer: the integer op's float output equals the float64 conv of the
    dequantized activations and weights followed by eval-mode BN and ReLU, to float32 rounding; with requant, the
    codes equal the spec quantizer applied to that float output (up to values within rounding of a tie)."""
    n, c, o, h = 4, 16, 24, 10
    xf = torch.relu(torch.randn(n, c, h, h))
    w = torch.randn(o, c, 3, 3) * 0.2
    abits, wbits = 4, 4
    s_x, zp_x = ref.quant_params(abits, torch.tensor(0.0), xf.max())
    m = (ref.quant_levels(xf, abits, s_x, zp_x) + zp_x).to(torch.uint8)
    lo, hi = ref.weight_range(w)
    s_w, zp_w = ref.quant_params(wbits, lo, hi)
    q_w = ref.quant_levels(w, wbits, s_w.reshape(-1, 1, 1, 1), zp_w.reshape(-1, 1, 1, 1)).to(torch.int8)
    gamma, beta, mean, var = torch.rand(o) + 0.5, torch.randn(o), torch.randn(o) * 0.1, torch.rand(o) + 0.5
    bn_scale = gamma.double() / torch.sqrt(var.double() + 1e-5)
    out_mult = (bn_scale / (s_w.double() * s_x.double())).float()
    out_bias = (beta.double() - mean.double() * bn_scale).float()
    y = ref.int_conv2d_forward(m, q_w, zp_w.to(torch.int32), [1, 1], [1, 1], [1, 1], 1, out_mult, out_bias, None,
                               1.0, True, 0, 1.0, 0.0)
    # Independent: dequantize both (x^ = m / s_x, w^ = (q_w + zp_w) / s_w), convolve in float64, BN, ReLU.
    x_hat = m.double() / s_x.double()
    w_hat = (q_w.double() + zp_w.double().reshape(-1, 1, 1, 1)) / s_w.double().reshape(-1, 1, 1, 1)
    # The simulation's own fake-quantized weights are the same grid points.
    torch.testing.assert_close(w_hat.float(), ref.fake_quant_weight(w, wbits), rtol=1e-6, atol=1e-7)
    y64 = F.conv2d(x_hat, w_hat, None, 1, 1) * bn_scale.reshape(1, -1, 1, 1)
    y64 = torch.relu(y64 + (beta.double() - mean.double() * bn_scale).reshape(1, -1, 1, 1))
    torch.testing.assert_close(y.double(), y64, rtol=1e-5, atol=1e-5)
    # Requant to the next layer's 4-bit codes over [0, hi_o].
    s_o, zp_o = ref.quant_params(4, torch.tensor(0.0), y64.max().float())
    codes = ref.int_conv2d_forward(m, q_w, zp_w.to(torch.int32), [1, 1], [1, 1], [1, 1], 1, out_mult, out_bias, None,
                                   1.0, True, 4, float(s_o), float(zp_o))
    assert codes.dtype == torch.uint8
    expected = ref.quant_levels(y64.float(), 4, s_o, zp_o) + zp_o
    near_tie = ((s_o.double() * y64 - zp_o.double()).frac().abs() - 0.5).abs() < 1e-3
    assert torch.equal(codes.float()[~near_tie], expected[~near_tie])
    assert (codes.float() - expected).abs().max() <= 1


def test_reference_epilogue_order():
    """The documented float32 order, written out element by element with numpy-like scalar steps."""
    total = torch.randint(-(2**20), 2**20, (2, 3, 4, 5))
    mult, bias = torch.rand(3), torch.randn(3)
    res = torch.randint(0, 256, (2, 3, 4, 5), dtype=torch.uint8)
    out = ref.int_conv2d_epilogue(total, mult, bias, res, 7.3, True, 5, 3.1, 17.0)
    y = total.float() * mult.reshape(1, -1, 1, 1)
    y = y + bias.reshape(1, -1, 1, 1)
    y = y + torch.tensor([float(v) for v in res.flatten()]).reshape(res.shape) / torch.tensor(7.3)
    y = torch.where(y < 0, torch.zeros_like(y), y)
    q = torch.round(torch.tensor(3.1) * y - 17.0).clamp(-16, 15)
    assert torch.equal(out, (q + 17).to(torch.uint8))


# ------------------------------------------------------------------------------------------------------------
# Backends bit-exact against the reference
# ------------------------------------------------------------------------------------------------------------
CASES = [
    # (n, c, h, w, o, k, stride, padding, dilation, groups)
    (2, 16, 12, 12, 16, 3, 1, 1, 1, 1),  # ResNet-20 stage 1
    (2, 16, 13, 11, 32, 3, 2, 1, 1, 1),  # stride 2, odd sizes
    (2, 16, 12, 12, 32, 1, 2, 0, 1, 1),  # 1x1 projection
    (1, 8, 16, 16, 24, 7, 2, 3, 1, 1),   # 7x7 / padding 3
    (2, 12, 9, 9, 12, 3, 1, 1, 1, 12),   # depthwise
    (2, 12, 9, 9, 18, 3, 1, 1, 1, 3),    # groups, 4 channels per group
    (2, 6, 9, 9, 10, 3, 1, 2, 2, 2),     # 3 channels per group (not a multiple of 4), dilation 2
    (1, 5, 7, 8, 7, 2, 1, 0, 1, 1),      # odd channels, even kernel, no padding
    (3, 64, 6, 6, 80, 3, 1, 1, 1, 1),    # wide: several output-channel blocks and a tail
    (2, 64, 7, 7, 64, 3, 1, 1, 1, 1),    # 7x7 map: rows of two unequal tiles (4 + 3 pixels)
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "n{}c{}h{}w{}o{}k{}s{}p{}d{}g{}".format(*c))
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_bit_exact_shapes(backend_order, case, layout):
    n, c, h, w, o, k, stride, padding, dilation, groups = case
    x = _codes((n, c, h, w), 8)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    q, z = _weights(o, c // groups, k, k, 8)
    ep = _epilogue_args(o)
    for out_bits, relu in ((0, False), (4, True)):
        kw = dict(out_bits=out_bits, relu=relu, out_scale=37.5, out_zero=float(2 ** (out_bits - 1)) if out_bits else 0.0)
        out = _call(x, q, z, stride, padding, dilation, groups, **ep, **kw)
        expected = _ref(x, q, z, stride, padding, dilation, groups, **ep, **kw)
        assert out.dtype == expected.dtype and out.shape == expected.shape
        assert torch.equal(out, expected), (out.float() - expected.float()).abs().max()
        assert out.is_contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)


# Geometries for the C++ kernel's direct reads of channels_last x (weights of <= 7 bits fold their zero points, so
# no padded copy is made): windows that cross every border, padding wider than the kernel's reach (whole windows
# in the padding), dilation and groups (one run per tap), rows split into several tiles.
DIRECT_CASES = [
    # (n, c, h, w, o, k, stride, padding, dilation, groups)
    (2, 16, 32, 32, 16, 3, 1, 1, 1, 1),  # ResNet-20 stage 1 rows: 4 tiles per row, the outer two on the border
    (2, 32, 16, 16, 32, 3, 1, 1, 1, 1),  # stage 2: two 8-pixel tiles per row
    (2, 16, 13, 11, 32, 3, 2, 1, 1, 1),  # stride 2, odd sizes
    (2, 16, 9, 10, 16, 3, 1, 3, 1, 1),   # padding 3 > reach: rows and columns of windows entirely in the padding
    (1, 8, 11, 12, 24, 5, 1, 4, 2, 1),   # 5x5 dilation 2: one run per tap
    (2, 32, 9, 9, 32, 3, 1, 1, 1, 2),    # 2 groups of 16: one run per tap, group offsets in the patch
    (1, 4, 20, 21, 16, 7, 2, 3, 1, 1),   # 7x7 stride 2 on 4 channels
    (2, 64, 8, 8, 64, 3, 1, 1, 1, 1),    # stage 3: 4 output vectors, two 4-pixel tiles per row
    (1, 64, 3, 2, 48, 3, 1, 1, 1, 1),    # a map smaller than the kernel's reach
    (2, 16, 12, 40, 16, 1, 1, 0, 1, 1),  # 1x1: every window inside
    (2, 16, 12, 10, 16, 3, 1, (2, 1), (2, 1), 1),  # rows dilated, columns not: row runs, column tiles, 2-row padding
]


@pytest.mark.parametrize("case", DIRECT_CASES, ids=lambda c: "n{}c{}h{}w{}o{}k{}s{}p{}d{}g{}".format(*c))
def test_bit_exact_direct_reads(backend_order, case):
    n, c, h, w, o, k, stride, padding, dilation, groups = case
    x = _codes((n, c, h, w), 4, offset=3).contiguous(memory_format=torch.channels_last)
    q, z = _weights(o, c // groups, k, k, 4)
    ep = _epilogue_args(o)
    for out_bits, relu, residual in ((0, False, None), (4, True, "codes")):
        (ph, pw), (dh, dw) = [(v, v) if isinstance(v, int) else v for v in (padding, dilation)]
        ho = (h + 2 * ph - dh * (k - 1) - 1) // stride + 1
        wo = (w + 2 * pw - dw * (k - 1) - 1) // stride + 1
        res = None if residual is None else torch.randint(0, 16, (n, o, ho, wo), dtype=torch.uint8)
        kw = dict(out_bits=out_bits, relu=relu, out_scale=9.5, out_zero=8.0 if out_bits else 0.0, residual=res,
                  residual_scale=2.5)
        out = _call(x, q, z, stride, padding, dilation, groups, **ep, **kw)
        expected = _ref(x, q, z, stride, padding, dilation, groups, **ep, **kw)
        assert torch.equal(out, expected), (out.float() - expected.float()).abs().max()


def test_bit_exact_random_geometries(backend_order):
    """Seeded random geometries (kernel 1..7, strides 1..3 per axis, padding 0..4 per axis, row dilation 1..3,
    maps down to 1 pixel): the tiles skip every kernel row and column that lies in the padding, and with a
    channels_last x of whole 4-channel steps they read x in place, so a wrong window range would read outside the
    image or drop real taps."""
    gen = torch.Generator().manual_seed(7)
    rnd = lambda lo, hi: int(torch.randint(lo, hi + 1, (1,), generator=gen))  # noqa: E731
    done = 0
    while done < 60:
        n, c, o, k = rnd(1, 2), 4 * rnd(1, 12), (8, 16, 24, 40, 64, 80)[rnd(0, 5)], (1, 2, 3, 5, 7)[rnd(0, 4)]
        stride, padding, dilation = (rnd(1, 3), rnd(1, 3)), (rnd(0, 4), rnd(0, 4)), (rnd(1, 3), 1)
        h, w = rnd(1, 12), rnd(1, 12)
        if h + 2 * padding[0] < dilation[0] * (k - 1) + 1 or w + 2 * padding[1] < k:
            continue
        x = _codes((n, c, h, w), 4)
        if done % 2 == 0:
            x = x.contiguous(memory_format=torch.channels_last)
        q, z = _weights(o, c, k, k, 4)
        kw = dict(**_epilogue_args(o), relu=True, out_bits=4, out_scale=9.5, out_zero=8.0)
        out = _call(x, q, z, stride, padding, dilation, 1, **kw)
        expected = _ref(x, q, z, stride, padding, dilation, 1, **kw)
        assert torch.equal(out, expected), (n, c, h, w, o, k, stride, padding, dilation)
        done += 1


@pytest.mark.parametrize("bits", range(2, 9))
def test_bit_exact_bits(backend_order, bits):
    """Weight and activation codes of 2..8 bits, requant to the same width, zero points at both ends."""
    x = _codes((2, 16, 8, 8), bits, offset=255 - (2**bits - 1) if bits % 2 else 0).contiguous(
        memory_format=torch.channels_last)
    q, z = _weights(32, 16, 3, 3, bits)
    ep = _epilogue_args(32)
    half = 2 ** (bits - 1)
    for out_zero in (float(half), float(255 - half + 1)):
        kw = dict(relu=True, out_bits=bits, out_scale=float(2**bits) / 3.0, out_zero=out_zero)
        out = _call(x, q, z, 1, 1, **ep, **kw)
        assert torch.equal(out, _ref(x, q, z, 1, 1, **ep, **kw))
        assert out.min() >= out_zero - half and out.max() <= out_zero + half - 1


@pytest.mark.parametrize("residual_kind", ["none", "float", "codes"])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("requant", [False, True])
@pytest.mark.parametrize("channels", [32, 64])
def test_bit_exact_epilogue(backend_order, residual_kind, relu, requant, channels):
    """Every epilogue kind. 32 input channels: a window of 72 four-channel steps, one int16 interval of the AVX2
    kernel; 64: 144 steps with an interval of 72 (|q + z| = 15 forced), so its tiles widen to int32 midway."""
    x = _codes((2, channels, 8, 9), 4).contiguous(memory_format=torch.channels_last)
    q, z = _weights(32, channels, 3, 3, 4)
    if channels == 64:
        q[0, 0, 0, 1], z[0] = -8, -7  # interval: 32767 // (2 * 15 * 15) = 72 steps
    ep = _epilogue_args(32)
    out_shape = (2, 32, 8, 9)
    residual = {"none": None, "float": torch.randn(out_shape) * 2,
                "codes": torch.randint(0, 16, out_shape, dtype=torch.uint8)}[residual_kind]
    kw = dict(residual=residual, residual_scale=3.7, relu=relu, out_bits=4 if requant else 0, out_scale=5.5,
              out_zero=8.0 if requant else 0.0)
    out = _call(x, q, z, 1, 1, **ep, **kw)
    assert torch.equal(out, _ref(x, q, z, 1, 1, **ep, **kw))
    if residual is not None:  # a residual in the other memory format gives the same values
        kw["residual"] = residual.contiguous(memory_format=torch.channels_last)
        assert torch.equal(_call(x, q, z, 1, 1, **ep, **kw), out)


def test_non_contiguous_inputs(int_backend):
    x = _codes((2, 16, 10, 10), 8)
    q, z = _weights(16, 16, 3, 3, 8)
    ep = _epilogue_args(16)
    res = torch.randn(2, 16, 10, 10)
    xs = torch.stack([x, torch.zeros_like(x)], dim=-1)[..., 0]
    qs = torch.stack([q, torch.zeros_like(q)], dim=-1)[..., 0]
    rs = torch.stack([res, torch.zeros_like(res)], dim=-1)[..., 0]
    ms = torch.stack([ep["out_mult"], ep["out_mult"]], dim=-1)[..., 0]
    assert not xs.is_contiguous() and not qs.is_contiguous()
    out = _call(xs, qs, z, 1, 1, out_mult=ms, out_bias=ep["out_bias"], residual=rs)
    assert out.is_contiguous()
    assert torch.equal(out, _ref(x, q, z, 1, 1, **ep, residual=res))


def test_empty_batch(int_backend):
    x = torch.zeros(0, 16, 8, 8, dtype=torch.uint8)
    q, z = _weights(8, 16, 3, 3, 4)
    out = _call(x, q, z, 1, 1, out_bits=4, out_zero=8.0)
    assert out.shape == (0, 8, 8, 8) and out.dtype == torch.uint8


def test_weights_reused_after_in_place_change(int_backend):
    """Kernels may cache packed weights; an in-place change of the weight must be seen."""
    x = _codes((1, 16, 6, 6), 8)
    q, z = _weights(16, 16, 3, 3, 8)
    first = _call(x, q, z, 1, 1)
    assert torch.equal(first, _ref(x, q, z, 1, 1))
    q.neg_().clamp_(-128, 127)
    assert torch.equal(_call(x, q, z, 1, 1), _ref(x, q, z, 1, 1))
    z.add_(1)
    assert torch.equal(_call(x, q, z, 1, 1), _ref(x, q, z, 1, 1))


def test_inference_mode_weights(int_backend):
    """Inference tensors have no version counter: an in-place change inside inference mode must still be seen."""
    with torch.inference_mode():
        x = _codes((1, 16, 6, 6), 4)
        q, z = _weights(32, 16, 3, 3, 4)
        assert torch.equal(_call(x, q, z, 1, 1), _ref(x, q, z, 1, 1))
        q[3, 2, 1, 1] = 7 if q[3, 2, 1, 1] != 7 else -8
        z[5] += 1
        assert torch.equal(_call(x, q, z, 1, 1), _ref(x, q, z, 1, 1))


# ------------------------------------------------------------------------------------------------------------
# Errors, custom op
# ------------------------------------------------------------------------------------------------------------
def test_argument_errors():
    x = _codes((1, 8, 6, 6), 4)
    q, z = _weights(4, 8, 3, 3, 4)
    with pytest.raises(TypeError, match="x: expected uint8"):
        adadfq_fast.int_conv2d(x.float(), q, z)
    with pytest.raises(TypeError, match="weight: expected int8"):
        adadfq_fast.int_conv2d(x, q.float(), z)
    with pytest.raises(TypeError, match="weight_zero: expected torch.int32"):
        adadfq_fast.int_conv2d(x, q, z.long())
    with pytest.raises(ValueError, match="weight: expected 4 input channels per group"):
        adadfq_fast.int_conv2d(x, q, z, groups=2)
    with pytest.raises(ValueError, match="groups: 3 must divide"):
        adadfq_fast.int_conv2d(x, q, z, groups=3)
    with pytest.raises(ValueError, match="out_mult: expected shape"):
        adadfq_fast.int_conv2d(x, q, z, out_mult=torch.ones(5))
    with pytest.raises(ValueError, match="stride"):
        adadfq_fast.int_conv2d(x, q, z, stride=0)
    with pytest.raises(ValueError, match="out_bits"):
        adadfq_fast.int_conv2d(x, q, z, out_bits=1)
    with pytest.raises(ValueError, match="out_zero"):
        adadfq_fast.int_conv2d(x, q, z, out_bits=8, out_zero=10.0)
    with pytest.raises(ValueError, match="residual: expected the output shape"):
        adadfq_fast.int_conv2d(x, q, z, residual=torch.zeros(1, 4, 6, 6))
    with pytest.raises(TypeError, match="residual: expected float32 values or uint8"):
        adadfq_fast.int_conv2d(x, q, z, residual=torch.zeros(1, 4, 4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="residual_scale"):
        adadfq_fast.int_conv2d(x, q, z, residual=torch.zeros(1, 4, 4, 4, dtype=torch.uint8), residual_scale=0.0)
    with pytest.raises(ValueError, match="too small"):
        adadfq_fast.int_conv2d(x[:, :, :2], q, z)


def test_opcheck():
    x = _codes((2, 8, 6, 6), 4).contiguous(memory_format=torch.channels_last)
    q, z = _weights(8, 8, 3, 3, 4)
    ep = _epilogue_args(8)
    op = torch.ops.adadfq.int_conv2d.default
    res = torch.randint(0, 16, (2, 8, 6, 6), dtype=torch.uint8)
    torch.library.opcheck(op, (x, q, z, [1, 1], [1, 1], [1, 1], 1, ep["out_mult"], ep["out_bias"], res, 2.0, True,
                               4, 3.0, 8.0))
    torch.library.opcheck(op, (x.contiguous(), q[:, :4], z, [2, 1], [0, 1], [1, 1], 2, ep["out_mult"],
                               ep["out_bias"], None, 1.0, False, 0, 1.0, 0.0))


def test_compile_fullgraph():
    x = _codes((2, 8, 6, 6), 4)
    q, z = _weights(8, 8, 3, 3, 4)

    def f(x):
        return adadfq_fast.int_conv2d(x, q, z, 1, 1, relu=True, out_bits=4, out_scale=0.5, out_zero=8.0)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x), f(x))


@pytest.mark.parametrize("residual_scale", [2.5, 1 / 3, 7.123456, 0.0371, 113.7])
def test_bit_exact_residual_codes_scales(backend_order, residual_scale):
    """Residual codes r enter as r / residual_scale (a float32 division in every epilogue, vector or scalar), over
    every code and scales that are not powers of two."""
    x = _codes((2, 16, 9, 9), 4).contiguous(memory_format=torch.channels_last)
    q, z = _weights(16, 16, 3, 3, 4)
    ep = _epilogue_args(16)
    res = torch.arange(2 * 16 * 9 * 9).remainder(256).to(torch.uint8).reshape(2, 16, 9, 9)  # every code
    kw = dict(residual=res, residual_scale=residual_scale, relu=True)
    for out_bits in (0, 4):
        kw.update(out_bits=out_bits, out_scale=5.0, out_zero=8.0 if out_bits else 0.0)
        assert torch.equal(_call(x, q, z, 1, 1, **ep, **kw), _ref(x, q, z, 1, 1, **ep, **kw))
