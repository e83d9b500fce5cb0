"""Model zoo: the full-precision networks AdaDFQ quantizes, by name.

=====================================  ==========================================================================
name                                   model
=====================================  ==========================================================================
``resnet20_cifar10``, ``..._cifar100``  our ``CIFARResNet`` (pytorchcv's keys); also resnet{D}_cifar10/100/svhn,
                                       D = 6n+2, and resnet{D}bn_cifar* (bottleneck units), D = 9n+2
``resnet20`` (``resnet32``, ...)       the same network with any ``num_classes`` (default 10) / ``in_channels``
``resnet18``, ``resnet50``,            pytorchcv's ImageNet models, imported from its model modules (not
``mobilenetv2_w1``                     ``model_provider``, which needs torchvision): ``pip install --no-deps
                                       pytorchcv``
``torchvision:<name>``                 ``torchvision.models.get_model(name)``, where torchvision imports
=====================================  ==========================================================================

Weights: ``checkpoint=PATH`` loads a state dict (see ``load_checkpoint``); ``pretrained=True`` loads pytorchcv's
published weights (those of the AdaDFQ paper) from its local store ``~/.torch/models`` or downloads them through
pytorchcv; without network it fails with the URL to fetch by hand.
"""
from __future__ import annotations

import hashlib
import importlib
import io
import os
import pickle
import re
import zipfile
from collections.abc import Mapping

import torch
from torch import nn

from .resnet_cifar import resnet_cifar

__all__ = ["build_model", "load_checkpoint", "load_state_dict_file", "available_models", "pretrained_url"]

# pytorchcv's models of the published AdaDFQ settings (plus deeper CIFAR ResNets) and the module defining each.
PYTORCHCV_IMAGENET = {"resnet18": "resnet", "resnet50": "resnet", "mobilenetv2_w1": "mobilenetv2"}

# From pytorchcv's model_metainfos.csv: name -> (release tag, error x 1e4 as written, sha1). pytorchcv stores the
# weights as <name>-<error>-<sha1[:8]>.pth in ~/.torch/models and downloads them from imgclsmob's releases.
_PYTORCHCV_WEIGHTS = {
    "resnet20_cifar10": ("v0.0.163", "0597", "9b0024ac4c2f374cde2c5052e0d0344a75871cdb"),
    "resnet20_cifar100": ("v0.0.180", "2964", "a5322afed92fa96cb7b3453106f73cf38e316151"),
    "resnet56_cifar10": ("v0.0.163", "0452", "628c42a26fe347b84060136212e018df2bb35e0f"),
    "resnet56_cifar100": ("v0.0.181", "2488", "d65f53b10ad5d124698e728432844c65261c3107"),
    "resnet110_cifar10": ("v0.0.163", "0369", "4d6ca1fc02eaeed724f4f596011e391528536049"),
    "resnet110_cifar100": ("v0.0.190", "2280", "d8d397a767db6d22af040223ec8ae342a088c3e5"),
    "resnet18": ("v0.0.478", "0896", "77a56f155214819bfc79ff09795370f955b20e6d"),
    "resnet50": ("v0.0.329", "0633", "b00d1c8e52aa7a2badc705b1545aaf6ccece6ce9"),
    "mobilenetv2_w1": ("v0.0.213", "0887", "13a021bca5b679b76156829743f7182da42e8bb6"),
}
_IMGCLSMOB_URL = "https://github.com/osmr/imgclsmob/releases/download/{tag}/{file}.zip"
# Where pytorchcv keeps downloaded weights (its default `root`); ADADFQ_WEIGHTS_DIR overrides it.
WEIGHTS_DIR = os.environ.get("ADADFQ_WEIGHTS_DIR", os.path.join("~", ".torch", "models"))

_PYTORCHCV_HINT = (
    "pip install --no-deps pytorchcv  (--no-deps: its torchvision requirement would pull another torch)"
)
# pytorchcv's ImageNet ResNet depths: a bare "resnet18" means that model, never a CIFAR ResNet.
_IMAGENET_RESNET_DEPTHS = {10, 12, 14, 16, 18, 26, 34, 38, 50, 101, 152, 200}
_CIFAR_NAME = re.compile(r"^resnet(\d+)(bn)?_(cifar10|cifar100|svhn)$")
_CUSTOM_NAME = re.compile(r"^resnet(\d+)(bn)?$")
_DATASET_CLASSES = {"cifar10": 10, "cifar100": 100, "svhn": 10}


def available_models() -> list[str]:
    """The names ``build_model`` knows, with ``<D>``/``<name>`` standing for depths and torchvision names."""
    return [
        "resnet20_cifar10", "resnet20_cifar100", "resnet<D>_cifar10", "resnet<D>_cifar100", "resnet<D>_svhn",
        "resnet<D>bn_cifar10", "resnet<D>bn_cifar100", "resnet20", "resnet<D>", "resnet<D>bn",
        *PYTORCHCV_IMAGENET, "torchvision:<name>",
    ]


