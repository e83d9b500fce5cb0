"""A self-describing file for a trained Q: how to rebuild the network, plus its state dict.

A bare ``Q.state_dict()`` cannot be loaded without knowing the model, its class/channel counts, input size and
bit widths; ``adadfq-fast quantize`` and the trainer write this richer file so that ``load_q_checkpoint`` (and
``adadfq-fast export``) need nothing else. Layout (``torch.save`` of a dict):

``{"format": "adadfq_fast.q_checkpoint", "version": 1, "model": zoo name, "num_classes", "in_channels",
"in_size": [H, W], "wbits", "abits", "beta", "state_dict": Q.state_dict(), "meta": {...free-form...}}``
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

FORMAT = "adadfq_fast.q_checkpoint"
VERSION = 1


def save_q_checkpoint(path: str | os.PathLike, q: nn.Module, *, model: str, num_classes: int, in_channels: int,
                      in_size, wbits: int, abits: int, beta: float = 0.9,
                      meta: Optional[Dict[str, Any]] = None) -> None:
    """Write ``q`` with what ``load_q_checkpoint`` needs to rebuild it (atomically: temp file, then rename)."""
    payload = {
        "format": FORMAT, "version": VERSION, "model": model, "num_classes": int(num_classes),
        "in_channels": int(in_channels), "in_size": [int(s) for s in in_size], "wbits": int(wbits),
        "abits": int(abits), "beta": float(beta),
        "state_dict": {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in q.state_dict().items()},
        "meta": dict(meta or {}),
    }
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def read_q_checkpoint(path: str | os.PathLike) -> Dict[str, Any]:
    """The checkpoint's dict, after checking that it is one (clear errors for other files or versions)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Q checkpoint {path} not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for a damaged file
        raise ValueError(f"{path} is not a readable Q checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not an adadfq_fast Q checkpoint (no format={FORMAT!r}); a bare state dict "
                         "loads with `adadfq-fast eval --wbits/--abits` or quantize_model(...).load_state_dict")
    if payload.get("version") != VERSION:
        raise ValueError(f"{path}: Q checkpoint version {payload.get('version')!r}, this adadfq_fast reads "
                         f"version {VERSION}")
    return payload


def is_q_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a readable file in this format (any version); never raises for other files."""
    try:
        payload = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - anything unreadable is simply not one
        return False
    return isinstance(payload, dict) and payload.get("format") == FORMAT


def load_q_checkpoint(path: str | os.PathLike) -> Tuple[nn.Module, Dict[str, Any]]:
    """Rebuild Q (eval mode, activation ranges frozen, on CPU) from a checkpoint; returns ``(q, payload)``."""
    from adadfq_fast.models import build_model

    from .quantize import freeze_act_ranges, quantize_model

    payload = read_q_checkpoint(path)
    in_size = tuple(payload["in_size"])
    fp = build_model(payload["model"], num_classes=payload["num_classes"], in_channels=payload["in_channels"],
                     in_size=in_size)
    example = torch.zeros(1, payload["in_channels"], *in_size)
    q = quantize_model(fp, payload["wbits"], payload["abits"], beta=payload.get("beta", 0.9), example_input=example)
    q.load_state_dict(payload["state_dict"])
    freeze_act_ranges(q)
    return q.eval(), payload
