"""``adadfq-fast export`` and ``adadfq-fast infer`` (commands of the table in ``adadfq_fast/cli/__init__.py``).

  adadfq-fast export CHECKPOINT --out FILE.adq       a Q checkpoint (save_q_checkpoint) -> integer model file
  adadfq-fast export CHECKPOINT --format onnx -o FILE.onnx   the same as a QDQ ONNX model (extra `onnx`)
  adadfq-fast infer FILE.adq [--dataset fashion-mnist] [--data-root DIR] [--batch-size 256] [--compare CKPT]
"""
from __future__ import annotations

import argparse
import io
import os
import time
from typing import Optional, Sequence

import torch


def _state_dict_bytes(module: torch.nn.Module) -> int:
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.tell()


def _bits(v) -> str:
    return "/".join(str(b) for b in v) if isinstance(v, (list, tuple)) else str(v)


def _fp32_bytes(model) -> int:
    """What the model's parameters take as float32 (weights, biases, BN statistics): the size to compare with."""
    return 4 * sum(t.numel() for layer in model.layers for k, t in layer.tensors.items()
                   if k not in ("z_w", "s_w"))


def export_main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="adadfq-fast export",
                                description="Export a trained Q checkpoint as an integer model file (.adq).")
    p.add_argument("checkpoint", help="a Q checkpoint written by adadfq-fast quantize / train (save_q_checkpoint)")
    p.add_argument("--out", "-o", required=True, help="the file to write (e.g. q.adq, q.onnx)")
    p.add_argument("--format", choices=["adq", "onnx"], default="adq",
                   help="adq: the integer model file (default); onnx: a QDQ ONNX model for ONNX Runtime/OpenVINO "
                   "(adadfq_fast/deploy/onnx_export.py; needs the `onnx` extra)")
    p.add_argument("--verbose", action="store_true", help="list the exported layers")
    args = p.parse_args(argv)

    from adadfq_fast.nn import load_q_checkpoint

    from . import export, save

    q, payload = load_q_checkpoint(args.checkpoint)
    meta = {"source": os.path.basename(args.checkpoint), "zoo_model": payload["model"],
            "wbits_checkpoint": payload["wbits"], "abits_checkpoint": payload["abits"]}
    model = export(q, in_size=tuple(payload["in_size"]), meta=meta)
    if args.format == "onnx":
        from .onnx_export import save_onnx

        try:
            size, report = save_onnx(model, args.out)
        except ImportError as e:
            raise SystemExit(f"export: {e}") from None
        print(f"exported {payload['model']} W{payload['wbits']}A{payload['abits']} -> {args.out} (QDQ ONNX, "
              f"{size / 1024:.1f} KiB): {report['qdq_act_sites']} quantized activation sites, float weights "
              f"{report['float_weights'] or 'none'}, float activation sites {report['float_act_sites'] or 'none'}")
        return 0
    size = save(model, args.out)
    sd = _state_dict_bytes(q)
    convs = [L for L in model.layers if L.kind == "conv"]
    n_int = sum(1 for L in convs if L.cfg["int"])
    print(f"exported {payload['model']} W{payload['wbits']}A{payload['abits']} -> {args.out}")
    print(f"  layers: {len(model.layers)} ({n_int} integer convs, {len(convs) - n_int} float convs, "
          f"{sum(1 for L in model.layers if L.kind == 'act')} float activation sites)")
    print(f"  file size: {size / 1024:.1f} KiB; FP32 state dict of Q: {sd / 1024:.1f} KiB ({sd / size:.2f}x larger)")
    if args.verbose:
        print("\n".join("  " + line for line in model.summary()))
    return 0


def infer_main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="adadfq-fast infer", description="Top-1 of an integer model file on a dataset.")
    p.add_argument("file", help="an integer model file written by adadfq-fast export")
    p.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist (default), cifar10, cifar100, imagenet")
    p.add_argument("--data-root", default=None)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--compare", default=None, metavar="CHECKPOINT",
                   help="also evaluate this Q checkpoint (fake-quant) and report the top-1 agreement")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N test images")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        p.error("--batch-size must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)

    from adadfq_fast.data import dataset_info, make_loader

    from . import load

    model = load(args.file).eval()
    size = os.path.getsize(args.file)
    in_size = tuple(model.meta.get("in_size", ()))
    info = dataset_info(args.dataset)
    kwargs = {}
    if info["name"] == "fashion-mnist" and in_size == (32, 32):
        kwargs["pad_to_32"] = True
    elif in_size and tuple(info["in_size"]) != in_size and info["name"] != "imagenet":
        p.error(f"{args.file} takes {in_size[0]}x{in_size[1]} images, {args.dataset} has "
                f"{info['in_size'][0]}x{info['in_size'][1]}")
    loader = make_loader(args.dataset, batch_size=args.batch_size, root=args.data_root, **kwargs)

    q = None
    if args.compare:
        from adadfq_fast.nn import load_q_checkpoint

        q, _ = load_q_checkpoint(args.compare)
    correct = correct_q = agree = total = 0
    t_int = t_q = 0.0
    with torch.no_grad():
        for x, y in loader:
            if args.limit is not None and total >= args.limit:
                break
            if args.limit is not None:
                x, y = x[: args.limit - total], y[: args.limit - total]
            y = torch.as_tensor(y)
            t0 = time.perf_counter()
            pred = model(x).argmax(1)
            t_int += time.perf_counter() - t0
            correct += int((pred == y).sum())
            if q is not None:
                t0 = time.perf_counter()
                pred_q = q(x).argmax(1)
                t_q += time.perf_counter() - t0
                correct_q += int((pred_q == y).sum())
                agree += int((pred_q == pred).sum())
            total += y.numel()
    if total == 0:
        raise SystemExit("infer: the dataset yielded no images")
    fp32 = _fp32_bytes(model)
    print(f"{args.file}: {model.meta.get('zoo_model', model.meta.get('model', '?'))}, "
          f"W{_bits(model.meta.get('wbits'))}A{_bits(model.meta.get('abits'))}, file {size / 1024:.1f} KiB "
          f"(FP32 parameters {fp32 / 1024:.1f} KiB, {fp32 / size:.2f}x larger)")
    print(f"integer model on {info['name']} ({total} images): top-1 {100.0 * correct / total:.2f}% "
          f"({1000 * t_int / total:.3f} ms/image)")
    if q is not None:
        print(f"fake-quant Q {args.compare}: top-1 {100.0 * correct_q / total:.2f}% "
              f"({1000 * t_q / total:.3f} ms/image); top-1 agreement {100.0 * agree / total:.2f}%")
    return 0
