"""Q as a QDQ ONNX model: ``to_onnx(integer_model) -> onnx.ModelProto``, ``save_onnx(integer_model, path)``.

The graph is built from the integer program that :func:`adadfq_fast.deploy.export` makes of Q (the same layers,
registers, scales and zero points as the ``.adq`` file), in the "QDQ" form that ONNX Runtime and OpenVINO
recognise as a quantized network:

* every weight is an ``int8`` initializer ``q_w`` followed by a per-output-channel ``DequantizeLinear``
  (axis 0) with zero point ``-z_w`` and scale ``1/s_w``, so it dequantizes to ``(q_w + z_w) / s_w`` (Q's w^);
* every activation site (ReLU + QuantAct) is ``Relu -> Clip -> QuantizeLinear -> DequantizeLinear`` with a
  ``uint8`` per-tensor zero point 0 and scale ``1/s``: the uint8 value is the code ``m = q + zp`` of the
  integer model, ``Clip`` keeps it inside the k-bit code range ``[zp - 2^(k-1), zp + 2^(k-1) - 1]`` (uint8 alone
  saturates only at 0 and 255);
* convolutions, BatchNorm (eval), residual adds, max pooling, the global average pool and the classifier are
  the plain float ONNX ops on the dequantized tensors; the input image stays float (Q does not quantize it).

Where this cannot express Q exactly is in ``docs/integer_design.md`` ("ONNX export"); in short: ONNX scales
multiply (``x / scale``, ``q * scale``) where Q multiplies by ``s`` and divides by ``s_w``/``s``, so a value
within a rounding of a code boundary can land on the neighbour code; the float epilogue (BN, residual) runs in
the runtime's order (ONNX Runtime folds BN into the conv); k < 8 bit codes ride in uint8 with an explicit clip.
A layer with a weight channel whose zero point does not fit int8 (possible only when the channel's weights all
have one sign; at 8 bits it then always happens) keeps its weights as the float w^ instead
(``report["float_weights"]`` names it).

Needs the ``onnx`` extra (``pip install 'adadfq_fast[onnx]'``: onnx, onnxruntime); an ImportError naming it is
raised otherwise.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from .modules import IntegerModel, Layer, dequantized_weight

__all__ = ["to_onnx", "save_onnx", "require_onnx", "OPSET", "EXTRA_HINT"]

# 13: the first opset with per-axis (per-channel) QuantizeLinear/DequantizeLinear; read by ONNX Runtime and
# OpenVINO alike.
OPSET = 13
EXTRA_HINT = "pip install 'adadfq_fast[onnx]' (onnx, onnxruntime)"


def require_onnx():
    """The ``onnx`` module, or an ImportError that names the extra to install."""
    try:
        import onnx  # noqa: F401
    except ImportError as e:
        raise ImportError(f"ONNX export needs the optional `onnx` extra: {EXTRA_HINT} ({e})") from e
    return onnx


def _f32(v) -> np.ndarray:
    return np.asarray(v, dtype=np.float32)


def _inv(s: float) -> np.float32:
    """The ONNX scale of a quantizer of scale ``s`` (value = code / s): the float32 nearest to 1 / s."""
    return np.float32(1.0 / float(np.float32(s)))


class _Builder:
    def __init__(self, onnx_mod):
        self.onnx = onnx_mod
        self.h = onnx_mod.helper
        self.nodes: List[Any] = []
        self.inits: List[Any] = []
        self.n = 0
        self.report: Dict[str, Any] = {"float_weights": [], "float_act_sites": [], "qdq_act_sites": 0}

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}_{self.n}"

    def const(self, base: str, arr: np.ndarray) -> str:
        name = self.name(base)
        self.inits.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(self, op: str, inputs: List[str], base: str, **attrs) -> str:
        out = self.name(base)
        self.nodes.append(self.h.make_node(op, inputs, [out], name=out + "_" + op, **attrs))
        return out

    # -- pieces -----------------------------------------------------------------------------------------------
    def weight(self, layer: Layer, path: str, flat: bool = False) -> str:
        """The dequantized weight: int8 levels + per-channel DequantizeLinear, or float w^ where the zero point
        does not fit int8."""
        t = layer.tensors
        q_w, z_w, s_w = t["q_w"].cpu(), t["z_w"].cpu(), t["s_w"].cpu()
        if flat:
            q_w = q_w.reshape(q_w.shape[0], -1)
        zp = -z_w.to(torch.int64)
        if int(zp.min()) < -128 or int(zp.max()) > 127:
            self.report["float_weights"].append(path)
            return self.const(path + ".w", dequantized_weight(q_w, z_w, s_w).numpy().astype(np.float32))
        inv = np.array([_inv(float(v)) for v in s_w.numpy()], dtype=np.float32)
        q = self.const(path + ".q_w", q_w.numpy().astype(np.int8))
        sc = self.const(path + ".w_scale", inv)
        z = self.const(path + ".w_zero", zp.numpy().astype(np.int8))
        return self.node("DequantizeLinear", [q, sc, z], path + ".w", axis=0)

    def qdq(self, x: str, scale: float, zero: float, bits: int, path: str) -> str:
        """Clip to the k-bit code range, then QuantizeLinear/DequantizeLinear with uint8 codes m = q + zp."""
        inv = _inv(scale)
        half = 2 ** (bits - 1)
        m_lo, m_hi = int(zero) - half, int(zero) + half - 1
        lo = max(m_lo, 0)  # codes below 0 cannot occur (export checked zp + half - 1 <= 255 and zp >= 0)
        clipped = self.node("Clip", [x, self.const(path + ".lo", _f32(lo * inv)),
                                     self.const(path + ".hi", _f32(m_hi * inv))], path + ".clip")
        sc = self.const(path + ".scale", _f32(inv))
        z = self.const(path + ".zero", np.array(0, dtype=np.uint8))
        q = self.node("QuantizeLinear", [clipped, sc, z], path + ".codes")
        self.report["qdq_act_sites"] += 1
        return self.node("DequantizeLinear", [q, sc, z], path + ".act")

    # -- layers -----------------------------------------------------------------------------------------------
    def conv(self, layer: Layer, regs: Dict[int, str]) -> None:
        cfg, t = layer.cfg, layer.tensors
        path = cfg.get("name", "conv")
        w = self.weight(layer, path)
        kh, kw = t["q_w"].shape[2:]
        pads = [int(cfg["padding"][0]), int(cfg["padding"][1])] * 2
        inputs = [regs[cfg["inp"]], w]
        if cfg.get("has_bias"):
            inputs.append(self.const(path + ".bias", t["bias"].float().cpu().numpy()))
        y = self.node("Conv", inputs, path, kernel_shape=[int(kh), int(kw)], strides=list(map(int, cfg["stride"])),
                      pads=pads, dilations=list(map(int, cfg["dilation"])), group=int(cfg["groups"]))
        if cfg.get("bn_eps") is not None:
            bn = [self.const(path + ".bn_" + k, t["bn_" + k].float().cpu().numpy())
                  for k in ("weight", "bias", "mean", "var")]
            y = self.node("BatchNormalization", [y] + bn, path + ".bn", epsilon=float(cfg["bn_eps"]))
        if cfg.get("res") is not None:
            y = self.node("Add", [y, regs[cfg["res"]]], path + ".res")
        if cfg["relu"]:
            y = self.node("Relu", [y], path + ".relu")
        if cfg["out_bits"]:
            y = self.qdq(y, float(cfg["out_scale"]), float(cfg["out_zero"]), int(cfg["out_bits"]), path)
        regs[cfg["out"]] = y

    def act(self, layer: Layer, regs: Dict[int, str]) -> None:
        """A site whose codes do not fit uint8: Q's fake-quant as float ops (round half to even, clamp)."""
        cfg = layer.cfg
        path = cfg.get("name", "act")
        y = regs[cfg["inp"]]
        if cfg["act"] == "relu":
            y = self.node("Relu", [y], path + ".relu")
        else:
            y = self.node("Clip", [y, self.const(path + ".zero6", _f32(0.0)), self.const(path + ".six", _f32(6.0))],
                          path + ".relu6")
        half = 2 ** (int(cfg["bits"]) - 1)
        s, zp = self.const(path + ".s", _f32(cfg["scale"])), self.const(path + ".zp", _f32(cfg["zero"]))
        v = self.node("Sub", [self.node("Mul", [y, s], path + ".sy"), zp], path + ".v")
        q = self.node("Clip", [self.node("Round", [v], path + ".round"), self.const(path + ".qlo", _f32(-half)),
                               self.const(path + ".qhi", _f32(half - 1))], path + ".q")
        regs[cfg["out"]] = self.node("Div", [self.node("Add", [q, zp], path + ".m"), s], path + ".act")
        self.report["float_act_sites"].append(path)

    def maxpool(self, layer: Layer, regs: Dict[int, str]) -> None:
        cfg = layer.cfg
        p = [int(v) for v in cfg["padding"]]
        regs[cfg["out"]] = self.node("MaxPool", [regs[cfg["inp"]]], cfg.get("name", "maxpool"),
                                     kernel_shape=list(map(int, cfg["kernel_size"])),
                                     strides=list(map(int, cfg["stride"])), pads=p * 2,
                                     dilations=list(map(int, cfg["dilation"])), ceil_mode=int(cfg["ceil_mode"]))

    def head(self, layer: Layer, regs: Dict[int, str]) -> str:
        cfg, t = layer.cfg, layer.tensors
        path = cfg.get("name", "output")
        pooled = self.node("GlobalAveragePool", [regs[cfg["inp"]]], path + ".pool")
        flat = self.node("Flatten", [pooled], path + ".flatten", axis=1)
        w = self.weight(layer, path, flat=True)
        inputs = [flat, w]
        if cfg.get("has_bias"):
            inputs.append(self.const(path + ".bias", t["bias"].float().cpu().numpy()))
        return self.node("Gemm", inputs, path + ".linear", transB=1)


