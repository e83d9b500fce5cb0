"""The integer model's GPU side (adadfq_fast.deploy.CudaGraphRunner, ``bench int --device cuda``).

On CPU: the runner refuses CPU models and bad inputs with clear errors, and ``bench int --device cuda`` fails
clearly without a GPU. On a GPU (marker ``gpu``, skipped without one): a random ResNet-20 exported model on cuda,
replayed from a captured CUDA graph, gives the eager logits bit for bit, for each kernel backend available.
"""
from __future__ import annotations

import copy

import pytest
import torch

import adadfq_fast
from adadfq_fast import _backend
from adadfq_fast.deploy import CudaGraphRunner, export
from adadfq_fast.deploy.cuda_graph import check_replay_input, model_device
from test_deploy import make_q

HAS_CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def int_model():
    return export(make_q(3, 32, 4, calib_batch=16)).eval()


def test_refuses_cpu_model(int_model):
    x = torch.randn(1, 3, 32, 32)
    if HAS_CUDA:
        with pytest.raises(ValueError, match="the model is on cpu.*run it eagerly"):
            CudaGraphRunner(int_model, x)
    else:
        with pytest.raises(RuntimeError, match="needs a CUDA device.*run the IntegerModel eagerly"):
            CudaGraphRunner(int_model, x)
    assert model_device(int_model).type == "cpu"
    assert int_model(x).shape == (1, 10)  # the model itself is untouched and runs eagerly


def test_refuses_other_models():
    with pytest.raises(TypeError, match="IntegerModel"):
        CudaGraphRunner(torch.nn.Linear(2, 2), torch.randn(1, 2))


def test_replay_input_checks():
    dev = torch.device("cpu")
    check_replay_input(torch.randn(1, 3, 32, 32), (1, 3, 32, 32), dev)
    with pytest.raises(ValueError, match=r"captured for input shape \[1, 3, 32, 32\], got \[2, 3, 32, 32\]"):
        check_replay_input(torch.randn(2, 3, 32, 32), (1, 3, 32, 32), dev)
    with pytest.raises(ValueError, match="float image batch"):
        check_replay_input(torch.zeros(1, 3, 32, 32, dtype=torch.uint8), (1, 3, 32, 32), dev)
    with pytest.raises(ValueError, match="runs on cuda:0, got a tensor on cpu"):
        check_replay_input(torch.randn(1, 3, 32, 32), (1, 3, 32, 32), torch.device("cuda:0"))


@pytest.mark.skipif(HAS_CUDA, reason="checks the error given without a GPU")
def test_bench_int_cuda_without_gpu_is_a_clear_error(capsys):
    from adadfq_fast.bench import int as bench_int

    with pytest.raises(SystemExit) as e:
        bench_int.main(["--device", "cuda"])
    assert e.value.code == 2
    assert "no CUDA device" in capsys.readouterr().err


def _cuda_backends():
    names = ["auto"]
    if HAS_CUDA:
        names += [b for b in ("triton", "cuda", "triton_tc") if _backend.why_unavailable(b, "cuda") is None]
    return names


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("backend", _cuda_backends())
@pytest.mark.parametrize("batch", [1, 8])
def test_captured_logits_match_eager_bit_for_bit(int_model, backend, batch):
    model = _on_cuda(int_model)
    with adadfq_fast.use_backend(backend):
        x = torch.randn(batch, 3, 32, 32, device="cuda")
        runner = CudaGraphRunner(model, x)
        with torch.no_grad():
            for _ in range(3):  # fresh inputs each call: the static input must be refilled every time
                x = torch.randn(batch, 3, 32, 32, device="cuda")
                eager = model(x)
                captured = runner(x)
                torch.cuda.synchronize()
                assert captured.dtype == torch.float32 and captured.shape == (batch, 10)
                torch.testing.assert_close(captured, eager, rtol=0, atol=0)
        assert captured.data_ptr() != runner.static_output.data_ptr()  # a clone, not the graph's buffer
        with pytest.raises(ValueError, match="captured for input shape"):
            runner(torch.randn(batch + 1, 3, 32, 32, device="cuda"))
        with pytest.raises(ValueError, match="got a tensor on cpu"):
            runner(torch.randn(batch, 3, 32, 32))


