"""The integer model: a flat program of fused layers over registers (see ``export.py`` for how Q maps onto it).

A layer reads registers (``inp``, optionally ``res``) and writes one (``out``); register 0 is the input image.
Values in registers are either uint8 activation codes ``m`` (the dequantized value is ``m / s``, with ``s``
known at export) or float32 tensors. Layer kinds:

* ``conv``: one convolution with its BatchNorm, optional residual, optional ReLU and optional requantization.
  ``int=True``: ``adadfq_fast.ops.int_conv2d`` on uint8 codes (the fused integer kernel).
  ``int=False`` (float fallback: the input image, or an input without a QuantAct): float32 convolution with the
  dequantized weights ``w^ = (q_w + z_w) / s_w``, exactly the weights the fake-quant Q uses.
* ``maxpool``: max pooling, on codes (exact: dequantization is monotone) or floats.
* ``act``: a float activation quantizer for the rare site whose codes do not fit uint8 (output float ``x^``).
* ``head``: global average pool + linear. On codes: per-channel integer sums ``S_c = sum_hw m`` and
  ``logits = (sum_c q_w S_c + z_w sum_c S_c) / (s_w s_x HW) + bias``, exact integer arithmetic (float64 holds
  these sums exactly, see ``_Head``), float32 logits.

Each layer keeps its source tensors (``q_w`` int8, ``z_w`` int32, ``s_w`` float32, BN statistics, ...) for saving;
everything the forward needs (``out_mult``/``out_bias`` folding ``1/(s_w s_x)`` and BN, dequantized weights) is
derived once in ``build()``, so the forward is a list of prepared calls without checks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import _backend
from ..quant_math import quant_levels
from ..ops import int_conv2d, quantize_codes
from ..ops._eager import use_custom_op

LAYER_KINDS = ("conv", "maxpool", "act", "head")


@dataclass
class Layer:
    """One layer of the integer program: ``kind``, JSON-able ``cfg`` and named ``tensors`` (what is saved)."""

    kind: str
    cfg: Dict[str, Any]
    tensors: Dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in LAYER_KINDS:
            raise ValueError(f"unknown integer layer kind {self.kind!r}; known: {LAYER_KINDS}")


def dequantized_weight(q_w: Tensor, z_w: Tensor, s_w: Tensor) -> Tensor:
    """``(q_w + z_w) / s_w`` in float32, the fake-quant's own expression (so the values are bit-identical)."""
    shape = (-1,) + (1,) * (q_w.dim() - 1)
    return (q_w.float() + z_w.float().reshape(shape)) / s_w.float().reshape(shape)


def bn_affine(layer: Layer):
    """Eval BatchNorm (+ conv bias) as ``y * a + b`` per channel, in float64: ``(a, b)``, or (None, bias)."""
    t, cfg = layer.tensors, layer.cfg
    bias = t["bias"].double() if cfg.get("has_bias") else None
    if cfg.get("bn_eps") is None:
        return None, bias
    a = t["bn_weight"].double() / torch.sqrt(t["bn_var"].double() + cfg["bn_eps"])
    b = t["bn_bias"].double() - t["bn_mean"].double() * a
    if bias is not None:
        b = b + bias * a
    return a, b


_EMPTY = torch.empty(0)  # unused statistics outputs of the in-place eval batch norm


class _IntConv:
    """A conv run by the fused integer kernel."""

    def __init__(self, layer: Layer):
        cfg, t = layer.cfg, layer.tensors
        a, b = bn_affine(layer)
        o = t["q_w"].shape[0]
        inv = 1.0 / (t["s_w"].double() * cfg["in_scale"])  # s_x is the float32 scale, held exactly by a double
        mult = inv if a is None else inv * a
        bias = torch.zeros(o, dtype=torch.float64) if b is None else b
        dev = t["q_w"].device
        self.inp, self.out, self.res = cfg["inp"], cfg["out"], cfg.get("res")
        self.weight = t["q_w"].contiguous()
        self.zero = t["z_w"].contiguous()
        self.mult = mult.to(torch.float32).to(dev)
        self.bias = bias.to(torch.float32).to(dev)
        self.params = (list(cfg["stride"]), list(cfg["padding"]), list(cfg["dilation"]), int(cfg["groups"]))
        self.res_scale = float(cfg.get("res_scale", 1.0))
        self.tail = (bool(cfg["relu"]), int(cfg["out_bits"]), float(cfg.get("out_scale", 1.0)),
                     float(cfg.get("out_zero", 0.0)))

    def __call__(self, regs: List[Optional[Tensor]], kernel: Callable) -> None:
        res = None if self.res is None else regs[self.res]
        regs[self.out] = kernel(regs[self.inp], self.weight, self.zero, *self.params, self.mult, self.bias, res,
                                self.res_scale, *self.tail)


