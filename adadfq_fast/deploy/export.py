"""``export(Q) -> IntegerModel``: the trained quantized network as integer layers (design: docs/integer_design.md).

What is exported, per layer of Q:

* **Weights**: the spec's quantizer applied to the trained weights, per output channel: int8 levels ``q_w``, the
  integer zero point ``z_w`` (int32) and the float32 scale ``s_w``, so ``(q_w + z_w) / s_w`` is bit for bit the
  weight the fake-quant conv uses.
* **Activations**: after every QuantAct the tensor travels as uint8 codes ``m = q + zp`` of its frozen range
  (value ``m / s``); ReLU ranges start at 0, so the codes of k <= 8 bits fit a byte.
* **conv + BN (+ residual) (+ ReLU + QuantAct)** is one ``int_conv2d`` call: ``out_mult = gamma / sqrt(var + eps)
  / (s_w s_x)``, ``out_bias = beta - mean * gamma / sqrt(var + eps)`` (+ conv bias), the residual (codes of the
  unit's input, or the float output of the projection shortcut), ``relu``, and the requantization to the next
  QuantAct's codes.
* **First conv**: its input is the float image, which the spec does not quantize (Q's first layer sees float
  pixels), so it runs in float32 with the dequantized weights and ends with BN/ReLU/requantization to codes.
  Quantizing the image instead would change Q's answers.
* **Average pool + linear**: on codes, the integer channel sums ``S_c = sum_hw m`` feed an exact integer
  product with ``q_w``, and ``1 / (s_w s_x HW)`` scales it to float32 logits (see ``modules._Head``).
* **Fallbacks** (float32, Q's arithmetic): a conv whose input has no QuantAct (MobileNetV2 after a linear
  bottleneck), a conv whose ``z_w * box`` could overflow int32, and an activation site whose codes would not fit
  a byte (an activation range far from 0) or whose ReLU6 clip is not absorbed by the range.

Supported models: our CIFAR ResNets (``adadfq_fast.models.resnet_cifar``: ResNet-20 etc., basic and bottleneck
units), pytorchcv's ImageNet ResNets (resnet18/50: ``ResInitBlock`` with max pool, ``ResUnit`` with
``ResBlock``/``ResBottleneck``) and pytorchcv's MobileNetV2 (``LinearBottleneck``; its expansion convs are float
fallbacks). Any other module raises :class:`UnsupportedModuleError` naming it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from .. import quant_math
from ..nn.modules import QuantAct, QuantConv2d, QuantLinear, QuantReLU
from ..nn.quantize import act_quantizers
from .modules import IntegerModel, Layer

__all__ = ["export", "UnsupportedModuleError", "quantize_weight"]

# Bodies whose forward is the plain sequence of their conv blocks.
_SEQUENTIAL_BODIES = {"_BasicBody", "_BottleneckBody", "ResBlock", "ResBottleneck"}
_CONV_BLOCKS = {"ConvBN", "ConvBlock"}
_GLOBAL_POOLS = {"GlobalAvgPool"}
_PASSTHROUGH = (nn.Identity, nn.Dropout)
_INT32_MAX = 2**31 - 1


class UnsupportedModuleError(NotImplementedError):
    """Raised by :func:`export` for a module (or a module arrangement) that has no integer mapping."""


@dataclass
class _Value:
    """A register at export time: what it holds (uint8 ``codes`` with ``scale``, or ``float``) and its shape."""

    reg: int
    kind: str
    channels: int
    hw: Tuple[int, int]
    scale: float = 1.0
    bits: int = 0


def quantize_weight(w: torch.Tensor, bits: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The spec's per-output-channel weight quantizer as integers: ``(q_w int8, z_w int32, s_w float32)``.

    Same float32 expressions as ``fake_quant_weight`` (``adadfq_fast.quant_math``), so ``(q_w + z_w) / s_w`` is
    the fake-quant weight bit for bit.
    """
    w = w.detach().float().cpu()
    lo, hi = quant_math.weight_range(w)
    scale, zero = quant_math.quant_params(bits, lo, hi)
    shape = (-1,) + (1,) * (w.dim() - 1)
    q = quant_math.quant_levels(w, bits, scale.reshape(shape), zero.reshape(shape))
    if not torch.isfinite(scale).all():
        raise ValueError("weights with a non-finite range cannot be exported (NaN/inf in a weight tensor?)")
    if zero.abs().max() > _INT32_MAX:
        raise ValueError(f"a weight channel's zero point {zero.abs().max().item():.3g} does not fit int32 "
                         "(a channel whose values are all far from 0 relative to their spread)")
    return q.to(torch.int8), zero.to(torch.int32), scale.contiguous()


