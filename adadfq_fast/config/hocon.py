"""Read the authors' ``.hocon`` configs (hfutqian/AdaDFQ, ``CIFAR/*.hocon`` and ``ImageNet/*.hocon``) as they are.

Their keys are the GDFQ family's (``Option`` in their ``options.py``). Each known key maps to one setting; the
values the original code hard-codes whatever the file says (iterations 200, T, Nesterov, the activation-range
unfreeze epochs, the generator kind) come from the matching preset, chosen by ``network`` and ``qw``/``qa``.
A key the original does not act on is ignored, with one :class:`HoconIgnoredKeyWarning` per key, so a run reads
the file exactly as the original did:

* ``temperature`` and ``alpha``: read into the original's options but never used (its trainer hard-codes T = 20
  for CIFAR and 5 for ImageNet and has no KD/CE mix); ignored here too, faithfully.
* ``nGPU``, ``GPU``, ``visible_devices``: device selection; use the ``device`` setting.
* any other key: the original does not read it.

One deliberate difference: the original's ``Option`` never reads ``alpha_ds``, ``alpha_as``, ``lambda_l``,
``lambda_u``, ``beta`` and ``gamma`` although its trainer uses them (as shipped it stops with an AttributeError);
they are plainly the intended values, so they are mapped.
"""
from __future__ import annotations

import os
import warnings
from typing import Any, Dict, Mapping, Tuple

from .preset_files import preset_values
from .schema import AdaDFQConfig, ConfigError, from_mapping

__all__ = ["HoconIgnoredKeyWarning", "HOCON_KEYS", "hocon_to_settings", "from_hocon"]


class HoconIgnoredKeyWarning(UserWarning):
    """A key of an authors' .hocon file that has no effect (as in the original code)."""


# hocon key -> setting (same meaning, same units).
HOCON_KEYS: Dict[str, str] = {
    "save_path": "output_dir",
    "dataPath": "data_path",
    "dataset": "dataset",
    "network": "model",
    "nThreads": "num_workers",
    "nEpochs": "epochs",
    "batchSize": "batch_size",
    "momentum": "q_momentum",
    "weightDecay": "q_weight_decay",
    "opt_type": "q_optimizer",
    "warmup_epochs": "warmup_epochs",
    "lr_S": "q_lr",
    "step_S": "q_lr_milestones",
    "decayRate_S": "q_lr_gamma",
    "experimentID": "name",
    "nClasses": "num_classes",
    "qw": "wbits",
    "qa": "abits",
    "alpha_ds": "alpha_ds",
    "alpha_as": "alpha_as",
    "lambda_l": "lambda_l",
    "lambda_u": "lambda_u",
    "beta": "beta_l_bal",
    "gamma": "gamma_bns",
    "latent_dim": "latent_dim",
    "img_size": "img_size",
    "channels": "channels",
    "lr_G": "g_lr",
    "step_G": "g_lr_milestones",
    "decayRate_G": "g_lr_gamma",
    "b1": "g_betas",  # with b2
    "b2": "g_betas",
    "lrPolicy_S": "q_lr_milestones",  # checked: only multi_step / const exist here
    "lrPolicy_G": "g_lr_milestones",
}

_IGNORED_WHY = {
    "temperature": "ignored, as by the original code: its trainer hard-codes T (20 CIFAR, 5 ImageNet); "
    "this run uses temperature={T} (set temperature=... to change it)",
    "alpha": "ignored, as by the original code: its student loss never reads it",
    "nGPU": "ignored: choose the device with device=...",
    "GPU": "ignored: choose the device with device=...",
    "visible_devices": "ignored (the original comments out its use too): choose the device with device=...",
}

# Network -> preset file stem (and the family default when the network is unknown).
_STEMS = {
    "resnet20_cifar10": "cifar10_resnet20",
    "resnet20_cifar100": "cifar100_resnet20",
    "resnet18": "imagenet_resnet18",
    "resnet50": "imagenet_resnet50",
    "mobilenetv2_w1": "imagenet_mobilenetv2",
}
_FAMILY = {"cifar10": "cifar10_resnet20", "cifar100": "cifar100_resnet20", "imagenet": "imagenet_resnet18"}


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _steps(key: str, steps: Any, epochs: int) -> Tuple[int, ...]:
    if not isinstance(steps, (list, tuple)) or not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in steps):
        raise ConfigError(f"hocon {key}={steps!r}: expected a list of epochs")
    steps = sorted(steps)
    # The original's LRPolicy reads steps <= 1 as fractions of nEpochs.
    if steps and max(steps) <= 1:
        return tuple(int(epochs * s) for s in steps)
    if any(s != int(s) for s in steps):
        raise ConfigError(f"hocon {key}={steps!r}: expected whole epochs")
    return tuple(int(s) for s in steps)


def hocon_to_settings(raw: Mapping[str, Any], source: str = "hocon") -> Tuple[str, Dict[str, Any]]:
    """(base preset name, settings) for the flat key/values of an authors' config. Warns for ignored keys."""
    raw = _flatten(raw)
    dataset = raw.get("dataset")
    stem = _STEMS.get(raw.get("network")) or _FAMILY.get(dataset)
    if stem is None:
        raise ConfigError(f"{source}: cannot tell the setting from network={raw.get('network')!r}, dataset={dataset!r}")
    qw, qa = raw.get("qw", 3), raw.get("qa", 3)
    base = f"{stem}_w{qw}a{qa}" if qw == qa and qw in (3, 4, 5) else f"{stem}_w3a3"

    base_values = preset_values(base)
    epochs = raw.get("nEpochs", base_values["epochs"])
    settings: Dict[str, Any] = {}
    for key, value in raw.items():
        target = HOCON_KEYS.get(key)
        if target is None:
            why = _IGNORED_WHY.get(key, "ignored: the original code does not read this key")
            why = why.replace("{T}", str(base_values["temperature"]))
            warnings.warn(f"{source}: key {key!r} = {value!r} {why}", HoconIgnoredKeyWarning, stacklevel=4)
            continue
        if key in ("lrPolicy_S", "lrPolicy_G"):
            if value == "const":
                settings[target] = ()
            elif value != "multi_step":
                raise ConfigError(f"{source}: {key}={value!r} is not supported (multi_step or const)")
            continue
        if key in ("step_S", "step_G"):
            if raw.get("lrPolicy_" + key[-1], "multi_step") == "multi_step":
                settings[target] = _steps(key, value, epochs)
            continue
        if key in ("b1", "b2"):
            continue  # below, as a pair
        if key == "opt_type" and isinstance(value, str):
            value = value.lower()
        if key == "weightDecay":
            value = float(value)  # the original converts it too (a quoted "1e-4" is a string in HOCON)
        settings[target] = value
    if "b1" in raw or "b2" in raw:
        b1_0, b2_0 = base_values["g_betas"]
        settings["g_betas"] = (raw.get("b1", b1_0), raw.get("b2", b2_0))
    return base, settings


def from_hocon(path: str) -> AdaDFQConfig:
    """An :class:`AdaDFQConfig` from an authors' ``.hocon`` file (needs ``pip install pyhocon``)."""
    try:
        from pyhocon import ConfigFactory
    except ImportError:
        raise ImportError(
            "reading .hocon configs needs pyhocon: pip install pyhocon (or adadfq_fast[hocon])"
        ) from None
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    tree = ConfigFactory.parse_file(path)
    base, settings = hocon_to_settings(tree, source=os.path.basename(path))
    try:
        return from_mapping(settings, base=from_mapping(preset_values(base)))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
