"""The int8 runtimes a user would deploy instead of our integer model: ONNX Runtime and OpenVINO on CPU.

Recipe (what a user would do with the same full-precision network and no data):

1. ``torch.onnx.export`` of the FP32 model (opset 17, the TorchScript exporter). The global average pool is
   exported as ``GlobalAveragePool`` (our ``GlobalAvgPool`` calls ``avg_pool2d`` with a kernel of the map's size,
   which the exporter would bake in as a fixed ``AveragePool``; both compute the same mean).
2. ``onnxruntime.quantization.quantize_static`` of that file: QDQ format, per-channel int8 weights, uint8
   activations, MinMax calibration on random images (as our integer model's ranges are calibrated here).
3. The same QDQ file runs in ONNX Runtime's CPU provider and in OpenVINO's CPU plugin.

Thread counts are pinned for real: each session is created for one thread count (ONNX Runtime
``intra_op_num_threads`` with ``inter_op_num_threads = 1``; OpenVINO ``INFERENCE_NUM_THREADS``), the value the
runtime reports back is recorded (OpenVINO's compiled-model property; ONNX Runtime's session options), and the
benchmark restricts the process's CPU affinity to as many cores (``os.sched_setaffinity``, what ``taskset -c``
does) while it times that thread count.

Both runtimes are optional (``pip install .[peers]``); ``available()`` says which are importable and why not.
"""
from __future__ import annotations

import contextlib
import copy
import os
import tempfile
from typing import Callable, Dict, Iterator, Optional

import numpy as np
import torch
from torch import nn

PEERS = ("ort_int8", "openvino_int8")
_INSTALL_HINT = "pip install '.[peers]' (onnx, onnxruntime, openvino)"


def available() -> Dict[str, Optional[str]]:
    """peer name -> None when it can run here, else why not (a missing package, with the install hint)."""
    why: Dict[str, Optional[str]] = {}
    missing = [m for m in ("onnx", "onnxruntime") if not _importable(m)]
    why["ort_int8"] = f"{', '.join(missing)} not installed ({_INSTALL_HINT})" if missing else None
    if missing:  # OpenVINO reads the QDQ file ONNX Runtime's quantizer writes
        why["openvino_int8"] = why["ort_int8"]
    else:
        why["openvino_int8"] = None if _importable("openvino") else f"openvino not installed ({_INSTALL_HINT})"
    return why


def _importable(module: str) -> bool:
    try:
        __import__(module)
        return True
    except Exception:  # noqa: BLE001 - a broken install counts as absent
        return False


@contextlib.contextmanager
def pinned_cores(threads: int) -> Iterator[Optional[list]]:
    """Restrict this process to `threads` of its allowed cores (as ``taskset -c``) for the block; yields the cores,
    or None where affinity cannot be set (not Linux, or fewer cores allowed than threads)."""
    if not hasattr(os, "sched_setaffinity"):
        yield None
        return
    before = os.sched_getaffinity(0)
    if len(before) < threads:
        yield None
        return
    cores = sorted(before)[:threads]
    os.sched_setaffinity(0, cores)
    try:
        yield sorted(os.sched_getaffinity(0))
    finally:
        os.sched_setaffinity(0, before)


class _GlobalAvgPoolForExport(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_avg_pool2d(x, 1)


def export_fp32_onnx(fp: nn.Module, example: torch.Tensor, path: str) -> str:
    """The FP32 model as an ONNX file with a dynamic batch dimension (see the module docstring, step 1)."""
    model = copy.deepcopy(fp).eval()
    for name, mod in list(model.named_modules()):
        if type(mod).__name__ == "GlobalAvgPool":
            parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            setattr(parent, name.rpartition(".")[2], _GlobalAvgPoolForExport())
    with torch.no_grad():
        torch.onnx.export(model, (example,), path, input_names=["x"], output_names=["y"], opset_version=17,
                          dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, dynamo=False)
    return path


def quantize_qdq(fp32_path: str, qdq_path: str, example: torch.Tensor, calib_batches: int = 2) -> str:
    """ONNX Runtime's static int8 quantization of the FP32 file (step 2)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class RandomImages(CalibrationDataReader):
        def __init__(self):
            self.left = calib_batches

        def get_next(self):
            if self.left == 0:
                return None
            self.left -= 1
            return {"x": torch.randn_like(example).numpy()}

    quantize_static(fp32_path, qdq_path, RandomImages(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return qdq_path


class PeerModels:
    """The QDQ file of one network, and factories of timed callables for a given thread count."""

    def __init__(self, fp: nn.Module, example: torch.Tensor, workdir: Optional[str] = None):
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="adadfq_peers_")
        self.dir = workdir or self._tmp.name
        self.fp32_path = export_fp32_onnx(fp, example, os.path.join(self.dir, "fp32.onnx"))
        self.qdq_path = quantize_qdq(self.fp32_path, os.path.join(self.dir, "qdq_int8.onnx"), example)

    def ort(self, threads: int) -> tuple:
        """(fn(x_numpy) -> output, settings the session reports) for ONNX Runtime's CPU provider."""
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(self.qdq_path, so, providers=["CPUExecutionProvider"])
        reported = {"intra_op_num_threads": so.intra_op_num_threads, "inter_op_num_threads": so.inter_op_num_threads,
                    "providers": sess.get_providers(), "version": ort.__version__}
        return (lambda x: sess.run(None, {"x": x})[0]), reported

    def openvino(self, threads: int) -> tuple:
        """(fn(x_numpy) -> output, settings the compiled model reports) for OpenVINO's CPU plugin."""
        import openvino as ov

        core = ov.Core()
        compiled = core.compile_model(core.read_model(self.qdq_path), "CPU",
                                      {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                                       "NUM_STREAMS": 1})
        request = compiled.create_infer_request()
        reported = {"INFERENCE_NUM_THREADS": int(compiled.get_property("INFERENCE_NUM_THREADS")),
                    "NUM_STREAMS": int(compiled.get_property("NUM_STREAMS")), "version": ov.__version__}

        def run(x: np.ndarray):
            return request.infer({0: x})[0]

        return run, reported

    def callables(self, threads: int, which=PEERS) -> tuple:
        """{peer: fn(x_numpy)} and {peer: reported settings} for the peers available here."""
        fns: Dict[str, Callable] = {}
        settings: Dict[str, Dict] = {}
        why = available()
        for peer in which:
            if why.get(peer):
                continue
            fn, rep = (self.ort if peer == "ort_int8" else self.openvino)(threads)
            fns[peer], settings[peer] = fn, rep
        return fns, settings

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