def _bn_as_fma(bn, channels: int) -> Optional[tuple]:
    """``(alpha, beta)`` with ``batch_norm(y) == fma(y, alpha, beta)`` bit for bit on this machine, else None.

    torch's CPU eval batch norm computes ``y * alpha + beta`` with one rounding, ``alpha = rsqrt(var + eps) * w``
    and ``beta = fma(-mean, alpha, b)`` (torch 2.13, AVX-512 build, found by testing candidate formulas). That is
    an implementation detail, so it is checked here rather than assumed: ``beta`` is read back as the batch norm of
    zeros, and a probe of values spread over twelve decades (both signs, a channels_last map like the conv's
    output) must match bit for bit, the fma emulated exactly in float64 (the product of two float32 values is
    exact there). Any mismatch keeps the separate batch-norm pass.
    """
    mean, var, weight, bias, _, _, eps = bn
    if mean.device.type != "cpu":
        return None
    alpha = torch.rsqrt(var + eps) * weight
    zeros = torch.zeros(1, channels, 2, 2).contiguous(memory_format=torch.channels_last)
    beta = F.batch_norm(zeros, mean, var, weight, bias, False, 0.0, eps)[0, :, 0, 0].contiguous()
    g = torch.Generator().manual_seed(0)
    values = torch.randn(4, channels, 16, 16, generator=g)
    decades = torch.empty(4, channels, 16, 16).uniform_(-6, 6, generator=g)
    probe = (values * torch.pow(10.0, decades)).contiguous(memory_format=torch.channels_last)
    want = F.batch_norm(probe, mean, var, weight, bias, False, 0.0, eps)
    shape = (1, channels, 1, 1)
    got = (probe.double() * alpha.double().reshape(shape) + beta.double().reshape(shape)).float()
    return (alpha.contiguous(), beta) if torch.equal(got, want) else None


def _bn_fold(run: "_FloatConv") -> Optional[tuple]:
    """The ``(alpha, beta)`` that a float layer's one-pass codes kernel applies as its eval BN, or None (BN stays a
    separate pass): only with BN, no residual, codes out, the C++ kernel loaded, and torch's BN provably that fma
    (:func:`_bn_as_fma`). With a max pool fused between BN and the quantizer (``run.pool``, set before this is
    called), BN moves after the pool, which needs a non-decreasing map per channel (alpha >= 0): then
    max(fma(y_i)) == fma(max(y_i)) exactly, the codes do not change, and BN reads the pooled quarter instead of a
    separate pass over the whole map (ResNet-18's 112x112x64 stem output)."""
    if (run.bn is None or run.res is not None or not run.out_bits
            or "cpp" not in _backend.implementations("quantize_codes", "cpu")):
        return None
    fma = _bn_as_fma(run.bn, run.weight.shape[0])
    if fma is None or (run.pool is not None and not bool((fma[0] >= 0).all())):
        return None
    return fma


def _nchw_first_conv(x: Tensor) -> bool:
    """Whether the float first conv takes its image in NCHW (one image of at most 64x64 pixels), see _FloatConv."""
    return x.shape[0] == 1 and x.shape[2] * x.shape[3] <= 64 * 64


