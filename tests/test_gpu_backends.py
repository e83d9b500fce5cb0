"""The GPU backends (``cuda``, ``triton``) against the ``reference`` backend on a CUDA device.

Every public op runs under ``adadfq_fast.use_backend(name)`` and under ``use_backend("reference")`` on the same
fresh random CUDA inputs; values and gradients must agree (bit for bit for the quantizers, to float32 rounding for
the reductions). Then each op, and one small training-like step using all of them, is captured in a CUDA graph
and replayed on new inputs: the replay must equal an eager run.

Skipped (never an error) without a CUDA device or when a backend did not load; nothing here touches CUDA at import.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import adadfq_fast
from adadfq_fast import _backend

pytestmark = pytest.mark.gpu

GPU_BACKENDS = ("cuda", "triton")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Reductions sum in another order than PyTorch: float32 rounding on float32 data; half inputs are read identically
# by both sides, so only the output cast adds error.
TOL = {
    torch.float32: dict(rtol=2e-5, atol=1e-6),
    torch.float16: dict(rtol=2e-3, atol=1e-5),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-5),
}


@pytest.fixture(params=GPU_BACKENDS)
def backend(request):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    reason = _backend.why_unavailable(request.param, "cuda")
    if reason is not None:
        pytest.skip(f"backend {request.param!r} is unavailable: {reason}")
    return request.param


def on(backend, fn, *args, **kwargs):
    with adadfq_fast.use_backend(backend):
        out = fn(*args, **kwargs)
    torch.cuda.synchronize()
    return out


def leaf(t: torch.Tensor) -> torch.Tensor:
    """A fresh leaf copy that keeps t's layout (channels_last stays channels_last)."""
    return t.detach().clone().requires_grad_(True)


def assert_bitwise(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype=torch.float32, **override) -> None:
    tol = dict(TOL[dtype])
    tol.update(override)
    torch.testing.assert_close(actual.float(), expected.float(), equal_nan=True, **tol)


# ----------------------------------------------------------------------------------------------------------
# Quantizers: bit-identical to the reference; straight-through gradients.
# ----------------------------------------------------------------------------------------------------------
FAKE_QUANT_CASES = {
    "per_tensor": ((4, 8, 6, 6), None, False),
    "nchw_axis1": ((4, 8, 6, 6), 1, False),
    "channels_last_axis1": ((4, 8, 6, 6), 1, True),
    "axis0": ((16, 3, 3, 3), 0, False),
    "linear_last_axis": ((32, 100), 1, False),
    "single_channel": ((5, 1, 7), 1, False),
}


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", list(FAKE_QUANT_CASES))
def test_fake_quant(backend, case, dtype, bits):
    shape, axis, channels_last = FAKE_QUANT_CASES[case]
    x = (torch.randn(shape, device="cuda") * 3).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    if axis is None:
        lo, hi = torch.tensor(-2.5, device="cuda"), torch.tensor(3.0, device="cuda")
    else:
        c = shape[axis]
        lo, hi = -torch.rand(c, device="cuda") * 3, torch.rand(c, device="cuda") * 3
    xa, xr = leaf(x), leaf(x)
    got = on(backend, adadfq_fast.fake_quant, xa, bits, lo, hi, axis)
    want = on("reference", adadfq_fast.fake_quant, xr, bits, lo, hi, axis)
    assert_bitwise(got, want)
    assert got.stride() == x.stride()
    g = torch.randn_like(x)
    on(backend, got.backward, g)
    assert_bitwise(xa.grad, g)


WEIGHTS = {
    "conv": lambda: torch.randn(64, 32, 3, 3),
    "conv_channels_last": lambda: torch.randn(16, 8, 3, 3).to(memory_format=torch.channels_last),
    "linear": lambda: torch.randn(10, 64),
    "linear_transposed": lambda: torch.randn(64, 10).t(),
    "depthwise": lambda: torch.randn(96, 1, 3, 3),
    "wide_rows": lambda: torch.randn(8, 5000),
    "vector": lambda: torch.randn(7),
}


