"""Datasets (CIFAR pickles, Fashion-MNIST IDX, ImageNet folders), loaders and evaluate(), on tiny files."""
import gzip
import io
import os
import pickle
import struct
import tarfile

import numpy as np
import pytest
import torch
from torch import nn

from adadfq_fast import data as D
from adadfq_fast.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    dataset_info,
    evaluate,
    load_dataset,
    make_loader,
    read_idx,
)


@pytest.fixture(autouse=True)
def no_default_data(monkeypatch, tmp_path):
    """Keep the default search roots away from whatever this machine has in ./data or ~/data."""
    monkeypatch.setattr(D._common, "DEFAULT_ROOTS", [str(tmp_path / "nowhere")])
    monkeypatch.delenv("ADADFQ_DATA_DIR", raising=False)


# ---------------------------------------------------------------------------------------------------- CIFAR

class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 str opcodes, like the archives from cs.toronto.edu (made with Python 2)."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj):
        self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    # Python 2's numpy pickles name numpy.core.multiarray (numpy 2 writes numpy._core.multiarray).
    return buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")


def cifar_entry(n, num_classes, seed):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, num_classes, size=n)]
    key = b"labels" if num_classes == 10 else b"fine_labels"
    entry = {b"batch_label": b"testing batch 1 of 1", b"data": images, key: labels}
    if num_classes == 100:
        entry[b"coarse_labels"] = [v // 5 for v in labels]
    return entry, images, labels


def write_cifar(root, num_classes=10, n_test=6, n_train=3):
    """A miniature CIFAR folder with the real file names; returns {split: (images, labels)}."""
    folder = root / ("cifar-10-batches-py" if num_classes == 10 else "cifar-100-python")
    folder.mkdir(parents=True)
    out = {}
    test, images, labels = cifar_entry(n_test, num_classes, seed=num_classes)
    (folder / ("test_batch" if num_classes == 10 else "test")).write_bytes(py2_pickle(test))
    out["test"] = (images, labels)
    names = [f"data_batch_{i}" for i in range(1, 6)] if num_classes == 10 else ["train"]
    train_images, train_labels = [], []
    for i, name in enumerate(names):
        entry, images, labels = cifar_entry(n_train, num_classes, seed=100 + i)
        (folder / name).write_bytes(py2_pickle(entry))
        train_images.append(images)
        train_labels += labels
    out["train"] = (np.concatenate(train_images), train_labels)
    meta = ({b"label_names": [f"c{i}".encode() for i in range(10)]} if num_classes == 10 else
            {b"fine_label_names": [f"f{i}".encode() for i in range(100)]})
    (folder / ("batches.meta" if num_classes == 10 else "meta")).write_bytes(py2_pickle(meta))
    return out


def expected_cifar(images, index, mean, std):
    x = torch.from_numpy(images[index].reshape(3, 32, 32).copy()).float() / 255
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


@pytest.mark.parametrize("num_classes", [10, 100])
def test_cifar_folder(tmp_path, num_classes):
    truth = write_cifar(tmp_path, num_classes)
    name = f"cifar{num_classes}"
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if num_classes == 10 else (CIFAR100_MEAN, D.CIFAR100_STD)
    for split, n in (("test", 6), ("train", 15 if num_classes == 10 else 3)):
        ds = load_dataset(name, root=tmp_path, split=split)
        images, labels = truth[split]
        assert len(ds) == n and ds.num_classes == num_classes
        assert ds.classes[:2] == (["c0", "c1"] if num_classes == 10 else ["f0", "f1"])
        for i in (0, n - 1):
            x, y = ds[i]
            assert x.dtype == torch.float32 and x.shape == (3, 32, 32)
            torch.testing.assert_close(x, expected_cifar(images, i, mean, std), rtol=0, atol=1e-6)
            assert y == labels[i]
    # the unpacked folder itself also works
    folder = "cifar-10-batches-py" if num_classes == 10 else "cifar-100-python"
    assert len(load_dataset(name, root=tmp_path / folder)) == 6


def test_cifar_tar_gz(tmp_path):
    truth = write_cifar(tmp_path / "src", 10)
    archive = tmp_path / "dl" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    for root in (archive, archive.parent):  # the archive itself, or the folder holding it
        ds = load_dataset("cifar10", root=root)
        images, labels = truth["test"]
        assert len(ds) == 6 and ds[2][1] == labels[2]
        torch.testing.assert_close(ds[2][0], expected_cifar(images, 2, CIFAR10_MEAN, CIFAR10_STD), rtol=0, atol=1e-6)
    assert len(load_dataset("cifar10", root=archive, split="train")) == 15
    with pytest.raises(FileNotFoundError, match="has no cifar-100-python/test"):
        load_dataset("cifar100", root=archive)


def test_cifar_missing_and_unsafe(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as e:
        load_dataset("cifar100", root=tmp_path)
    msg = str(e.value)
    assert "cifar-100-python.tar.gz" in msg and str(tmp_path) in msg and "cs.toronto.edu" in msg
    # Without root: the default places are listed, ADADFQ_DATA_DIR first.
    monkeypatch.setenv("ADADFQ_DATA_DIR", str(tmp_path / "mydata"))
    with pytest.raises(FileNotFoundError, match="mydata"):
        load_dataset("cifar10")

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({"data": os.getcwd, "labels": []}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle"):
        load_dataset("cifar10", root=tmp_path)


# --------------------------------------------------------------------------------------------- Fashion-MNIST

def idx_bytes(array: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_fmnist(folder, prefix="t10k", n=5, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    for kind, dims, arr in (("images", "idx3", images), ("labels", "idx1", labels)):
        name = f"{prefix}-{kind}-{dims}-ubyte"
        raw = idx_bytes(arr)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return images, labels


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_idx(tmp_path, gz):
    images, labels = write_fmnist(tmp_path / "fm", gz=gz)
    write_fmnist(tmp_path / "fm", prefix="train", n=7, gz=gz, seed=1)
    ds = load_dataset("fashion-mnist", root=tmp_path / "fm")
    assert len(ds) == 5 and ds.in_channels == 1 and ds.in_size == (28, 28) and ds.num_classes == 10
    x, y = ds[3]
    want = (torch.from_numpy(images[3].copy()).float() / 255 - FASHION_MNIST_MEAN[0]) / FASHION_MNIST_STD[0]
    torch.testing.assert_close(x, want.unsqueeze(0), rtol=0, atol=1e-6)
    assert y == labels[3]
    custom = load_dataset("fashion-mnist", root=tmp_path / "fm", mean=(0.5,), std=(0.25,))
    torch.testing.assert_close(custom[3][0], (torch.from_numpy(images[3:4].copy()).float() / 255 - 0.5) / 0.25)
    assert len(load_dataset("fmnist", root=tmp_path / "fm", split="train")) == 7
    padded = load_dataset("fashion_mnist", root=tmp_path / "fm", pad_to_32=True)
    xp, _ = padded[3]
    assert xp.shape == (1, 32, 32) and padded.in_size == (32, 32)
    torch.testing.assert_close(xp[:, 2:30, 2:30], x)
    background = -FASHION_MNIST_MEAN[0] / FASHION_MNIST_STD[0]
    assert torch.allclose(xp[:, :2], torch.full((1, 2, 32), background))
    assert torch.allclose(xp[:, :, -2:], torch.full((1, 32, 2), background))


def test_fashion_mnist_root_with_subfolder(tmp_path):
    write_fmnist(tmp_path / "fashion-mnist")
    assert len(load_dataset("fashion-mnist", root=tmp_path)) == 5


def test_idx_errors(tmp_path):
    good = idx_bytes(np.zeros((2, 3, 3), np.uint8))
    (tmp_path / "a").write_bytes(b"\x01\x02" + good[2:])
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(str(tmp_path / "a"))
    (tmp_path / "b").write_bytes(good[:-1])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(str(tmp_path / "b"))
    (tmp_path / "c").write_bytes(bytes([0, 0, 0x0D, 1]) + struct.pack(">I", 1) + b"\0\0\0\0")
    with pytest.raises(ValueError, match="unsigned-byte"):
        read_idx(str(tmp_path / "c"))
    np.testing.assert_array_equal(read_idx(_write(tmp_path / "d.gz", gzip.compress(good))), np.zeros((2, 3, 3)))


def _write(path, payload):
    path.write_bytes(payload)
    return str(path)


def test_fashion_mnist_missing(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError) as e:
        load_dataset("fashion-mnist", root=tmp_path)
    assert "apt-get install dataset-fashion-mnist" in str(e.value) and str(tmp_path) in str(e.value)
    monkeypatch.setattr(D.fashion_mnist, "FASHION_MNIST_DIR", str(tmp_path / "system"))
    with pytest.raises(FileNotFoundError, match="system"):
        load_dataset("fashion-mnist")  # default places include the Debian folder


REAL_FMNIST = "/usr/share/datasets/fashion-mnist"


@pytest.mark.skipif(not os.path.isdir(REAL_FMNIST), reason="apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist_test_set():
    ds = load_dataset("fashion-mnist", root=REAL_FMNIST)
    assert len(ds) == 10000
    assert torch.bincount(ds.targets).tolist() == [1000] * 10
    x = torch.stack([ds[i][0] for i in range(0, 10000, 10)])
    assert x.shape == (1000, 1, 28, 28)
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05  # the training-set statistics fit
    loader = make_loader("fashion-mnist", batch_size=256, root=REAL_FMNIST, pad_to_32=True)
    xb, yb = next(iter(loader))
    assert xb.shape == (256, 1, 32, 32) and yb.dtype == torch.int64


# -------------------------------------------------------------------------------------------------- ImageNet

def test_imagenet_folder(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    val = tmp_path / "imagenet" / "val"
    (val / "n002").mkdir(parents=True)
    (val / "n001").mkdir()
    (val / "n001" / "notes.txt").write_text("not an image")
    # 512 x 256, left half red, right half blue: the short side is already 256, so no resampling, and the
    # 224 center crop starts at column 144: columns 0..111 of the crop are red, 112..223 blue.
    two = np.zeros((256, 512, 3), np.uint8)
    two[:, :256, 0] = 255
    two[:, 256:, 2] = 255
    Image.fromarray(two).save(val / "n002" / "halves.png")
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(300, 260), (200, 400)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(val / "n001" / f"img{i}.JPEG")
    Image.fromarray(rng.integers(0, 256, (64, 80), dtype=np.uint8), mode="L").save(val / "n002" / "gray.jpg")

    ds = load_dataset("imagenet", root=tmp_path)  # finds imagenet/val
    assert ds.classes == ["n001", "n002"] and len(ds) == 4
    assert [t for _, t in ds.samples] == [0, 0, 1, 1]
    for i in range(len(ds)):
        x, _ = ds[i]
        assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    x, y = ds[[p for p, _ in ds.samples].index(str(val / "n002" / "halves.png"))]
    assert y == 1
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1), torch.tensor(IMAGENET_STD).view(3, 1)
    red = ((torch.tensor([1.0, 0.0, 0.0]).view(3, 1) - mean) / std).view(3, 1, 1).expand(3, 224, 112)
    blue = ((torch.tensor([0.0, 0.0, 1.0]).view(3, 1) - mean) / std).view(3, 1, 1).expand(3, 224, 112)
    torch.testing.assert_close(x[:, :, :112], red)
    torch.testing.assert_close(x[:, :, 112:], blue)
    assert len(load_dataset("imagenet", root=val)) == 4  # the split folder itself
    xb, yb = next(iter(make_loader(ds, batch_size=4)))
    assert xb.shape == (4, 3, 224, 224) and yb.tolist() == [0, 0, 1, 1]


def test_imagenet_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="one subfolder per class"):
        load_dataset("imagenet", root=tmp_path)
    (tmp_path / "val" / "n001").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no images"):
        load_dataset("imagenet", root=tmp_path)


# ------------------------------------------------------------------------------------ registry, loader, evaluate

def test_names_and_info(tmp_path):
    assert dataset_info("CIFAR-100") == {"name": "cifar100", "num_classes": 100, "in_channels": 3,
                                         "in_size": (32, 32)}
    assert dataset_info("fmnist", pad_to_32=True)["in_size"] == (32, 32)
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="split"):
        load_dataset("cifar10", root=tmp_path, split="val")


def test_make_loader(tmp_path):
    write_fmnist(tmp_path, n=10)
    loader = make_loader("fashion-mnist", batch_size=4, root=tmp_path)
    batches = list(loader)
    assert [len(y) for _, y in batches] == [4, 4, 2]
    assert batches[0][0].shape == (4, 1, 28, 28)
    order = lambda seed: torch.cat([y for _, y in make_loader("fashion-mnist", 3, True, root=tmp_path, seed=seed)])
    assert torch.equal(order(1), order(1))
    with pytest.raises(TypeError, match="only apply when the dataset is given by name"):
        make_loader(loader.dataset, pad_to_32=True)


class LabelReader(nn.Module):
    """Predicts the label stored in pixel (0, 0): a model whose accuracy we know."""

    def __init__(self, num_classes=10, wrong_every=0):
        super().__init__()
        self.num_classes, self.wrong_every = num_classes, wrong_every

    def forward(self, x):
        y = x[:, 0, 0, 0].round().long()
        if self.wrong_every:
            y = torch.where(torch.arange(len(y)) % self.wrong_every == 0, (y + 1) % self.num_classes, y)
        return nn.functional.one_hot(y, self.num_classes).float()


def test_evaluate(capsys):
    labels = torch.arange(20) % 10
    x = torch.zeros(20, 1, 4, 4)
    x[:, 0, 0, 0] = labels.float()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, labels), batch_size=5)
    model = LabelReader().train()
    assert evaluate(model, loader, progress=False) == 100.0
    assert model.training  # mode restored
    assert evaluate(LabelReader(wrong_every=5), loader, progress=True) == 80.0
    assert evaluate(LabelReader(wrong_every=5), loader, progress=False, max_batches=1) == 80.0
    empty = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:0], labels[:0]), batch_size=5)
    with pytest.raises(ValueError, match="no samples"):
        evaluate(model, empty, progress=False)


def test_evaluate_resnet_on_fake_cifar(tmp_path):
    write_cifar(tmp_path, 10, n_test=8)
    from adadfq_fast.models import build_model

    model = build_model("resnet20_cifar10")
    top1 = evaluate(model, make_loader("cifar10", batch_size=4, root=tmp_path), progress=False)
    assert 0.0 <= top1 <= 100.0 and top1 * 8 / 100 == round(top1 * 8 / 100)
