"""The tensor-core int_conv2d (kernels/int_conv2d_tc.py, backend ``triton_tc``) bit-exact against
reference.int_conv2d_forward: both K orders (per tap, flat), the int_mm path of 1x1 convolutions (and its fallback),
the delegation to the first kernel, the tile choice.

Runs on CPU tensors under TRITON_INTERPRET=1 (set by conftest.py without a GPU), else on CUDA. Shapes are small;
the interpreter's tile is lowered with monkeypatch where several blocks or K steps are wanted.
"""
import json

import pytest
import torch

triton = pytest.importorskip("triton")

import adadfq_fast  # noqa: E402
from adadfq_fast import _backend  # noqa: E402
from adadfq_fast import reference as ref  # noqa: E402

from helpers import (assert_int_conv_matches_reference, check_int_conv_epilogue, import_triton_kernel,  # noqa: E402
                     int_conv_args, int_conv_epilogue, int_conv_weights, run_gpu_compile_script, triton_device)

DEVICE = triton_device()
mod = import_triton_kernel("int_conv2d_tc")
base = import_triton_kernel("int_conv2d")

pytestmark = pytest.mark.triton


def _codes(shape, bits=8):
    return torch.randint(0, 2**bits, shape, dtype=torch.uint8).to(DEVICE)


def _weights(o, cg, kh, kw, bits=4):
    return int_conv_weights(o, cg, kh, kw, bits, DEVICE)


def _epilogue(o):
    return int_conv_epilogue(o, DEVICE)


def _run(*a, config=None, **kw):
    """Through the public op with backend triton_tc (config=None), or the launcher with a forced tile."""
    args = int_conv_args(*a, **kw)
    if config is None:
        with adadfq_fast.use_backend("triton_tc"):
            got = adadfq_fast.int_conv2d(*args)
    else:
        got = mod.int_conv2d(*args, config=config)
    return assert_int_conv_matches_reference(got, args)


def test_registered_with_fallback_for_other_kernels():
    assert _backend.backend_kernel("int_conv2d", "triton_tc") is mod.int_conv2d
    assert _backend.why_unavailable("triton_tc", DEVICE) is None
    dev = torch.device(DEVICE)
    with adadfq_fast.use_backend("triton_tc"):
        assert _backend.resolve("int_conv2d", dev) == "triton_tc"
        assert _backend.resolve("fake_quant", dev) == "triton"  # the kernels it lacks run on triton
        x = torch.randn(4, 8, device=DEVICE)
        lo, hi = torch.tensor(-1.0, device=DEVICE), torch.tensor(1.5, device=DEVICE)
        assert torch.equal(adadfq_fast.fake_quant(x, 4, lo, hi), ref.fake_quant(x, 4, lo, hi))


CASES = [
    # (n, c, h, w, o, k, stride, padding, dilation): c % 64 == 0 runs the per-tap order, else the flat one.
    (2, 16, 9, 9, 16, 3, 1, 1, 1),     # ResNet-20 block: flat K (9 taps x 16 channels)
    (2, 64, 7, 7, 32, 3, 1, 1, 1),     # per-tap K
    (2, 64, 9, 7, 48, 3, 2, 1, 1),     # stride 2, odd sizes, per tap
    (2, 24, 9, 9, 20, 3, 2, 1, 1),     # channels not a power of two, flat
    (2, 32, 8, 8, 24, 1, 2, 0, 1),     # 1x1 projection, stride 2
    (1, 8, 12, 12, 16, 7, 2, 3, 1),    # 7x7, padding 3 (a tile mostly padding)
    (2, 16, 9, 9, 10, 3, 1, 2, 2),     # dilation 2
    (1, 5, 7, 8, 7, 2, 1, 0, 1),       # odd channels, even kernel, no padding
    (1, 128, 4, 4, 16, 3, 1, 1, 1),    # two per-tap channel chunks
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "n{}c{}h{}w{}o{}k{}s{}p{}d{}".format(*c))
def test_shapes(case):
    n, c, h, w, o, k, stride, padding, dilation = case
    x = _codes((n, c, h, w))
    q, z = _weights(o, c, k, k)
    mult, bias = _epilogue(o)
    for layout, out_bits, relu in (("contiguous", 0, False), ("channels_last", 4, True)):
        xl = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x
        _run(xl, q, z, stride, padding, dilation, 1, mult, bias, relu=relu, out_bits=out_bits, out_scale=37.5,
             out_zero=float(2 ** (out_bits - 1)) if out_bits else 0.0)


