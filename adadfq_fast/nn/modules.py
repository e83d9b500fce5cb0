"""The quantized network Q's building blocks (spec: "Players", "Quantizer").

* :class:`QuantConv2d`, :class:`QuantLinear`: subclasses of ``nn.Conv2d``/``nn.Linear`` (same parameters, same
  state_dict keys) whose forward quantizes the weight per output channel over its own min/max, recomputed every
  forward, with the straight-through gradient; the bias stays float.
* :class:`QuantAct`: the original per-tensor activation quantizer with the EMA range state
  ``[x_min, x_max, beta_t]`` (a float32 buffer named ``state``) and a frozen flag (state_dict extra state).
* :class:`QuantReLU`: a ReLU/ReLU6 module followed by one QuantAct per call site (see ``quantize_model``).

Ranges update whenever a QuantAct is unfrozen, in train() and eval() alike: Q runs in eval() for the whole game
(BN statistics fixed), exactly as in the original, whose QuantAct ignores the module mode.
"""
from __future__ import annotations

import warnings
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import reference as ref
from ..ops import fake_quant_act, fake_quant_weight, new_act_state

MIN_BITS, MAX_BITS = 2, 8


def check_bits(name: str, bits) -> int:
    """``bits`` as an int in 2..8, else a ValueError naming the argument (``wbits``/``abits``)."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"{name}: expected an integer bit width from {MIN_BITS} to {MAX_BITS}, got {bits!r}")
    return bits


def check_beta(beta) -> float:
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 <= float(beta) < 1.0:
        raise ValueError(f"beta: expected an EMA momentum in [0, 1), got {beta!r}")
    return float(beta)


class _WeightQuantMixin:
    """Weight bit width as a validated property, shared by the conv and linear."""

    @property
    def wbits(self) -> int:
        return self._wbits

    @wbits.setter
    def wbits(self, bits: int) -> None:
        self._wbits = check_bits("wbits", bits)

    def quantized_weight(self) -> Tensor:
        return fake_quant_weight(self.weight, self._wbits)


class QuantConv2d(_WeightQuantMixin, nn.Conv2d):
    """``nn.Conv2d`` whose weight is fake-quantized per output channel at every forward (``wbits`` keyword)."""

    def __init__(self, *args, wbits: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.wbits = wbits

    @classmethod
    def from_float(cls, conv: nn.Conv2d, wbits: int) -> "QuantConv2d":
        """A QuantConv2d that holds ``conv``'s own Parameter objects (tied weights stay tied)."""
        # Built on the meta device so no throwaway weights are allocated and initialised.
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
                padding_mode=conv.padding_mode, device="meta", wbits=wbits)
        q.weight = conv.weight
        q.bias = conv.bias
        q.train(conv.training)
        return q

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, wbits={self._wbits}"


