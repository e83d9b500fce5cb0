"""``adadfq-fast pretrain``: train a full-precision teacher on a real dataset (default: ResNet-20 on Fashion-MNIST).

AdaDFQ itself never sees data; this command only makes the *pretrained network* the method starts from, so the
main job (``adadfq-fast quantize``) can run end to end offline. The recipe is plain supervised training:

* SGD, Nesterov momentum 0.9, weight decay 5e-4 (not on BN parameters or biases), batch 128;
* learning rate: linear warm-up over the first epoch to 0.1, then cosine decay to 0 (``--lr``, ``--epochs``);
* augmentation: random shifts of up to 2 pixels (zero padding) and horizontal flips, both on the fly;
* fp32, channels_last (the faster layout for this CPU's oneDNN convolutions), fixed seed for data order,
  augmentation and initialisation.

The result is a state dict plus a JSON "card" with the recipe, the exact command, the training data's SHA-256,
the test accuracy and the torch version; ``adadfq_fast/weights/`` ships the one the main job uses.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

WEIGHTS_DIR = os.path.join(os.path.dirname(__file__), "weights")
# The teacher the main job loads: ResNet-20 (pytorchcv layout), 1 input channel, 28 x 28, 10 classes.
SHIPPED_TEACHER = os.path.join(WEIGHTS_DIR, "resnet20_fashion_mnist.pt")


def shipped_teacher_card(path: str = SHIPPED_TEACHER) -> dict:
    """The JSON card written beside a teacher's weights (recipe, command, data checksum, accuracy)."""
    card = os.path.splitext(path)[0] + ".json"
    if not os.path.isfile(card):
        raise FileNotFoundError(f"{card} not found: the teacher card is written by `adadfq-fast pretrain`")
    with open(card) as f:
        return json.load(f)


def data_sha256(dataset) -> str:
    """SHA-256 over a NormalizedImages dataset's uint8 images then its labels (independent of file packing)."""
    h = hashlib.sha256()
    h.update(dataset.images.contiguous().numpy().tobytes())
    h.update(dataset.targets.to(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def augment(x: torch.Tensor, generator: torch.Generator, shift: int = 2) -> torch.Tensor:
    """Random integer shifts in [-shift, shift] (zero fill; zero is the background before normalisation, so
    ``x`` must still be raw [0, 1] pixels) and random horizontal flips, per sample."""
    n, _, h, w = x.shape
    padded = F.pad(x, (shift, shift, shift, shift))
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=generator)
    # Gather the shifted windows with one index per sample (a loop over 128 slices costs more than the conv).
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).view(n, 1, h, 1).expand(n, x.shape[1], h, w + 2 * shift)
    out = padded.gather(2, rows)
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).view(n, 1, 1, w).expand(n, x.shape[1], h, w)
    out = out.gather(3, cols)
    flip = torch.rand(n, generator=generator) < 0.5
    return torch.where(flip.view(n, 1, 1, 1), out.flip(3), out)


