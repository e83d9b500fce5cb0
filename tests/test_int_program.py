"""The integer model's native program (csrc/cpu/int_program.cpp): the whole forward in one C++ call gives the
same bits as the Python layer runners it replaces, and is used only where it applies."""
import copy

import pytest
import torch

import adadfq_fast
from adadfq_fast.deploy import export
from adadfq_fast.deploy.modules import _native_program_class

from test_deploy import make_q  # noqa: E402 - the random ResNet-20 Q of the deploy tests

pytestmark = pytest.mark.skipif(_native_program_class() is None, reason="C++ library (IntProgram) not built")


def _python_path(im):
    py = copy.deepcopy(im)
    py._program = None
    return py


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(99)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield {(cin, size, bits): export(make_q(cin, size, bits)) for cin, size, bits in
           ((1, 28, 4), (3, 32, 4), (3, 32, 8), (3, 16, 2))}
    torch.set_num_threads(threads)


@pytest.mark.parametrize("case", [(1, 28, 4), (3, 32, 4), (3, 32, 8), (3, 16, 2)], ids=str)
@pytest.mark.parametrize("batch", [1, 3])
def test_program_matches_python_runners(models, case, batch):
    im = models[case]
    assert im._program is not None and im._program.size() == len(im.layers)
    cin, size, _ = case
    x = torch.randn(batch, cin, size, size) * 2
    with torch.no_grad():
        got, want = im(x), _python_path(im)(x)
    assert got.dtype == torch.float32 and torch.equal(got, want)
    # NCHW, channels_last and float64 images are the same input
    with torch.no_grad():
        assert torch.equal(im(x.contiguous(memory_format=torch.channels_last)), got)
        assert torch.equal(im(x.double()), got)


def test_empty_batch(models):
    im = models[(3, 32, 4)]
    with torch.no_grad():
        out = im(torch.zeros(0, 3, 32, 32))
    assert out.shape == (0, 10)


def test_not_used_on_other_backends(models, monkeypatch):
    im = models[(3, 32, 4)]
    x = torch.randn(2, 3, 32, 32)
    calls = []
    real = im._program

    class Spy:
        def run(self, t):
            calls.append(1)
            return real.run(t)

    monkeypatch.setattr(im, "_program", Spy())
    with torch.no_grad():
        a = im(x)
        assert calls == [1]
        with adadfq_fast.use_backend("reference"):
            b = im(x)
        assert calls == [1]  # the reference backend runs the Python runners (with its own kernel)
    assert torch.equal(a, b)


def test_dispatch_modes_and_other_inputs_take_the_runners(models, monkeypatch):
    """The program is only for plain float32 CPU batches outside any dispatch mode: under a TorchDispatchMode the
    forward goes through the custom ops (which the mode sees), a float64 batch through the general checks, a wrong
    channel count to their error; the answers do not change."""
    from torch.utils._python_dispatch import TorchDispatchMode

    im = models[(1, 28, 4)]
    x = torch.randn(2, 1, 28, 28)
    seen = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    with torch.no_grad():
        want = im(x)
        with Record():
            got = im(x)
        assert torch.equal(got, want) and any("int_conv2d" in f for f in seen)
        assert torch.equal(im(x.double()), want)
        with pytest.raises(ValueError, match="input channels"):
            im(torch.randn(2, 3, 28, 28))


def test_copies_rebuild_the_program(models):
    im = models[(1, 28, 4)]
    clone = copy.deepcopy(im)
    assert clone._program is not None and clone._program is not im._program
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(clone(x), im(x))


def test_unsupported_layer_falls_back(models):
    im = copy.deepcopy(models[(3, 32, 4)])
    im.layers[-1].cfg["in_kind"] = "float"  # a float head is not a program step
    im._build()
    assert im._program is None


def test_pytorchcv_resnet18_with_fused_pool():
    pytest.importorskip("pytorchcv")
    from adadfq_fast.models import build_model, measure_bn_statistics
    from adadfq_fast.nn import freeze_act_ranges, quantize_model

    torch.manual_seed(3)
    fp = measure_bn_statistics(build_model("resnet18", num_classes=1000, in_size=(224, 224)),
                               torch.randn(2, 3, 224, 224))
    q = quantize_model(fp, 4, 4, example_input=torch.zeros(1, 3, 224, 224)).eval()
    with torch.no_grad():
        q(torch.randn(2, 3, 224, 224))
    im = export(freeze_act_ranges(q))
    assert im._program is not None and im._runners[1].fused
    for batch in (1, 2):
        x = torch.randn(batch, 3, 224, 224)
        with torch.no_grad():
            assert torch.equal(im(x), _python_path(im)(x))
