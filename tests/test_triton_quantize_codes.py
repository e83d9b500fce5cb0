"""The Triton kernel of ``adadfq::quantize_codes`` (kernels/quantize_codes.py) against the PyTorch steps it replaces
on the GPU (``reference.quantize_codes_forward``: [fma], relu, s*y, - zp, round, clamp, + zp): equal byte for byte."""
import pytest
import torch

import adadfq_fast
from adadfq_fast import reference as ref
from helpers import import_triton_kernel, triton_device

DEVICE = triton_device()
K = import_triton_kernel("quantize_codes")

pytestmark = pytest.mark.triton


def _input(layout):
    y = torch.randn(3, 5, 17, 19) * 4
    # Exact ties after scaling (k + 0.5) / scale, where rounding half to even matters.
    y.view(-1)[:200] = (torch.randint(-20, 20, (200,)).float() + 0.5) / 2.5
    return y.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else y


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_matches_torch_steps(bits, relu, layout):
    y = _input(layout)
    zero = float(2 ** (bits - 1) - 1) if relu else float(2 ** (bits - 1))
    want = ref.quantize_codes_forward(y, 2.5, zero, bits, relu)
    got = K.quantize_codes(y.to(DEVICE), 2.5, zero, bits, relu)
    assert got.dtype == torch.uint8 and got.stride() == y.stride()
    torch.testing.assert_close(got.cpu(), want, rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed"])
def test_affine_per_channel(layout):
    y = _input("channels_last" if layout == "channels_last" else "contiguous")
    if layout == "transposed":
        y = y.transpose(2, 3)  # dense, neither contiguous nor channels_last: the channel stride still finds c
    mult, add = torch.randn(5) * 3, torch.randn(5)
    want = ref.quantize_codes_forward(y, 2.5, 8.0, 4, True, mult, add)
    got = K.quantize_codes(y.to(DEVICE), 2.5, 8.0, 4, True, mult.to(DEVICE), add.to(DEVICE))
    assert got.stride() == y.stride()
    torch.testing.assert_close(got.cpu(), want, rtol=0, atol=0)


def test_public_op_on_the_triton_backend():
    y = _input("channels_last").to(DEVICE)
    with adadfq_fast.use_backend("triton"):
        got = adadfq_fast.quantize_codes(y, 2.5, 8.0, 4, True)
    torch.testing.assert_close(got.cpu(), ref.quantize_codes_forward(y.cpu(), 2.5, 8.0, 4, True), rtol=0, atol=0)


def test_empty_and_errors():
    assert K.quantize_codes(torch.empty(0, 4, 3, 3, device=DEVICE), 1.0, 0.0, 4, True).numel() == 0
    with pytest.raises(TypeError, match="y: expected float32"):
        K.quantize_codes(torch.zeros(2, device=DEVICE, dtype=torch.float16), 1.0, 0.0, 4, True)
    with pytest.raises(ValueError, match="bits"):
        K.quantize_codes(torch.zeros(2, device=DEVICE), 1.0, 0.0, 9, True)
    with pytest.raises(ValueError, match="give both or neither"):
        K.quantize_codes(torch.zeros(2, 3, device=DEVICE), 1.0, 8.0, 4, True, torch.ones(3, device=DEVICE))
