"""Loading of the compiled libraries, never raising: failures are recorded as the reason a backend is off."""
from __future__ import annotations

import glob
import os
from typing import Optional

import torch

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def find_library(stem: str) -> Optional[str]:
    """Path of ``adadfq_fast/<stem>*.so`` (or .pyd), or None."""
    for pattern in (f"{stem}.*.so", f"{stem}.so", f"{stem}.*.pyd", f"{stem}.pyd"):
        hits = sorted(glob.glob(os.path.join(_PACKAGE_DIR, pattern)))
        if hits:
            return hits[0]
    return None


def load_library(stem: str) -> Optional[str]:
    """Load ``adadfq_fast/<stem>`` into the dispatcher. Returns None on success, else why it failed."""
    if os.environ.get("ADADFQ_DISABLE_NATIVE") == "1":
        return "disabled by ADADFQ_DISABLE_NATIVE=1"
    path = find_library(stem)
    if path is None:
        return (
            f"adadfq_fast/{stem}*.so was not built (install the package with its native build: "
            f"pip install -e . --no-build-isolation)"
        )
    try:
        torch.ops.load_library(path)
    except Exception as e:  # noqa: BLE001 - any failure means "not available", with the reason
        return f"{os.path.basename(path)} failed to load: {type(e).__name__}: {e}"
    return None
