"""The measured int_conv2d policy ``auto`` reads on CUDA (``_backend.int_conv2d_policy``): file lookup (env path,
shipped file per compute capability, ``none``), validation, per-layer lookup at the nearest measured batch, the
fallback to the size heuristic, and the triton_tc tile it names. All of it runs without a GPU."""
import json

import pytest
import torch

from adadfq_fast import _backend

LAYER = dict(batch=256, x=[64, 56, 56], weight=[64, 64, 3, 3], stride=[1, 1], padding=[1, 1], dilation=[1, 1],
             groups=1, backend="triton_tc", tile=[128, 64, 64, 4, 4], ms={"triton_tc": 0.2, "triton": 0.8})


def _write(path, layers, capability=(9, 0), fmt=_backend.POLICY_FORMAT):
    path.write_text(json.dumps({"format": fmt, "device": "NVIDIA H200", "capability": capability, "layers": layers}))
    return str(path)


@pytest.fixture(autouse=True)
def _fresh_policy_cache(monkeypatch):
    monkeypatch.setattr(_backend, "_POLICY", {})
    monkeypatch.delenv(_backend.POLICY_ENV, raising=False)


def _choice(batch, layer=LAYER, **kw):
    return _backend.int_conv2d_cuda_choice((batch, *layer["x"]), layer["weight"], layer["stride"], layer["padding"],
                                           layer["dilation"], layer["groups"], **kw)


def test_lookup_nearest_batch_and_heuristic_fallback(tmp_path):
    small = dict(LAYER, batch=1, backend="cuda", tile=None)
    policy = _backend.load_int_conv2d_policy(_write(tmp_path / "p.json", [LAYER, small]))
    assert len(policy) == 2
    assert _choice(256, policy=policy) == "triton_tc"
    assert _choice(64, policy=policy) == "triton_tc"  # log2 distance: 2 to 256, 6 to 1
    assert _choice(8, policy=policy) == "cuda"
    assert _choice(16, policy=policy) == "triton_tc"  # tie (4 and 4): the larger batch
    # A layer the policy does not know: the heuristic (29.6 G MACs at batch 256 -> triton, batch 1 -> cuda).
    other = dict(LAYER, padding=[0, 0])
    assert _choice(256, other, policy=policy) == "triton" and _choice(1, other, policy=policy) == "cuda"
    # The measured backend is not loaded (e.g. no CUDA build): the heuristic among those that are.
    assert _choice(256, policy=policy, available=("cuda", "triton")) == "triton"
    assert _choice(1, policy=policy, available=("triton", "triton_tc")) == "triton"
    assert _choice(1, policy=None, available=("triton_tc",)) == "triton_tc"


def test_env_path_shipped_file_and_capability(tmp_path, monkeypatch):
    path = _write(tmp_path / "p.json", [LAYER])
    monkeypatch.setenv(_backend.POLICY_ENV, path)
    policy = _backend.int_conv2d_policy((9, 0))
    assert policy is not None and policy.source == path
    assert _backend.int_conv2d_policy((9, 0)) is policy  # read once
    assert _backend.int_conv2d_policy((8, 0)) is None  # measured on another GPU generation: ignored
    monkeypatch.setenv(_backend.POLICY_ENV, "none")
    assert _backend.int_conv2d_policy((9, 0)) is None
    monkeypatch.setenv(_backend.POLICY_ENV, str(tmp_path / "missing.json"))
    with pytest.raises(FileNotFoundError, match="ADADFQ_INT_CONV_POLICY"):
        _backend.int_conv2d_policy((9, 0))
    # No env: the shipped file for the capability, when there is one.
    monkeypatch.delenv(_backend.POLICY_ENV)
    monkeypatch.setattr(_backend, "POLICY_DIR", str(tmp_path))
    assert _backend.policy_file_name((9, 0)) == "int_conv2d_sm90.json"
    assert _backend.int_conv2d_policy((9, 0)) is None
    _write(tmp_path / "int_conv2d_sm90.json", [LAYER])
    _backend.reset_int_conv2d_policy()
    assert _backend.int_conv2d_policy((9, 0)).source.endswith("int_conv2d_sm90.json")


def test_current_device_without_cuda(monkeypatch, tmp_path):
    monkeypatch.setenv(_backend.POLICY_ENV, _write(tmp_path / "p.json", [LAYER]))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _backend.int_conv2d_policy() is None
    assert _backend.measured_tile((256, 64, 56, 56), (64, 64, 3, 3), (1, 1), (1, 1), (1, 1), 1) is None


def test_measured_tile(monkeypatch, tmp_path):
    mm = dict(LAYER, x=[64, 56, 56], weight=[128, 64, 1, 1], stride=[2, 2], padding=[0, 0], tile="int_mm")
    monkeypatch.setenv(_backend.POLICY_ENV, _write(tmp_path / "p.json", [LAYER, mm, dict(LAYER, batch=1, tile=None)]))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    tile = _backend.measured_tile
    assert tile((256, 64, 56, 56), (64, 64, 3, 3), (1, 1), (1, 1), (1, 1), 1) == (128, 64, 64, 4, 4)
    assert tile((256, 64, 56, 56), (128, 64, 1, 1), (2, 2), (0, 0), (1, 1), 1) == "int_mm"
    assert tile((1, 64, 56, 56), (64, 64, 3, 3), (1, 1), (1, 1), (1, 1), 1) is None
    assert tile((256, 64, 28, 28), (64, 64, 3, 3), (1, 1), (1, 1), (1, 1), 1) is None


@pytest.mark.parametrize("bad, match", [
    ({"format": "other", "layers": []}, "format"),
    ({"format": _backend.POLICY_FORMAT}, "layers"),
    ({"format": _backend.POLICY_FORMAT, "layers": [dict(LAYER, backend="cpp")]}, "backend must be one of"),
    ({"format": _backend.POLICY_FORMAT, "layers": [{k: v for k, v in LAYER.items() if k != "weight"}]}, "layer 0"),
    ({"format": _backend.POLICY_FORMAT, "layers": [dict(LAYER, tile=[1, 2])]}, "tile must be"),
    ({"format": _backend.POLICY_FORMAT, "layers": [dict(LAYER, batch=0)]}, "batch must be"),
])
def test_invalid_files(tmp_path, bad, match):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=match):
        _backend.load_int_conv2d_policy(str(path))
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        _backend.load_int_conv2d_policy(str(path))


def test_describe_names_the_policy(monkeypatch, tmp_path):
    """describe() on CUDA is only reachable with a GPU; its per-call branch is exercised by faking one."""
    monkeypatch.setenv(_backend.POLICY_ENV, _write(tmp_path / "p.json", [LAYER]))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(_backend, "_per_call_policy", lambda kernel, device_type: object())
    text = _backend.describe("int_conv2d", torch.device("cuda"))
    assert text.startswith("auto per call: measured policy p.json (1 layers), else triton for convs wider"), text
