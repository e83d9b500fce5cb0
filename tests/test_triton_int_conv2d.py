"""The Triton int_conv2d kernels (kernels/int_conv2d.py) bit-exact against reference.int_conv2d_forward.

Runs on CPU tensors under TRITON_INTERPRET=1 (set by conftest.py without a GPU), else on CUDA. The interpreter is
slow, so shapes are small; the tile constants are lowered with monkeypatch where a path (several K chunks, several
output-channel blocks, several pixel blocks) would otherwise need a large tensor.
"""

import pytest
import torch

triton = pytest.importorskip("triton")

import adadfq_fast  # noqa: E402
from adadfq_fast import _backend  # noqa: E402

from helpers import (assert_int_conv_matches_reference, check_int_conv_epilogue, import_triton_kernel,  # noqa: E402
                     int_conv_args, int_conv_epilogue, int_conv_weights, run_gpu_compile_script, triton_device)

DEVICE = triton_device()
mod = import_triton_kernel("int_conv2d")

pytestmark = pytest.mark.triton


def _codes(shape, bits=8, offset=0):
    return (torch.randint(0, 2**bits, shape) + offset).to(torch.uint8).to(DEVICE)


def _weights(o, cg, kh, kw, bits=8):
    return int_conv_weights(o, cg, kh, kw, bits, DEVICE)


def _epilogue(o):
    return int_conv_epilogue(o, DEVICE)


def _run(*a, **kw):
    args = int_conv_args(*a, **kw)
    with adadfq_fast.use_backend("triton"):
        got = adadfq_fast.int_conv2d(*args)
    return assert_int_conv_matches_reference(got, args)


def test_registered():
    assert "triton" in _backend.implementations("int_conv2d", DEVICE)


