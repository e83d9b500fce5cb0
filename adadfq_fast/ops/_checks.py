"""Argument checks shared by the public ops.

Metadata checks (dtype, device, shape, bit width) run both in the real kernel and in the fake (meta)
implementation, so a bad call fails the same way eagerly and under ``torch.compile``. Value checks (NaN in a
range, lo > hi, labels out of range, a non-finite activation range state or update, a negative BN running
variance) need the data: they run on CPU tensors always, and on accelerator tensors only when
``ADADFQ_CHECK_VALUES=1`` and no CUDA graph is being captured, because reading a device value forces a host
synchronisation. Checks on Python numbers (bit widths, the margins lambda_l <= lambda_u) always run.
Every check raises before anything is written, so a failed call leaves its inputs (e.g. a range state) as they
were.
"""
from __future__ import annotations

import math
import os
from typing import Optional, Sequence

import torch
from torch import Tensor

from .._layout import is_dense

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MIN_BITS, MAX_BITS = 2, 8


def check_float(name: str, t: Tensor) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected float32, float16 or bfloat16, got {t.dtype}")


def check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits: expected an integer from {MIN_BITS} to {MAX_BITS}, got {bits!r}")


def check_codes_quantizer(scale_name: str, scale: float, zero_name: str, zero: float, bits: int) -> None:
    """A requantization to uint8 codes ``q + zero``: a finite positive scale, and an integer zero point that puts
    every level q in [-2^(bits-1), 2^(bits-1) - 1] inside [0, 255]."""
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"{scale_name}: expected a finite positive scale, got {scale}")
    half = 2 ** (bits - 1)
    if zero != math.floor(zero) or zero - half < 0 or zero + half - 1 > 255:
        raise ValueError(
            f"{zero_name}: expected an integer zero point whose codes q + {zero_name} (q in [{-half}, {half - 1}]) "
            f"lie in [0, 255], got {zero}"
        )


def check_same_device(name: str, t: Tensor, ref_name: str, ref: Tensor) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name}: expected a tensor on {ref.device} like {ref_name}, got {t.device}")


def check_logits(t: Tensor, s: Tensor) -> None:
    check_float("t", t)
    check_float("s", s)
    check_same_device("s", s, "t", t)
    if t.dim() != 2:
        raise ValueError(f"t: expected logits of shape [batch, classes], got shape {tuple(t.shape)}")
    if s.shape != t.shape:
        raise ValueError(f"s: expected the shape of t {tuple(t.shape)}, got {tuple(s.shape)}")
    if t.shape[1] < 2:
        raise ValueError(f"t: expected at least 2 classes, got {t.shape[1]}")
    if t.shape[0] == 0:
        raise ValueError("t: empty batch; the AdaDFQ losses average over samples and need at least one")


def common_logit_dtype(t: Tensor, s: Tensor):
    """Teacher and student logits may differ in dtype (e.g. a bf16-autocast teacher): both are promoted to the
    wider one before the kernel, with the cast recorded by autograd so each gradient returns in its own dtype."""
    if t.dtype == s.dtype:
        return t, s
    dtype = torch.promote_types(t.dtype, s.dtype)
    return t.to(dtype), s.to(dtype)


def check_labels(y: Tensor, t: Tensor) -> None:
    check_same_device("y", y, "t", t)
    if y.dtype != torch.int64:
        raise TypeError(f"y: expected int64 labels, got {y.dtype}")
    if y.shape != t.shape[:1]:
        raise ValueError(f"y: expected shape ({t.shape[0]},) to match the batch of t, got {tuple(y.shape)}")


def check_state(state: Tensor, x: Tensor) -> None:
    if not isinstance(state, Tensor):
        raise TypeError(f"state: expected a tensor, got {type(state).__name__}")
    if state.dtype != torch.float32 or state.shape != (3,):
        raise ValueError(
            f"state: expected a float32 tensor of shape (3,) holding [x_min, x_max, beta_t], "
            f"got {state.dtype} of shape {tuple(state.shape)}"
        )
    check_same_device("state", state, "x", x)


def values_checkable(t: Tensor) -> bool:
    """Whether reading ``t``'s values is free of device synchronisation (or explicitly allowed)."""
    if t.device.type == "cpu":
        return True
    if os.environ.get("ADADFQ_CHECK_VALUES") != "1":
        return False
    return not (t.device.type == "cuda" and torch.cuda.is_current_stream_capturing())


def check_range_values(lo: Tensor, hi: Tensor, lo_name: str = "lo", hi_name: str = "hi") -> None:
    if not values_checkable(lo) or lo.numel() == 0:
        return
    if bool((lo <= hi).all()):  # one comparison covers the common case; NaN compares false and lands below
        return
    if bool(torch.isnan(lo).any()):
        raise ValueError(f"{lo_name}: NaN in a quantization range")
    if bool(torch.isnan(hi).any()):
        raise ValueError(f"{hi_name}: NaN in a quantization range")
    bad = lo.float() > hi.float()
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0]) if bad.dim() else 0
        lo_v, hi_v = lo.reshape(-1)[i].item(), hi.reshape(-1)[i].item()
        where = f" at channel {i}" if bad.dim() else ""
        raise ValueError(f"{lo_name} > {hi_name}{where}: {lo_v} > {hi_v}")


