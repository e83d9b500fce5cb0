"""QDQ ONNX export (adadfq_fast/deploy/onnx_export.py): the graph runs in ONNX Runtime (and OpenVINO where
installed) and agrees with Q, the fake-quant network it was exported from."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime", reason="ONNX export tests need the `onnx` extra (onnx, onnxruntime)")
onnx = pytest.importorskip("onnx", reason="ONNX export tests need the `onnx` extra (onnx, onnxruntime)")

from adadfq_fast.deploy import export  # noqa: E402
from adadfq_fast.deploy.modules import Layer, _Act  # noqa: E402
from adadfq_fast.deploy.onnx_export import _Builder, require_onnx, save_onnx, to_onnx  # noqa: E402
from adadfq_fast.models import build_model, load_checkpoint  # noqa: E402
from adadfq_fast.nn import freeze_act_ranges, quantize_model, save_q_checkpoint  # noqa: E402
from adadfq_fast.pretrain import SHIPPED_TEACHER  # noqa: E402


def make_q(bits: int, teacher: bool = True) -> torch.nn.Module:
    """The shipped Fashion-MNIST ResNet-20, quantized and calibrated on random images."""
    fp = build_model("resnet20", num_classes=10, in_channels=1, in_size=(28, 28))
    if teacher:
        load_checkpoint(fp, SHIPPED_TEACHER)
    q = quantize_model(fp, bits, bits, example_input=torch.zeros(1, 1, 28, 28)).eval()
    with torch.no_grad():
        q(torch.randn(64, 1, 28, 28))
    freeze_act_ranges(q)
    return q


def run_ort(proto, x: torch.Tensor) -> np.ndarray:
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x.numpy()})[0]


@pytest.mark.parametrize("bits, close_share", [(8, 0.5), (4, 0.9), (3, 0.9)])
def test_agrees_with_q_on_random_inputs(bits, close_share):
    q = make_q(bits)
    proto, report = to_onnx(export(q, in_size=(28, 28)))
    assert report["qdq_act_sites"] == 19 and not report["float_weights"] and not report["float_act_sites"]
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("QuantizeLinear") == 19 and ops.count("Conv") == 21
    assert ops.count("DequantizeLinear") == 19 + 22  # activations + per-channel weights (21 convs, 1 linear)
    weight_dq = [n for n in proto.graph.node if n.op_type == "DequantizeLinear"
                 and any(a.name == "axis" for a in n.attribute)]
    assert len(weight_dq) == 22  # per-channel (axis 0) weight scales
    # Inputs 1.5x wider than the calibration batch: values above the frozen ranges must clip to the top k-bit code.
    x = torch.randn(256, 1, 28, 28) * 1.5
    with torch.no_grad():
        want = q(x).numpy()
    got = run_ort(proto, x)
    assert got.shape == want.shape
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.98
    # Most samples get Q's logits to float rounding; the rest moved by a code that landed on its neighbour
    # (ONNX multiplies by 1/s where Q multiplies by s: docs/integer_design.md, "ONNX export").
    close = np.abs(got - want).max(axis=1) < 1e-3
    assert close.mean() >= close_share, f"{close.mean():.3f} of samples within 1e-3 of Q"


def test_weight_zero_point_outside_int8_falls_back_to_float(tmp_path):
    """An 8-bit channel whose weights all have one sign has a zero point beyond int8: that layer's weight is
    stored as the float w^ (named in the report) and the model still agrees with Q."""
    q = make_q(8, teacher=False)
    conv = q.features.stage1.unit1.body.conv1.conv
    with torch.no_grad():
        conv.weight[3] = conv.weight[3].abs() + 0.01
    im = export(q, in_size=(28, 28))
    size, report = save_onnx(im, tmp_path / "q.onnx")
    assert report["float_weights"] == ["features.stage1.unit1.body.conv1.conv"]
    proto = onnx.load(str(tmp_path / "q.onnx"))
    assert size == (tmp_path / "q.onnx").stat().st_size
    x = torch.randn(64, 1, 28, 28)
    with torch.no_grad():
        want = q(x).numpy()
    assert (run_ort(proto, x).argmax(1) == want.argmax(1)).mean() >= 0.95


def test_float_activation_site_matches_the_integer_model():
    """The rare site whose codes do not fit uint8 is Q's fake-quant in float ops: same values as the integer
    model's runner, including ties (round half to even) and the clamp."""
    onnx_mod = require_onnx()
    for act, scale, zero, bits in (("relu", 7.5, 300.0, 8), ("relu6", 2.5, -3.0, 4)):
        layer = Layer("act", {"name": "site", "inp": 0, "out": 1, "act": act, "bits": bits, "scale": scale,
                              "zero": zero})
        b = _Builder(onnx_mod)
        regs = {0: "input"}
        b.act(layer, regs)
        b.nodes[-1].output[0] = "y"
        h = onnx_mod.helper
        graph = h.make_graph(b.nodes, "g", [h.make_tensor_value_info("input", onnx_mod.TensorProto.FLOAT, [None])],
                             [h.make_tensor_value_info("y", onnx_mod.TensorProto.FLOAT, [None])], initializer=b.inits)
        proto = h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])
        proto.ir_version = 8
        x = torch.cat([torch.randn(1000) * 30, (torch.arange(-40, 80) + 0.5) / scale])  # ties: s*x - zp = k + 0.5
        regs_t = [x, None]
        _Act(layer)(regs_t, None)
        sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        got = sess.run(None, {"input": x.numpy()})[0]
        np.testing.assert_array_equal(got, regs_t[1].numpy())
        assert b.report["float_act_sites"] == ["site"]


def test_cli_export_onnx(tmp_path):
    from adadfq_fast.deploy.cli import export_main

    q = make_q(4)
    ckpt = tmp_path / "q.pt"
    save_q_checkpoint(ckpt, q, model="resnet20", num_classes=10, in_channels=1, in_size=(28, 28), wbits=4, abits=4)
    out = tmp_path / "q.onnx"
    assert export_main([str(ckpt), "--format", "onnx", "-o", str(out)]) == 0
    proto = onnx.load(str(out))
    assert {p.key: p.value for p in proto.metadata_props}["zoo_model"] == "resnet20"
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        want = q(x).numpy()
    np.testing.assert_allclose(run_ort(proto, x), want, rtol=0, atol=0.05)


def test_missing_extra_is_named(tmp_path, monkeypatch):
    from adadfq_fast.deploy.cli import export_main

    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now raises ImportError
    with pytest.raises(ImportError, match=r"adadfq_fast\[onnx\]"):
        require_onnx()
    q = make_q(4, teacher=False)
    ckpt = tmp_path / "q.pt"
    save_q_checkpoint(ckpt, q, model="resnet20", num_classes=10, in_channels=1, in_size=(28, 28), wbits=4, abits=4)
    with pytest.raises(SystemExit, match=r"export: ONNX export needs the optional `onnx` extra"):
        export_main([str(ckpt), "--format", "onnx", "-o", str(tmp_path / "q.onnx")])
    assert not (tmp_path / "q.onnx").exists()


def test_openvino_runs_it():
    ov = pytest.importorskip("openvino", reason="OpenVINO is in the `peers` extra")
    q = make_q(8)
    proto, _ = to_onnx(export(q, in_size=(28, 28)))
    compiled = ov.Core().compile_model(ov.Core().read_model(proto.SerializeToString()), "CPU")
    x = torch.randn(64, 1, 28, 28)
    got = compiled(x.numpy())[0]
    with torch.no_grad():
        want = q(x).numpy()
    assert (np.asarray(got).argmax(1) == want.argmax(1)).mean() >= 0.95