CASES = [
    # (n, c, h, w, o, k, stride, padding, dilation, groups)
    (2, 16, 9, 9, 16, 3, 1, 1, 1, 1),    # ResNet basic block
    (2, 16, 9, 7, 32, 3, 2, 1, 1, 1),    # stride 2, odd sizes
    (2, 16, 8, 8, 24, 1, 2, 0, 1, 1),    # 1x1 projection, stride 2
    (1, 8, 12, 12, 16, 7, 2, 3, 1, 1),   # 7x7, padding 3 (a tile mostly padding)
    (2, 12, 7, 7, 12, 3, 1, 1, 1, 12),   # depthwise (direct kernel)
    (2, 6, 7, 7, 12, 3, 2, 1, 1, 6),     # channel multiplier 2 (direct kernel)
    (2, 12, 7, 7, 18, 3, 1, 1, 1, 3),    # groups, 4 channels per group (GEMM kernel per group)
    (2, 6, 9, 9, 10, 3, 1, 2, 2, 2),     # 3 channels per group, dilation 2
    (1, 5, 7, 8, 7, 2, 1, 0, 1, 1),      # odd channels, even kernel, no padding
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "n{}c{}h{}w{}o{}k{}s{}p{}d{}g{}".format(*c))
def test_shapes(case):
    n, c, h, w, o, k, stride, padding, dilation, groups = case
    x = _codes((n, c, h, w))
    q, z = _weights(o, c // groups, k, k)
    mult, bias = _epilogue(o)
    for layout, out_bits, relu in (("contiguous", 0, False), ("channels_last", 4, True)):
        xl = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x
        _run(xl, q, z, stride, padding, dilation, groups, mult, bias, relu=relu, out_bits=out_bits, out_scale=37.5,
             out_zero=float(2 ** (out_bits - 1)) if out_bits else 0.0)


@pytest.mark.parametrize("residual_kind", ["none", "float", "codes"])
def test_epilogue(residual_kind):
    check_int_conv_epilogue(_run, residual_kind, DEVICE)


@pytest.mark.parametrize("bits", [2, 3, 5, 8])
def test_bits(bits):
    """2..8-bit codes and weights, requant to the same width with the zero point at both ends of [0, 255]."""
    x = _codes((1, 16, 6, 6), bits, offset=255 - (2**bits - 1) if bits % 2 else 0)
    q, z = _weights(16, 16, 3, 3, bits)
    mult, bias = _epilogue(16)
    half = 2 ** (bits - 1)
    for out_zero in (float(half), float(255 - half + 1)):
        out = _run(x, q, z, 1, 1, 1, 1, mult, bias, relu=True, out_bits=bits, out_scale=2.0**bits / 3, out_zero=out_zero)
        assert out.min() >= out_zero - half and out.max() <= out_zero + half - 1


def test_extremes_and_large_zero_point_products():
    """All-255 codes against -128 weights with |z_w| = 128: the largest |acc| and |z_w * box| of an 8-bit layer."""
    x = torch.full((1, 64, 5, 5), 255, dtype=torch.uint8, device=DEVICE)
    q = torch.full((16, 64, 3, 3), -128, dtype=torch.int8, device=DEVICE)
    q[1] = 127
    z = torch.tensor([128, -127] * 8, dtype=torch.int32, device=DEVICE)
    mult, bias = _epilogue(16)
    _run(x, q, z, 1, 1, 1, 1, mult, bias)


def test_multiple_blocks(monkeypatch):
    """Several pixel blocks, output-channel blocks and K chunks, with ragged tails of each."""
    monkeypatch.setattr(mod, "INTERPRET_CONFIG", (64, 16, 16, 4, 1))
    monkeypatch.setattr(mod, "GPU_CONFIGS", [(64, 16, 32, 4, 2)])
    x = _codes((2, 40, 7, 9)).contiguous(memory_format=torch.channels_last)
    q, z = _weights(36, 20, 3, 3)
    mult, bias = _epilogue(36)
    res = (torch.randn(2, 36, 7, 9)).to(DEVICE)
    _run(x, q, z, 1, 1, 1, 2, mult, bias, res, relu=True, out_bits=8, out_scale=20.0, out_zero=128.0)
    monkeypatch.setattr(mod, "DW_BLOCK_P", 16)
    monkeypatch.setattr(mod, "DW_MAX_BLOCK_C", 16)
    xd = _codes((2, 40, 6, 6)).contiguous(memory_format=torch.channels_last)
    qd, zd = _weights(40, 1, 3, 3)
    _run(xd, qd, zd, 1, 1, 1, 40, mult[:1].repeat(40), bias[:1].repeat(40))


def test_int64_epilogue_where_int32_could_overflow():
    """|z_w| = 20000 with 576 taps: z_w * box reaches 2.9e9 > 2^31, so the launcher must take the int64 epilogue
    (and it must be exact); the usual zero points keep the int32 one. The bound is read once per tensor."""
    x = torch.full((1, 64, 5, 5), 255, dtype=torch.uint8, device=DEVICE)
    x[0, :, 0, 0] = 7
    q = torch.randint(-128, 128, (16, 64, 3, 3), dtype=torch.int8, device=DEVICE)
    z = torch.tensor([20000, -20000, 3, 0] * 4, dtype=torch.int32, device=DEVICE)
    assert not mod.int32_total_is_exact(z, 64 * 9)
    small = torch.tensor([128, -127] * 8, dtype=torch.int32, device=DEVICE)
    assert mod.int32_total_is_exact(small, 64 * 9)
    small[0] = 30000  # an in-place change bumps the version: the bound is read again
    assert not mod.int32_total_is_exact(small, 64 * 9)
    mult, bias = _epilogue(16)
    _run(x, q, z, 1, 1, 1, 1, mult * 1e-4, bias)
    _run(x, q, z, 1, 1, 1, 1, mult * 1e-4, bias, relu=True, out_bits=8, out_scale=0.05, out_zero=128.0)


def test_tile_tuning_picks_the_fastest_and_remembers(monkeypatch):
    """The launcher's tile choice (used on a GPU): candidates fitted to the layer and deduplicated, the fastest
    kept per shape key, no timing while a CUDA graph is being captured or with ADADFQ_TRITON_TUNE=0."""
    configs = [(128, 128, 64, 8, 3), (128, 256, 64, 8, 3), (64, 128, 64, 4, 4)]
    # 16 output channels: both 128- and 256-wide tiles shrink to 16, so the first two are one candidate.
    assert mod.fit_config(configs[1], 48, 16, 32) == (128, 16, 64, 8, 3)
    timed = []
    fake_ms = {(128, 16, 64, 8, 3): 2.0, (64, 16, 64, 4, 4): 1.0}

    def fake_time(launch, config):
        timed.append(config)
        return fake_ms[config]

    monkeypatch.setattr(mod, "time_launch", fake_time)
    monkeypatch.setattr(mod, "_TUNED", {})
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    assert mod.tuned_config("k", None, configs, 48, 16, 32) == (64, 16, 64, 4, 4)
    assert timed == [(128, 16, 64, 8, 3), (64, 16, 64, 4, 4)]
    assert mod.tuned_config("k", None, configs, 48, 16, 32) == (64, 16, 64, 4, 4) and len(timed) == 2
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert mod.tuned_config("other", None, configs, 48, 16, 32) == (128, 16, 64, 8, 3) and len(timed) == 2
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    monkeypatch.setenv("ADADFQ_TRITON_TUNE", "0")
    assert mod.tuned_config("other", None, configs, 48, 16, 32) == (128, 16, 64, 8, 3) and len(timed) == 2


def test_non_contiguous_inputs():
    x = _codes((2, 16, 8, 8))
    q, z = _weights(16, 16, 3, 3)
    mult, bias = _epilogue(16)
    res = torch.randn(2, 16, 8, 8).to(DEVICE)
    xs = torch.stack([x, torch.zeros_like(x)], dim=-1)[..., 0]
    qs = torch.stack([q, torch.zeros_like(q)], dim=-1)[..., 0]
    rs = torch.stack([res, torch.zeros_like(res)], dim=-1)[..., 0]
    assert not xs.is_contiguous() and not qs.is_contiguous() and not rs.is_contiguous()
    _run(xs, qs, z, 1, 1, 1, 1, mult, bias, rs)
    _run(x[:, :, 1:, :7], q, z, 1, 1, 1, 1, mult, bias)  # a strided window of x


def test_weight_preparation_is_memoized_and_follows_in_place_changes():
    x = _codes((1, 16, 6, 6))
    q, z = _weights(16, 16, 3, 3, 4)
    mult, bias = _epilogue(16)
    _run(x, q, z, 1, 1, 1, 1, mult, bias, out_bits=4, out_zero=8.0)
    first = mod.prepared_weight(q)
    assert mod.prepared_weight(q)[1] is first[1]  # the second call reuses the sums (no new kernels)
    q.neg_().clamp_(-8, 7)  # in place: the version changes, so the next call prepares again
    assert mod.prepared_weight(q)[1] is not first[1]
    _run(x, q, z, 1, 1, 1, 1, mult, bias, out_bits=4, out_zero=8.0)
    z.add_(1)  # the zero-point bound follows in-place changes too
    _run(x, q, z, 1, 1, 1, 1, mult, bias, out_bits=4, out_zero=8.0)


def test_inference_tensors():
    """Tensors made under torch.inference_mode have no version counter: nothing is memoized for them (this
    raised before), and results are still exact."""
    with torch.inference_mode():
        x = _codes((1, 16, 6, 6))
        q, z = _weights(16, 16, 3, 3, 4)
        mult, bias = _epilogue(16)
        _run(x, q, z, 1, 1, 1, 1, mult, bias, out_bits=4, out_zero=8.0)
    assert mod._memo_get(mod._WEIGHT_PREP, q) is None and mod._memo_get(mod._ZERO_BOUND, z) is None


def test_empty_batch():
    x = torch.zeros(0, 16, 6, 6, dtype=torch.uint8, device=DEVICE)
    q, z = _weights(8, 16, 3, 3, 4)
    mult, bias = _epilogue(8)
    out = _run(x, q, z, 1, 1, 1, 1, mult, bias, out_bits=4, out_zero=8.0)
    assert out.shape == (0, 8, 6, 6)


def test_launcher_errors():
    x = _codes((1, 8, 6, 6))
    q, z = _weights(4, 8, 3, 3)
    mult, bias = _epilogue(4)
    args = [x, q, z, [1, 1], [1, 1], [1, 1], 1, mult, bias, None, 1.0, False, 0, 1.0, 0.0]
    bad = list(args)
    bad[2] = z.long()
    with pytest.raises(ValueError, match="weight_zero"):
        mod.int_conv2d(*bad)
    bad = list(args)
    bad[0] = x.float()
    with pytest.raises(TypeError, match="x: expected uint8"):
        mod.int_conv2d(*bad)
    bad = list(args)
    bad[9] = torch.zeros(1, 4, 5, 5, device=DEVICE)
    with pytest.raises(ValueError, match="residual"):
        mod.int_conv2d(*bad)


_GPU_COMPILE_SCRIPT = r'''
import importlib, re, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
m = importlib.import_module("adadfq_fast.kernels.int_conv2d")
assert not m._INTERPRET
PTRS = {"x_ptr": "*u8", "w_ptr": "*i8", "zero_ptr": "*i32", "wsum_ptr": "*i32", "mult_ptr": "*fp32",
        "bias_ptr": "*fp32"}
CONSTS = {"RESIDUAL", "RELU", "REQUANT", "WIDE", "EVEN_K", "EXACT32", "BLOCK_M", "BLOCK_N", "BLOCK_K", "BLOCK_P",
          "BLOCK_C"}
def build(kernel, res_ty, out_ty, consts, opts):
    names = kernel.arg_names
    sig = {}
    for n in names:
        if n in PTRS: sig[n] = PTRS[n]
        elif n == "res_ptr": sig[n] = res_ty
        elif n == "out_ptr": sig[n] = out_ty
        elif n in ("residual_scale", "out_scale", "out_zero", "half"): sig[n] = "fp32"
        elif n in CONSTS: sig[n] = "constexpr"
        else: sig[n] = "i32"
    src = ASTSource(fn=kernel, signature=sig, constexprs={(names.index(a),): v for a, v in consts.items()})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(enable_fp_fusion=False, **opts))
bm, bn, bk, warps, stages = m.GPU_CONFIGS[0]
gemm = build(m._int_conv2d_gemm_kernel, "*u8", "*u8",
             dict(RESIDUAL=2, RELU=True, REQUANT=True, WIDE=False, EVEN_K=True, EXACT32=True, BLOCK_M=bm, BLOCK_N=bn,
                  BLOCK_K=bk),
             dict(num_warps=warps, num_stages=stages))
ptx = gemm.asm["ptx"]
assert re.search(r"wgmma\.mma_async\S*\.s32\.s8\.s8", ptx), "no int8 wgmma in the GEMM kernel"
assert "fma.rn.f32" not in ptx, "a multiply-add was contracted (the epilogue must round each step)"
assert "div.rn.f32" in ptx
direct = build(m._int_conv2d_direct_kernel, "*fp32", "*fp32",
               dict(RESIDUAL=1, RELU=False, REQUANT=False, WIDE=True, BLOCK_P=m.DW_BLOCK_P,
                    BLOCK_C=m.DW_MAX_BLOCK_C), dict(num_warps=4))
assert "fma.rn.f32" not in direct.asm["ptx"]
print("ok")
'''


@pytest.mark.slow
def test_gpu_compile_sm90():
    """Without a GPU: the GPU-sized kernels compile for sm_90 (int8 wgmma, no contracted FMA in the epilogue)."""
    run_gpu_compile_script(_GPU_COMPILE_SCRIPT)
