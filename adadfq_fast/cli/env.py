"""``adadfq-fast`` command line (also ``python -m adadfq_fast``).

  adadfq-fast env                     versions, devices, and which backends are available or why not
  adadfq-fast train --config PRESET   the game loop (presets, .toml, or the authors' .hocon; key=value overrides)
  adadfq-fast pretrain [...]          train the FP teacher (default: ResNet-20 on Fashion-MNIST)
  adadfq-fast quantize [...]          the main job: AdaDFQ on the shipped Fashion-MNIST teacher, with a table
  adadfq-fast export CKPT --out FILE  a trained Q -> integer model file (see adadfq_fast/deploy)
  adadfq-fast infer FILE              evaluate an integer model file on a dataset
  adadfq-fast eval --model ... --checkpoint ... --dataset ...   top-1 of an FP model or a quantized checkpoint
  adadfq-fast bench ops [--json P]    fused ops vs the reference (see adadfq_fast/bench/ops.py)
  adadfq-fast bench step [...]        one game iteration, faithful vs fast (see adadfq_fast/bench/step.py)
  adadfq-fast bench int [...]         integer model vs float eager vs torch.ao int8 (see adadfq_fast/bench/int.py)
"""
from __future__ import annotations

import argparse
import platform
import sys
from typing import List, Optional, Sequence


def _env(args) -> int:
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="adadfq-fast", description="Adaptive Data-Free Quantization, fast.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("env", help="versions, devices and available backends")
    for name, helptext in (("train", "run AdaDFQ's game on a teacher ('train --help')"),
                           ("pretrain", "train a full-precision teacher ('pretrain --help')"),
                           ("quantize", "the main job: quantize the shipped teacher ('quantize --help')"),
                           ("export", "export a trained Q as an integer model ('export --help')"),
                           ("infer", "evaluate an integer model file ('infer --help')"),
                           ("eval", "top-1 of a model or a quantized checkpoint ('eval --help')")):
        cmd = sub.add_parser(name, help=helptext, add_help=False)
        cmd.add_argument("rest", nargs=argparse.REMAINDER)
    bench = sub.add_parser("bench", help="benchmarks: 'bench ops', 'bench step', 'bench int'")
    bench.add_argument("what", choices=["ops", "step", "int"])
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="options of the benchmark (see 'bench ops --help')")
    # Subcommands with options of their own get their arguments untouched (argparse's REMAINDER would refuse
    # a first argument that looks like an option).
    if argv and argv[0] == "pretrain":
        from adadfq_fast import pretrain

        return pretrain.main(argv[1:])
    if argv and argv[0] == "quantize":
        from adadfq_fast import quantize_job

        return quantize_job.main(argv[1:])
    if argv and argv[0] in ("export", "infer"):
        from adadfq_fast.deploy import cli as deploy_cli

        return (deploy_cli.export_main if argv[0] == "export" else deploy_cli.infer_main)(argv[1:])
    if argv and argv[0] in ("train", "eval"):
        from adadfq_fast import cli_train

        return (cli_train.train_main if argv[0] == "train" else cli_train.eval_main)(argv[1:])
    if len(argv) >= 2 and argv[0] == "bench" and argv[1] == "int":
        from adadfq_fast.bench import int as bench_int

        return bench_int.main(argv[2:])
    if len(argv) >= 2 and argv[0] == "bench" and argv[1] in ("ops", "step"):
        from adadfq_fast.bench import ops, step

        return (ops.main if argv[1] == "ops" else step.main)(argv[2:])
    args = parser.parse_args(argv)
    if args.command == "env":
        return _env(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
