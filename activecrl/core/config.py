"""Config dataclasses from TOML presets, dicts and command-line overrides.

The config dataclasses (``ALConfig``, ``TrainRunConfig``, ``TrainConfig``, ``OODConfig``) are the
one source of options: each field carries its help text in ``field(metadata={"help": ...})``,
and the CLI flags and TOML keys are derived from the fields (``config_options``; the typer side
is ``activecrl/cli/options.py``).

A preset (``configs/*.toml``, shipped as the ``configs`` package) is a flat table of a command's
options plus an optional ``[train]`` table for the nested ``TrainConfig``. Values given on the
command line override the preset, and a nested table changes only the keys it names: everything
else keeps the owning config's default (``run``'s ``[train]`` defaults are batch 32 and
milestones (0.6, 0.8), not ``TrainConfig``'s). Unknown keys are an error: a typo must not
silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from activecrl.core.errors import ConfigError
from activecrl.core.registry import did_you_mean

C = TypeVar("C")

PRESET_PACKAGE = "activecrl.configs"  # the top-level configs/ folder, installed under activecrl with its *.toml


# ============================================================================ presets

def _preset_dir():
    """The installed ``activecrl.configs`` package's folder (a Traversable), else a source checkout's, else None."""
    try:
        return resources.files(PRESET_PACKAGE)
    except ModuleNotFoundError:
        # activecrl imported from a checkout that was never installed: the presets are the
        # checkout's top-level configs/ folder
        checkout = Path(__file__).resolve().parents[2] / "configs"
        return checkout if checkout.is_dir() else None


def preset_names() -> list[str]:
    """Names of the shipped presets (``cifar10_paper``, ...)."""
    folder = _preset_dir()
    if folder is None:
        return []
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def find_config(name_or_path: str | Path):
    """A TOML file by path, else a shipped preset by name (``cifar10_paper`` or ``cifar10_paper.toml``).

    Returns a path or an importlib.resources Traversable; both open with ``.open("rb")``.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    folder = _preset_dir()
    if folder is not None:
        name = str(name_or_path)
        for candidate in (f"{name}.toml", name):
            if "/" not in candidate and candidate.endswith(".toml") and folder.joinpath(candidate).is_file():
                return folder.joinpath(candidate)
    raise ConfigError(
        f"config must be a TOML file or a preset name, got {str(name_or_path)!r}"
        f"{did_you_mean(str(name_or_path), preset_names())} instead; presets: "
        f"{', '.join(preset_names()) or '(none found: is the configs package installed?)'}"
    )


def load_toml(name_or_path: str | Path) -> dict[str, Any]:
    source = find_config(name_or_path)
    try:
        with source.open("rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source} is not valid TOML: {exc}") from None


# ============================================================================ dataclass <-> dict

