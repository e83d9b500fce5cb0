"""Input builders shared by the op tests, and the device/import preamble of the Triton tests."""
import importlib
import os

import pytest
import torch

import adadfq_fast

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def layouts(x: torch.Tensor):
    """The same values in the memory layouts the kernels must accept: contiguous, channels_last, strided."""
    out = {"contiguous": x.contiguous()}
    if x.dim() == 4:
        out["channels_last"] = x.contiguous(memory_format=torch.channels_last)
    # A non-dense view: every other element of an interleaved tensor (the op must copy it, not misread it).
    out["strided"] = torch.stack([x, torch.zeros_like(x)], dim=-1)[..., 0]
    assert torch.equal(out["strided"], x)
    return out


def both_paths(fn):
    """Run ``fn`` through the eager fast path and through the registered custom op; both must agree."""
    from adadfq_fast.ops import _eager

    eager = fn()
    original = _eager.use_custom_op
    _eager.use_custom_op = lambda *a: True
    try:
        via_op = fn()
    finally:
        _eager.use_custom_op = original
    return eager, via_op


def backends_for_cpu():
    return [b for b in adadfq_fast.available_backends("cpu")]


def triton_device() -> str:
    """Where the Triton kernel tests run: CPU tensors under TRITON_INTERPRET=1 (set by conftest.py without a GPU;
    the interpreter would only copy CUDA tensors back and forth), else CUDA. Skips the calling module otherwise."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1", allow_module_level=True)


def import_triton_kernel(name: str):
    """The module ``adadfq_fast.kernels.<name>``; skips the calling module where Triton's kernels cannot load."""
    try:
        return importlib.import_module(f"adadfq_fast.kernels.{name}")
    except Exception as e:  # noqa: BLE001 - no usable Triton here: nothing to test
        pytest.skip(f"Triton kernels cannot be imported: {type(e).__name__}: {e}", allow_module_level=True)


def run_gpu_compile_script(script: str) -> str:
    """Run a Triton compile-for-sm_90 script without a GPU (in a subprocess, outside the interpreter); its stdout.
    Skips where Triton's NVIDIA backend (ptxas) is missing; fails with the script's stderr otherwise."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0 and ("ptxas" in proc.stderr and "not found" in proc.stderr.lower()):
        pytest.skip("Triton's NVIDIA backend (ptxas) is unavailable")
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-4000:]
    return proc.stdout


def int_conv_weights(o: int, cg: int, kh: int, kw: int, bits: int, device="cpu"):
    """int_conv2d test weights: int8 levels in [-2^(k-1), 2^(k-1)-1] with both extremes present, and int32 zero
    points in [-(2^(k-1)-1), 2^(k-1)] (the spec's range for a channel whose lo <= 0 <= hi; for bits <= 7 every
    q + z stays in int8)."""
    half = 2 ** (bits - 1)
    q = torch.randint(-half, half, (o, cg, kh, kw), dtype=torch.int8)
    q.view(-1)[0], q.view(-1)[-1] = -half, half - 1
    z = torch.randint(-(half - 1), half + 1, (o,), dtype=torch.int32)
    return q.to(device), z.to(device)


def int_conv_epilogue(o: int, device="cpu"):
    """int_conv2d test epilogue: per-channel out_mult (small positive) and out_bias."""
    return (torch.rand(o) * 0.02 + 1e-3).to(device), torch.randn(o).to(device)


def int_conv_args(x, q, z, stride, padding, dilation, groups, mult, bias, residual=None, residual_scale=1.0,
                  relu=False, out_bits=0, out_scale=1.0, out_zero=0.0):
    """The positional arguments of int_conv2d (its schema: int stride/padding/dilation as pairs, floats as float)."""
    pair = lambda v: [v, v] if isinstance(v, int) else list(v)  # noqa: E731
    return (x, q, z, pair(stride), pair(padding), pair(dilation), groups, mult, bias, residual, float(residual_scale),
            relu, out_bits, float(out_scale), float(out_zero))


def assert_int_conv_matches_reference(got, args):
    """got = int_conv2d(*args) on any device: the reference's bytes, dtype, shape and output memory format."""
    from adadfq_fast import reference as ref

    want = ref.int_conv2d_forward(*(a.cpu() if isinstance(a, torch.Tensor) else a for a in args))
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(got.cpu(), want), (got.cpu().float() - want.float()).abs().max()
    fmt = torch.channels_last if ref.int_conv2d_output_channels_last(args[0]) else torch.contiguous_format
    assert got.is_contiguous(memory_format=fmt)
    return got


def check_int_conv_epilogue(run, residual_kind: str, device) -> None:
    """Every epilogue of int_conv2d (ReLU or not, float32 or 4-bit codes out) with a residual of `residual_kind`
    ("none", "float", "codes") through `run(*int_conv_args)`, a backend's call that checks against the reference;
    then the residual in the other memory layout (read through its strides)."""
    x = torch.randint(0, 16, (2, 16, 6, 6), dtype=torch.uint8).to(device).contiguous(memory_format=torch.channels_last)
    q, z = int_conv_weights(16, 16, 3, 3, 4, device)
    mult, bias = int_conv_epilogue(16, device)
    shape = (2, 16, 6, 6)
    residual = {"none": None, "float": (torch.randn(shape) * 2).to(device),
                "codes": torch.randint(0, 16, shape, dtype=torch.uint8).to(device)}[residual_kind]
    for relu in (False, True):
        for out_bits in (0, 4):
            run(x, q, z, 1, 1, 1, 1, mult, bias, residual, 3.7, relu, out_bits, 5.5, 8.0 if out_bits else 0.0)
    if residual is not None:
        run(x, q, z, 1, 1, 1, 1, mult, bias, residual.contiguous(memory_format=torch.channels_last), 3.7, True, 4,
            5.5, 8.0)
