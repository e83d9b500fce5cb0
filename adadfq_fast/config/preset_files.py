"""The shipped presets (read by ``loader`` and by ``hocon``, which starts an authors' file from one).

Presets live in ``presets/<dataset>_<network>.toml`` (shipped with the package): a ``[common]`` table plus one
table per bit setting (``[w3a3]``, ``[w4a4]``, ``[w5a5]``); the preset ``<stem>_<table>`` is ``[common]``
updated with that table. Every value carries a comment saying where it comes from.
"""
from __future__ import annotations

import tomllib
from importlib import resources
from typing import Any, Dict, List

from .schema import ConfigError


def _preset_files() -> Dict[str, Any]:
    folder = resources.files(__package__) / "presets"
    return {p.name[: -len(".toml")]: p for p in folder.iterdir() if p.name.endswith(".toml")}


def _read_preset_file(stem: str) -> Dict[str, Dict[str, Any]]:
    return tomllib.loads(_preset_files()[stem].read_text(encoding="utf-8"))


def list_presets() -> List[str]:
    """Every preset name, e.g. ``cifar10_resnet20_w3a3`` ... ``imagenet_resnet50_w5a5``."""
    names = []
    for stem in _preset_files():
        names += [f"{stem}_{table}" for table in _read_preset_file(stem) if table != "common"]
    return sorted(names)


def preset_values(name: str) -> Dict[str, Any]:
    """The raw settings of preset ``name`` ([common] updated with its bit table; ``name`` set to the preset's)."""
    stem, _, table = name.rpartition("_")
    files = _preset_files()
    data = _read_preset_file(stem) if stem in files else {}
    if not table or table == "common" or table not in data:
        raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(list_presets())}")
    values = {"name": name, **data.get("common", {}), **data[table]}
    return values