class _FloatConv:
    """A conv in float32 with the dequantized weights (input image, or an input that is not uint8 codes).

    Q's own arithmetic, op for op: ``conv2d(x, w^, bias)``, eval ``batch_norm``, residual, ReLU, and the
    QuantAct's ``clamp(round(s*y - zp))`` (codes ``+ zp``), so the first layer's codes are bit-identical to Q's
    (folding BN into the weights would be one pass cheaper but moves float32 roundings, hence some codes).
    """

    def __init__(self, layer: Layer):
        cfg, t = layer.cfg, layer.tensors
        dev = t["q_w"].device
        self.weight = dequantized_weight(t["q_w"], t["z_w"], t["s_w"]).to(dev)
        self.bias = t["bias"].float() if cfg.get("has_bias") else None
        self.bn = None
        if cfg.get("bn_eps") is not None:
            self.bn = (t["bn_mean"].float(), t["bn_var"].float(), t["bn_weight"].float(), t["bn_bias"].float(),
                       False, 0.0, float(cfg["bn_eps"]))
        self.inp, self.out, self.res = cfg["inp"], cfg["out"], cfg.get("res")
        self.in_codes = cfg["in_kind"] == "codes"
        self.in_scale = float(cfg.get("in_scale", 1.0))
        self.res_codes = cfg.get("res_kind") == "codes"
        self.res_scale = float(cfg.get("res_scale", 1.0))
        self.relu = bool(cfg["relu"])
        self.out_bits = int(cfg["out_bits"])
        self.pool = None  # max-pool arguments when the next layer's max pool is fused in (IntegerModel._build)
        self.params = (tuple(cfg["stride"]), tuple(cfg["padding"]), tuple(cfg["dilation"]), int(cfg["groups"]))
        # A 1-channel image is both NCHW and NHWC to PyTorch, which then takes its slow NCHW conv (3x slower on
        # Fashion-MNIST); a zero second channel (zero weights) selects oneDNN's NHWC path. The products are
        # the same and the added terms are exact zeros.
        self.pad_channel = self.weight.shape[1] == 1 and self.params[3] == 1 and not self.in_codes
        if self.pad_channel:
            self.weight = torch.cat([self.weight, torch.zeros_like(self.weight)], dim=1)
        # On CPU, an eval BN followed directly by the quantizer runs inside the one-pass codes kernel (one pass over
        # the float map instead of two) when it provably computes the same floats (_bn_as_fma); set in _build,
        # which knows whether a max pool sits between them.
        self.bn_fma = None
        if self.out_bits:
            self.scale, self.zero = float(cfg["out_scale"]), float(cfg["out_zero"])

    def __call__(self, regs: List[Optional[Tensor]], kernel: Callable) -> None:
        x = regs[self.inp]
        if self.in_codes:  # the dequantized activation m / s_x, as QuantAct returns it
            x = x.to(torch.float32) / self.in_scale
        else:
            if self.pad_channel:
                x = torch.cat([x, torch.zeros_like(x)], dim=1)
            # One small image: PyTorch's NCHW conv is 2-3x faster than oneDNN's NHWC one (ResNet-20 at 32x32:
            # 0.03 against 0.07 ms), and NCHW is the layout a user hands Q, so Q computes these floats (at batch 1
            # the two layouts' results differ in the last bits; from 4 images on they agree). A 224-px image or a
            # batch: NHWC (2x faster at 224 px, 5x at 32 images of 32x32). int_program.cpp (first_conv_layout)
            # makes the same choice.
            x = x.contiguous() if _nchw_first_conv(x) else x.contiguous(memory_format=torch.channels_last)
        y = F.conv2d(x, self.weight, self.bias, *self.params)
        if self.bn_fma is not None and y.device.type == "cpu":
            if self.pool is not None:  # pool first: BN is then applied to a quarter of the values (see _build)
                y = F.max_pool2d(y, *self.pool)
            regs[self.out] = quantize_codes(y, self.scale, self.zero, self.out_bits, self.relu, *self.bn_fma)
            return
        if self.bn is not None:
            if y.device.type == "cpu":
                # In place (an element-wise op in eval mode): same values as F.batch_norm (tested), without a
                # second full-size float tensor, whose allocation dominates at 224 px (2.5x faster there).
                mean, var, weight, bias, _, _, eps = self.bn
                torch.ops.aten.native_batch_norm.out(y, weight, bias, mean, var, False, 0.0, eps, out=y,
                                                     save_mean=_EMPTY, save_invstd=_EMPTY)
            else:
                y = F.batch_norm(y, *self.bn)
        if self.res is not None:
            r = regs[self.res]
            y = y + (r.to(torch.float32) / self.res_scale if self.res_codes else r)
        if self.pool is not None:
            y = F.max_pool2d(y, *self.pool)
        if self.out_bits == 0:
            regs[self.out] = torch.relu_(y) if self.relu else y
            return
        # ReLU + the QuantAct's steps: one pass in the C++ (CPU) or Triton (CUDA) kernel, else the PyTorch steps.
        codes = quantize_codes(y, self.scale, self.zero, self.out_bits, self.relu)
        regs[self.out] = codes if codes.is_contiguous(memory_format=torch.channels_last) else \
            codes.contiguous(memory_format=torch.channels_last)


