"""benchmarks/sweep_int_conv2d_gpu.py on CPU under the Triton interpreter: the plumbing of the GPU sweep (bit-exact
check, per-variant timing, the table, the policy file ``auto`` reads), not a measurement."""
import importlib.util
import json
import os

import pytest
import torch

pytest.importorskip("triton")

from adadfq_fast import _backend  # noqa: E402

from helpers import import_triton_kernel, triton_device  # noqa: E402

DEVICE = triton_device()
import_triton_kernel("int_conv2d_tc")
pytestmark = pytest.mark.triton

_PATH = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "sweep_int_conv2d_gpu.py")


def _sweep_module():
    spec = importlib.util.spec_from_file_location("sweep_int_conv2d_gpu", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_sweep_writes_table_and_a_policy_auto_can_read(tmp_path, monkeypatch):
    sweep = _sweep_module()
    # Two layers of ResNet-20 at batch 1 (a 3x3 and a 1x1 projection: int_mm is one of its candidates).
    assert sweep.main(["--device", DEVICE, "--models", "resnet20", "--batches", "1", "--layers", "s3.conv3x3",
                       "s3.proj1x1/2", "--repeats", "1", "--backends", "triton", "triton_tc", "cuda",
                       "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "sweep_int_conv2d.json").read_text())
    recs = {r["layer"]: r for r in data["records"]}
    assert set(recs) == {"s3.conv3x3", "s3.proj1x1/2"}
    for r in recs.values():
        assert r["bit_exact"] and all(r["bit_exact"].values()), r["bit_exact"]
        assert r["errors"] == {}
        assert r["best_backend"] in ("triton", "triton_tc")
        assert r["best_backend"] == min(r["backend_ms"], key=r["backend_ms"].get)
        assert sweep.FP16 in r["ms"]
    if DEVICE == "cpu":
        assert "triton_tc[int_mm]" in recs["s3.proj1x1/2"]["ms"]
        assert "cuda" in data["environment"]["skipped"]
    md = (tmp_path / "sweep_int_conv2d.md").read_text()
    assert "| resnet20 | 1 | s3.conv3x3 | 64->64 | 8 |" in md and "best per layer" in md
    policy = _backend.load_int_conv2d_policy(str(tmp_path / "int_conv2d_policy.json"))
    assert len(policy) == 2
    entry = policy.lookup((1, 32, 16, 16), (64, 32, 1, 1), (2, 2), (0, 0), (1, 1), 1)
    assert entry is not None and entry["backend"] == recs["s3.proj1x1/2"]["best_backend"]
    assert entry["tile"] == recs["s3.proj1x1/2"]["best_tile"]
    got = _backend.int_conv2d_cuda_choice((1, 64, 8, 8), (64, 64, 3, 3), (1, 1), (1, 1), (1, 1), 1, policy=policy)
    assert got == recs["s3.conv3x3"]["best_backend"]


def test_non_exact_variants_are_not_timed_or_chosen(tmp_path, monkeypatch):
    """A variant whose output differs from the reference is reported and never enters the policy."""
    sweep = _sweep_module()
    real = _backend.backend_kernel

    def broken(kernel, backend):
        fn = real(kernel, backend)
        if backend != "triton":
            return fn
        return lambda *a, **k: fn(*a, **k).add_(1)

    monkeypatch.setattr(_backend, "backend_kernel", broken)
    assert sweep.main(["--device", DEVICE, "--models", "resnet20", "--batches", "1", "--layers", "s3.conv3x3",
                       "--repeats", "1", "--backends", "triton", "triton_tc", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "sweep_int_conv2d.json").read_text())["records"][0]
    assert r["bit_exact"]["triton"] is False and "triton" not in r["ms"]
    assert r["best_backend"] == "triton_tc"
    assert "NOT BIT-EXACT" in (tmp_path / "sweep_int_conv2d.md").read_text()