def _on_cuda(int_model):
    return copy.deepcopy(int_model).cuda()


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_moved_model_is_refused(int_model):
    model = _on_cuda(int_model)
    runner = CudaGraphRunner(model, torch.randn(1, 3, 32, 32, device="cuda"))
    model.cuda()  # rebuilds the prepared tensors the graph recorded
    with pytest.raises(RuntimeError, match="moved or rebuilt"):
        runner(torch.randn(1, 3, 32, 32, device="cuda"))


def test_bench_int_cuda_code_path_runs_on_cpu():
    """``run_bench_cuda`` with ``device="cpu"`` (no CUDA graph, CPU timer): the records and the Markdown table the
    GPU run writes, built from the same code; a smoke test of the GPU benchmark's plumbing, not a measurement."""
    from adadfq_fast.bench import int_cuda as bench_int

    seen = []
    part = bench_int.run_bench_cuda(["resnet20_cifar"], repeats=1, batch_override=2, compile_models=[],
                                    progress=False, on_record=seen.append, device="cpu")
    assert [r["batch"] for r in part["records"]] == [1, 2] and seen == part["records"]
    for r in part["records"]:
        assert set(r["ms"]) == {"integer", "fp16_channels_last"} and r["integer_vs_fp16"] > 0
        assert r["integer_vs_best_fp16"] == r["ms"]["fp16_channels_last"] / r["ms"]["integer"]
        assert r["best"] == {"integer": "integer", "fp16": "fp16_channels_last"}
    assert bench_int.best_ratio({"integer": 2.0, "integer[cuda]": 1.0, "fp16_channels_last": 4.0,
                                 "fp16_channels_last_graph": 3.0}) == 3.0
    assert bench_int.best_ratio({"integer": 2.0}) is None
    data = {**part, "environment": bench_int.environment_cuda(), "note": "smoke"}
    table = bench_int.markdown_cuda(data)
    assert "| resnet20_cifar | 3x32x32 | 1 |" in table and "smoke" in table


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("backend", _cuda_backends())
def test_cuda_model_agrees_with_cpu(int_model, backend):
    """The integer model on cuda (Triton/CUDA int_conv2d, the one-pass codes kernel after the float first conv)
    against the CPU one. Only the float first conv sums in another order (cuDNN vs oneDNN, TF32 off here), so a
    code can move by one where a value sits on a rounding boundary: nearly all logits agree to float precision."""
    model = _on_cuda(int_model)
    x = torch.randn(64, 3, 32, 32)
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.no_grad(), adadfq_fast.use_backend(backend):
            got = model(x.cuda()).cpu()
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    with torch.no_grad():
        want = int_model(x)
    close = torch.isclose(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max())).all(dim=1)
    assert close.float().mean() >= 0.9, f"only {int(close.sum())}/64 images with the CPU logits"
    assert (got.argmax(1) == want.argmax(1)).float().mean() >= 0.95


def test_cuda_auto_picks_triton_for_big_3x3_convs_only():
    """``auto`` on CUDA without a measured policy: Triton for 3x3 convs of >= TRITON_MIN_MACS multiply-adds, the CUDA
    kernel otherwise (the rule itself needs no GPU)."""

    def run(batch, hw, cin, cout, k, stride):
        return _backend.int_conv2d_cuda_choice((batch, cin, hw, hw), (cout, cin, k, k), (stride, stride), policy=None)

    assert run(256, 56, 64, 64, 3, 1) == "triton"   # ResNet-18 stage 1 at batch 256: 29.6 G MACs
    assert run(256, 56, 64, 128, 1, 2) == "cuda"    # its 1x1 projection
    assert run(1, 56, 64, 64, 3, 1) == "cuda"       # batch 1
    assert run(256, 32, 16, 16, 3, 1) == "cuda"     # ResNet-20 at batch 256: 0.6 G MACs
    m = export(make_q(3, 32, 4, calib_batch=16))
    assert m.conv_kernel(torch.device("cpu")) is _backend.kernel_for("int_conv2d", torch.device("cpu"))
