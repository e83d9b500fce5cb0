"""The one-pass codes kernel of the integer model's float layers (kernels/quantize_codes.py) against the PyTorch
steps it replaces on the GPU (deploy.modules: relu, s*y, - zp, round, clamp, + zp): equal byte for byte."""
import pytest
import torch

from adadfq_fast.deploy.modules import quantize_codes_steps
from helpers import import_triton_kernel, triton_device

DEVICE = triton_device()
K = import_triton_kernel("quantize_codes")

pytestmark = pytest.mark.triton


def _torch_codes(y, scale, zero, bits, relu):
    return quantize_codes_steps(y.clone(), scale, zero, bits, relu)  # (the steps work in place)


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_matches_torch_steps(bits, relu, layout):
    y = torch.randn(3, 5, 17, 19) * 4
    # Exact ties after scaling (k + 0.5) / scale, where rounding half to even matters.
    y.view(-1)[:200] = (torch.randint(-20, 20, (200,)).float() + 0.5) / 2.5
    if layout == "channels_last":
        y = y.contiguous(memory_format=torch.channels_last)
    zero = float(2 ** (bits - 1) - 1) if relu else 0.0
    want = _torch_codes(y, 2.5, zero, bits, relu)
    got = K.quantize_codes(y.to(DEVICE), 2.5, zero, bits, relu)
    assert got.dtype == torch.uint8 and got.stride() == y.stride()
    torch.testing.assert_close(got.cpu(), want, rtol=0, atol=0)


def test_empty_and_errors():
    assert K.quantize_codes(torch.empty(0, 4, 3, 3, device=DEVICE), 1.0, 0.0, 4, True).numel() == 0
    with pytest.raises(TypeError, match="y: expected float32"):
        K.quantize_codes(torch.zeros(2, device=DEVICE, dtype=torch.float16), 1.0, 0.0, 4, True)
    with pytest.raises(ValueError, match="bits"):
        K.quantize_codes(torch.zeros(2, device=DEVICE), 1.0, 0.0, 9, True)