def to_onnx(model: IntegerModel, opset: int = OPSET) -> Tuple[Any, Dict[str, Any]]:
    """The QDQ ONNX model of an exported Q, and a report (``qdq_act_sites``, ``float_weights``,
    ``float_act_sites``). Input ``input`` [N, C, H, W] float32 (N dynamic), output ``logits`` [N, classes]."""
    onnx = require_onnx()
    if not isinstance(model, IntegerModel):
        raise TypeError(f"model: expected an IntegerModel (adadfq_fast.deploy.export(q)), got {type(model).__name__}")
    b = _Builder(onnx)
    regs: Dict[int, str] = {0: "input"}
    for layer in model.layers:
        if layer.kind == "conv":
            b.conv(layer, regs)
        elif layer.kind == "maxpool":
            b.maxpool(layer, regs)
        elif layer.kind == "act":
            b.act(layer, regs)
        else:
            b.head(layer, regs)
    b.nodes[-1].output[0] = "logits"  # the head's Gemm is the last node
    meta = model.meta
    c = int(meta.get("in_channels") or model.layers[0].tensors["q_w"].shape[1])
    hw = meta.get("in_size") or [None, None]
    classes = int(model.layers[-1].tensors["q_w"].shape[0])
    h = onnx.helper
    graph = h.make_graph(
        b.nodes, "adadfq_q",
        [h.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["N", c, hw[0], hw[1]])],
        [h.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["N", classes])],
        initializer=b.inits)
    proto = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)], producer_name="adadfq_fast")
    proto.ir_version = min(proto.ir_version, 8)  # readable by older runtimes; opset 13 needs IR >= 7
    for k in ("zoo_model", "model", "wbits", "abits", "source"):
        if k in meta:
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, str(meta[k])
    onnx.checker.check_model(proto)
    return proto, b.report


def save_onnx(model: IntegerModel, path: str | os.PathLike, opset: int = OPSET) -> Tuple[int, Dict[str, Any]]:
    """Write the QDQ ONNX model of ``model`` to ``path`` (atomically); returns (file size in bytes, report)."""
    proto, report = to_onnx(model, opset)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(proto.SerializeToString())
    os.replace(tmp, path)
    return os.path.getsize(path), report