@pytest.mark.parametrize("bits", [3, 4, 8])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", list(WEIGHTS))
def test_fake_quant_weight(backend, kind, dtype, bits):
    w = WEIGHTS[kind]().to("cuda", dtype)
    wa, wr = leaf(w), leaf(w)
    got = on(backend, adadfq_fast.fake_quant_weight, wa, bits)
    want = on("reference", adadfq_fast.fake_quant_weight, wr, bits)
    assert_bitwise(got, want)
    g = torch.randn_like(got)
    on(backend, got.backward, g)
    assert_bitwise(wa.grad, g)


def test_fake_quant_weight_nan_channel(backend):
    w = torch.randn(6, 20, device="cuda")
    w[2, 7] = float("nan")
    got = on(backend, adadfq_fast.fake_quant_weight, w, 4)
    want = on("reference", adadfq_fast.fake_quant_weight, w, 4)
    assert_bitwise(got, want)
    assert got[2].isnan().all() and not got[[0, 1, 3, 4, 5]].isnan().any()


@pytest.mark.parametrize("numel", [1, 777, 300_000, 3_000_000])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fake_quant_act_updates(backend, dtype, numel):
    state_a = adadfq_fast.new_act_state("cuda")
    state_r = state_a.clone()
    for step in range(4):  # the compounding bias correction makes later states depend on every earlier one
        x = (torch.randn(numel, device="cuda") * (1 + step) + 0.3).to(dtype)
        xa, xr = leaf(x), leaf(x)
        got = on(backend, adadfq_fast.fake_quant_act, xa, 4, state_a, 0.9, True)
        want = on("reference", adadfq_fast.fake_quant_act, xr, 4, state_r, 0.9, True)
        assert_bitwise(state_a, state_r)
        assert_bitwise(got, want)
    g = torch.randn_like(got)
    on(backend, got.backward, g)
    assert_bitwise(xa.grad, g)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fake_quant_act_frozen(backend, dtype):
    x = (torch.randn(8, 16, 5, 5, device="cuda") * 2).to(dtype).to(memory_format=torch.channels_last)
    state = torch.tensor([-0.7, 2.1, 0.3], device="cuda")
    before = state.clone()
    got = on(backend, adadfq_fast.fake_quant_act, x, 3, state, 0.9, False)
    want = on("reference", adadfq_fast.fake_quant_act, x, 3, state.clone(), 0.9, False)
    assert_bitwise(got, want)
    assert_bitwise(state, before)
    assert got.stride() == x.stride()


def test_fake_quant_act_nan_propagates(backend, monkeypatch):
    """On a GPU the NaN check of a range update reads device memory, so it runs only on request
    (ADADFQ_CHECK_VALUES=1, tests/test_value_checks.py); without it the NaN enters the state, as in the original."""
    monkeypatch.delenv("ADADFQ_CHECK_VALUES", raising=False)
    x = torch.randn(10_000, device="cuda")
    x[1234] = float("nan")
    state = adadfq_fast.new_act_state("cuda")
    on(backend, adadfq_fast.fake_quant_act, x, 4, state, 0.9, True)
    assert state[:2].isnan().all()
    assert state[2].item() == pytest.approx(0.9)


def test_fake_quant_act_nan_checked_on_request(backend, monkeypatch):
    monkeypatch.setenv("ADADFQ_CHECK_VALUES", "1")
    x = torch.randn(10_000, device="cuda")
    x[1234] = float("nan")
    state = adadfq_fast.new_act_state("cuda")
    with pytest.raises(ValueError, match="x: NaN or inf in the activation"):
        on(backend, adadfq_fast.fake_quant_act, x, 4, state, 0.9, True)
    assert torch.equal(state.cpu(), torch.tensor([0.0, 0.0, 1.0]))  # left unchanged