def _act_params(quant: QuantAct) -> Tuple[int, float, float]:
    """(bits, scale, zero point) of a frozen QuantAct, float32 values as the fake-quant computes them."""
    scale, zero = quant_math.quant_params(quant.abits, quant.state[0].detach().cpu(), quant.state[1].detach().cpu())
    return quant.abits, float(scale), float(zero)


def _pair(v) -> List[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(i) for i in v]


def _out_hw(hw, k, stride, padding, dilation, ceil_mode=False) -> Tuple[int, int]:
    out = []
    for i in range(2):
        num = hw[i] + 2 * padding[i] - dilation[i] * (k[i] - 1) - 1
        o = (-(-num // stride[i]) if ceil_mode else num // stride[i]) + 1
        if ceil_mode and (o - 1) * stride[i] >= hw[i] + padding[i]:
            o -= 1
        out.append(o)
    return out[0], out[1]


class _Exporter:
    def __init__(self, q: nn.Module):
        self.q = q
        self.layers: List[Layer] = []
        self.sites: Dict[int, int] = {}
        self.next_reg = 1

    # -- helpers --------------------------------------------------------------------------------------------
    def _reg(self) -> int:
        r = self.next_reg
        self.next_reg += 1
        return r

    def _site(self, act: QuantReLU) -> QuantAct:
        i = self.sites.get(id(act), 0)
        self.sites[id(act)] = i + 1
        return act.quant[i % len(act.quant)]

    @staticmethod
    def _act_kind(act: QuantReLU, path: str) -> str:
        if isinstance(act.act, nn.ReLU6):
            return "relu6"
        if isinstance(act.act, nn.ReLU):
            return "relu"
        raise UnsupportedModuleError(f"{path}: activation {type(act.act).__name__} is not ReLU/ReLU6")

    # -- layers ---------------------------------------------------------------------------------------------
    def conv(self, conv: nn.Module, bn: Optional[nn.Module], act: Optional[QuantReLU], x: _Value,
             res: Optional[_Value], path: str, act_path: str = "") -> _Value:
        """One fused conv layer (+ an ``act`` fallback layer when its codes cannot be uint8)."""
        if type(conv) is not QuantConv2d:
            raise UnsupportedModuleError(f"{path}: {type(conv).__name__} is not a QuantConv2d (quantize the model "
                                         "with adadfq_fast.nn.quantize_model before exporting)")
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise UnsupportedModuleError(f"{path}: padding {conv.padding!r}/{conv.padding_mode!r} is not supported "
                                         "(integer zero padding only)")
        if bn is not None and (type(bn) is not nn.BatchNorm2d or bn.running_mean is None or not bn.affine):
            raise UnsupportedModuleError(f"{path}: normalisation {type(bn).__name__} is not an affine BatchNorm2d "
                                         "with running statistics")
        q_w, z_w, s_w = quantize_weight(conv.weight, conv.wbits)
        stride, padding, dilation = _pair(conv.stride), _pair(conv.padding), _pair(conv.dilation)
        o, cg, kh, kw = q_w.shape
        if x.channels != cg * conv.groups:
            raise ValueError(f"{path}: expects {cg * conv.groups} input channels, the previous layer gives "
                             f"{x.channels}")
        k = cg * kh * kw
        half_w = 2 ** (conv.wbits - 1)
        # acc + z_w * box in int32: |q_w| <= 2^(k-1), codes <= 255, K terms (design: checked at export).
        fits_int32 = k * 255 * (half_w + int(z_w.abs().max())) <= _INT32_MAX
        use_int = x.kind == "codes" and fits_int32
        tensors = {"q_w": q_w, "z_w": z_w, "s_w": s_w}
        cfg: Dict[str, Any] = {
            "name": path, "inp": x.reg, "in_kind": x.kind, "in_scale": x.scale, "stride": stride,
            "padding": padding, "dilation": dilation, "groups": int(conv.groups), "wbits": int(conv.wbits),
            "int": bool(use_int), "relu": False, "out_bits": 0, "out_scale": 1.0, "out_zero": 0.0,
            "has_bias": conv.bias is not None, "bn_eps": None, "res": None,
        }
        if x.kind == "codes" and not fits_int32:
            cfg["fallback"] = "z_w * box may overflow int32"
        elif x.kind == "float":
            cfg["fallback"] = "float input (no QuantAct before this conv)"
        if conv.bias is not None:
            tensors["bias"] = conv.bias.detach().float().cpu().clone()
        if bn is not None:
            cfg["bn_eps"] = float(bn.eps)
            tensors.update(bn_weight=bn.weight.detach().float().cpu().clone(),
                           bn_bias=bn.bias.detach().float().cpu().clone(),
                           bn_mean=bn.running_mean.detach().float().cpu().clone(),
                           bn_var=bn.running_var.detach().float().cpu().clone())
        if res is not None:
            cfg.update(res=res.reg, res_kind=res.kind, res_scale=res.scale)
        hw = _out_hw(x.hw, (kh, kw), stride, padding, dilation)
        if res is not None and (res.channels, res.hw) != (o, hw):
            raise ValueError(f"{path}: residual of {res.channels}x{res.hw} does not match the output {o}x{hw}")
        act_layer = None
        out = _Value(self._reg(), "float", o, hw)
        cfg["out"] = out.reg
        if act is not None:
            act_path = act_path or path + ".activ"
            kind = self._act_kind(act, act_path)
            bits, s, zp = _act_params(self._site(act))
            half = 2 ** (bits - 1)
            # Codes m = q + zp must lie in [0, 255]: after a ReLU q >= -zp (the code of 0), and q <= half - 1.
            fits = zp + half - 1 <= 255 and zp >= 0
            if kind == "relu6":  # absorbed when the code of 6 already is the top code (range max <= 6)
                six = torch.round(torch.tensor(6.0) * torch.tensor(s) - torch.tensor(zp))
                fits = fits and float(six) >= half - 1
            if fits:
                cfg.update(relu=True, out_bits=bits, out_scale=s, out_zero=zp)
                out = _Value(out.reg, "codes", o, hw, scale=s, bits=bits)
            else:
                act_layer = Layer("act", {"name": act_path, "inp": out.reg, "act": kind, "bits": bits,
                                          "scale": s, "zero": zp})
        self.layers.append(Layer("conv", cfg, tensors))
        if act_layer is not None:
            out = _Value(self._reg(), "float", o, hw)
            act_layer.cfg["out"] = out.reg
            self.layers.append(act_layer)
        return out

    def conv_block(self, block: nn.Module, x: _Value, path: str, res: Optional[_Value] = None,
                   act: Optional[QuantReLU] = None, act_path: str = "") -> _Value:
        if type(block).__name__ not in _CONV_BLOCKS:
            raise UnsupportedModuleError(f"{path}: {type(block).__name__} is not a conv block (conv + BN + "
                                         "optional ReLU: ConvBN / pytorchcv ConvBlock)")
        if getattr(block, "use_pad", False):
            raise UnsupportedModuleError(f"{path}: asymmetric padding (ZeroPad2d) is not supported")
        bn = block.bn if getattr(block, "normalize", True) and hasattr(block, "bn") else None
        own_act = block.activ if getattr(block, "activate", True) and hasattr(block, "activ") else None
        if own_act is not None and not isinstance(own_act, QuantReLU):
            raise UnsupportedModuleError(f"{path}.activ: {type(own_act).__name__} is not a quantized ReLU "
                                         "(QuantReLU)")
        if own_act is not None and act is not None:
            raise UnsupportedModuleError(f"{path}: a residual added after this block's own activation is not "
                                         "supported")
        return self.conv(block.conv, bn, own_act or act, x, res, path + ".conv",
                         act_path if own_act is None else path + ".activ")

    def res_unit(self, unit: nn.Module, x: _Value, path: str) -> _Value:
        body = unit.body
        if type(body).__name__ not in _SEQUENTIAL_BODIES:
            raise UnsupportedModuleError(f"{path}.body: {type(body).__name__} is not a known residual body")
        if not isinstance(unit.activ, QuantReLU):
            raise UnsupportedModuleError(f"{path}.activ: {type(unit.activ).__name__} is not a QuantReLU")
        identity = self.conv_block(unit.identity_conv, x, path + ".identity_conv") if unit.resize_identity else x
        blocks = list(body.named_children())
        h = x
        for name, block in blocks[:-1]:
            h = self.conv_block(block, h, f"{path}.body.{name}")
        name, last = blocks[-1]
        return self.conv_block(last, h, f"{path}.body.{name}", res=identity, act=unit.activ,
                               act_path=path + ".activ")

    def linear_bottleneck(self, unit: nn.Module, x: _Value, path: str) -> _Value:
        h = x
        if unit.use_exp_conv:
            h = self.conv_block(unit.conv1, h, path + ".conv1")
        h = self.conv_block(unit.conv2, h, path + ".conv2")
        return self.conv_block(unit.conv3, h, path + ".conv3", res=x if unit.residual else None)

    def maxpool(self, pool: nn.MaxPool2d, x: _Value, path: str) -> _Value:
        if pool.return_indices:
            raise UnsupportedModuleError(f"{path}: max pool with return_indices")
        k, s = _pair(pool.kernel_size), _pair(pool.stride if pool.stride is not None else pool.kernel_size)
        p, d = _pair(pool.padding), _pair(pool.dilation)
        out = _Value(self._reg(), x.kind, x.channels, _out_hw(x.hw, k, s, p, d, pool.ceil_mode), x.scale, x.bits)
        self.layers.append(Layer("maxpool", {"name": path, "inp": x.reg, "out": out.reg, "kernel_size": k,
                                             "stride": s, "padding": p, "dilation": d,
                                             "ceil_mode": bool(pool.ceil_mode)}))
        return out

    def pool_spec(self, pool: nn.Module, x: _Value, path: str):
        if type(pool).__name__ in _GLOBAL_POOLS:
            return "global"
        if isinstance(pool, nn.AdaptiveAvgPool2d) and _pair(pool.output_size) == [1, 1]:
            return "global"
        if isinstance(pool, nn.AvgPool2d):
            k = _pair(pool.kernel_size)
            if list(x.hw) != k or _pair(pool.padding) != [0, 0]:
                raise UnsupportedModuleError(f"{path}: an average pool ({k}, padding {pool.padding}) that does not "
                                             f"cover the whole {list(x.hw)} map")
            return k
        raise UnsupportedModuleError(f"{path}: {type(pool).__name__} before the classifier is not a global "
                                     "average pool")

    def head(self, linear: nn.Module, pool, x: _Value, path: str) -> None:
        if type(linear) is QuantConv2d:
            if tuple(linear.kernel_size) != (1, 1) or linear.groups != 1:
                raise UnsupportedModuleError(f"{path}: a classifier conv must be 1x1 without groups")
        elif type(linear) is not QuantLinear:
            raise UnsupportedModuleError(f"{path}: classifier {type(linear).__name__} is not a QuantLinear or a "
                                         "1x1 QuantConv2d")
        w = linear.weight.detach().reshape(linear.weight.shape[0], -1)
        q_w, z_w, s_w = quantize_weight(w, linear.wbits)
        if q_w.shape[1] != x.channels:
            raise ValueError(f"{path}: expects {q_w.shape[1]} features, the pool gives {x.channels}")
        hw = x.hw[0] * x.hw[1]
        bound = q_w.shape[1] * 255 * hw * (2 ** (linear.wbits - 1) + int(z_w.abs().max()))
        if x.kind == "codes" and bound >= 2**53:  # float64 integer sums would no longer be exact
            raise UnsupportedModuleError(f"{path}: integer classifier sums up to {bound:.3g} exceed 2^53")
        tensors = {"q_w": q_w, "z_w": z_w, "s_w": s_w}
        if linear.bias is not None:
            tensors["bias"] = linear.bias.detach().float().cpu().clone()
        self.layers.append(Layer("head", {"name": path, "inp": x.reg, "out": self._reg(), "in_kind": x.kind,
                                          "in_scale": x.scale, "pool": pool, "wbits": int(linear.wbits),
                                          "has_bias": linear.bias is not None}, tensors))

    # -- structure ------------------------------------------------------------------------------------------
    def walk(self, module: nn.Module, x: _Value, path: str):
        """Export ``module`` applied to ``x``; returns the output value, or ("pool", spec, value) for a final
        global pool (which the classifier absorbs)."""
        name = type(module).__name__
        if isinstance(module, nn.Sequential) and name not in _SEQUENTIAL_BODIES:
            children = list(module.named_children())
            for i, (child_name, child) in enumerate(children):
                if isinstance(x, tuple):
                    raise UnsupportedModuleError(f"{path}.{child_name}: layers after the final average pool")
                x = self.walk(child, x, f"{path}.{child_name}" if path else child_name)
            return x
        if isinstance(module, _PASSTHROUGH):
            return x
        if name in _CONV_BLOCKS:
            return self.conv_block(module, x, path)
        if name == "ResUnit":
            return self.res_unit(module, x, path)
        if name == "ResInitBlock":
            x = self.conv_block(module.conv, x, path + ".conv")
            return self.maxpool(module.pool, x, path + ".pool")
        if name == "LinearBottleneck":
            return self.linear_bottleneck(module, x, path)
        if isinstance(module, nn.MaxPool2d):
            return self.maxpool(module, x, path)
        if name in _GLOBAL_POOLS or isinstance(module, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            return ("pool", self.pool_spec(module, x, path), x)
        raise UnsupportedModuleError(f"{path or 'model'}: {name} has no integer mapping (supported: CIFAR "
                                     "ResNets, pytorchcv ResNets and MobileNetV2; see adadfq_fast/deploy/export.py)")


def _input_shape(q: nn.Module, in_size) -> Tuple[int, Tuple[int, int]]:
    first = next((m for m in q.modules() if isinstance(m, nn.Conv2d)), None)
    if first is None:
        raise UnsupportedModuleError(f"{type(q).__name__}: no convolution found")
    size = in_size if in_size is not None else getattr(q, "in_size", None)
    if size is None:
        raise ValueError("in_size: the model has no `in_size` attribute; pass in_size=(H, W)")
    return int(first.in_channels), (int(size[0]), int(size[1]))


@torch.no_grad()
def export(q_model: nn.Module, in_size: Optional[Tuple[int, int]] = None,
           meta: Optional[Dict[str, Any]] = None) -> IntegerModel:
    """Build the :class:`IntegerModel` of a quantized network Q (made by ``quantize_model``, ranges frozen).

    ``in_size`` defaults to ``q_model.in_size``; it fixes the shapes used for the export-time checks (a fixed
    final average pool needs it). BatchNorm uses its running statistics (Q runs in eval mode). Raises
    :class:`UnsupportedModuleError` for a module that has no integer mapping, and ValueError for a Q whose
    activation ranges are not frozen (they would keep changing; call ``freeze_act_ranges(q)`` first).
    """
    acts = act_quantizers(q_model)
    if not acts:
        raise ValueError("q_model: no QuantAct found; export takes a quantized network "
                         "(adadfq_fast.nn.quantize_model)")
    unfrozen = [a for a in acts if not a.frozen]
    if unfrozen:
        raise ValueError(f"q_model: {len(unfrozen)} of {len(acts)} activation ranges are not frozen; call "
                         "adadfq_fast.nn.freeze_act_ranges(q) first (the integer model needs fixed ranges)")
    if not (hasattr(q_model, "features") and hasattr(q_model, "output")):
        raise UnsupportedModuleError(f"{type(q_model).__name__}: expected a model with `features` and `output` "
                                     "(CIFAR ResNet, pytorchcv ResNet or MobileNetV2)")
    in_channels, hw = _input_shape(q_model, in_size)
    ex = _Exporter(q_model)
    out = ex.walk(q_model.features, _Value(0, "float", in_channels, hw), "features")
    if not isinstance(out, tuple):
        raise UnsupportedModuleError("features: does not end with a global average pool")
    _, pool, x = out
    ex.head(q_model.output, pool, x, "output")
    wbits = sorted({m.wbits for m in q_model.modules() if isinstance(m, (QuantConv2d, QuantLinear))})
    info = {"model": type(q_model).__name__, "in_channels": in_channels, "in_size": list(hw),
            "num_classes": int(ex.layers[-1].tensors["q_w"].shape[0]), "wbits": wbits,
            "abits": sorted({a.abits for a in acts})}
    info.update(meta or {})
    return IntegerModel(ex.layers, info)
