"""Pieces shared by the dataset readers."""
from __future__ import annotations

import os

import torch
from torch.utils.data import Dataset

# Searched, in order, when a dataset is asked for without a root (ADADFQ_DATA_DIR first when set).
DEFAULT_ROOTS = ["data", os.path.join("~", "data"), "/usr/share/datasets"]


def default_roots() -> list[str]:
    env = os.environ.get("ADADFQ_DATA_DIR")
    roots = ([env] if env else []) + DEFAULT_ROOTS
    return [os.path.abspath(os.path.expanduser(r)) for r in roots]


def candidate_roots(root: str | os.PathLike | None) -> list[str]:
    if root is None:
        return default_roots()
    return [os.path.abspath(os.path.expanduser(os.fspath(root)))]


class NormalizedImages(Dataset):
    """In-memory uint8 images (N x C x H x W) served as ``(x / 255 - mean) / std`` float32, with int labels.

    Kept as uint8 so a 50k-image split costs 150 MB, not 600 MB; the per-sample arithmetic is the one
    torchvision's ``ToTensor`` + ``Normalize`` do, in the same order.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, mean, std, classes: list[str] | None = None):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 N x C x H x W, got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} labels")
        channels = images.shape[1]
        self.images = images
        self.targets = targets.long()
        self.mean = torch.tensor(mean, dtype=torch.float32).reshape(channels, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).reshape(channels, 1, 1)
        self.classes = classes
        self.num_classes = len(classes) if classes else int(self.targets.max()) + 1 if len(targets) else 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        x = self.images[index].to(torch.float32).div(255)
        return x.sub(self.mean).div(self.std), int(self.targets[index])

    @property
    def in_channels(self) -> int:
        return self.images.shape[1]

    @property
    def in_size(self) -> tuple[int, int]:
        return tuple(self.images.shape[2:])