@pytest.mark.parametrize("momentum", [0.0, 0.5, 0.99])
def test_fake_quant_act_momentum(backend, momentum):
    x = torch.randn(4096, device="cuda") * 5
    state_a, state_r = torch.tensor([0.2, 1.1, 0.7], device="cuda"), torch.tensor([0.2, 1.1, 0.7], device="cuda")
    got = on(backend, adadfq_fast.fake_quant_act, x, 5, state_a, momentum, True)
    want = on("reference", adadfq_fast.fake_quant_act, x, 5, state_r, momentum, True)
    assert_bitwise(state_a, state_r)
    assert_bitwise(got, want)


# ----------------------------------------------------------------------------------------------------------
# L_BNS
# ----------------------------------------------------------------------------------------------------------
def _bn_layers(kind: str):
    if kind == "mixed":
        feats = [
            torch.randn(16, 16, 32, 32) * 2 + 1,
            (torch.randn(16, 32, 16, 16) + 5).to(memory_format=torch.channels_last),
            torch.randn(16, 64),
            torch.randn(16, 8, 4, 4).half(),
            torch.randn(16, 8, 4, 4).bfloat16().to(memory_format=torch.channels_last),
        ]
    elif kind == "imagenet_stem":  # 200K elements per channel: the forward splits each channel over blocks
        feats = [torch.randn(16, 64, 112, 112) * 0.5 + 0.2, torch.randn(16, 64, 56, 56).to(memory_format=torch.channels_last)]
    elif kind == "many_layers":  # more layers than one upload chunk of the CUDA kernel's layer table
        feats = [torch.randn(8, 4 + 4 * (i % 7), 8, 8) for i in range(53)]
    else:
        raise ValueError(kind)
    feats = [f.to("cuda") for f in feats]
    rms = [torch.randn(f.shape[1], device="cuda") * 0.5 for f in feats]
    rvs = [torch.rand(f.shape[1], device="cuda") + 0.5 for f in feats]
    if kind == "mixed":
        rms[1], rvs[3] = rms[1].half(), rvs[3].bfloat16()
    return feats, rms, rvs


@pytest.mark.parametrize("kind", ["mixed", "imagenet_stem", "many_layers"])
def test_bn_stat_loss(backend, kind):
    feats, rms, rvs = _bn_layers(kind)
    fa, fr = [leaf(f) for f in feats], [leaf(f) for f in feats]
    got = on(backend, adadfq_fast.bn_stat_loss, fa, rms, rvs)
    want = on("reference", adadfq_fast.bn_stat_loss, fr, rms, rvs)
    big = dict(rtol=1e-4, atol=1e-6) if kind == "imagenet_stem" else {}
    assert got.dtype == torch.float32 and got.shape == ()
    assert_close(got, want, **big)
    on(backend, (got * 3.0).backward)
    on("reference", (want * 3.0).backward)
    for a, r in zip(fa, fr):
        assert a.grad.dtype == a.dtype and a.grad.shape == a.shape
        assert_close(a.grad, r.grad, a.dtype, **big)


# ----------------------------------------------------------------------------------------------------------
# AdaDFQ losses
# ----------------------------------------------------------------------------------------------------------
LOSS_SHAPES = [(16, 10), (16, 100), (16, 1000), (1, 7), (256, 100), (64, 2000)]


def _logits(batch, classes, t_dtype=torch.float32, s_dtype=torch.float32):
    t = (torch.randn(batch, classes, device="cuda") * 3).to(t_dtype)
    s = (torch.randn(batch, classes, device="cuda") * 3).to(s_dtype)
    y = torch.randint(0, classes, (batch,), device="cuda")
    return t, s, y


def _check_generator_loss(backend, t, s, y, **kwargs):
    ta, sa, tr, sr = leaf(t), leaf(s), leaf(t), leaf(s)
    got = on(backend, adadfq_fast.adadfq_generator_loss_with_entropy, ta, sa, y, **kwargs)
    want = on("reference", adadfq_fast.adadfq_generator_loss_with_entropy, tr, sr, y, **kwargs)
    for a, r in zip(got, want):
        assert a.dtype == torch.float32
        assert_close(a, r)
    # Both losses reach the output with different weights, so both backward paths are checked.
    on(backend, (got[0] * 1.3 + got[1] * 0.7).backward)
    on("reference", (want[0] * 1.3 + want[1] * 0.7).backward)
    assert_close(ta.grad, tr.grad, t.dtype)
    assert_close(sa.grad, sr.grad, s.dtype)


