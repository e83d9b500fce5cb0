"""Shared test setup. Nothing here touches a GPU at import: the suite must collect and pass without one."""
import os

# Triton decides at decoration time whether kernels run in its interpreter, so this must happen before anything
# imports adadfq_fast.kernels. On a machine with a GPU (or when the caller chose), leave it alone.
if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"

import zlib  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import adadfq_fast  # noqa: E402
from adadfq_fast import _backend  # noqa: E402

# Native backends that run on CPU tensors on this machine (the reference always does).
CPU_BACKENDS = [b for b in ("reference", "cpp") if _backend.why_unavailable(b, "cpu") is None]

# Per-dtype tolerances for values computed by reductions (statistics, losses, gradients): the kernels sum in a
# different order than PyTorch, so they agree to float32 rounding on float32 data; half-precision inputs are
# compared after both sides read the same rounded inputs, so only the output cast adds error.
TOL = {
    torch.float32: dict(rtol=2e-5, atol=1e-6),
    torch.float16: dict(rtol=2e-3, atol=1e-5),
    torch.bfloat16: dict(rtol=1.6e-2, atol=1e-5),
}


@pytest.fixture(params=CPU_BACKENDS)
def cpu_backend(request):
    with adadfq_fast.use_backend(request.param):
        yield request.param


# Change ADADFQ_TEST_SEED to draw fresh inputs everywhere; a failure is reproducible with the same value.
_SEED_OFFSET = int(os.environ.get("ADADFQ_TEST_SEED", "0"))


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    """A different seed per test (derived from its name), so inputs differ across tests yet are reproducible."""
    torch.manual_seed((zlib.crc32(request.node.nodeid.encode()) + _SEED_OFFSET) % (2**31))