def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _nested_type(cls, name: str):
    """The dataclass type of field ``name`` of ``cls`` if it is a nested config, else None."""
    hint = _hints(cls).get(name)
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def field_default(f: dataclasses.Field) -> Any:
    """A field's default value (calling its factory), or ``dataclasses.MISSING`` if it has none."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _unknown_message(cls, unknown: set[str], names: dict) -> str:
    # A key of a nested table written at the top level is the common TOML mistake: say where it goes.
    parts, misplaced = [], set()
    for key in sorted(unknown):
        for name in names:
            nested = _nested_type(cls, name)
            if nested is not None and key in {f.name for f in dataclasses.fields(nested)}:
                parts.append(f"{key!r} is a {nested.__name__} option: put it under [{name}] "
                             f"(TOML: '{key} = ...' after a '[{name}]' line; dict: {{'{name}': {{'{key}': ...}}}})")
                misplaced.add(key)
                break
    if unknown - misplaced:
        parts.append(f"unknown {cls.__name__} option(s) {sorted(unknown - misplaced)}; valid ones are {sorted(names)}")
    return "; ".join(parts)


def from_dict(cls: type[C], values: dict[str, Any], base: C | None = None) -> C:
    """Build dataclass ``cls`` from a (possibly nested) dict, rejecting unknown keys.

    Keys not in ``values`` keep ``base``'s values when ``base`` is given, else the field defaults.
    A nested dict updates the owning default of that field (``ALConfig``'s ``train`` default
    is the run schedule, so ``{"train": {"epochs": 5}}`` keeps its batch size and milestones).
    """
    if not isinstance(values, dict):
        raise ConfigError(f"{cls.__name__} options must be a table/dict, got {type(values).__name__} instead")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(names)
    if unknown:
        raise ConfigError(_unknown_message(cls, unknown, names))
    kwargs = {}
    for key, value in values.items():
        nested = _nested_type(cls, key)
        if nested is not None and isinstance(value, dict):
            owner = getattr(base, key) if base is not None else field_default(names[key])
            value = from_dict(nested, value, base=None if owner is dataclasses.MISSING else owner)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    missing = [n for n, f in names.items() if f.init and n not in kwargs and field_default(f) is dataclasses.MISSING]
    if base is None and missing:
        raise ConfigError(f"{cls.__name__} needs {', '.join(missing)}; got no value for them")
    try:
        return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"bad {cls.__name__} options: {exc}") from None


def flatten(values: dict[str, Any], *, leaves: tuple[str, ...] = (), depth: int | None = None) -> dict[str, Any]:
    """``{"train": {"epochs": 5}}`` as ``{"train.epochs": 5}``. A dict under a key in ``leaves``
    (``strategy_params``) stays one value, and so does any dict nested deeper than ``depth`` levels."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and key not in leaves and (depth is None or depth > 0):
            nested = flatten(value, leaves=leaves, depth=None if depth is None else depth - 1)
            out.update({f"{key}.{k}": v for k, v in nested.items()})
        else:
            out[key] = value
    return out


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


# ============================================================================ the options of a config

@dataclass(frozen=True)
class ConfigOption:
    """One settable option of a config: a field, or a field of a nested config flattened.

    ``path`` is where the value goes in the config dict (``("train", "epochs")``), ``flag`` the
    option name without dashes (``epochs``), ``default`` the effective default of the command
    (the owning config's, e.g. ``run``'s 20 epochs, not ``TrainConfig``'s 300).
    """

    path: tuple[str, ...]
    flag: str
    type: Any
    default: Any
    help: str
    section: str | None = None  # the nested table (``train``) or None for top-level fields

    @property
    def key(self) -> str:
        return ".".join(self.path)

    @property
    def dashed(self) -> str:
        """The command-line flag: ``--batch-size``."""
        return dashed(self.flag)

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING


def dashed(name: str) -> str:
    """The command-line flag of an option or field name: ``batch_size`` is ``--batch-size``."""
    return "--" + name.replace("_", "-")


def config_options(cls, exclude: frozenset[str] | set[str] = frozenset()) -> list[ConfigOption]:
    """Every settable option of dataclass ``cls``, nested configs flattened, minus ``exclude`` keys.

    A nested field whose name is also a top-level field gets the flag ``<section>-<name>``.
    """
    hints = _hints(cls)
    top = {f.name for f in dataclasses.fields(cls)}
    options = []
    for f in dataclasses.fields(cls):
        nested = _nested_type(cls, f.name)
        if nested is None:
            if f.name not in exclude:
                options.append(ConfigOption((f.name,), f.name, hints[f.name], field_default(f),
                                            f.metadata.get("help", "")))
            continue
        owner = field_default(f)
        nested_hints = _hints(nested)
        for g in dataclasses.fields(nested):
            key = f"{f.name}.{g.name}"
            if key in exclude:
                continue
            flag = g.name if g.name not in top else f"{f.name}-{g.name}"
            default = getattr(owner, g.name) if owner is not dataclasses.MISSING else field_default(g)
            options.append(ConfigOption((f.name, g.name), flag, nested_hints[g.name], default,
                                        g.metadata.get("help", ""), section=f.name))
    return options


def set_path(values: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    """``values[path[0]][path[1]]... = value``, creating the nested dicts."""
    for key in path[:-1]:
        values = values.setdefault(key, {})
    values[path[-1]] = value
