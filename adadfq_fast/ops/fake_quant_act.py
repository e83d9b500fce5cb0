"""``adadfq::fake_quant_act``: the original QuantAct: EMA range update, then quantization.

``state`` is a float32 tensor ``[x_min, x_max, beta_t]`` (start: ``[0, 0, 1]``). With ``update=True`` it is
updated exactly as the spec says (compounding bias correction) from this batch's min/max (one pass), then ``x``
is quantized over the new range (a second pass). Gradient: straight-through identity to ``x``.

Bad values raise ValueError before ``state`` is written (``_checks``): a state that is not finite, has
x_min > x_max or beta_t outside [0, 1]; with ``update=True``, an activation whose NaN/inf would make the stored
range non-finite. (With ``update=False`` a NaN in ``x`` just gives NaN outputs, as the reference does.)

The op itself is functional (returns ``(out, new_state)``) because PyTorch cannot attach an autograd formula to
a mutating custom op; :func:`fake_quant_act` copies ``new_state`` back into ``state``, so callers see an
in-place update.
"""
from __future__ import annotations


import torch
from torch import Tensor

from .. import reference as ref
from . import _checks
from ._eager import FusedOp, straight_through


def _check(x: Tensor, bits: int, state: Tensor, beta: float) -> None:
    _checks.check_float("x", x)
    _checks.check_bits(bits)
    _checks.check_state(state, x)
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta: expected a momentum in [0, 1), got {beta!r}")


def _prepare(x: Tensor, bits: int, state: Tensor, beta: float, update: bool):
    """Checks, then the kernel's arguments."""
    _check(x, bits, state, beta)
    _checks.check_act_state_values(state)
    return _checks.dense(x), bits, state, beta, update


def _fake(x, bits, state, beta, update):
    _check(x, bits, state, beta)
    return torch.empty_like(x), torch.empty_like(state)


def _check_outputs(kargs, outputs) -> None:
    """A range update must not store a NaN/inf range (it would poison every later call): raised before the public
    function copies it into ``state``."""
    if kargs[4]:
        _checks.check_act_update(outputs[1])


fake_quant_act_op = FusedOp("fake_quant_act", "fake_quant_act", _prepare, _fake,
                            empty=lambda x, bits, state, *rest: (torch.empty_like(x), state.clone()),
                            backward=straight_through(5), non_differentiable=(1,), check_outputs=_check_outputs)


def new_act_state(device=None) -> Tensor:
    """A fresh range state ``[x_min, x_max, beta_t] = [0, 0, 1]``."""
    return torch.tensor([0.0, 0.0, 1.0], dtype=torch.float32, device=device)


def fake_quant_act(x: Tensor, bits: int, state: Tensor, beta: float = 0.9, update: bool = True,
                   range_update: str = "faithful") -> Tensor:
    """Quantize an activation per tensor, updating the running range ``state`` in place when ``update``.

    ``range_update="standard"`` (opt-in fix of the compounding bias correction): the kernels implement the
    faithful update; fed the raw EMA (``reference.standard_ema_prescale``, a 3-element op) they compute the
    standard bias-corrected one, so every backend serves both.
    """
    if range_update not in ref.ACT_RANGE_UPDATES:
        raise ValueError(f"range_update: expected one of {list(ref.ACT_RANGE_UPDATES)}, got {range_update!r}")
    kernel_state = state
    if update and range_update == "standard":
        _checks.check_state(state, x)
        kernel_state = ref.standard_ema_prescale(state)
    args = (x, bits, kernel_state, float(beta), bool(update))
    out, new_state = fake_quant_act_op.call(args, (x, kernel_state))
    if update:
        with torch.no_grad():
            state.copy_(new_state)
    return out
