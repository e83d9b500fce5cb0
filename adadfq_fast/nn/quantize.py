"""Build Q from P: ``quantize_model`` and the helpers that act on every quantizer of a model.

What gets quantized (spec: "Players", "Quantizer", "Not quantized"):

* every ``nn.Conv2d`` / ``nn.Linear`` (exact types, as the original's ``type(m) == nn.Conv2d``) becomes
  :class:`QuantConv2d` / :class:`QuantLinear` holding the same Parameter objects, so the original keys
  (``layer1.0.conv1.weight``) are unchanged and a float checkpoint of P loads into Q with ``strict=False``;
  the first conv and the last linear are quantized like the rest;
* every ``nn.ReLU`` / ``nn.ReLU6`` module becomes a :class:`QuantReLU` wrapper: the activation itself at
  ``<name>.act`` (no parameters) and its QuantAct(s) at ``<name>.quant.<i>`` (buffer ``state`` and the frozen
  flag in ``_extra_state``);
* the input image, BatchNorm (not folded), pooling and biases stay float.

Call sites. The original replaces ReLU *modules*, so a module that the forward calls twice (torchvision's
``BasicBlock.relu``) shares one QuantAct between two differently distributed tensors. The spec counts one
QuantAct per ReLU application (19 in ResNet-20), which is the same thing for the models the original ran
(pytorchcv: a distinct ReLU module per application). Here the unit is the call site: given ``example_input``,
``quantize_model`` runs P once (eval, no grad, on the copy) and gives each ReLU/ReLU6 module one QuantAct per
call; without it each module gets one QuantAct (the original's behaviour) and a QuantReLU that turns out to be
called more often warns at its first forward. Functional ReLUs (``F.relu``, ``torch.relu``, ``x.relu()``,
``F.relu6``) cannot be replaced by module surgery: the trace counts them and ``quantize_model`` warns (they
are then *not* followed by a quantizer); without ``example_input`` they go unnoticed.
"""
from __future__ import annotations

import copy
import itertools
import warnings
from collections import Counter
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .modules import QuantAct, QuantConv2d, QuantLinear, QuantReLU, _CallCounter, check_beta, check_bits

_ACT_TYPES = (nn.ReLU, nn.ReLU6)
_QUANT_TYPES = (QuantConv2d, QuantLinear, QuantAct, QuantReLU)


class _CountReLUs(TorchFunctionMode):
    """Counts relu-like function calls (an ``nn.ReLU`` module's forward is one ``F.relu`` call; an
    ``nn.ReLU6``'s is one ``F.hardtanh(x, 0, 6)``). Nested calls inside a counted function are not seen:
    the mode is off while its handler runs."""

    _RELU = {F.relu, F.relu_, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_, F.relu6}
    _HARDTANH = {F.hardtanh, F.hardtanh_}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._RELU:
            self.count += 1
        elif func in self._HARDTANH:
            lo = args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)
            hi = args[2] if len(args) > 2 else kwargs.get("max_val", 1.0)
            if lo == 0.0 and hi == 6.0:
                self.count += 1
        return func(*args, **kwargs)


def relu_call_counts(model: nn.Module, *example_args, **example_kwargs) -> Tuple[Dict[str, int], int]:
    """Run ``model`` once and count calls: ``({name: calls} for each ReLU/ReLU6 module, functional_relus)``.

    Runs in eval mode under no_grad and restores every module's mode, so BatchNorm statistics do not change
    (but the model *is* run: use a copy if it has other side effects). A module registered under several names
    is reported under the first.
    """
    names = {}
    for name, m in model.named_modules():
        if isinstance(m, _ACT_TYPES):
            names.setdefault(id(m), name)
    calls: Counter = Counter()
    handles = [
        m.register_forward_hook(lambda mod, a, out: calls.update([id(mod)]))
        for m in {id(m): m for m in model.modules() if isinstance(m, _ACT_TYPES)}.values()
    ]
    modes = {m: m.training for m in model.modules()}
    counter = _CountReLUs()
    try:
        model.eval()
        with torch.no_grad(), counter:
            model(*example_args, **example_kwargs)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
    per_module = {name: calls.get(i, 0) for i, name in names.items()}
    return per_module, counter.count - sum(calls.values())


