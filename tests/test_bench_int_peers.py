"""bench int's peers (ONNX Runtime and OpenVINO int8 of the same network): the recipe computes the FP32 network,
thread counts are what the runtimes report, core pinning restores the affinity, the table renders without them."""
import os

import pytest
import torch

from adadfq_fast.bench import int as bench_int
from adadfq_fast.bench import int_peers
from adadfq_fast.models import build_model


def _tiny_fp():
    torch.manual_seed(0)
    fp = build_model("resnet20", num_classes=10, in_channels=3, in_size=(16, 16))
    fp.train()
    with torch.no_grad():
        fp(torch.randn(16, 3, 16, 16))
    return fp.eval()


def test_available_names_every_peer():
    why = int_peers.available()
    assert set(why) == set(int_peers.PEERS)
    for reason in why.values():
        assert reason is None or "pip install" in reason


@pytest.mark.skipif(int_peers.available()["ort_int8"] is not None, reason="onnx/onnxruntime not installed")
@pytest.mark.parametrize("threads", [1, 2])
def test_peers_compute_the_network(threads):
    fp = _tiny_fp()
    x = torch.randn(4, 3, 16, 16)
    peers = int_peers.PeerModels(fp, torch.randn(8, 3, 16, 16))
    try:
        fns, settings = peers.callables(threads)
        assert settings["ort_int8"]["intra_op_num_threads"] == threads
        if "openvino_int8" in fns:
            assert settings["openvino_int8"]["INFERENCE_NUM_THREADS"] == threads
        with torch.no_grad():
            want = fp(x)
        for peer, fn in fns.items():
            got = torch.from_numpy(fn(x.numpy()))
            assert got.shape == want.shape
            # int8 of a random network: close to FP32, far closer than an unrelated output would be
            rel = float((got - want).abs().max() / want.abs().max())
            assert rel < 0.35, (peer, rel)
            assert torch.corrcoef(torch.stack([got.flatten(), want.flatten()]))[0, 1] > 0.9, peer
    finally:
        peers.close()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this OS")
def test_pinned_cores_restores_affinity():
    before = os.sched_getaffinity(0)
    with int_peers.pinned_cores(1) as cores:
        assert cores is not None and len(cores) == 1 and os.sched_getaffinity(0) == set(cores)
    assert os.sched_getaffinity(0) == before
    with int_peers.pinned_cores(len(before) + 1) as cores:
        assert cores is None and os.sched_getaffinity(0) == before


def test_markdown_without_peers():
    rec = {"model": "resnet20_cifar", "input": [3, 32, 32], "threads": 1, "batch": 1, "affinity": {"taskset": "1"},
           "ms": {"integer": 1.0, "fp32_nchw": 3.0, "fp32_channels_last": 2.0}, "fp32_best_ms": 2.0,
           "ao_error": None, "integer_vs_fp32": 2.0, "integer_vs_best_peer_latency": None,
           "integer_vs_openvino_throughput": None, "images_per_s": {"integer": 1000.0},
           "peers": {p: {"settings": None, "skipped": "onnxruntime not installed (pip install ...)",
                         "rel_err_vs_fp32": None} for p in int_peers.PEERS}}
    env = {"cpu": "x86_64", "torch": torch.__version__, "threads": [1], "time": "now", "load_average": (0, 0, 0)}
    md = bench_int.markdown({"records": [rec], "profiles": {}, "environment": env})
    assert "| resnet20_cifar | 3x32x32 | 1 | 1 | 1 | 1.00 | n/a | n/a |" in md
    assert "ort_int8 skipped: onnxruntime not installed" in md
