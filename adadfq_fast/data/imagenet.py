"""ImageNet (ILSVRC-2012) validation/train folders of class subfolders, decoded with Pillow (imported lazily)."""
from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import Dataset

from ._common import candidate_roots

__all__ = ["ImageFolder", "IMAGENET_MEAN", "IMAGENET_STD", "IMG_EXTENSIONS"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _pil():
    try:
        from PIL import Image
    except ImportError as e:
        raise ImportError("reading ImageNet images needs Pillow: pip install pillow") from e
    return Image


def _find_root(root, split: str) -> str:
    names = ["val", "validation"] if split == "test" else ["train"]
    tried = []
    for base in candidate_roots(root):
        # A dataset folder holding the split folder, or (given root only) the split folder itself.
        subs = [os.path.join(base, n) for n in names] + [os.path.join(base, "imagenet", n) for n in names]
        subs += [base] if root is not None else []
        for path in subs:
            tried.append(path)
            if os.path.isdir(path) and any(e.is_dir() for e in os.scandir(path)):
                return path
    raise FileNotFoundError(
        f"ImageNet {split} folder not found (looked in {', '.join(tried)}). It must hold one subfolder per "
        "class (n01440764/, ...), sorted names giving the class indices; the flat ILSVRC2012_img_val.tar must be "
        "sorted into class folders first (e.g. with the common valprep.sh). Pass root=<that folder> (--data-root)."
    )


class ImageFolder(Dataset):
    """Class-subfolder image dataset with the standard evaluation transform.

    Resize the short side to ``resize`` (bilinear, antialiased: Pillow's resize, as torchvision does on PIL
    images), center-crop ``crop`` x ``crop``, scale to [0, 1], normalise with ``IMAGENET_MEAN``/``IMAGENET_STD``.
    Labels are the indices of the sorted subfolder names (torchvision's ``ImageFolder`` convention).
    """

    def __init__(self, root=None, split: str = "test", resize: int = 256, crop: int = 224, mean=IMAGENET_MEAN,
                 std=IMAGENET_STD):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if crop > resize:
            raise ValueError(f"crop ({crop}) must not exceed resize ({resize})")
        self.root = _find_root(root, split)
        self.classes = sorted(e.name for e in os.scandir(self.root) if e.is_dir())
        self.samples = []
        for index, name in enumerate(self.classes):
            folder = os.path.join(self.root, name)
            for dirpath, _, files in sorted(os.walk(folder, followlinks=True)):
                self.samples += [(os.path.join(dirpath, f), index) for f in sorted(files)
                                 if f.lower().endswith(IMG_EXTENSIONS)]
        if not self.samples:
            raise FileNotFoundError(f"{self.root} has class folders but no images ({', '.join(IMG_EXTENSIONS)})")
        self.targets = [t for _, t in self.samples]
        self.num_classes = len(self.classes)
        self.resize, self.crop = resize, crop
        self.mean = torch.tensor(mean, dtype=torch.float32).reshape(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).reshape(3, 1, 1)
        self.in_channels, self.in_size = 3, (crop, crop)
        _pil()  # fail now, not in a loader worker, when Pillow is missing

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, path: str) -> torch.Tensor:
        Image = _pil()
        with Image.open(path) as img:
            img = img.convert("RGB")
        w, h = img.size
        # torchvision's Resize(int): the short side becomes `resize`, the long side int(resize * long / short).
        if w <= h:
            size = (self.resize, int(self.resize * h / w))
        else:
            size = (int(self.resize * w / h), self.resize)
        if size != (w, h):
            img = img.resize(size, Image.BILINEAR)
        w, h = img.size
        left, top = int(round((w - self.crop) / 2.0)), int(round((h - self.crop) / 2.0))
        img = img.crop((left, top, left + self.crop, top + self.crop))
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
        return x.to(torch.float32).div(255).sub(self.mean).div(self.std)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        return self.load_image(path), target
