"""Experiment settings: :class:`AdaDFQConfig`, the published presets and :func:`load_config`.

    from adadfq_fast.config import load_config
    cfg = load_config("imagenet_resnet50_w4a4", ["q_lr=1e-5", "device=cuda:0"])
    cfg = load_config("path/to/cifar100_resnet20.hocon")        # the authors' files, via pyhocon
"""
from .loader import apply_overrides, describe, list_presets, load_config, preset_values, save_config
from .schema import DATASETS, MODELS, AdaDFQConfig, ConfigError, to_toml

__all__ = [
    "AdaDFQConfig",
    "ConfigError",
    "DATASETS",
    "MODELS",
    "apply_overrides",
    "describe",
    "list_presets",
    "load_config",
    "preset_values",
    "save_config",
    "to_toml",
]
