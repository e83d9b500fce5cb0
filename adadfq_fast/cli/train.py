"""``adadfq-fast train``: AdaDFQ's game loop from the command line."""
from __future__ import annotations

import argparse
import json
import os
from typing import Optional, Sequence

import torch


def _teacher(cfg, checkpoint: Optional[str], pretrained: bool, random_teacher: bool):
    from adadfq_fast.models import build_model

    if not (checkpoint or pretrained or random_teacher):
        raise SystemExit(
            "train: the teacher P needs its weights: pass --teacher-checkpoint PATH (a state dict; pytorchcv's "
            ".pth files load as they are) or --pretrained (pytorchcv's published weights, downloaded or found in "
            "~/.torch/models). --random-teacher runs on an untrained teacher (for smoke tests only).")
    def build():
        return build_model(cfg.model, num_classes=cfg.num_classes, in_channels=cfg.channels, checkpoint=checkpoint,
                           pretrained=pretrained, in_size=(cfg.img_size, cfg.img_size))

    if checkpoint or pretrained:
        return build()
    # A random teacher's weights come from the run's seed (same seed: same P, hence same G and Q), drawn from a
    # forked RNG so that the game's own streams start where they would with a loaded teacher.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return build()


def _evaluate_on(loader, device, progress: bool, max_batches: Optional[int] = None):
    from adadfq_fast.data import evaluate

    def run(model):
        return evaluate(model, loader, device=device, progress=progress, max_batches=max_batches)

    return run


def _evaluator(cfg, data_root: Optional[str], device, progress: bool, max_batches: Optional[int] = None):
    from adadfq_fast.data import make_loader

    loader = make_loader(cfg.dataset, batch_size=cfg.eval_batch_size, root=data_root or cfg.data_path or None)
    return _evaluate_on(loader, device, progress, max_batches)


def _synthetic_evaluator(cfg, n: int, device, progress: bool):
    """Evaluation on ``n`` random images and labels (fixed seed), through the same loader and loop as the real one."""
    from adadfq_fast.data import make_loader

    if n < 1:
        raise SystemExit(f"--synthetic-eval: expected a number of images >= 1, got {n}")
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, cfg.channels, cfg.img_size, cfg.img_size, generator=g)
    labels = torch.randint(0, cfg.num_classes, (n,), generator=g)
    loader = make_loader(torch.utils.data.TensorDataset(images, labels), batch_size=cfg.eval_batch_size)
    return _evaluate_on(loader, device, progress)


def _rank0_only(model):
    raise RuntimeError("evaluation runs on rank 0 only")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="adadfq-fast train", description="Run AdaDFQ's game (G vs Q) on a teacher. Multi-process: "
        "torchrun --nproc_per_node=N -m adadfq_fast train ... (each rank generates its own samples; gradients and "
        "Q's activation ranges are reduced across ranks; rank 0 evaluates and writes the run folder).")
    p.add_argument("--config", default="cifar100_resnet20_w3a3",
                   help="a preset name (e.g. cifar10_resnet20_w4a4), a .toml file, or the authors' .hocon file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="settings to override, e.g. wbits=4 epochs=10")
    p.add_argument("--resume", nargs="?", const="", default=None,
                   help="resume from a checkpoint (default: <output_dir>/<name>/checkpoint.pt)")
    p.add_argument("--teacher-checkpoint", default=None, help="weights of the teacher P")
    p.add_argument("--pretrained", action="store_true", help="use pytorchcv's published teacher weights")
    p.add_argument("--random-teacher", action="store_true", help="untrained teacher (smoke tests)")
    p.add_argument("--data-root", default=None, help="folder holding the real test set (for evaluation)")
    p.add_argument("--no-eval", action="store_true", help="skip evaluation (no real data needed)")
    p.add_argument("--eval-batches", type=int, default=None, help="evaluate on the first N test batches only")
    p.add_argument("--synthetic-eval", type=int, default=None, metavar="N",
                   help="evaluate on N random images of the dataset's shape instead of the real test set: times a "
                        "full run (evaluations included) where the data is not at hand; the accuracy is meaningless")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    from adadfq_fast.config import load_config
    from adadfq_fast.game import distributed as ddp

    from adadfq_fast.config.schema import ConfigError

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        p.error(str(e))
    # Under torchrun (WORLD_SIZE > 1) join the process group before anything touches a device.
    _, world = ddp.init_from_env(cfg.device)
    try:
        return _train(args, cfg, world)
    finally:
        ddp.shutdown()


def _train(args, cfg, world: int) -> int:
    from adadfq_fast.config import save_config
    from adadfq_fast.game import distributed as ddp
    from adadfq_fast.game.trainer import Trainer, resolve_device

    main = ddp.is_main()
    device = ddp.local_device(resolve_device(cfg.device))
    teacher = _teacher(cfg, args.teacher_checkpoint, args.pretrained, args.random_teacher)
    evaluate_fn = None
    if args.synthetic_eval is not None and not args.no_eval:
        evaluate_fn = _synthetic_evaluator(cfg, args.synthetic_eval, device, not args.no_progress) if main \
            else _rank0_only
    elif not args.no_eval:  # every rank needs one (or none); only rank 0's loads the test set and runs
        evaluate_fn = (_evaluator(cfg, args.data_root, device, not args.no_progress, args.eval_batches) if main
                       else _rank0_only)
    run_dir = os.path.join(cfg.output_dir, cfg.name)
    trainer = Trainer(cfg, teacher, evaluate_fn=evaluate_fn, run_dir=run_dir, progress=not args.no_progress)
    if main:
        save_config(cfg, os.path.join(run_dir, "config.toml"))
    resume = args.resume if args.resume is not None else (cfg.resume or None)
    if resume is not None:
        trainer.load_checkpoint(resume or os.path.join(run_dir, "checkpoint.pt"))
        if main:
            print(f"resumed at epoch {trainer.epoch} from {resume or os.path.join(run_dir, 'checkpoint.pt')}")
    summary = trainer.fit()
    if not main:
        return 0
    if world > 1:
        summary["world_size"] = world
    with open(os.path.join(run_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    best = summary["best_acc"]
    speed = f"{summary['iters_per_s']:.2f} iterations/s" + (f" per rank ({world} ranks)" if world > 1 else "")
    print(f"done: {summary['epochs_done']} epochs in {summary['fit_seconds'] / 60:.1f} min (evaluations "
          f"{summary['eval_seconds'] / 60:.1f} min), {speed}, "
          + (f"best top-1 {best:.2f}% at epoch {summary['best_epoch'] + 1}" if best is not None else "not evaluated")
          + f"; run folder {run_dir}")
    return 0
