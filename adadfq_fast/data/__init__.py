"""Real datasets for evaluating full-precision and quantized models (AdaDFQ itself never trains on them).

``load_dataset(name, root=None, split="test")`` with name ``cifar10``, ``cifar100``, ``imagenet`` or
``fashion-mnist``; ``make_loader(...)`` wraps it in a DataLoader; ``evaluate(model, loader)`` gives top-1 %.
No torchvision: CIFAR is read from its pickle archive, Fashion-MNIST from IDX files, ImageNet with Pillow.
Without ``root``, datasets are searched in ADADFQ_DATA_DIR, ./data, ~/data and /usr/share/datasets; a
missing dataset is an error saying where it looked and how to get it.
"""
from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader, Dataset

from ._common import DEFAULT_ROOTS, NormalizedImages
from .cifar import CIFAR, CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD
from .fashion_mnist import FASHION_MNIST_DIR, FASHION_MNIST_MEAN, FASHION_MNIST_STD, FashionMNIST, read_idx
from .imagenet import IMAGENET_MEAN, IMAGENET_STD, ImageFolder

__all__ = [
    "load_dataset", "make_loader", "evaluate", "dataset_info", "DATASETS", "DEFAULT_ROOTS",
    "CIFAR", "FashionMNIST", "ImageFolder", "NormalizedImages", "read_idx",
    "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN", "CIFAR100_STD", "IMAGENET_MEAN", "IMAGENET_STD",
    "FASHION_MNIST_MEAN", "FASHION_MNIST_STD", "FASHION_MNIST_DIR",
]

# name -> (num_classes, in_channels, in_size); Fashion-MNIST is 28x28, or 32x32 with pad_to_32=True.
DATASETS = {
    "cifar10": (10, 3, (32, 32)),
    "cifar100": (100, 3, (32, 32)),
    "imagenet": (1000, 3, (224, 224)),
    "fashion-mnist": (10, 1, (28, 28)),
}
_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist",
            "cifar-10": "cifar10", "cifar-100": "cifar100"}


def _canonical(name: str) -> str:
    key = name.lower()
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return key


def dataset_info(name: str, pad_to_32: bool = False) -> dict:
    """``num_classes``, ``in_channels`` and ``in_size`` of a dataset, for building a matching model."""
    key = _canonical(name)
    num_classes, in_channels, in_size = DATASETS[key]
    if key == "fashion-mnist" and pad_to_32:
        in_size = (32, 32)
    return {"name": key, "num_classes": num_classes, "in_channels": in_channels, "in_size": in_size}


def load_dataset(name: str, root: str | os.PathLike | None = None, split: str = "test", **kwargs) -> Dataset:
    """The ``split`` ("test" or "train"; ImageNet's "test" is its validation set) of a dataset, yielding
    ``(float32 C x H x W normalised image, int label)``. Extra keyword arguments go to the dataset class:
    ``pad_to_32`` (Fashion-MNIST), ``resize``/``crop`` (ImageNet), ``mean``/``std`` (all)."""
    key = _canonical(name)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if key in ("cifar10", "cifar100"):
        return CIFAR(root, num_classes=DATASETS[key][0], split=split, **kwargs)
    if key == "fashion-mnist":
        return FashionMNIST(root, split=split, **kwargs)
    return ImageFolder(root, split=split, **kwargs)


def make_loader(
    dataset: Dataset | str,
    batch_size: int = 200,
    shuffle: bool = False,
    num_workers: int = 0,
    root: str | os.PathLike | None = None,
    split: str = "test",
    drop_last: bool = False,
    pin_memory: bool = False,
    seed: int | None = None,
    **dataset_kwargs,
) -> DataLoader:
    """A DataLoader over ``dataset`` (a Dataset, or a name passed to ``load_dataset`` with root/split/kwargs).

    The default batch of 200 is the AdaDFQ evaluation batch; ``seed`` makes a shuffled order reproducible.
    """
    if isinstance(dataset, str):
        dataset = load_dataset(dataset, root=root, split=split, **dataset_kwargs)
    elif dataset_kwargs:
        raise TypeError(f"dataset options {sorted(dataset_kwargs)} only apply when the dataset is given by name")
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      drop_last=drop_last, pin_memory=pin_memory, generator=generator,
                      persistent_workers=num_workers > 0)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, device: str | torch.device = "cpu", progress: bool = True,
             max_batches: int | None = None, desc: str = "eval") -> float:
    """Top-1 accuracy (%) of ``model`` over ``loader`` (or the first ``max_batches`` batches).

    The model runs in eval mode and is put back in its previous mode afterwards; it must already be on
    ``device`` (the batches are moved there). Side effects of its forward (e.g. a quantized model's activation
    ranges while they are unfrozen) are the caller's to freeze first.
    """
    from tqdm import tqdm

    device = torch.device(device)
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        n = len(loader) if max_batches is None else min(len(loader), max_batches)
        bar = tqdm(loader, total=n, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
        for i, (x, y) in enumerate(bar):
            if max_batches is not None and i >= max_batches:
                break
            x = x.to(device, non_blocking=True)
            y = torch.as_tensor(y).to(device, non_blocking=True)
            pred = model(x).argmax(dim=1)
            correct += int((pred == y).sum())
            total += y.numel()
            bar.set_postfix(top1=f"{100.0 * correct / total:.2f}")
        bar.close()
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("evaluate: the loader yielded no samples")
    return 100.0 * correct / total