@pytest.mark.parametrize("batch,classes", LOSS_SHAPES)
def test_generator_loss(backend, batch, classes):
    _check_generator_loss(backend, *_logits(batch, classes))


@pytest.mark.parametrize("t_dtype,s_dtype", [(torch.float16, torch.float16), (torch.bfloat16, torch.float32)], ids=str)
def test_generator_loss_dtypes(backend, t_dtype, s_dtype):
    _check_generator_loss(backend, *_logits(16, 100, t_dtype, s_dtype))


def test_generator_loss_tied_minimum(backend):
    """The batch minimum of H is not detached; tied minima share its gradient evenly."""
    t, s, y = _logits(16, 10)
    t[0], s[0] = 0.0, 0.0
    t[0, 3] = 9.0  # a confident row: the lowest entropy
    t[5], s[5] = t[0], s[0]  # its exact twin
    _check_generator_loss(backend, t, s, y, lambda_l=0.3, lambda_u=0.6, alpha_ds=0.25, alpha_as=0.05)


@pytest.mark.parametrize("batch,classes", LOSS_SHAPES)
@pytest.mark.parametrize("T", [20.0, 5.0])
def test_student_loss(backend, batch, classes, T):
    t, s, _ = _logits(batch, classes)
    sa, sr = leaf(s), leaf(s)
    got = on(backend, adadfq_fast.adadfq_student_loss, t, sa, T)
    want = on("reference", adadfq_fast.adadfq_student_loss, t, sr, T)
    assert got.dtype == torch.float32
    assert_close(got, want)
    on(backend, (got * 0.5).backward)
    on("reference", (want * 0.5).backward)
    assert_close(sa.grad, sr.grad)


@pytest.mark.parametrize("s_dtype", [torch.float16, torch.bfloat16], ids=str)
def test_student_loss_dtypes(backend, s_dtype):
    t, s, _ = _logits(16, 100, torch.float32, s_dtype)
    sa, sr = leaf(s), leaf(s)
    got = on(backend, adadfq_fast.adadfq_student_loss, t, sa, 20.0)
    want = on("reference", adadfq_fast.adadfq_student_loss, t, sr, 20.0)
    assert_close(got, want)
    on(backend, got.backward)
    on("reference", want.backward)
    assert_close(sa.grad, sr.grad, s_dtype)