@pytest.mark.parametrize("residual_kind", ["none", "float", "codes"])
def test_epilogue(residual_kind):
    check_int_conv_epilogue(_run, residual_kind, DEVICE)


@pytest.mark.parametrize("residual_kind", ["none", "float", "codes"])
@pytest.mark.parametrize("stride", [1, 2])
def test_int_mm_path(residual_kind, stride):
    """1x1 convolutions through torch._int_mm + the Triton epilogue, both layouts of x."""
    x = _codes((2, 32, 7, 6))
    q, z = _weights(24, 32, 1, 1, bits=8)
    z.clamp_(-(127 - int(q.max())), 128 + int(q.min()))  # keep q + z in int8: the folded path
    mult, bias = _epilogue(24)
    shape = (2, 24, (7 - 1) // stride + 1, (6 - 1) // stride + 1)
    residual = {"none": None, "float": torch.randn(shape).to(DEVICE),
                "codes": torch.randint(0, 256, shape, dtype=torch.uint8).to(DEVICE)}[residual_kind]
    for xl in (x, x.contiguous(memory_format=torch.channels_last)):
        _run(xl, q, z, stride, 0, 1, 1, mult, bias, residual, 2.5, True, 8, 3.0, 128.0, config=mod.INT_MM)
        _run(xl, q, z, stride, 0, 1, 1, mult, bias, residual, 2.5, False, 0, config=mod.INT_MM)


def test_int_mm_fallback_where_int_mm_rejects(monkeypatch):
    """On CPU, where _int_mm raises (a build or shape it does not take), an exact int32 matmul replaces it."""
    calls = []

    def rejecting(a, b):
        calls.append(a.shape)
        raise RuntimeError("_int_mm: unsupported")

    monkeypatch.setattr(torch, "_int_mm", rejecting)
    x = _codes((1, 16, 5, 5)).contiguous(memory_format=torch.channels_last)
    q, z = _weights(8, 16, 1, 1)
    mult, bias = _epilogue(8)
    if DEVICE == "cpu":
        _run(x, q, z, 1, 0, 1, 1, mult, bias, relu=True, out_bits=4, out_scale=2.0, out_zero=8.0, config=mod.INT_MM)
        assert calls == [(25, 16)]
    else:
        with pytest.raises(RuntimeError, match="_int_mm"):
            _run(x, q, z, 1, 0, 1, 1, mult, bias, config=mod.INT_MM)


def test_int_mm_config_rejected_where_it_cannot_run():
    x = _codes((1, 16, 5, 5))
    q, z = _weights(8, 16, 3, 3)
    mult, bias = _epilogue(8)
    with pytest.raises(ValueError, match="config: int_mm runs 1x1"):
        mod.int_conv2d(*int_conv_args(x, q, z, 1, 1, 1, 1, mult, bias), config=mod.INT_MM)


def test_int_mm_eligibility():
    cpu = torch.zeros(1, dtype=torch.uint8)
    assert mod.int_mm_eligible(cpu, 5, 3, 7)  # any shape on CPU

    class FakeCuda:
        is_cuda = True

    assert mod.int_mm_eligible(FakeCuda, 17, 16, 8)
    for rows, cin, cout in ((16, 16, 8), (17, 12, 8), (17, 16, 12), (17, 8, 8)):
        assert not mod.int_mm_eligible(FakeCuda, rows, cin, cout)


def test_multiple_blocks_and_k_steps(monkeypatch):
    """Several pixel blocks (a ragged last GROUP_M group), output-channel blocks and K steps in both orders."""
    monkeypatch.setattr(mod, "INTERPRET_CONFIG", (16, 16, 16, 4, 1))
    monkeypatch.setattr(mod, "MM_EPILOGUE_BLOCK", (16, 16))
    mult, bias = _epilogue(36)
    res = torch.randn(2, 36, 7, 9).to(DEVICE)
    for c in (32, 24):  # per tap (2 chunks per tap), flat (24 channels: chunks straddle taps)
        x = _codes((2, c, 7, 9)).contiguous(memory_format=torch.channels_last)
        q, z = _weights(36, c, 3, 3)
        _run(x, q, z, 1, 1, 1, 1, mult, bias, res, relu=True, out_bits=8, out_scale=20.0, out_zero=128.0)
    x = _codes((2, 32, 7, 9)).contiguous(memory_format=torch.channels_last)
    q, z = _weights(36, 32, 1, 1)
    _run(x, q, z, 1, 0, 1, 1, mult, bias, res, relu=True, out_bits=8, out_scale=20.0, out_zero=128.0,
         config=mod.INT_MM)


def test_extremes():
    """All-255 codes against folded weights at both int8 ends (q + z = -128 and 127) over 576 taps: the largest
    sums the folded path admits; and all-zero codes (the m - 128 shift undone exactly)."""
    q = torch.full((16, 64, 3, 3), -8, dtype=torch.int8, device=DEVICE)
    q[1::2] = 7
    z = torch.tensor([-120, 120] * 8, dtype=torch.int32, device=DEVICE)
    assert mod.folded_weight(q, z)[0] is not None
    mult, bias = _epilogue(16)
    for fill in (255, 0):
        x = torch.full((1, 64, 5, 5), fill, dtype=torch.uint8, device=DEVICE)
        _run(x.contiguous(memory_format=torch.channels_last), q, z, 1, 1, 1, 1, mult, bias)


def test_delegates_what_it_does_not_cover(monkeypatch):
    """groups > 1 (depthwise too) and folded weights outside int8 run on the first kernel, bit-exact."""
    delegated = []
    original = base.int_conv2d

    def spy(*args):
        delegated.append(args[1].shape)
        return original(*args)

    monkeypatch.setattr(base, "int_conv2d", spy)
    mult, bias = _epilogue(12)
    x = _codes((2, 12, 7, 7))
    for groups in (3, 12):
        q, z = _weights(12, 12 // groups, 3, 3)
        _run(x, q, z, 1, 1, 1, groups, mult, bias, relu=True, out_bits=4, out_scale=3.0, out_zero=8.0)
    q = torch.randint(-128, 128, (12, 12, 3, 3), dtype=torch.int8, device=DEVICE)
    z = torch.full((12,), 100, dtype=torch.int32, device=DEVICE)
    assert mod.folded_weight(q, z) == (None, None)
    _run(x, q, z, 1, 1, 1, 1, mult, bias)
    assert len(delegated) == 3


def test_folded_weight_layout_memo_and_in_place_changes():
    q, z = _weights(6, 5, 3, 2)
    folded, wsum = mod.folded_weight(q, z)
    want = (q.int() + z.view(6, 1, 1, 1)).permute(0, 2, 3, 1).reshape(6, -1)  # [O, (r, s, c)]
    assert folded.dtype == torch.int8 and torch.equal(folded.int(), want) and folded.is_contiguous()
    assert torch.equal(wsum, want.sum(1).int())
    assert mod.folded_weight(q, z)[0] is folded  # memoized
    z.add_(1)  # in place: the zero point's version changes, so the fold is redone
    again = mod.folded_weight(q, z)[0]
    assert again is not folded and torch.equal(again.int(), want + 1)
    q.neg_().clamp_(-8, 7)
    assert not torch.equal(mod.folded_weight(q, z)[0], again)
    z2 = z.clone()  # another zero-point tensor with the same values: not the memoized one
    assert mod.folded_weight(q, z2)[0] is not mod.folded_weight(q, z)[0]


def test_empty_batch():
    x = torch.zeros(0, 16, 6, 6, dtype=torch.uint8, device=DEVICE)
    q, z = _weights(8, 16, 3, 3)
    mult, bias = _epilogue(8)
    assert _run(x, q, z, 1, 1, 1, 1, mult, bias, out_bits=4, out_zero=8.0).shape == (0, 8, 6, 6)


def test_layer_classes_and_fitted_tiles():
    assert mod.layer_class(1, 1, 2, 2, 512) == "1x1"
    assert mod.layer_class(3, 3, 2, 2, 128) == "stride2"
    assert mod.layer_class(3, 3, 1, 1, 64) == "small_n"
    assert mod.layer_class(3, 3, 1, 1, 128) == "3x3"
    assert mod.INT_MM in mod.TC_CONFIGS["1x1"]
    for cls, configs in mod.TC_CONFIGS.items():
        for cfg in configs:
            if cfg != mod.INT_MM:
                assert cfg[0] >= 64 and cfg[2] >= 32 and cfg[4] >= 3, (cls, cfg)
    # 16 output channels, 16 input channels x 9 taps: N shrinks to 16, K stays 64 (chunks span taps)
    assert mod.fit_config((128, 128, 64, 8, 3), 16, 144, 16, 32) == (128, 16, 64, 8, 3)
    # 64 channels: per-tap chunks of 64 (no shrink); 1x1 of 16 channels: K shrinks to 32
    assert mod.fit_config((128, 256, 64, 8, 3), 64, 576, 512, 32) == (128, 256, 64, 8, 3)
    assert mod.fit_config((128, 64, 128, 4, 4), 16, 16, 64, 32) == (128, 64, 32, 4, 4)
    assert mod.fit_config(mod.INT_MM, 16, 16, 64, 32) == mod.INT_MM


def _policy_file(tmp_path, layers, capability=(9, 0)):
    path = tmp_path / "policy.json"
    path.write_text(json.dumps({"format": _backend.POLICY_FORMAT, "device": "test", "capability": list(capability),
                                "layers": layers}))
    return str(path)


def test_choose_config_policy_tuning_and_capture(monkeypatch, tmp_path):
    """Outside the interpreter: the measured policy's tile first; else the fastest candidate of the layer class
    (timed once per shape, int_mm only where eligible); no timing during a capture or with ADADFQ_TRITON_TUNE=0."""
    monkeypatch.setattr(mod, "_INTERPRET", False)
    monkeypatch.setattr(mod, "_TUNED", {})
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    timed = []

    def fake_time(launch, cfg):
        timed.append(cfg)
        return 0.5 if cfg == mod.INT_MM else float(cfg[1])  # int_mm, then the narrowest tile, is fastest

    monkeypatch.setattr(base, "time_launch", fake_time)
    layer = dict(batch=256, x=[64, 56, 56], weight=[256, 64, 3, 3], stride=[1, 1], padding=[1, 1],
                 dilation=[1, 1], groups=1, backend="triton_tc", tile=[128, 256, 64, 8, 3])
    monkeypatch.setenv(_backend.POLICY_ENV, _policy_file(tmp_path, [layer]))
    monkeypatch.setattr(_backend, "_POLICY", {})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    x = torch.empty(256, 64, 56, 56)
    common = dict(n_pixels=256 * 56 * 56, res_kind=0, relu=True, requant=True, wide=False, launch=None)
    got = mod.choose_config(x, (256, 64, 3, 3), [1, 1], [1, 1], [1, 1], k_total=576, mm_ok=False, **common)
    assert got == (128, 256, 64, 8, 3) and timed == []  # the measured tile, nothing timed
    # A layer the policy does not know: its class's candidates are timed, the fastest kept and remembered.
    got = mod.choose_config(x, (64, 64, 3, 3), [1, 1], [1, 1], [1, 1], k_total=576, mm_ok=False, **common)
    assert got == (128, 32, 64, 4, 4) and mod.INT_MM not in timed
    n_timed = len(timed)
    assert mod.choose_config(x, (64, 64, 3, 3), [1, 1], [1, 1], [1, 1], k_total=576, mm_ok=False, **common) == got
    assert len(timed) == n_timed
    one = mod.choose_config(x, (128, 64, 1, 1), [2, 2], [0, 0], [1, 1], k_total=64, mm_ok=True, **common)
    assert one == mod.INT_MM
    no_mm = mod.choose_config(x, (128, 64, 1, 1), [1, 1], [0, 0], [1, 1], k_total=64, mm_ok=False, **common)
    assert no_mm != mod.INT_MM
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    n_timed = len(timed)
    first = mod.choose_config(x, (256, 64, 3, 3), [2, 2], [1, 1], [1, 1], k_total=576, mm_ok=False, **common)
    assert first == mod.TC_CONFIGS["stride2"][0] and len(timed) == n_timed
    assert mod.choose_config(x, (256, 64, 1, 1), [2, 2], [0, 0], [1, 1], k_total=64, mm_ok=True,
                             **common) == mod.INT_MM


_GPU_COMPILE_SCRIPT = r'''
import importlib, re
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
m = importlib.import_module("adadfq_fast.kernels.int_conv2d_tc")
assert not m._INTERPRET
PTRS = {"x_ptr": "*u8", "w_ptr": "*i8", "wsum_ptr": "*i32", "mult_ptr": "*fp32", "bias_ptr": "*fp32",
        "acc_ptr": "*i32", "res_ptr": "*u8", "out_ptr": "*u8"}
def ptxas_usage(ptx):
    """ptxas -v's register and spill line (no GPU needed; for the log, not asserted)."""
    import os, subprocess, tempfile
    from triton.backends.nvidia.compiler import get_ptxas
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.ptx")
        open(path, "w").write(ptx)
        proc = subprocess.run([get_ptxas(90).path, "-v", "--gpu-name", "sm_90a", path, "-o", os.path.join(d, "k.o")],
                              capture_output=True, text=True)
    return " | ".join(l.split("info    : ")[-1] for l in proc.stderr.splitlines() if "registers" in l or "spill" in l)
# As the JIT specializes a channels_last ResNet layer: 16-byte aligned pointers, channel strides of 1 (constants),
# the other strides and the channel counts multiples of 16 (sizes listed in do_not_specialize get nothing).
ONES = {"rs_c": 1, "os_c": 1}
DIV16 = {"xs_n", "xs_h", "xs_w", "ws_o", "rs_n", "rs_h", "rs_w", "os_n", "os_h", "os_w", "cout"}
def build(kernel, consts, opts):
    consts = dict(consts, **{k: v for k, v in ONES.items() if k in kernel.arg_names})
    sig, attrs = {}, {}
    names = kernel.arg_names
    for i, n in enumerate(names):
        if n in PTRS: sig[n] = PTRS[n]
        elif n in ("residual_scale", "out_scale", "out_zero", "half"): sig[n] = "fp32"
        elif n in consts: sig[n] = "constexpr"
        else: sig[n] = "i32"
        if n in PTRS or n in DIV16:
            attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=kernel, signature=sig, constexprs={(names.index(a),): v for a, v in consts.items()},
                    attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(enable_fp_fusion=False, **opts))
flags = dict(RESIDUAL=2, RELU=True, REQUANT=True, WIDE=False)
for flat, cin, kw, tile in ((False, 0, 0, m.TC_CONFIGS["3x3"][0]), (True, 16, 3, m.TC_CONFIGS["small_n"][0])):
    bm, bn, bk, warps, stages = tile
    k = build(m._int_conv2d_tc_kernel, dict(flags, FLAT=flat, CIN=cin, KW=kw, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
              GROUP=m.GROUP_M, EPI_SPLIT=True), dict(num_warps=warps, num_stages=stages))
    ptx, ttgir = k.asm["ptx"], k.asm["ttgir"]
    assert re.search(r"wgmma\.mma_async\S*\.s32\.s8\.s8", ptx), ("no int8 wgmma", flat)
    assert "fma.rn.f32" not in ptx, "a multiply-add was contracted (the epilogue must round each step)"
    assert "div.rn.f32" in ptx
    # Both operands stream into shared memory by cp.async, pipelined (num_stages): a weight tile read in the
    # wrong order (or with its contiguity hidden) falls back to a synchronous load per K step.
    assert ttgir.count("async_copy_global_to_local") >= 2 * stages, ttgir.count("async_copy_global_to_local")
    usage = ptxas_usage(ptx)
    print("tc", "flat" if flat else "per-tap", tile, "shared bytes", k.metadata.shared, usage)
    assert " 0 bytes spill stores" in usage, usage  # the split epilogue keeps the tile in registers
e = build(m._int_mm_epilogue_kernel, dict(flags, BLOCK_M=64, BLOCK_N=128), dict(num_warps=4))
assert "fma.rn.f32" not in e.asm["ptx"]
print("ok")
'''


@pytest.mark.slow
def test_gpu_compile_sm90():
    """Without a GPU: the GPU tiles compile for sm_90 to int8 wgmma, with no contracted FMA in the epilogue."""
    stdout = run_gpu_compile_script(_GPU_COMPILE_SCRIPT)
    print(stdout)


def test_integer_model_end_to_end(monkeypatch):
    """An exported W4A4 ResNet-20 under backend triton_tc: logits equal the reference backend's bit for bit, every
    integer conv ran on the tensor-core kernel (W4 levels plus zero points fold into int8: nothing delegated), and
    the other kernels fell back to triton."""
    from adadfq_fast.deploy import export
    from test_deploy import make_q

    model = export(make_q(3, 16, 4, calib_batch=8)).eval()
    model.to(DEVICE)
    x = torch.randn(2, 3, 16, 16, device=DEVICE)
    delegated, ran = [], []
    original_base, original_tc = base.int_conv2d, mod._int_conv2d_tc_kernel

    monkeypatch.setattr(base, "int_conv2d", lambda *a: delegated.append(a[1].shape) or original_base(*a))

    class Counting:
        def __getitem__(self, grid):
            ran.append(grid)
            return original_tc[grid]

    monkeypatch.setattr(mod, "_int_conv2d_tc_kernel", Counting())
    with torch.no_grad():
        with adadfq_fast.use_backend("reference"):
            want = model(x)
        with adadfq_fast.use_backend("triton_tc"):
            got = model(x)
    assert torch.equal(got.cpu(), want.cpu())
    assert delegated == [] and len(ran) >= 18  # ResNet-20: 18 integer 3x3 convs (+ 2 projections)
