"""Name -> object registries: the one extension mechanism of activecrl.

Strategies, trainers (and recipes), models, methods, datasets and OOD detectors are each one
``Registry``, filled by a decorator at import time in the style of timm's ``@register_model``.
Every kind is extended the same three ways:

- ``@REGISTRY.register("name")`` (or the kind's alias, e.g. ``@register_strategy("name")``) on
  the class or factory function;
- an entry point in the group ``activecrl.<kinds>`` (``activecrl.strategies``,
  ``activecrl.trainers``, ...) of an installed package, loaded lazily on the first lookup that
  misses, so importing activecrl does no work beyond registration;
- a ``"package.module:Name"`` path wherever a name is accepted (``REGISTRY.get``), imported from
  the Python path or else from the current folder.

Registering a name twice raises ``RegistryError``; so does an unknown name, listing the valid
ones and the closest match. An entry is a class whose ``__init__`` takes keyword parameters or a
factory function; ``REGISTRY.create(spec, **params)`` checks the parameters against its
signature and calls it. What each kind passes is in the README ("Extending activecrl").
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import os
import sys
from importlib import metadata
from typing import Any, Generic, Iterator, TypeVar

from activecrl.core.errors import ConfigError, RegistryError

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Registry(Generic[T]):
    """Names of one kind of extension. ``base``: the class entries of this kind derive from,
    used to list the candidates of a module when a ``module:Name`` path names nothing there."""

    def __init__(self, kind: str, entry_point_group: str | None = None, *, base: type | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self.base = base
        self._entries: dict[str, T] = {}
        self._entry_points_loaded = entry_point_group is None

    def register(self, name: str | None = None, obj: T | None = None):
        """Register ``obj`` under ``name``; usable as ``@registry.register("name")``."""

        def add(item: T) -> T:
            key = name or getattr(item, "name", None) or getattr(item, "__name__")
            if not isinstance(key, str) or not key:
                raise RegistryError(f"{self.kind} name must be a non-empty string, got {key!r} instead")
            if ":" in key:
                raise RegistryError(f"{self.kind} name must not contain ':' (it marks a 'module:Name' path), "
                                    f"got {key!r} instead")
            if key in self._entries and self._entries[key] is not item:
                raise RegistryError(
                    f"{self.kind} {key!r} is already registered (by {_describe(self._entries[key])}); "
                    f"choose another name"
                )
            self._entries[key] = item
            return item

        if obj is not None:
            return add(obj)
        return add

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in metadata.entry_points(group=self.entry_point_group):
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must not break the tool
                logger.warning("could not load %s plugin %r (%s): %s", self.kind, ep.name, ep.value, exc)
                continue
            if ep.name not in self._entries:
                self.register(ep.name, obj)

    def get(self, spec: str) -> T:
        """The entry registered as ``spec``, or the object a ``"package.module:Name"`` path names."""
        if isinstance(spec, str) and ":" in spec:
            return load_by_path(spec.strip(), self.kind, self.base)
        if spec not in self._entries:
            self._load_entry_points()
        try:
            return self._entries[spec]
        except KeyError:
            raise RegistryError(self._unknown(spec)) from None

    def create(self, spec: str, /, **params) -> Any:
        """``get(spec)`` called with ``params`` as keyword arguments, after checking that it takes them."""
        factory = self.get(spec)
        check_params(self.kind, spec, factory, params)
        return factory(**params)

    def _unknown(self, spec) -> str:
        names = self.names()
        return (f"unknown {self.kind} {spec!r}{did_you_mean(spec, names)}; valid {_plural(self.kind)} are: "
                f"{', '.join(names)}; or give your own as 'package.module:Name'")

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` is registered (a ``module:Name`` path is not a registered name)."""
        if name not in self._entries:
            self._load_entry_points()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


def closest_name(value, names) -> str | None:
    """The name of ``names`` closest to a mistyped ``value``; None when none is close."""
    close = difflib.get_close_matches(value, list(names), n=1) if isinstance(value, str) else []
    return close[0] if close else None


def did_you_mean(value, names) -> str:
    """`` (did you mean 'x'?)`` for the name of ``names`` closest to a mistyped ``value``; "" when none is close."""
    close = closest_name(value, names)
    return f" (did you mean {close!r}?)" if close else ""


def check_params(kind: str, label: str, factory, params: dict) -> None:
    """Raise ConfigError unless ``factory`` (a class or function) accepts ``params`` as keywords."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # no introspectable signature (a builtin): let the call decide
        return
    try:
        signature.bind(**params)
    except TypeError:
        accepted = [p.name for p in signature.parameters.values()
                    if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        raise ConfigError(
            f"{kind} {label!r} accepts parameters {accepted or 'none'}, got {sorted(params)} instead"
        ) from None


def load_by_path(spec: str, kind: str, base: type | None = None) -> Any:
    """The object ``"package.module:Name"`` names (``Name`` may be dotted: ``Outer.Inner``)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{kind} path must look like 'package.module:Name', got {spec!r} instead")
    try:
        module = _import_from_path_or_cwd(module_name, kind)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise ConfigError(
                f"{kind} module {module_name!r} (from {spec!r}) could not be found in the current folder "
                f"({os.getcwd()}) or on the Python path; run from the folder that holds "
                f"{module_name.split('.')[0]}.py, or put that folder on PYTHONPATH"
            ) from None
        raise ConfigError(f"{kind} module {module_name!r} (from {spec!r}) failed to import: {exc}") from exc
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(
                f"module {module_name!r} has no attribute {attr!r} (from {kind} {spec!r}); "
                f"{_candidates(module, base)}"
            )
        obj = getattr(obj, part)
    return obj


def _candidates(module, base: type | None) -> str:
    if base is not None:
        found = sorted(k for k, v in vars(module).items() if isinstance(v, type) and issubclass(v, base)
                       and v is not base)
        return f"{base.__name__} subclasses there: {', '.join(found) or 'none'}"
    found = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_")
                   and getattr(v, "__module__", None) == module.__name__)
    return f"classes and functions defined there: {', '.join(found) or 'none'}"


def _import_from_path_or_cwd(module_name: str, kind: str):
    """Import ``module_name`` from the Python path, else from the current folder, as ``python -m``
    would: the ``activecrl`` console script (unlike ``python``) does not put the working folder on
    ``sys.path``, so ``--strategy my_strategies:MyStrategy`` would otherwise fail next to the file.
    The folder is appended, never prepended: it cannot shadow an installed module."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        top = module_name.split(".")[0]
        cwd = os.getcwd()
        if exc.name != top or cwd in sys.path or "" in sys.path or "." in sys.path:
            raise
        sys.path.append(cwd)
        try:
            module = importlib.import_module(module_name)
        except BaseException:
            sys.path.remove(cwd)  # not found there either: leave the path as it was
            raise
        logger.info("imported %s module %r from the current folder %s", kind, module_name, cwd)
        return module


def _plural(kind: str) -> str:
    """strategy -> strategies, model -> models."""
    return kind[:-1] + "ies" if kind.endswith("y") and kind[-2:-1] not in "aeiou" else kind + "s"


def _describe(obj: object) -> str:
    mod = getattr(obj, "__module__", "?")
    qual = getattr(obj, "__qualname__", type(obj).__name__)
    return f"{mod}.{qual}"