# ----------------------------------------------------------------------------------------------------------
# CUDA graphs: capture once, replay on new inputs, compare with eager.
# ----------------------------------------------------------------------------------------------------------
def _graph_vs_eager(backend, make_inputs, step, exact=True):
    """make_inputs(seed) -> list of tensors (leaves that need gradients are marked); step(*inputs) -> outputs.

    Warm-up on a side stream, capture, copy the inputs of seed 1 into the captured (static) inputs, replay;
    then run step eagerly on the same seed-1 inputs. Steps may mutate inputs (activation range state): the
    mutated tensors are among the outputs."""
    static = make_inputs(0)
    with adadfq_fast.use_backend(backend):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                step(*static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = step(*static)
        with torch.no_grad():
            for dst, src in zip(static, make_inputs(1)):
                dst.copy_(src)
        graph.replay()
        torch.cuda.synchronize()
        replayed = [o.detach().clone() for o in static_out]
        expected = [o.detach() for o in step(*make_inputs(1))]
        torch.cuda.synchronize()
    assert len(replayed) == len(expected)
    for r, e in zip(replayed, expected):
        if exact:
            assert_bitwise(r, e)
        else:
            assert_close(r, e, rtol=1e-5, atol=1e-6)


def _seeded(seed):
    gen = torch.Generator(device="cuda")
    gen.manual_seed(1000 + seed)
    return gen


def _randn(gen, *shape, grad=False, **kwargs):
    t = torch.randn(*shape, device="cuda", generator=gen, **kwargs)
    return t.requires_grad_(grad)


def _grad(outputs, inputs, grad_outputs=None, retain_graph=None):
    return list(torch.autograd.grad(outputs, inputs, grad_outputs=grad_outputs, retain_graph=retain_graph))


def _exact(backend):
    # The CUDA kernels are deterministic (no atomics on values); other backends may reduce in a varying order.
    return backend == "cuda"


def test_graph_fake_quant(backend):
    def make(seed):
        g = _seeded(seed)
        return [_randn(g, 8, 16, 6, 6, grad=True), -torch.rand(16, device="cuda", generator=g),
                torch.rand(16, device="cuda", generator=g), _randn(g, 8, 16, 6, 6)]

    def step(x, lo, hi, gout):
        out = adadfq_fast.fake_quant(x, 4, lo, hi, axis=1)
        return [out, *_grad(out, [x], gout)]

    _graph_vs_eager(backend, make, step)


def test_graph_fake_quant_weight(backend):
    def make(seed):
        g = _seeded(seed)
        return [_randn(g, 32, 16, 3, 3, grad=True), _randn(g, 32, 16, 3, 3)]

    def step(w, gout):
        out = adadfq_fast.fake_quant_weight(w, 4)
        return [out, *_grad(out, [w], gout)]

    _graph_vs_eager(backend, make, step)


@pytest.mark.parametrize("update", [True, False])
def test_graph_fake_quant_act(backend, update):
    def make(seed):
        g = _seeded(seed)
        state = torch.tensor([[-0.5, 1.5, 0.9], [-1.0, 3.0, 0.81]][seed], device="cuda")
        return [_randn(g, 8, 16, 6, 6, grad=True), state, _randn(g, 8, 16, 6, 6)]

    def step(x, state, gout):
        out = adadfq_fast.fake_quant_act(x, 4, state, 0.9, update)
        return [out, state, *_grad(out, [x], gout)]

    _graph_vs_eager(backend, make, step)


def test_graph_bn_stat_loss(backend):
    def make(seed):
        g = _seeded(seed)
        return [
            _randn(g, 8, 16, 8, 8, grad=True),
            _randn(g, 8, 32, 4, 4).to(memory_format=torch.channels_last).requires_grad_(True),
            _randn(g, 16), torch.rand(16, device="cuda", generator=g) + 0.5,
            _randn(g, 32), torch.rand(32, device="cuda", generator=g) + 0.5,
        ]

    def step(f1, f2, rm1, rv1, rm2, rv2):
        loss = adadfq_fast.bn_stat_loss([f1, f2], [rm1, rm2], [rv1, rv2])
        return [loss, *_grad(loss, [f1, f2])]

    _graph_vs_eager(backend, make, step, exact=_exact(backend))


def test_graph_generator_loss(backend):
    def make(seed):
        g = _seeded(seed)
        y = torch.randint(0, 100, (16,), device="cuda", generator=g)
        return [_randn(g, 16, 100, grad=True), _randn(g, 16, 100, grad=True), y]

    def step(t, s, y):
        margin, bal = adadfq_fast.adadfq_generator_loss(t, s, y)
        return [margin, bal, *_grad(margin + bal, [t, s])]

    _graph_vs_eager(backend, make, step, exact=_exact(backend))


def test_graph_student_loss(backend):
    def make(seed):
        g = _seeded(seed)
        return [_randn(g, 16, 100), _randn(g, 16, 100, grad=True)]

    def step(t, s):
        loss = adadfq_fast.adadfq_student_loss(t, s, 20.0)
        return [loss, *_grad(loss, [s])]

    _graph_vs_eager(backend, make, step, exact=_exact(backend))


def test_graph_training_step(backend):
    """A small step through every op: quantized linear layers, an activation quantizer, L_BNS and both losses."""
    classes = 10

    def make(seed):
        g = _seeded(seed)
        return [
            _randn(g, 16, 32, grad=True),          # x (the generator's output)
            _randn(g, 64, 32, grad=True),          # w1 (student layer 1)
            _randn(g, classes, 64, grad=True),     # w2 (student layer 2)
            _randn(g, classes, 32),                # teacher weights
            _randn(g, 64), torch.rand(64, device="cuda", generator=g) + 0.5,  # BN running stats of the teacher
            torch.tensor([0.0, 0.0, 1.0], device="cuda"),  # activation range state
            torch.randint(0, classes, (16,), device="cuda", generator=g),
            # A fixed range for w2. Created here: building a CUDA tensor from Python data inside the capture
            # would be a host-to-device copy, which a capture forbids.
            torch.tensor(-1.0, device="cuda"),
            torch.tensor(1.0, device="cuda"),
        ]

    def step(x, w1, w2, w_teacher, rm, rv, state, y, lo, hi):
        h = F.linear(x, adadfq_fast.fake_quant_weight(w1, 4))
        bns = adadfq_fast.bn_stat_loss([h], [rm], [rv])
        a = adadfq_fast.fake_quant_act(torch.relu(h), 4, state, 0.9, True)
        s = F.linear(a, adadfq_fast.fake_quant(w2, 4, lo, hi))
        t = F.linear(x, w_teacher)
        margin, bal = adadfq_fast.adadfq_generator_loss(t, s, y)
        loss_g = margin + bal + bns
        loss_q = adadfq_fast.adadfq_student_loss(t.detach(), s)
        grads_g = _grad(loss_g, [x], retain_graph=True)  # loss_q backpropagates through s again
        grads_q = _grad(loss_q, [w1, w2])
        return [loss_g, loss_q, state, *grads_g, *grads_q]

    # cuBLAS may pick other kernels inside a capture, so the comparison allows float32 rounding.
    _graph_vs_eager(backend, make, step, exact=False)


# ----------------------------------------------------------------------------------------------------------
# int_conv2d (integer inference): bit-identical to the int64 reference; CUDA-graph capture of a batch-1 call.
# ----------------------------------------------------------------------------------------------------------
INT_CONV_CASES = {
    # (n, c, h, w, o, k, stride, padding, dilation, groups)
    "resnet18_layer1": (8, 64, 56, 56, 64, 3, 1, 1, 1, 1),
    "resnet18_downsample_3x3": (4, 128, 28, 28, 256, 3, 2, 1, 1, 1),
    "projection_1x1": (4, 256, 14, 14, 512, 1, 2, 0, 1, 1),
    "kernel_7x7": (2, 16, 32, 32, 24, 7, 2, 3, 1, 1),
    "depthwise": (4, 96, 28, 28, 96, 3, 2, 1, 1, 96),
    "groups_9_channels": (2, 18, 17, 15, 22, 3, 1, 2, 2, 2),
    "odd_small": (3, 5, 7, 8, 7, 2, 1, 0, 1, 1),
}


def _int_conv_inputs(case, bits=8, gen=None):
    n, c, h, w, o, k, stride, padding, dilation, groups = case
    half = 2 ** (bits - 1)
    x = torch.randint(0, 2**bits, (n, c, h, w), dtype=torch.uint8, device="cuda", generator=gen)
    q = torch.randint(-half, half, (o, c // groups, k, k), dtype=torch.int8, device="cuda", generator=gen)
    z = torch.randint(-(half - 1), half + 1, (o,), dtype=torch.int32, device="cuda", generator=gen)
    mult = torch.rand(o, device="cuda", generator=gen) * 0.02 / (c // groups * k * k) ** 0.5 + 1e-4
    bias = torch.randn(o, device="cuda", generator=gen)
    return x, q, z, mult, bias


def _int_conv_call(backend, x, q, z, mult, bias, case, **kw):
    _, _, _, _, _, _, stride, padding, dilation, groups = case
    return on(backend, adadfq_fast.int_conv2d, x, q, z, stride, padding, dilation, groups, out_mult=mult,
              out_bias=bias, **kw)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("case", list(INT_CONV_CASES))
def test_int_conv2d(backend, case, layout):
    shape = INT_CONV_CASES[case]
    x, q, z, mult, bias = _int_conv_inputs(shape)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    for kw in (dict(), dict(relu=True, out_bits=4, out_scale=3.0, out_zero=8.0)):
        got = _int_conv_call(backend, x, q, z, mult, bias, shape, **kw)
        want = _int_conv_call("reference", x, q, z, mult, bias, shape, **kw)
        assert_bitwise(got, want)
        assert got.stride() == want.stride()


@pytest.mark.parametrize("residual_kind", ["float", "codes"])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_int_conv2d_epilogue(backend, residual_kind, bits):
    shape = (4, 64, 14, 14, 64, 3, 1, 1, 1, 1)
    x, q, z, mult, bias = _int_conv_inputs(shape, bits)
    x = x.contiguous(memory_format=torch.channels_last)
    out_shape = (4, 64, 14, 14)
    residual = (torch.randn(out_shape, device="cuda") if residual_kind == "float"
                else torch.randint(0, 2**bits, out_shape, dtype=torch.uint8, device="cuda"))
    half = 2 ** (bits - 1)
    for relu, out_bits, out_zero in ((False, 0, 0.0), (True, bits, float(half)), (False, bits, float(255 - half + 1))):
        kw = dict(residual=residual, residual_scale=3.7, relu=relu, out_bits=out_bits, out_scale=2.0**bits / 5,
                  out_zero=out_zero)
        assert_bitwise(_int_conv_call(backend, x, q, z, mult, bias, shape, **kw),
                       _int_conv_call("reference", x, q, z, mult, bias, shape, **kw))


def test_int_conv2d_strided_views(backend):
    shape = (2, 32, 12, 12, 48, 3, 1, 1, 1, 1)
    x, q, z, mult, bias = _int_conv_inputs(shape)
    xs = torch.stack([x, torch.zeros_like(x)], dim=-1)[..., 0]
    qs = torch.stack([q, torch.zeros_like(q)], dim=-1)[..., 0]
    res = torch.randn(2, 48, 12, 12, device="cuda")
    rs = torch.stack([res, res], dim=-1)[..., 1]
    got = _int_conv_call(backend, xs, qs, z, mult, bias, shape, residual=rs)
    assert_bitwise(got, _int_conv_call("reference", x, q, z, mult, bias, shape, residual=res))


def test_int_conv2d_empty_batch(backend):
    shape = (0, 16, 8, 8, 8, 3, 1, 1, 1, 1)
    x, q, z, mult, bias = _int_conv_inputs(shape)
    out = _int_conv_call(backend, x, q, z, mult, bias, shape, out_bits=4, out_zero=8.0)
    assert out.shape == (0, 8, 8, 8) and out.dtype == torch.uint8


@pytest.mark.parametrize("residual", [False, True])
def test_graph_int_conv2d(backend, residual):
    """A batch-1 call (the latency case) captured and replayed on new codes, weights and residual."""
    shape = (1, 64, 28, 28, 128, 3, 2, 1, 1, 1)

    def make(seed):
        g = _seeded(seed)
        x, q, z, mult, bias = _int_conv_inputs(shape, gen=g)
        res = torch.randint(0, 256, (1, 128, 14, 14), dtype=torch.uint8, device="cuda", generator=g)
        return [x.contiguous(memory_format=torch.channels_last), q, z, mult, bias,
                res.contiguous(memory_format=torch.channels_last)]

    def step(x, q, z, mult, bias, res):
        out = adadfq_fast.int_conv2d(x, q, z, 2, 1, 1, 1, out_mult=mult, out_bias=bias,
                                     residual=res if residual else None, residual_scale=9.5, relu=True, out_bits=8,
                                     out_scale=7.0, out_zero=128.0)
        return [out]

    _graph_vs_eager(backend, make, step)
    # And the replay equals the reference on those inputs.
    inputs = make(1)
    x, q, z, mult, bias, res = inputs
    kw = dict(residual=res if residual else None, residual_scale=9.5, relu=True, out_bits=8, out_scale=7.0,
              out_zero=128.0)
    assert_bitwise(_int_conv_call(backend, x, q, z, mult, bias, shape, **kw),
                   _int_conv_call("reference", x, q, z, mult, bias, shape, **kw))
