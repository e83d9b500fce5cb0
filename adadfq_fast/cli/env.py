"""``adadfq-fast env``: versions, devices, and which backends are available (or why not), per kernel."""
from __future__ import annotations

import argparse
import platform
from typing import List, Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    argparse.ArgumentParser(prog="adadfq-fast env", description="Versions, devices and backends.").parse_args(argv)
    import torch

    import adadfq_fast
    from adadfq_fast import _backend

    try:
        import triton

        triton_version = triton.__version__
    except Exception as e:  # noqa: BLE001
        triton_version = f"not importable ({type(e).__name__})"
    rows: List[tuple] = [
        ("adadfq_fast", adadfq_fast.__version__),
        ("python", platform.python_version()),
        ("torch", torch.__version__),
        ("torch CUDA", torch.version.cuda or "none (CPU build)"),
        ("triton", triton_version),
        ("CPU threads", str(torch.get_num_threads())),
        ("CUDA devices", ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) or "none"),
        ("selected backend", _backend.current_backend()),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print("\nbackends (per device type):")
    device_types = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for backend in _backend.BACKENDS:
        for device_type in device_types:
            reason = _backend.why_unavailable(backend, device_type)
            kernels = _backend.kernels_of(backend)
            status = f"available ({len(kernels)} kernels)" if reason is None else f"unavailable: {reason}"
            print(f"  {backend:<9} {device_type:<4}  {status}")
    for device_type in device_types:
        print(f"auto on {device_type}: " + ", ".join(
            f"{k}={_backend.describe(k, torch.device(device_type))}" for k in _backend.kernel_names()))
    return 0
