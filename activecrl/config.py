"""Dataclass configs from TOML presets plus overrides.

A preset in ``configs/*.toml`` is a flat table of a command's options plus an optional
``[train]`` table for ``TrainConfig``. Options given on the command line override the preset.
Unknown keys are an error (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError

C = TypeVar("C")

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def find_config(name_or_path: str | Path) -> Path:
    """A preset by path, or by name from the project's ``configs/`` folder (``cifar10_paper``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    for candidate in (CONFIG_DIR / f"{name_or_path}.toml", CONFIG_DIR / str(name_or_path)):
        if candidate.is_file():
            return candidate
    available = sorted(p.stem for p in CONFIG_DIR.glob("*.toml")) if CONFIG_DIR.is_dir() else []
    raise ConfigError(
        f"config must be a TOML file or a preset name, got {str(name_or_path)!r} instead; "
        f"presets: {', '.join(available) or '(none found)'}"
    )


def load_toml(name_or_path: str | Path) -> dict[str, Any]:
    path = find_config(name_or_path)
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None


def from_dict(cls: type[C], values: dict[str, Any]) -> C:
    """Build dataclass ``cls`` from a (possibly nested) dict, rejecting unknown keys."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(names)
    if unknown:
        raise ConfigError(
            f"unknown {cls.__name__} option(s) {sorted(unknown)}; valid ones are {sorted(names)}"
        )
    kwargs = {}
    for key, value in values.items():
        default = names[key].default_factory if names[key].default_factory is not dataclasses.MISSING else None
        target = type(default()) if default is not None else None
        if target is not None and dataclasses.is_dataclass(target) and isinstance(value, dict):
            value = from_dict(target, value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"bad {cls.__name__} options: {exc}") from None


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by the non-None values of ``overrides`` (nested dicts merged)."""
    out = dict(base)
    for key, value in overrides.items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out