class QuantLinear(_WeightQuantMixin, nn.Linear):
    """``nn.Linear`` whose weight is fake-quantized per output feature at every forward (``wbits`` keyword)."""

    def __init__(self, *args, wbits: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.wbits = wbits

    @classmethod
    def from_float(cls, linear: nn.Linear, wbits: int) -> "QuantLinear":
        q = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta", wbits=wbits)
        q.weight = linear.weight
        q.bias = linear.bias
        q.train(linear.training)
        return q

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, wbits={self._wbits}"


def check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {list(choices)}, got {value!r}")
    return value


class _ClippedSTE(torch.autograd.Function):
    """Returns ``out`` (the quantizer's output, whose gradient to ``x`` is the identity) unchanged; masks the
    gradient to where ``lo <= x <= hi`` (``reference.clip_mask``), so the composite is the clipped STE."""

    @staticmethod
    def forward(ctx, out, x, lo, hi):
        ctx.save_for_backward(ref.clip_mask(x, lo, hi))
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask, None, None, None


class QuantAct(nn.Module):
    """Per-tensor activation quantizer with the original's running range (spec: "Activations").

    ``state`` (buffer, float32 ``[x_min, x_max, beta_t]``, start ``[0, 0, 1]``) is updated in place by every
    forward while unfrozen, then ``x`` is quantized over it; frozen, the stored range is used as is. The frozen
    flag travels in the state_dict (``<prefix>_extra_state``) so a resumed run restores it; it is a Python bool,
    not a tensor, so reading it never synchronises with a GPU.

    Two opt-in fixes of the original's defects (both default to the faithful behaviour; set them on a whole
    model with ``set_quant_options``): ``ste="clipped"`` zeroes the gradient where x lies outside [x_min, x_max]
    (the faithful STE passes it everywhere, also where the quantizer clamps); ``range_update="standard"`` uses a
    standard bias-corrected EMA instead of the compounding one (``reference.ema_range_update``).
    """

    def __init__(self, abits: int, beta: float = 0.9, device=None, ste: str = "identity",
                 range_update: str = "faithful"):
        super().__init__()
        self.abits = abits
        self.beta = check_beta(beta)
        self.frozen = False
        self.ste = check_choice("ste", ste, ref.STES)
        self.range_update = check_choice("range_update", range_update, ref.ACT_RANGE_UPDATES)
        self.register_buffer("state", new_act_state(device))

    @property
    def abits(self) -> int:
        return self._abits

    @abits.setter
    def abits(self, bits: int) -> None:
        self._abits = check_bits("abits", bits)

    @property
    def x_min(self) -> Tensor:
        return self.state[0]

    @property
    def x_max(self) -> Tensor:
        return self.state[1]

    @property
    def beta_t(self) -> Tensor:
        return self.state[2]

    def freeze(self) -> "QuantAct":
        self.frozen = True
        return self

    def unfreeze(self) -> "QuantAct":
        self.frozen = False
        return self

    @torch.no_grad()
    def reset_range(self) -> None:
        self.state.copy_(new_act_state(self.state.device))

    def forward(self, x: Tensor) -> Tensor:
        out = fake_quant_act(x, self._abits, self.state, self.beta, update=not self.frozen,
                             range_update=self.range_update)
        if self.ste == "clipped":
            out = _ClippedSTE.apply(out, x.detach(), self.state[0], self.state[1])
        return out

    def get_extra_state(self):
        return {"frozen": bool(self.frozen)}

    def set_extra_state(self, extra) -> None:
        self.frozen = bool(extra["frozen"])

    def _apply(self, fn, recurse=True):
        # model.half()/.to(dtype) would cast the range state too; the op needs it float32, and a cast would
        # also round the stored range. Keep its float32 values and follow only the device.
        state = self._buffers["state"]
        out = super()._apply(fn, recurse)
        moved = self._buffers["state"]
        if moved is not None and state is not None and moved.dtype != torch.float32:
            self._buffers["state"] = state.to(device=moved.device)
        return out

    def extra_repr(self) -> str:
        fixes = "".join(f", {k}={v}" for k, v, faithful in (("ste", self.ste, "identity"),
                                                              ("range_update", self.range_update, "faithful"))
                        if v != faithful)
        return f"abits={self._abits}, beta={self.beta}, frozen={self.frozen}{fixes}"


class _CallCounter:
    """Per-forward call counts of a model's QuantReLUs (one slot each). ``quantize_model`` registers it as a
    forward pre-hook on Q's root, which zeroes the counts, so the i-th call of a module within one forward
    uses its i-th QuantAct. Counts are zero at every entry, which keeps torch.compile guards stable.
    Shared by all QuantReLUs of one model; deepcopy and pickle of the model keep the sharing."""

    def __init__(self):
        self.counts = []
        self.armed = False  # set by the first root forward; until then excess calls do not warn

    def new_slot(self) -> int:
        self.counts.append(0)
        return len(self.counts) - 1

    def __call__(self, module, args) -> None:
        self.counts = [0] * len(self.counts)
        self.armed = True


class QuantReLU(nn.Module):
    """A ReLU/ReLU6 module (``act``) followed by its activation quantizers (``quant``, one per call site).

    A module called k times per forward of the model (e.g. torchvision's ``BasicBlock.relu``) gets k QuantActs
    when ``quantize_model`` traced it with an example input; the i-th call within a forward uses ``quant[i]``.
    With fewer QuantActs than calls they are reused cyclically (one QuantAct shared by every call is the
    original code's behaviour) and a warning says so once.
    """

    def __init__(self, act: nn.Module, abits: int, beta: float = 0.9, num_sites: int = 1, device=None):
        super().__init__()
        if isinstance(num_sites, bool) or not isinstance(num_sites, int) or num_sites < 1:
            raise ValueError(f"num_sites: expected an integer >= 1, got {num_sites!r}")
        self.act = act
        self.quant = nn.ModuleList(QuantAct(abits, beta, device=device) for _ in range(num_sites))
        self.attach_counter(_CallCounter(), "")
        self._warned = False

    def attach_counter(self, counter: _CallCounter, name: str) -> None:
        """Count calls in ``counter`` (owned by the model's root); ``name`` is for the warning."""
        self._counter, self._slot, self._name = counter, counter.new_slot(), name

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(x)
        sites = self.quant
        counts, k = self._counter.counts, self._slot
        i = counts[k]
        counts[k] = i + 1
        n = len(sites)
        if i == n and self._counter.armed and not self._warned:
            self._warned = True
            warnings.warn(
                f"QuantReLU {self._name or '(unnamed)'}: this activation module is called more than {n} time(s) "
                f"per forward but has {n} QuantAct(s); call sites share range state cyclically (with one "
                f"QuantAct, as the original code does). Pass example_input to quantize_model for one QuantAct "
                f"per call site.",
                stacklevel=2,
            )
        return sites[i % n](y)