class _MaxPool:
    """Max pooling. On uint8 codes it is exact (dequantization is monotone). torch's channels_last uint8 max pool
    refuses large maps, so codes use a max over the k*k strided window slices of the zero-padded map (zero padding
    is harmless: codes are >= 0 and every window holds at least one real element, as padding <= k/2)."""

    def __init__(self, layer: Layer):
        cfg = layer.cfg
        self.inp, self.out = cfg["inp"], cfg["out"]
        self.args = (tuple(cfg["kernel_size"]), tuple(cfg["stride"]), tuple(cfg["padding"]),
                     tuple(cfg["dilation"]), bool(cfg["ceil_mode"]))
        self.sliced = tuple(cfg["dilation"]) == (1, 1) and not cfg["ceil_mode"]
        self.fused = False

    def _codes(self, x: Tensor) -> Tensor:
        (kh, kw), (sh, sw), (ph, pw) = self.args[:3]
        n, c, h, w = x.shape
        ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        xp = F.pad(x, (pw, pw, ph, ph)) if ph or pw else x
        out = None
        for i in range(kh):
            for j in range(kw):
                part = xp[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]
                out = part.clone(memory_format=torch.channels_last) if out is None else \
                    torch.maximum(out, part, out=out)
        return out

    def __call__(self, regs, kernel) -> None:
        x = regs[self.inp]
        if self.fused:  # the conv before pooled its floats already (see IntegerModel._build)
            regs[self.out] = x
            return
        regs[self.out] = self._codes(x) if x.dtype == torch.uint8 and self.sliced else F.max_pool2d(x, *self.args)


class _Act:
    """Float activation + fake-quant (a site whose codes would not fit uint8): the QuantAct's own arithmetic."""

    def __init__(self, layer: Layer):
        cfg = layer.cfg
        self.inp, self.out = cfg["inp"], cfg["out"]
        self.act = cfg["act"]
        self.bits = int(cfg["bits"])
        self.scale = torch.tensor(cfg["scale"], dtype=torch.float32)
        self.zero = torch.tensor(cfg["zero"], dtype=torch.float32)

    def __call__(self, regs, kernel) -> None:
        y = regs[self.inp]
        if self.act == "relu":
            y = torch.relu(y)
        elif self.act == "relu6":
            y = torch.clamp(y, 0.0, 6.0)
        q = quant_levels(y, self.bits, self.scale, self.zero)
        regs[self.out] = (q + self.zero) / self.scale


