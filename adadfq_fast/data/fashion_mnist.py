"""Fashion-MNIST (Xiao et al. 2017) from its IDX files, e.g. Debian's ``dataset-fashion-mnist`` package."""
from __future__ import annotations

import gzip
import os

import numpy as np
import torch

from ._common import NormalizedImages, candidate_roots

__all__ = ["FashionMNIST", "read_idx", "FASHION_MNIST_MEAN", "FASHION_MNIST_STD", "FASHION_MNIST_DIR"]

# Pixel mean/std of the 60k training images on x/255 (0.28604, 0.35302, computed from the Debian files).
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)
# Where `apt-get install dataset-fashion-mnist` puts the four *-ubyte.gz files.
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot"]


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file (gzipped or raw) of unsigned bytes into an array of its declared shape."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic {raw[:4].hex()})")
    if raw[2] != 0x08:
        raise ValueError(f"{path}: only unsigned-byte IDX data (type 0x08) is supported, got 0x{raw[2]:02x}")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} ({int(np.prod(shape))} bytes) but {len(raw) - offset} "
                         "data bytes follow (truncated file?)")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


def _find_file(folder: str, prefix: str, kind: str) -> str | None:
    # Standard names (t10k-images-idx3-ubyte), the dotted variant some mirrors use, each raw or gzipped.
    dims = "idx3" if kind == "images" else "idx1"
    for stem in (f"{prefix}-{kind}-{dims}-ubyte", f"{prefix}-{kind}.{dims}-ubyte"):
        for name in (stem + ".gz", stem):
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                return path
    return None


class FashionMNIST(NormalizedImages):
    """Fashion-MNIST test (10k) or train (60k) split as 1 x 28 x 28 float32 (1 x 32 x 32 with ``pad_to_32``).

    Normalised with ``FASHION_MNIST_MEAN``/``FASHION_MNIST_STD``. ``pad_to_32`` adds 2 background (zero) pixels
    on every side before normalising, so 32x32 networks (CIFAR ResNets, the CIFAR generator) take it as is.
    ``root``: the folder with the IDX files, or a folder holding ``fashion-mnist/``; default: ADADFQ_DATA_DIR,
    ./data, ~/data, then ``/usr/share/datasets/fashion-mnist``.
    """

    def __init__(self, root=None, split: str = "test", pad_to_32: bool = False, mean=None, std=None):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        prefix = "t10k" if split == "test" else "train"
        folders = []
        for base in candidate_roots(root):
            folders += [base, os.path.join(base, "fashion-mnist"), os.path.join(base, "fashion_mnist")]
        if root is None:
            folders.append(FASHION_MNIST_DIR)
        for folder in dict.fromkeys(folders):
            images_path, labels_path = _find_file(folder, prefix, "images"), _find_file(folder, prefix, "labels")
            if images_path and labels_path:
                break
        else:
            raise FileNotFoundError(
                f"Fashion-MNIST {split} files ({prefix}-images-idx3-ubyte[.gz], {prefix}-labels-idx1-ubyte[.gz]) "
                f"not found in {', '.join(dict.fromkeys(folders))}. Install them with "
                "`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu, into "
                f"{FASHION_MNIST_DIR}) or download them from https://github.com/zalandoresearch/fashion-mnist "
                "and pass root=<folder> (--data-root)."
            )
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"{images_path} / {labels_path}: expected N x H x W images and N labels, got "
                             f"{images.shape} and {labels.shape}")
        x = torch.from_numpy(images.copy()).unsqueeze(1)
        if pad_to_32:
            x = torch.nn.functional.pad(x, (2, 2, 2, 2))
        self.source = os.path.dirname(images_path)
        super().__init__(x, torch.from_numpy(labels.astype(np.int64)),
                         FASHION_MNIST_MEAN if mean is None else mean, FASHION_MNIST_STD if std is None else std,
                         list(CLASSES))
