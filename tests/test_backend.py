"""Backend selection, graceful fallback when the native library is missing, and the CLI's env/bench commands."""
import json
import os
import subprocess
import sys

import pytest
import torch

import adadfq_fast
from adadfq_fast import _backend

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code_or_args, env_extra=None, module=False):
    env = dict(os.environ, **(env_extra or {}))
    cmd = [sys.executable, "-m", *code_or_args] if module else [sys.executable, "-c", code_or_args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def test_use_backend_nests_and_restores():
    assert adadfq_fast.current_backend() == "auto"
    with adadfq_fast.use_backend("reference"):
        assert adadfq_fast.current_backend() == "reference"
        with adadfq_fast.use_backend("AUTO"):
            assert adadfq_fast.current_backend() == "auto"
        assert adadfq_fast.current_backend() == "reference"
    assert adadfq_fast.current_backend() == "auto"


def test_set_backend_global():
    try:
        adadfq_fast.set_backend("reference")
        assert _backend.resolve("fake_quant", torch.device("cpu")) == "reference"
    finally:
        adadfq_fast.set_backend("auto")


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="backend must be one of"):
        with adadfq_fast.use_backend("fastest"):
            pass


def test_unavailable_backend_says_why():
    x = torch.randn(4)
    with adadfq_fast.use_backend("cuda"):
        with pytest.raises(RuntimeError, match="backend 'cuda' cannot run fake_quant_weight"):
            adadfq_fast.fake_quant_weight(x, 4)


def test_auto_prefers_cpp_on_cpu():
    expected = "cpp" if _backend.why_unavailable("cpp", "cpu") is None else "reference"
    assert _backend.resolve("bn_stat_loss", torch.device("cpu")) == expected


def test_missing_native_library_falls_back_with_one_warning():
    code = (
        "import warnings\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import torch, adadfq_fast\n"
        "    out = adadfq_fast.fake_quant_weight(torch.randn(4, 3), 4)\n"
        "    adadfq_fast.fake_quant_weight(torch.randn(4, 3), 4)\n"
        "msgs = [str(x.message) for x in w if 'adadfq_fast' in str(x.message)]\n"
        "print(len(msgs)); print(msgs[0])\n"
        "print(adadfq_fast.available_backends('cpu'))\n"
    )
    proc = _run(code, {"ADADFQ_DISABLE_NATIVE": "1"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "1"
    assert "C++ CPU kernels are unavailable (disabled by ADADFQ_DISABLE_NATIVE=1)" in lines[1]
    assert "'cpp'" not in lines[2]


def test_env_variable_selects_backend():
    proc = _run("import adadfq_fast; print(adadfq_fast.current_backend())", {"ADADFQ_BACKEND": "reference"})
    assert proc.stdout.strip() == "reference"
    proc = _run("import adadfq_fast", {"ADADFQ_BACKEND": "bogus"})
    assert proc.returncode != 0 and "ADADFQ_BACKEND: backend must be one of" in proc.stderr


def test_cli_env():
    proc = _run(["adadfq_fast", "env"], module=True)
    assert proc.returncode == 0, proc.stderr
    for word in ("torch", "triton", "reference", "cpp", "cuda", "auto on cpu"):
        assert word in proc.stdout


def test_cli_bench_ops_writes_json_and_markdown(tmp_path):
    out = tmp_path / "ops.json"
    proc = _run(["adadfq_fast", "bench", "ops", "--settings", "resnet20_b16", "--ops", "adadfq_losses",
                 "fake_quant_weight", "--repeats", "2", "--no-progress", "--json", str(out)], module=True)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    variants = {r["variant"] for r in data["records"]}
    assert "reference" in variants and len(variants) >= 2
    assert {r["mode"] for r in data["records"]} == {"fwd", "fwd+bwd"}
    assert all(r["ms"] > 0 for r in data["records"])
    assert "| setting | op | mode |" in (tmp_path / "ops.md").read_text()


def test_every_public_op_is_declared_with_its_kernels_signature():
    """Each ``adadfq::<op>`` (and its fused backward) is declared from the schema of the kernel behind it
    (``ops/native.SCHEMAS``), so every backend's kernel takes the public op's arguments as they are."""
    import adadfq_fast.ops  # noqa: F401  (declares the public ops)
    from adadfq_fast.ops.native import SCHEMAS

    public = {"fake_quant": "fake_quant", "fake_quant_weight": "fake_quant_weight",
              "fake_quant_act": "fake_quant_act", "bn_stat_loss": "bn_stat_loss",
              "bn_stat_loss_backward": "bn_stat_loss_backward", "adadfq_generator_loss": "generator_loss",
              "adadfq_generator_loss_backward": "generator_loss_backward", "adadfq_student_loss": "student_loss",
              "adadfq_student_loss_backward": "student_loss_backward", "int_conv2d": "int_conv2d",
              "quantize_codes": "quantize_codes"}
    assert sorted(public.values()) == sorted(SCHEMAS)

    def signature(schema):
        return ([(a.name, str(a.type), a.default_value) for a in schema.arguments], [str(r.type) for r in schema.returns])

    for op, kernel in public.items():
        got = signature(getattr(torch.ops.adadfq, op).default._schema)
        assert got == signature(getattr(torch.ops.adadfq_native, kernel).default._schema), op