class _Head:
    """Global average pool + linear.

    On codes: ``S[n,c] = sum_hw m`` and ``acc = S @ q_w^T + (sum_c S) z_w`` are integers below 2^53 (|q_w| <= 128,
    m <= 255, checked at export), so float64 sums hold them exactly; only the final scaling rounds.
    On floats (no QuantAct before the pool): the float path of Q (average pool, linear with w^).
    """

    def __init__(self, layer: Layer):
        cfg, t = layer.cfg, layer.tensors
        self.inp, self.out = cfg["inp"], cfg["out"]
        self.pool = None if cfg["pool"] == "global" else tuple(cfg["pool"])
        self.codes = cfg["in_kind"] == "codes"
        dev = t["q_w"].device
        bias = t["bias"].double() if cfg.get("has_bias") else torch.zeros(t["q_w"].shape[0], dtype=torch.float64)
        if self.codes:
            self.w = t["q_w"].double().t().contiguous()
            self.z = t["z_w"].double().to(dev)
            self.inv = (1.0 / (t["s_w"].double() * cfg["in_scale"])).to(dev)  # 1/HW applied per call
            self.bias = bias.to(dev)
        else:
            self.w = dequantized_weight(t["q_w"], t["z_w"], t["s_w"])
            self.bias = bias.to(torch.float32).to(dev)

    def _check_pool(self, x: Tensor) -> None:
        if self.pool is not None and tuple(x.shape[-2:]) != self.pool:
            raise ValueError(f"the model's final {self.pool[0]}x{self.pool[1]} average pool needs a "
                             f"{self.pool[0]}x{self.pool[1]} feature map, got {tuple(x.shape[-2:])} (input size "
                             "differs from the exported model's)")

    def __call__(self, regs, kernel) -> None:
        x = regs[self.inp]
        self._check_pool(x)
        if self.codes:
            n, c, h, w = x.shape
            hw = h * w
            if x.is_contiguous(memory_format=torch.channels_last):  # NHWC memory: a plain reduction over rows
                s = x.permute(0, 2, 3, 1).reshape(n, hw, c).sum(dim=1, dtype=torch.int32).double()
            else:
                s = x.sum(dim=(2, 3), dtype=torch.int32).double()  # exact: at most 255 * HW per channel
            acc = torch.addmm(s.sum(dim=1, keepdim=True) * self.z, s, self.w)
            regs[self.out] = (acc * (self.inv / hw) + self.bias).to(torch.float32)
        else:
            pooled = F.avg_pool2d(x, kernel_size=x.shape[-2:]).flatten(1)
            regs[self.out] = F.linear(pooled, self.w, self.bias)


_RUNNERS = {"conv": None, "maxpool": _MaxPool, "act": _Act, "head": _Head}


def _runner(layer: Layer):
    if layer.kind == "conv":
        return _IntConv(layer) if layer.cfg["int"] else _FloatConv(layer)
    return _RUNNERS[layer.kind](layer)


def _public_int_conv2d(x, weight, weight_zero, stride, padding, dilation, groups, out_mult, out_bias, residual,
                       residual_scale, relu, out_bits, out_scale, out_zero):
    return int_conv2d(x, weight, weight_zero, stride, padding, dilation, groups, out_mult, out_bias, residual,
                      residual_scale, relu, out_bits, out_scale, out_zero)


def _native_program_class():
    """``torch.classes.adadfq_native.IntProgram`` (csrc/cpu/int_program.cpp), or None where the C++ library (or a
    build of it with the class) is not loaded."""
    if "cpp" not in _backend.implementations("int_conv2d", "cpu"):
        return None
    try:
        return torch.classes.adadfq_native.IntProgram
    except (AttributeError, RuntimeError):
        return None


def _build_program(runners: List[Any], output_register: int):
    """The whole forward as one C++ call (``IntProgram``) when every layer is a step it has: the float first conv
    with its one-pass codes kernel, the integer convs, the head on codes; else None (the Python runners run)."""
    cls = _native_program_class()
    if cls is None or any(getattr(r, "weight", torch.empty(0)).device.type != "cpu" for r in runners):
        return None
    prog = cls()
    alias: Dict[int, int] = {}  # a fused max pool's output register is its float conv's
    reg = lambda r: alias.get(r, r)  # noqa: E731
    for run in runners:
        if isinstance(run, _IntConv):
            prog.add_int_conv(reg(run.inp), reg(run.out), -1 if run.res is None else reg(run.res), run.weight,
                              run.zero, run.mult, run.bias, *run.params, run.res_scale, *run.tail)
        elif isinstance(run, _FloatConv):
            if run.in_codes or run.res is not None or not run.out_bits or (run.bn is not None and run.bn_fma is None):
                return None
            pool = [] if run.pool is None else [int(v) for a in run.pool[:4] for v in a] + [int(run.pool[4])]
            fma = run.bn_fma or (None, None)
            prog.add_float_conv(reg(run.inp), reg(run.out), run.weight, run.bias, *[list(p) for p in run.params[:3]],
                                run.params[3], run.pad_channel, pool, run.scale, run.zero, run.out_bits, run.relu,
                                *fma)
        elif isinstance(run, _Head) and run.codes:
            prog.add_head_codes(reg(run.inp), reg(run.out), run.w, run.z, run.inv, run.bias,
                                [] if run.pool is None else list(run.pool))
        elif isinstance(run, _MaxPool) and run.fused:
            alias[run.out] = reg(run.inp)  # pooled inside the float conv before it (see IntegerModel._build)
        else:
            return None
    prog.finish(reg(output_register))
    return prog


