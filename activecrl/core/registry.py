"""Name -> object registries (models, trainers, datasets, strategies).

A registry is a plain dict filled by a decorator at import time, in the style of timm's
``@register_model``: registering a name twice raises, and an unknown name lists the valid ones.
Third-party packages can add entries through an entry-point group; those are loaded lazily on
the first lookup that misses, so importing activecrl does no work beyond registration.
"""

from __future__ import annotations

import logging
from importlib import metadata
from typing import Callable, Generic, Iterator, TypeVar

from activecrl.core.errors import RegistryError

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, entry_point_group: str | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._entries: dict[str, T] = {}
        self._entry_points_loaded = entry_point_group is None

    def register(self, name: str | None = None, obj: T | None = None):
        """Register ``obj`` under ``name``; usable as ``@registry.register("name")``."""

        def add(item: T) -> T:
            key = name or getattr(item, "name", None) or getattr(item, "__name__")
            if not isinstance(key, str) or not key:
                raise RegistryError(f"{self.kind} name must be a non-empty string, got {key!r} instead")
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

    def get(self, name: str) -> T:
        if name not in self._entries:
            self._load_entry_points()
        try:
            return self._entries[name]
        except KeyError:
            raise RegistryError(
                f"unknown {self.kind} {name!r}; valid {_plural(self.kind)} are: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        if name not in self._entries:
            self._load_entry_points()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


def _plural(kind: str) -> str:
    """strategy -> strategies, model -> models."""
    return kind[:-1] + "ies" if kind.endswith("y") and kind[-2:-1] not in "aeiou" else kind + "s"


def _describe(obj: object) -> str:
    mod = getattr(obj, "__module__", "?")
    qual = getattr(obj, "__qualname__", type(obj).__name__)
    return f"{mod}.{qual}"