def quantize_model(
    model: nn.Module,
    wbits: int,
    abits: int,
    beta: float = 0.9,
    example_input=None,
) -> nn.Module:
    """A deep copy of ``model`` as the quantized network Q (see the module docstring for what changes).

    ``example_input`` (a tensor, or a tuple of positional arguments) enables one QuantAct per ReLU call site
    and the detection of functional ReLUs; it is run through the copy once in eval mode without gradients.
    The original ``model`` is never modified. Every QuantAct starts unfrozen with state ``[0, 0, 1]``.
    """
    check_bits("wbits", wbits)
    check_bits("abits", abits)
    beta = check_beta(beta)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if isinstance(model, _QUANT_TYPES) or any(isinstance(m, _QUANT_TYPES) for m in model.modules()):
        raise ValueError("model: already contains quantized modules; use set_bits() to change bit widths")

    q = copy.deepcopy(model)

    sites: Dict[int, int] = {}
    if example_input is not None:
        args = example_input if isinstance(example_input, tuple) else (example_input,)
        per_name, functional = relu_call_counts(q, *args)
        by_name = dict(q.named_modules())
        sites = {id(by_name[name]): max(n, 1) for name, n in per_name.items()}
        if functional > 0:
            warnings.warn(
                f"quantize_model: the forward applies {functional} functional ReLU/ReLU6 call(s) (F.relu, "
                f"torch.relu, Tensor.relu, F.relu6, ...) that module replacement cannot reach; their outputs are "
                f"not quantized. Use nn.ReLU/nn.ReLU6 modules to quantize them.",
                stacklevel=2,
            )

    counter = _CallCounter()
    # QuantAct states start where the model's tensors are (a model spread over devices: the first one's).
    device = next(itertools.chain(q.parameters(), q.buffers()), torch.empty(0)).device
    replaced: Dict[int, nn.Module] = {}  # a module registered twice is replaced once (tied weights stay tied)

    def convert(m: nn.Module, name: str) -> Optional[nn.Module]:
        t = type(m)
        if t is nn.Conv2d:
            return QuantConv2d.from_float(m, wbits)
        if t is nn.Linear:
            return QuantLinear.from_float(m, wbits)
        if isinstance(m, _ACT_TYPES):
            w = QuantReLU(m, abits, beta, num_sites=sites.get(id(m), 1), device=device)
            w.attach_counter(counter, name)
            return w
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.modules.conv._ConvNd)):
            warnings.warn(
                f"quantize_model: {name or 'model'} ({t.__name__}) is not an nn.Conv2d/nn.Linear and stays in "
                f"floating point",
                stacklevel=3,
            )
        return None

    def walk(parent: nn.Module, prefix: str) -> None:
        # _modules, not named_children(): the latter skips a module's second registration, which must be swapped too.
        for child_name, child in list(parent._modules.items()):
            if child is None:
                continue
            name = f"{prefix}.{child_name}" if prefix else child_name
            if id(child) in replaced:
                setattr(parent, child_name, replaced[id(child)])
                continue
            new = convert(child, name)
            if new is None:
                replaced[id(child)] = child
                walk(child, name)
            else:
                replaced[id(child)] = new
                setattr(parent, child_name, new)

    root = convert(q, "")
    if root is not None:
        q = root
    else:
        walk(q, "")
    q.register_forward_pre_hook(counter)
    return q


def act_quantizers(model: nn.Module) -> List[QuantAct]:
    """Every QuantAct of ``model``, in ``model.modules()`` order (each once)."""
    return [m for m in model.modules() if isinstance(m, QuantAct)]


def weight_quantizers(model: nn.Module) -> List[nn.Module]:
    """Every QuantConv2d / QuantLinear of ``model``, in ``model.modules()`` order."""
    return [m for m in model.modules() if isinstance(m, (QuantConv2d, QuantLinear))]


def freeze_act_ranges(model: nn.Module) -> nn.Module:
    """Freeze every activation range (the original's ``freeze_model``); returns ``model``."""
    for m in act_quantizers(model):
        m.freeze()
    return model


def unfreeze_act_ranges(model: nn.Module) -> nn.Module:
    """Unfreeze every activation range (the original's ``unfreeze_model``); returns ``model``."""
    for m in act_quantizers(model):
        m.unfreeze()
    return model


def set_quant_options(model: nn.Module, ste: Optional[str] = None, act_range_update: Optional[str] = None) -> nn.Module:
    """Set the opt-in fixes on every QuantAct of ``model`` in place (None: leave as is); returns ``model``.

    ``ste``: ``identity`` (faithful) or ``clipped``; ``act_range_update``: ``faithful`` or ``standard`` (see
    :class:`QuantAct`). The weight quantizers need neither: their range is their own min/max, so no weight is
    ever clamped (a clipped STE would pass every gradient) and there is no running range.
    """
    from .. import reference as ref
    from .modules import check_choice

    if ste is not None:
        check_choice("ste", ste, ref.STES)
    if act_range_update is not None:
        check_choice("act_range_update", act_range_update, ref.ACT_RANGE_UPDATES)
    for m in act_quantizers(model):
        if ste is not None:
            m.ste = ste
        if act_range_update is not None:
            m.range_update = act_range_update
    return model


def set_bits(model: nn.Module, wbits: Optional[int] = None, abits: Optional[int] = None) -> nn.Module:
    """Change the bit width of every weight (``wbits``) and/or activation (``abits``) quantizer in place.

    Range states are kept; after a change of ``abits`` they are the ranges seen so far, still valid.
    """
    if wbits is not None:
        check_bits("wbits", wbits)
    if abits is not None:
        check_bits("abits", abits)
    if wbits is not None:
        for m in weight_quantizers(model):
            m.wbits = wbits
    if abits is not None:
        for m in act_quantizers(model):
            m.abits = abits
    return model