def pretrained_url(name: str) -> str | None:
    """Where pytorchcv's weights for ``name`` can be downloaded by hand (a .zip holding one .pth), if known."""
    if name not in _PYTORCHCV_WEIGHTS:
        return None
    tag, _, _ = _PYTORCHCV_WEIGHTS[name]
    return _IMGCLSMOB_URL.format(tag=tag, file=_weights_file_name(name))


def _weights_file_name(name: str) -> str:
    _, error, sha1 = _PYTORCHCV_WEIGHTS[name]
    return f"{name}-{error}-{sha1[:8]}.pth"


def build_model(
    name: str,
    num_classes: int | None = None,
    in_channels: int = 3,
    checkpoint: str | os.PathLike | None = None,
    pretrained: bool = False,
    in_size: tuple[int, int] | None = None,
) -> nn.Module:
    """Build the named model (see the module docstring), load its weights, and return it in eval mode."""
    if checkpoint is not None and pretrained:
        raise ValueError("give either checkpoint=PATH or pretrained=True, not both")
    if name.startswith("torchvision:"):
        model = _build_torchvision(name[len("torchvision:"):], num_classes, in_channels, pretrained)
        pretrained = False  # torchvision loaded its own weights
    elif name in PYTORCHCV_IMAGENET:
        model = _build_pytorchcv(name, num_classes, in_channels, in_size)
    else:
        model = _build_cifar_resnet(name, num_classes, in_channels, in_size)
    if pretrained:
        _check_pretrained_shape(name, model, in_channels)
        # Like pytorchcv's own loader (ignore_extra=True): a published file may carry keys the model lacks.
        load_checkpoint(model, _pretrained_file(name), ignore_unexpected=True)
    elif checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model.eval()


def _build_cifar_resnet(name, num_classes, in_channels, in_size):
    m = _CIFAR_NAME.match(name)
    if m:
        depth, bottleneck, dataset = int(m.group(1)), bool(m.group(2)), m.group(3)
        expected = _DATASET_CLASSES[dataset]
        if num_classes not in (None, expected):
            base = f"resnet{depth}{'bn' if bottleneck else ''}"
            raise ValueError(f"{name} has {expected} classes, got num_classes={num_classes}; use '{base}' for "
                             "a custom number of classes")
        num_classes = expected
    else:
        m = _CUSTOM_NAME.match(name)
        if not m or (not m.group(2) and int(m.group(1)) in _IMAGENET_RESNET_DEPTHS):
            raise ValueError(f"unknown model {name!r}; known: {', '.join(available_models())}")
        depth, bottleneck = int(m.group(1)), bool(m.group(2))
        num_classes = 10 if num_classes is None else num_classes
    return resnet_cifar(depth, num_classes, in_channels, tuple(in_size or (32, 32)), bottleneck)


def _import_pytorchcv(module: str, name: str):
    try:
        return importlib.import_module(f"pytorchcv.models.{module}")
    except ImportError as e:
        raise ImportError(f"model {name!r} comes from pytorchcv, which is not importable ({e}): {_PYTORCHCV_HINT}") \
            from e


def _build_pytorchcv(name, num_classes, in_channels, in_size):
    factory = getattr(_import_pytorchcv(PYTORCHCV_IMAGENET[name], name), name)
    kwargs = {"num_classes": 1000 if num_classes is None else num_classes, "in_channels": in_channels}
    if in_size is not None:
        kwargs["in_size"] = tuple(in_size)
    return factory(**kwargs)


def _build_torchvision(name, num_classes, in_channels, pretrained):
    try:
        import torchvision
    except Exception as e:  # a torchvision built for another torch fails with more than ImportError
        raise ImportError(f"'torchvision:{name}' needs torchvision, which does not import here ({e!r}); use a "
                          "torchvision build that matches the installed torch, or a pytorchcv model") from e
    if in_channels != 3:
        raise ValueError(f"torchvision models take 3 input channels, got in_channels={in_channels}")
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    try:
        return torchvision.models.get_model(name, weights="DEFAULT" if pretrained else None, **kwargs)
    except Exception as e:
        if not pretrained:
            raise
        raise RuntimeError(f"could not get torchvision's pretrained weights for {name!r} ({e}); without network, "
                           "download them elsewhere and pass checkpoint=PATH (--checkpoint PATH)") from e


def _check_pretrained_shape(name, model, in_channels):
    if name not in _PYTORCHCV_WEIGHTS and not _CIFAR_NAME.match(name) and name not in PYTORCHCV_IMAGENET:
        raise ValueError(f"no pretrained weights are published for {name!r}; pass checkpoint=PATH "
                         "(--checkpoint PATH)")
    expected = 1000 if name in PYTORCHCV_IMAGENET else None
    if in_channels != 3 or (expected is not None and getattr(model, "num_classes", expected) != expected):
        raise ValueError(f"pretrained weights of {name!r} are for 3 input channels and the original classes; "
                         f"got in_channels={in_channels}, num_classes={getattr(model, 'num_classes', '?')}")


