"""``adadfq-fast eval``: top-1 of a model (full precision or a quantized checkpoint) on a test set."""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

import torch


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="adadfq-fast eval", description="Top-1 of a model (FP or quantized) on a test set.")
    p.add_argument("--model", required=True, help="model zoo name, e.g. resnet20_cifar10")
    p.add_argument("--checkpoint", required=True,
                   help="FP weights, a Q checkpoint (best_q.pt, q_*.pt: self-describing), or Q's bare state dict "
                   "(with --wbits/--abits)")
    p.add_argument("--dataset", required=True, help="cifar10, cifar100, imagenet or fashion_mnist")
    p.add_argument("--data-root", default=None)
    p.add_argument("--wbits", type=int, default=None, help="evaluate a quantized Q checkpoint at these bits")
    p.add_argument("--abits", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    from adadfq_fast.data import dataset_info, evaluate, make_loader
    from adadfq_fast.game.trainer import resolve_device
    from adadfq_fast.models import build_model
    from adadfq_fast.nn import freeze_act_ranges, quantize_model

    from adadfq_fast.nn import checkpoint as q_checkpoint

    device = resolve_device(args.device)
    info = dataset_info(args.dataset)
    if (args.wbits is None) != (args.abits is None):
        p.error("--wbits and --abits go together")

    if q_checkpoint.is_q_checkpoint(args.checkpoint):
        model, _ = q_checkpoint.load_q_checkpoint(args.checkpoint)
    elif args.wbits is None:
        model = build_model(args.model, num_classes=info["num_classes"], in_channels=info["in_channels"],
                            checkpoint=args.checkpoint, in_size=info["in_size"])
    else:
        fp = build_model(args.model, num_classes=info["num_classes"], in_channels=info["in_channels"],
                         in_size=info["in_size"])
        example = torch.zeros(1, info["in_channels"], *info["in_size"])
        model = quantize_model(fp, args.wbits, args.abits, example_input=example)
        # Q's state dict holds each QuantAct's frozen flag (a dict) beside the tensors: read it as it is.
        model.load_state_dict(torch.load(args.checkpoint, map_location="cpu", weights_only=True))
        freeze_act_ranges(model)
    loader = make_loader(args.dataset, batch_size=args.batch_size, root=args.data_root)
    acc = evaluate(model.to(device), loader, device=device, progress=not args.no_progress)
    print(f"{args.model} on {args.dataset}: top-1 {acc:.2f}%")
    return 0