def _param_groups(model: torch.nn.Module, weight_decay: float):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.dim() <= 1 else decay).append(p)  # BN weights/biases and biases: no decay
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def train_teacher(model: torch.nn.Module, train_set, test_set, epochs: int = 15, batch_size: int = 128,
                  lr: float = 0.1, weight_decay: float = 5e-4, seed: int = 0, progress: bool = True,
                  log=lambda msg: print(msg, flush=True)) -> dict:
    """Train ``model`` in place on ``train_set`` (a NormalizedImages); returns a history with test accuracy."""
    from tqdm import tqdm

    from adadfq_fast.data import evaluate, make_loader

    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(f"epochs, batch_size and lr must be positive, got {epochs}, {batch_size}, {lr}")
    gen = torch.Generator().manual_seed(seed)
    images = train_set.images.to(torch.float32).div_(255)  # raw [0, 1]: augment pads with background zeros
    mean, std = train_set.mean.view(1, -1, 1, 1), train_set.std.view(1, -1, 1, 1)
    targets = train_set.targets
    n = len(images)
    steps_per_epoch = n // batch_size  # drop the ragged last batch: BN statistics of tiny batches are noisy
    total = epochs * steps_per_epoch
    warmup = steps_per_epoch

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        return 0.5 * lr * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(_param_groups(model, weight_decay), lr=lr, momentum=0.9, nesterov=True)
    test_loader = make_loader(test_set, batch_size=500)
    history = []
    step = 0
    start = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen)
        bar = tqdm(range(steps_per_epoch), desc=f"pretrain {epoch + 1}/{epochs}", disable=not progress,
                   dynamic_ncols=True, leave=False)
        running = 0.0
        for i in bar:
            idx = order[i * batch_size:(i + 1) * batch_size]
            x = augment(images[idx], gen).sub_(mean).div_(std).contiguous(memory_format=torch.channels_last)
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            loss = F.cross_entropy(model(x), targets[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            running += float(loss)
            if i % 20 == 19:
                bar.set_postfix(loss=f"{running / (i + 1):.3f}", lr=f"{lr_at(step):.4f}")
        bar.close()
        acc = evaluate(model, test_loader, progress=False)
        model.train()
        history.append({"epoch": epoch + 1, "train_loss": running / steps_per_epoch, "test_acc": acc,
                        "elapsed_s": time.perf_counter() - start})
        log(f"epoch {epoch + 1}/{epochs}: train loss {running / steps_per_epoch:.4f}, test top-1 {acc:.2f}% "
            f"({time.perf_counter() - start:.0f} s)")
    model.eval()
    return {"history": history, "test_acc": history[-1]["test_acc"], "train_s": time.perf_counter() - start}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="adadfq-fast pretrain",
        description="Train a full-precision teacher (default: ResNet-20 on Fashion-MNIST, 28x28, 1 channel) and "
        "write its state dict and a JSON card (recipe, command, data SHA-256, test accuracy).")
    p.add_argument("--model", default="resnet20", help="a CIFAR-style ResNet name (resnet20, resnet56, ...)")
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--data-root", default=None, help="folder with the dataset (default: standard places)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--out", default="teacher.pt", help="where to write the state dict (the card goes beside it)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    from adadfq_fast.data import dataset_info, load_dataset
    from adadfq_fast.models import build_model

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    info = dataset_info(args.dataset)
    train_set = load_dataset(args.dataset, root=args.data_root, split="train")
    test_set = load_dataset(args.dataset, root=args.data_root, split="test")
    model = build_model(args.model, num_classes=info["num_classes"], in_channels=info["in_channels"],
                        in_size=info["in_size"])
    result = train_teacher(model, train_set, test_set, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                           weight_decay=args.weight_decay, seed=args.seed, progress=not args.no_progress)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}  # channels_last -> plain layout on disk
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    torch.save(state, args.out)
    card = {
        "model": args.model, "dataset": info["name"], "num_classes": info["num_classes"],
        "in_channels": info["in_channels"], "in_size": list(info["in_size"]),
        "test_acc": result["test_acc"], "train_s": round(result["train_s"], 1), "history": result["history"],
        "recipe": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
                   "weight_decay": args.weight_decay, "seed": args.seed, "optimizer": "SGD nesterov 0.9",
                   "schedule": "1 epoch linear warm-up, cosine to 0", "augment": "shift<=2px + hflip"},
        "command": "adadfq-fast pretrain " + " ".join(sys.argv[2:] if argv is None else argv),
        "train_data_sha256": data_sha256(train_set), "test_data_sha256": data_sha256(test_set),
        "weights_sha256": hashlib.sha256(open(args.out, "rb").read()).hexdigest(),
        "torch": torch.__version__,
    }
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump(card, f, indent=1)
    print(f"wrote {args.out}: {args.model} on {info['name']}, test top-1 {result['test_acc']:.2f}% "
          f"after {args.epochs} epochs ({result['train_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