class IntegerModel(nn.Module):
    """Integer inference of an exported Q: ``forward(float images [N, C, H, W]) -> float32 logits [N, classes]``.

    ``layers`` is the program built by :func:`adadfq_fast.deploy.export`; ``meta`` is free-form information
    (source model, bit widths, input shape). Codes travel between layers as channels_last uint8 tensors. The
    integer convolutions run on the backend that ``adadfq_fast.use_backend`` / ``set_backend`` selects (resolved
    once per forward); in plain eager mode the prepared kernel is called directly, without the op's per-call
    argument checks (the arguments were checked when the model was built; the input image is checked here).
    """

    def __init__(self, layers: List[Layer], meta: Optional[Dict[str, Any]] = None):
        super().__init__()
        self.layers = list(layers)
        self.meta = dict(meta or {})
        self._build()

    # -- construction ---------------------------------------------------------------------------------------
    def _build(self) -> None:
        if not self.layers or self.layers[-1].kind != "head":
            raise ValueError("an integer model must end with a 'head' layer")
        self._runners = [_runner(layer) for layer in self.layers]
        self.num_registers = 1 + max(layer.cfg["out"] for layer in self.layers)
        self.output_register = self.layers[-1].cfg["out"]
        # Free each register after its last reader, so a batch-256 forward does not hold every activation.
        last_use: Dict[int, int] = {}
        for i, layer in enumerate(self.layers):
            for key in ("inp", "res"):
                r = layer.cfg.get(key)
                if r is not None:
                    last_use[r] = i
        self._frees = [[r for r, i in last_use.items() if i == j and r != self.output_register]
                       for j in range(len(self.layers))]
        if self.FUSE_FLOAT_POOL:
            self._fuse_float_pools()
        for run in self._runners:
            if isinstance(run, _FloatConv):
                run.bn_fma = _bn_fold(run)
        # On CPU with the C++ library: the whole forward in one native call (see _build_program).
        self._program = _build_program(self._runners, self.output_register) if self.USE_PROGRAM else None
        first = self.layers[0]
        self.in_channels = int(self.meta.get("in_channels", 0)) or None
        self._first_float = first.kind == "conv" and not first.cfg["int"]

    # A max pool right after a float conv's quantizer pools the floats instead: the quantizer is monotone (ReLU,
    # s*y - zp, rounding and clamping never reorder values), so max(codes(y)) == codes(max(y)) exactly, and the
    # quantizer then runs on a quarter of the values. ResNet's 3x3/2 pool after its float 7x7 conv: at batch 256
    # on an H200 the pool on codes took 2.05 ms, the float conv 2.48
    # (benchmarks/results/gpu_h200/run2/bench_int_gpu.md).
    FUSE_FLOAT_POOL = True

    def _fuse_float_pools(self) -> None:
        readers: Dict[int, int] = {}
        for layer in self.layers:
            for key in ("inp", "res"):
                r = layer.cfg.get(key)
                if r is not None:
                    readers[r] = readers.get(r, 0) + 1
        for conv, pool in zip(self._runners, self._runners[1:]):
            if (isinstance(conv, _FloatConv) and conv.out_bits and isinstance(pool, _MaxPool)
                    and pool.inp == conv.out and readers.get(conv.out) == 1):
                conv.pool, pool.fused = pool.args, True

    # Run the native program where one was built (False: always the Python runners; the tests compare both).
    USE_PROGRAM = True

    def __getstate__(self):  # copy/deepcopy/pickle: the native program is rebuilt from the layers, not copied
        state = dict(self.__dict__)
        state["_program"] = None
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        if self.USE_PROGRAM and self.__dict__.get("_runners") is not None:
            self._program = _build_program(self._runners, self.output_register)

    def _apply(self, fn, recurse=True):
        # .to(device)/.cuda() move the source tensors; the prepared copies are rebuilt from them.
        # Only the device follows: dtype casts (.half()) would change the stored integers and scales.
        device = fn(torch.zeros(1)).device
        for layer in self.layers:
            layer.tensors = {k: v.to(device) for k, v in layer.tensors.items()}
        self._build()
        return super()._apply(fn, recurse)

    # -- inference ------------------------------------------------------------------------------------------
    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
            raise ValueError(f"x: expected a float image batch [N, C, H, W], got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}"
                             f"{' ' + str(x.dtype) if isinstance(x, Tensor) else ''}")
        if self.in_channels is not None and x.shape[1] != self.in_channels:
            raise ValueError(f"x: the model takes {self.in_channels} input channels, got {x.shape[1]}")

    def _runs_program(self, x: Tensor) -> bool:
        """Whether the native program computes the forward of ``x``: a plain float32 CPU image batch of the right
        channel count, no dispatch mode active, the cpp backend in charge. A traced or compiled call sees a tensor
        subclass, and anything else takes the layer runners. Cheap on purpose: right after the previous call's native
        work, each Python step runs on cold caches (the general checks cost ~30 us of a 0.4 ms forward at batch 1,
        this ~15)."""
        return (self._program is not None and type(x) is torch.Tensor and x.dtype == torch.float32 and x.is_cpu
                and x.dim() == 4 and (self.in_channels is None or x.shape[1] == self.in_channels)
                and torch._C._len_torch_dispatch_stack() == 0 and _backend.resolve("int_conv2d", x.device) == "cpp")

    def forward(self, x: Tensor) -> Tensor:
        # The program lays the image out for its first conv itself (first_conv_layout in int_program.cpp).
        if self._runs_program(x):
            return self._program.run(x)
        self._check_input(x)
        x = x.to(torch.float32)
        if self._runs_program(x):  # e.g. a float64 batch
            return self._program.run(x)
        # channels_last: the integer kernels take codes in it, and the float first conv is much faster in it
        # (oneDNN's NHWC path; same values as NCHW, which the tests check through the first layer's codes).
        x = x.contiguous(memory_format=torch.channels_last)
        kernel = _public_int_conv2d if use_custom_op(x) else self.conv_kernel(x.device)
        regs: List[Optional[Tensor]] = [None] * self.num_registers
        regs[0] = x
        for run, frees in zip(self._runners, self._frees):
            run(regs, kernel)
            for r in frees:
                regs[r] = None
        return regs[self.output_register]

    def conv_kernel(self, device: torch.device) -> Callable:
        """The int_conv2d kernel the backend selection gives for ``device`` (under ``auto`` on CUDA with both GPU
        kernels, a per-layer choice between them: ``adadfq_fast._backend.int_conv2d_cuda_choice``)."""
        return _backend.kernel_for("int_conv2d", device)

    # -- information ----------------------------------------------------------------------------------------
    def summary(self) -> List[str]:
        """One line per layer (kind, source module, int/float, shapes, bits)."""
        lines = []
        for i, layer in enumerate(self.layers):
            c = layer.cfg
            if layer.kind == "conv":
                w = tuple(layer.tensors["q_w"].shape)
                path = "int" if c["int"] else f"float({c['in_kind']} in)"
                res = "" if c.get("res") is None else f" +res({c.get('res_kind')})"
                out = f"codes{c['out_bits']}" if c["out_bits"] else "float"
                lines.append(f"{i:3d} conv {c.get('name', '')}: {path} w{c['wbits']} {w}{res}"
                             f"{' relu' if c['relu'] else ''} -> {out}")
            else:
                lines.append(f"{i:3d} {layer.kind} {c.get('name', '')}")
        return lines

    def extra_repr(self) -> str:
        n_int = sum(1 for L in self.layers if L.kind == "conv" and L.cfg["int"])
        n_float = sum(1 for L in self.layers if L.kind == "conv" and not L.cfg["int"])
        return f"layers={len(self.layers)}, int convs={n_int}, float convs={n_float}, meta={self.meta}"
