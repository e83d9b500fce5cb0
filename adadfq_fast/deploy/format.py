"""The integer model file (``.adq``): versioned, checksummed, with k-bit weights packed k bits each.

Layout (little-endian)::

    offset  size  field
    0       8     magic b"\\x89ADQ\\r\\n\\x1a\\n"  (PNG-style: catches text-mode mangling and foreign files)
    8       2     format version (uint16), currently 1
    10      2     flags (uint16), 0
    12      8     payload length in bytes (uint64)
    20      32    SHA-256 of the payload
    52      ...   payload: ``torch.save`` of {"meta": JSON str, "layers": [{"kind", "cfg": JSON str,
                  "tensors": {name: tensor}, "packed": {name: {"bits", "shape", "data": uint8}}}]}

Weight levels ``q_w`` (int8 in [-2^(k-1), 2^(k-1)-1]) are stored as unsigned ``q_w + 2^(k-1)`` in a little-endian
bit stream of exactly k bits per value (two 4-bit values per byte, 8 3-bit values per 3 bytes, ...); everything
else (zero points, scales, BN statistics) is stored as is. The payload is read with ``weights_only=True`` (no
code runs). ``load`` refuses, each with its own message: a file that is not ours (magic), a newer or unknown
version, a truncated file, a checksum mismatch (corruption) and an inconsistent payload.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import struct
from typing import Any, Dict, List

import numpy as np
import torch

from .modules import IntegerModel, Layer

__all__ = ["save", "load", "pack_bits", "unpack_bits", "FormatError", "MAGIC", "VERSION", "file_size_report"]

MAGIC = b"\x89ADQ\r\n\x1a\n"
VERSION = 1
_HEADER = struct.Struct("<8sHHQ32s")


class FormatError(ValueError):
    """An integer model file that cannot be read: not ours, a newer/unknown version, truncated or corrupted."""


def pack_bits(q: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack signed levels ``q`` (int8, in [-2^(bits-1), 2^(bits-1)-1]) into a uint8 tensor of
    ``ceil(numel * bits / 8)`` bytes (flattened, little-endian bit order)."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits: expected an integer from 2 to 8, got {bits!r}")
    if q.dtype != torch.int8:
        raise TypeError(f"q: expected int8 levels, got {q.dtype}")
    half = 2 ** (bits - 1)
    u = q.detach().cpu().reshape(-1).numpy().astype(np.int16) + half
    if u.size and (u.min() < 0 or u.max() > 2 * half - 1):
        raise ValueError(f"q: levels outside [{-half}, {half - 1}] cannot be packed in {bits} bits")
    u = u.astype(np.uint8)
    if bits == 8:
        return torch.from_numpy(u.copy())
    plane = (u[:, None] >> np.arange(bits, dtype=np.uint8)) & 1
    return torch.from_numpy(np.packbits(plane.reshape(-1), bitorder="little"))


def unpack_bits(data: torch.Tensor, bits: int, shape) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: int8 levels of ``shape``."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits: expected an integer from 2 to 8, got {bits!r}")
    n = int(np.prod(shape)) if len(shape) else 1
    raw = data.detach().cpu().numpy().astype(np.uint8, copy=False).reshape(-1)
    if raw.size != (n * bits + 7) // 8:
        raise FormatError(f"packed weights: {raw.size} bytes for {n} {bits}-bit values (expected "
                          f"{(n * bits + 7) // 8})")
    if bits == 8:
        u = raw.astype(np.int16)
    else:
        plane = np.unpackbits(raw, count=n * bits, bitorder="little").reshape(n, bits).astype(np.int16)
        u = (plane << np.arange(bits, dtype=np.int16)).sum(axis=1)
    return torch.from_numpy((u - 2 ** (bits - 1)).astype(np.int8)).reshape(tuple(shape))


def _layer_record(layer: Layer) -> Dict[str, Any]:
    tensors, packed = {}, {}
    for name, t in layer.tensors.items():
        t = t.detach().cpu()
        if name == "q_w":
            bits = int(layer.cfg["wbits"])
            packed[name] = {"bits": bits, "shape": list(t.shape), "data": pack_bits(t, bits)}
        else:
            tensors[name] = t.contiguous().clone()
    return {"kind": layer.kind, "cfg": json.dumps(layer.cfg, sort_keys=True), "tensors": tensors, "packed": packed}


def _payload_bytes(model: IntegerModel) -> bytes:
    obj = {"meta": json.dumps(model.meta, sort_keys=True), "layers": [_layer_record(L) for L in model.layers]}
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def save(model: IntegerModel, path: str | os.PathLike) -> int:
    """Write ``model`` to ``path`` (atomically: a temp file, then a rename); returns the file size in bytes."""
    if not isinstance(model, IntegerModel):
        raise TypeError(f"model: expected an IntegerModel (adadfq_fast.deploy.export(q)), got {type(model).__name__}")
    payload = _payload_bytes(model)
    header = _HEADER.pack(MAGIC, VERSION, 0, len(payload), hashlib.sha256(payload).digest())
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(header)
        f.write(payload)
    os.replace(tmp, path)
    return len(header) + len(payload)


def _read_payload(path: str) -> bytes:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"integer model file {path} not found")
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < len(MAGIC) or blob[: len(MAGIC)] != MAGIC:
        raise FormatError(f"{path} is not an adadfq_fast integer model file (it does not start with the .adq "
                          f"magic; first bytes {blob[:8]!r}). Make one with `adadfq-fast export`.")
    if len(blob) < _HEADER.size:
        raise FormatError(f"{path} is truncated: {len(blob)} bytes, shorter than the {_HEADER.size}-byte header")
    _, version, _flags, length, digest = _HEADER.unpack_from(blob)
    if version > VERSION:
        raise FormatError(f"{path} has format version {version}, newer than this adadfq_fast reads (version "
                          f"{VERSION}); upgrade adadfq_fast to load it")
    if version < 1:
        raise FormatError(f"{path} has an unknown format version {version} (this adadfq_fast reads {VERSION})")
    payload = blob[_HEADER.size:]
    if len(payload) < length:
        raise FormatError(f"{path} is truncated: the header announces {length} payload bytes, the file holds "
                          f"{len(payload)}")
    if len(payload) > length:
        raise FormatError(f"{path} has {len(payload) - length} unexpected bytes after its payload (corrupted)")
    if hashlib.sha256(payload).digest() != digest:
        raise FormatError(f"{path} is corrupted: the SHA-256 checksum of its payload does not match the header")
    return payload


def load(path: str | os.PathLike) -> IntegerModel:
    """Read an ``.adq`` file written by :func:`save` (see the module docstring for the checks)."""
    path = os.fspath(path)
    payload = _read_payload(path)
    try:
        obj = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        meta = json.loads(obj["meta"])
        layers: List[Layer] = []
        for rec in obj["layers"]:
            tensors = dict(rec["tensors"])
            for name, p in rec["packed"].items():
                tensors[name] = unpack_bits(p["data"], int(p["bits"]), p["shape"])
            layers.append(Layer(rec["kind"], json.loads(rec["cfg"]), tensors))
        return IntegerModel(layers, meta)
    except FormatError:
        raise
    except Exception as e:  # noqa: BLE001 - a payload that passed the checksum but does not decode
        raise FormatError(f"{path}: payload does not decode as an integer model ({type(e).__name__}: {e})") from e


def file_size_report(model: IntegerModel, path: str | os.PathLike, fp32_state_dict_bytes: int) -> str:
    size = os.path.getsize(path)
    return (f"{os.fspath(path)}: {size / 1024:.1f} KiB ({size} bytes), {fp32_state_dict_bytes / size:.2f}x smaller "
            f"than the FP32 state dict ({fp32_state_dict_bytes / 1024:.1f} KiB)")
