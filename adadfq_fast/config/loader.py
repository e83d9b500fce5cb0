"""``load_config`` (presets, .toml, the authors' .hocon), overrides, saving."""
from __future__ import annotations

import dataclasses
import os
import tomllib
from typing import Any, Dict, Iterable, Mapping, Union

from .hocon import from_hocon
from .preset_files import list_presets, preset_values
from .schema import AdaDFQConfig, ConfigError, _type_name, field_types, from_mapping, parse_value, to_toml

__all__ = ["list_presets", "preset_values", "load_config", "apply_overrides", "save_config"]

_HOCON_SUFFIXES = (".hocon", ".conf")


def apply_overrides(
    cfg: AdaDFQConfig, overrides: Union[None, Iterable[str], Mapping[str, Any]]
) -> AdaDFQConfig:
    """``cfg`` with overrides applied in order: ``["wbits=4", "q_lr=1e-5"]`` or a mapping of typed values."""
    if not overrides:
        return cfg
    if isinstance(overrides, Mapping):
        return from_mapping(dict(overrides), base=cfg)
    if isinstance(overrides, str):
        raise TypeError("overrides must be a list of 'key=value' strings, not one string")
    changes: Dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value")
        changes[key] = parse_value(key, text)
    return cfg.replace(**changes)


def _load_toml_file(path: str) -> AdaDFQConfig:
    with open(path, "rb") as f:
        try:
            data = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML ({e})") from None
    base_name = data.pop("preset", None)
    tables = [k for k, v in data.items() if isinstance(v, dict)]
    if tables:
        raise ConfigError(f"{path}: expected flat 'key = value' settings, found table(s) {tables}")
    if base_name is not None:
        if not isinstance(base_name, str):
            raise ConfigError(f"{path}: preset must be a preset name string")
        values = {**preset_values(base_name), **data}
    else:
        values = data
    try:
        return from_mapping(values)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def load_config(
    source: Union[str, os.PathLike, AdaDFQConfig, None] = None,
    overrides: Union[None, Iterable[str], Mapping[str, Any]] = None,
) -> AdaDFQConfig:
    """Build a validated :class:`AdaDFQConfig`.

    ``source``: a preset name (see :func:`list_presets`); a ``.toml`` file of flat settings (optionally
    ``preset = "<name>"`` to start from a preset); an authors' ``.hocon`` / ``.conf`` file (needs ``pyhocon``;
    see :mod:`adadfq_fast.config.hocon`); an existing config; or None for the defaults (CIFAR-100 W3A3).
    ``overrides``: ``["key=value", ...]`` (values parsed and type-checked against the setting) or a mapping.
    Unknown settings raise :class:`ConfigError` naming the closest known ones.
    """
    if source is None:
        cfg = AdaDFQConfig()
    elif isinstance(source, AdaDFQConfig):
        cfg = source
    else:
        text = os.fspath(source)
        lower = text.lower()
        if lower.endswith(_HOCON_SUFFIXES):
            cfg = from_hocon(text)
        elif lower.endswith(".toml") or os.path.sep in text or os.path.exists(text):
            if not os.path.isfile(text):
                raise ConfigError(f"config file {text!r} does not exist")
            cfg = _load_toml_file(text)
        else:
            cfg = from_mapping(preset_values(text))
    return apply_overrides(cfg, overrides)


def save_config(cfg: AdaDFQConfig, path: Union[str, os.PathLike]) -> None:
    """Write every setting as flat TOML (``load_config(path)`` reads it back to an equal config)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(to_toml(cfg))


def describe() -> str:
    """One line per setting: name, type and help (for ``--help`` texts)."""
    types = field_types()
    return "\n".join(
        f"{f.name} ({_type_name(types[f.name])}): {f.metadata.get('help', '')}" for f in dataclasses.fields(AdaDFQConfig)
    )
