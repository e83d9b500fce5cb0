"""The AdaDFQ math that the library itself computes with, outside the kernels: the spec's quantizer (scale, zero
point, integer levels, per-channel weight ranges) and the normalised entropy H' of the generator's margin.

One home for all of it: ``reference`` (the oracle and fallback backend) builds on it, ``deploy`` exports integer
weights and activation parameters with it (so the integers reproduce the fake-quant bit for bit), and ``game``
logs H' with it. The kernels (C++, CUDA, Triton) reproduce these float32 expressions in their own languages.
"""
from __future__ import annotations

import math
from typing import Tuple, Union

import torch
from torch import Tensor

# Smallest range width; keeps the scale finite for constant tensors (spec: max(hi - lo, 1e-8)).
RANGE_EPS = 1e-8


def quant_params(bits: int, lo: Tensor, hi: Tensor) -> Tuple[Tensor, Tensor]:
    """Scale and zero point of the spec's asymmetric quantizer, in float32."""
    lo = lo.float()
    hi = hi.float()
    # Written as the original's `n / clamp(...)` evaluates: Python's int / Tensor is Tensor.__rtruediv__, which
    # PyTorch computes as reciprocal(...) * n (two roundings). The kernels follow this order exactly.
    scale = torch.reciprocal(torch.clamp(hi - lo, min=RANGE_EPS)) * (2**bits - 1)
    zero_point = torch.round(scale * lo) + 2 ** (bits - 1)
    return scale, zero_point


def quant_levels(x: Tensor, bits: int, scale: Union[Tensor, float], zero_point: Union[Tensor, float]) -> Tensor:
    """Integer levels q in [-2^(k-1), 2^(k-1)-1] (as float32), half-to-even rounding."""
    return torch.clamp(torch.round(scale * x.float() - zero_point), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


def weight_range(w: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-output-channel (dim 0) min and max, recomputed at every forward."""
    flat = w.detach().float().reshape(w.shape[0], -1)
    return flat.amin(dim=1), flat.amax(dim=1)


def row_entropy(logits: Tensor) -> Tensor:
    """Entropy (natural log) of softmax over the last dim, per row."""
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def normalized_entropy(h: Tensor, num_classes: int) -> Tensor:
    """H' = (H - min H) / (ln C - min H); the batch minimum is NOT detached (spec)."""
    h_min = h.amin()
    return (h - h_min) / (math.log(num_classes) - h_min)