def _sha1(path: str) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _pytorchcv_fetch(name: str, root: str) -> str:
    """Download through pytorchcv's model store; returns the .pth path (replaced in tests)."""
    try:
        store = importlib.import_module("pytorchcv.models.common.model_store")
    except ImportError:
        store = importlib.import_module("pytorchcv.models.model_store")  # pytorchcv < 0.0.70 layout
    return store.get_model_file(name, local_model_store_dir_path=root)


def _pretrained_file(name: str) -> str:
    root = os.path.expanduser(WEIGHTS_DIR)
    if name in _PYTORCHCV_WEIGHTS:
        cached = os.path.join(root, _weights_file_name(name))
        # A file pytorchcv already downloaded works offline and without pytorchcv.
        if os.path.isfile(cached) and _sha1(cached) == _PYTORCHCV_WEIGHTS[name][2]:
            return cached
    url = pretrained_url(name)
    where = (f"Download {url} , unzip it, and pass checkpoint=PATH (--checkpoint PATH) with the .pth inside, "
             f"or put that .pth in {root} where pretrained=True finds it." if url else
             "Get the weights of pytorchcv's model of that name and pass checkpoint=PATH (--checkpoint PATH).")
    try:
        importlib.import_module("pytorchcv")
    except ImportError:
        raise RuntimeError(f"pretrained weights for {name!r} were not found in {root} and downloading them needs "
                           f"pytorchcv ({_PYTORCHCV_HINT}) and network. {where}") from None
    try:
        return _pytorchcv_fetch(name, root)
    except Exception as e:
        raise RuntimeError(f"could not download the pretrained weights for {name!r} through pytorchcv ({e!r}); "
                           f"this machine may have no network. {where}") from e


def _load_file(path: str):
    # pytorchcv publishes a .zip holding one .pth; torch's own format is also a zip, told apart by its data.pkl.
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            inner = [n for n in names if n.endswith((".pth", ".pt"))]
            if len(inner) == 1 and not any(n.endswith("data.pkl") for n in names):
                return torch.load(io.BytesIO(zf.read(inner[0])), map_location="cpu", weights_only=True)
    return torch.load(path, map_location="cpu", weights_only=True)


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint into a plain state dict on CPU.

    Accepts a raw state dict, a dict holding one under ``state_dict``/``model``/``model_state_dict``, or
    pytorchcv's .pth.zip; strips ``module.`` (DataParallel) and ``_orig_mod.`` (torch.compile) prefixes. Only
    tensors and plain containers are unpickled (``weights_only``), so a checkpoint cannot run code.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        obj = _load_file(path)
    except pickle.UnpicklingError as e:
        if "global" not in str(e).lower():  # torch names a refused class "Unsupported global"; else it is junk
            raise ValueError(f"{path} is not a readable torch checkpoint ({e})") from e
        raise ValueError(f"{path} holds Python objects other than tensors, which are not loaded for safety; "
                         f"re-save just the state dict (torch.save(model.state_dict(), ...)). ({e})") from e
    except Exception as e:
        raise ValueError(f"{path} is not a readable torch checkpoint ({e})") from e
    for _ in range(3):  # e.g. {"model": {"state_dict": ...}}
        if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        if isinstance(obj, Mapping):
            key = next((k for k in ("state_dict", "model", "model_state_dict") if isinstance(obj.get(k), Mapping)),
                       None)
            if key is not None:
                obj = obj[key]
                continue
        what = f"a dict with keys {sorted(map(str, obj))[:10]}" if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(f"{path} holds {what}, not a state dict (expected a dict of tensors, or a dict with a "
                         "'state_dict' or 'model' entry)")
    out = {}
    for k, v in obj.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def load_checkpoint(model: nn.Module, path: str | os.PathLike, ignore_unexpected: bool = False) -> nn.Module:
    """Load a checkpoint file into ``model``; every key must match (a missing ``num_batches_tracked`` is fine,
    old checkpoints lack it; ``ignore_unexpected`` drops keys the model lacks). A mismatch is an error listing
    the offending keys."""
    state = load_state_dict_file(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    if ignore_unexpected:
        state = {k: v for k, v in state.items() if k in own}
        unexpected = []
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)}"
              for k in state if k in own and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if items:
                more = f" (+{len(items) - 8} more)" if len(items) > 8 else ""
                parts.append(f"{label}: {', '.join(items[:8])}{more}")
        hint = ""
        if any(s.startswith(("output.", "fc.", "classifier")) for s in shapes):
            hint = " (wrong num_classes?)"
        elif shapes:
            hint = " (wrong model, depth or in_channels?)"
        raise ValueError(f"checkpoint {os.fspath(path)} does not fit {type(model).__name__}{hint}: "
                         + "; ".join(parts))
    model.load_state_dict(state, strict=False)
    return model