def check_act_state_values(state: Tensor) -> None:
    """``fake_quant_act``'s range state ``[x_min, x_max, beta_t]``: finite, x_min <= x_max, beta_t in [0, 1].

    Every update from a fresh state ``[0, 0, 1]`` with finite activations keeps these (both bounds are the same
    positive combination of the old bound and the batch's min/max; beta_t only shrinks), so a state that breaks
    one was corrupted or built by hand, and would otherwise spread into every later range."""
    if not values_checkable(state):
        return
    x_min, x_max, beta_t = state.tolist()
    if not all(math.isfinite(v) for v in (x_min, x_max, beta_t)):
        raise ValueError(f"state: NaN or inf in the range state [x_min, x_max, beta_t] = {[x_min, x_max, beta_t]}")
    if x_min > x_max:
        raise ValueError(f"state[0] (x_min) > state[1] (x_max): {x_min} > {x_max}")
    if not 0.0 <= beta_t <= 1.0:
        raise ValueError(f"state[2] (beta_t): expected the momentum power in [0, 1], got {beta_t}")


def check_act_update(new_state: Tensor) -> None:
    """The range ``fake_quant_act`` is about to store: a NaN or inf in the activation makes it non-finite, which
    would poison every later call (the EMA never forgets a NaN). Raised before the state is written."""
    if not values_checkable(new_state):
        return
    if not bool(torch.isfinite(new_state[:2]).all()):
        raise ValueError(
            f"x: NaN or inf in the activation would make the stored range {new_state[:2].tolist()}; the range "
            "state was left unchanged"
        )


def check_margins(lambda_l: float, lambda_u: float) -> None:
    """The margin loss keeps H' inside [lambda_l, lambda_u]: an empty or non-finite interval is a mistake."""
    for name, v in (("lambda_l", lambda_l), ("lambda_u", lambda_u)):
        if not math.isfinite(v):
            raise ValueError(f"{name}: expected a finite margin, got {v!r}")
    if lambda_l > lambda_u:
        raise ValueError(f"lambda_l > lambda_u: {lambda_l} > {lambda_u} (the lower margin must not exceed the upper)")


def check_bn_values(running_means: Sequence[Tensor], running_vars: Sequence[Tensor]) -> None:
    """BN running statistics: finite means, finite non-negative variances (one pass over all layers)."""
    if not values_checkable(running_vars[0]):
        return
    rv = torch.cat([r.reshape(-1).float() for r in running_vars])
    if not bool((rv >= 0).all() & torch.isfinite(rv).all()):
        for i, r in enumerate(running_vars):
            bad = ~((r >= 0) & torch.isfinite(r))
            if bool(bad.any()):
                c = int(bad.nonzero()[0, 0])
                raise ValueError(f"running_vars[{i}]: expected finite non-negative variances, got {r[c].item()} at "
                                 f"channel {c}")
    rm = torch.cat([r.reshape(-1).float() for r in running_means])
    if not bool(torch.isfinite(rm).all()):
        i = next(i for i, r in enumerate(running_means) if not bool(torch.isfinite(r).all()))
        raise ValueError(f"running_means[{i}]: NaN or inf in a running mean")


def check_label_values(y: Tensor, num_classes: int) -> None:
    if not values_checkable(y) or y.numel() == 0:
        return
    lo, hi = (int(v) for v in torch.aminmax(y))
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"y: labels must lie in [0, {num_classes - 1}], got values from {lo} to {hi}")


def dense(x: Tensor) -> Tensor:
    """``x`` itself when the kernels can read it as flat memory, else a contiguous copy."""
    return x if is_dense(x) else x.contiguous()


def normalize_axis(axis: Optional[int], ndim: int) -> int:
    if axis is None:
        return -1
    if isinstance(axis, bool) or not isinstance(axis, int) or not -ndim <= axis < ndim:
        raise ValueError(f"axis: expected None or an integer in [{-ndim}, {ndim - 1}], got {axis!r}")
    return axis % ndim


def check_bn_inputs(feats: Sequence[Tensor], running_means: Sequence[Tensor], running_vars: Sequence[Tensor]) -> None:
    if len(feats) == 0:
        raise ValueError("feats: expected at least one BN input")
    if not len(feats) == len(running_means) == len(running_vars):
        raise ValueError(
            f"running_means/running_vars: expected one per feature ({len(feats)}), "
            f"got {len(running_means)} and {len(running_vars)}"
        )
    for i, (x, rm, rv) in enumerate(zip(feats, running_means, running_vars)):
        check_float(f"feats[{i}]", x)
        check_same_device(f"feats[{i}]", x, "feats[0]", feats[0])
        if x.dim() < 2:
            raise ValueError(f"feats[{i}]: expected at least 2 dims [N, C, ...], got shape {tuple(x.shape)}")
        for name, r in ((f"running_means[{i}]", rm), (f"running_vars[{i}]", rv)):
            check_float(name, r)
            check_same_device(name, r, f"feats[{i}]", x)
            if r.shape != (x.shape[1],):
                raise ValueError(f"{name}: expected shape ({x.shape[1]},) for the channels of feats[{i}], got {tuple(r.shape)}")
