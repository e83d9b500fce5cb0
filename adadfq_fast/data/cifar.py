"""CIFAR-10 / CIFAR-100 from the python pickle archives of https://www.cs.toronto.edu/~kriz/cifar.html."""
from __future__ import annotations

import io
import os
import pickle
import tarfile

import numpy as np
import torch

from ._common import NormalizedImages, candidate_roots

__all__ = ["CIFAR", "CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN", "CIFAR100_STD"]

# Per-channel statistics of each training set (RGB, on x/255), as the AdaDFQ/GDFQ evaluation code normalises
# its test sets; the published accuracies were measured with these.
CIFAR10_MEAN = (0.49139968, 0.48215827, 0.44653124)
CIFAR10_STD = (0.24703233, 0.24348505, 0.26158768)
CIFAR100_MEAN = (0.50705882, 0.48666667, 0.44078431)
CIFAR100_STD = (0.26745098, 0.25568627, 0.27607843)

_LAYOUT = {
    # classes: (folder, archive, train files, test files, label key, meta file, class-name key)
    10: ("cifar-10-batches-py", "cifar-10-python.tar.gz", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
         "labels", "batches.meta", "label_names"),
    100: ("cifar-100-python", "cifar-100-python.tar.gz", ["train"], ["test"], "fine_labels", "meta",
          "fine_label_names"),
}
_STATS = {10: (CIFAR10_MEAN, CIFAR10_STD), 100: (CIFAR100_MEAN, CIFAR100_STD)}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only numpy arrays and plain containers: a data file must not be able to run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} from a CIFAR file")
        return super().find_class(module, name)


def _unpickle(f) -> dict:
    # latin1: the archives are Python 2 pickles; this decodes their str keys and keeps array bytes intact.
    entry = _ArrayUnpickler(f, encoding="latin1").load()
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def _find(num_classes: int, root) -> tuple[str, str]:
    """('dir', folder) or ('tar', archive) holding the batches; a clear error when nowhere."""
    folder, archive = _LAYOUT[num_classes][:2]
    tried = []
    for base in candidate_roots(root):
        if os.path.isfile(base) and base.endswith((".tar.gz", ".tgz", ".tar")):
            return "tar", base
        for kind, path in (("dir", os.path.join(base, folder)), ("dir", base), ("tar", os.path.join(base, archive))):
            tried.append(path)
            if kind == "dir" and os.path.isfile(os.path.join(path, _LAYOUT[num_classes][3][0])):
                return kind, path
            if kind == "tar" and os.path.isfile(path):
                return kind, path
    raise FileNotFoundError(
        f"CIFAR-{num_classes} not found: looked for {folder}/ (the unpacked archive) or {archive} in "
        f"{', '.join(dict.fromkeys(tried))}. Download https://www.cs.toronto.edu/~kriz/{archive} and pass "
        "root=<the folder holding it, or the archive itself> (--data-root), or set ADADFQ_DATA_DIR."
    )


class CIFAR(NormalizedImages):
    """CIFAR-10 (``num_classes=10``) or CIFAR-100 (fine labels) test or train split, 3 x 32 x 32, normalised.

    ``root``: a folder holding ``cifar-10-batches-py/`` / ``cifar-100-python/`` or the ``.tar.gz`` archive, the
    unpacked folder itself, or the archive file (read in place, not extracted). ``mean``/``std`` default to the
    dataset's own training statistics (``CIFAR10_MEAN`` ...).
    """

    def __init__(self, root=None, num_classes: int = 10, split: str = "test", mean=None, std=None):
        if num_classes not in _LAYOUT:
            raise ValueError(f"CIFAR has 10 or 100 classes, got {num_classes}")
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        folder, _, train_files, test_files, label_key, meta_file, names_key = _LAYOUT[num_classes]
        kind, where = _find(num_classes, root)
        self.source = where
        files = train_files if split == "train" else test_files
        blobs = _read(kind, where, folder, files + [meta_file], optional={meta_file})
        entries = [_unpickle(blobs[name]) for name in files]
        data = np.concatenate([np.asarray(e["data"], dtype=np.uint8) for e in entries])
        labels = np.concatenate([np.asarray(e[label_key], dtype=np.int64) for e in entries])
        if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
            raise ValueError(f"{where}: CIFAR 'data' must be N x 3072 uint8 with N labels, got {data.shape} "
                             f"and {len(labels)} labels")
        images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
        # Class names are a convenience; the batches alone are enough.
        classes = (list(_unpickle(blobs[meta_file]).get(names_key, [])) or None) if blobs[meta_file] else None
        default_mean, default_std = _STATS[num_classes]
        super().__init__(images, torch.from_numpy(labels), default_mean if mean is None else mean,
                         default_std if std is None else std, classes)
        self.num_classes = num_classes


def _read(kind: str, where: str, folder: str, names: list[str], optional=frozenset()) -> dict:
    """name -> file object with its bytes (None for a missing optional file); one pass over an archive."""
    out = {}
    if kind == "dir":
        for name in names:
            path = os.path.join(where, name)
            if os.path.isfile(path):
                with open(path, "rb") as f:
                    out[name] = io.BytesIO(f.read())
            elif name in optional:
                out[name] = None
            else:
                raise FileNotFoundError(f"{path} is missing (incomplete CIFAR folder?)")
        return out
    wanted = {f"{folder}/{name}": name for name in names} | {name: name for name in names}
    with tarfile.open(where) as tf:  # in archive order: a .tar.gz cannot seek back cheaply
        for member in tf:
            name = wanted.get(member.name.removeprefix("./"))
            if name is not None and member.isfile() and name not in out:
                out[name] = io.BytesIO(tf.extractfile(member).read())
    for name in names:
        if name not in out:
            if name not in optional:
                raise FileNotFoundError(f"{where} has no {folder}/{name} (not the CIFAR python archive?)")
            out[name] = None
    return out
