"""The old top-level import names ``strategies`` and ``configs``, kept for one release.

activecrl used to install its ``strategies/`` and ``configs/`` folders as top-level packages,
which collide with a user's own ``strategies.py``. They now install as ``activecrl.strategies``
and ``activecrl.configs``; ``from strategies import Strategy`` keeps working (with a
``FutureWarning``) through this finder, which activecrl puts on ``sys.meta_path`` when it is
imported, as it is in every plugin that activecrl loads. A module of the user's own named
``strategies`` or ``configs`` always wins: the old name is served only where nothing else on
``sys.path`` provides it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from pathlib import Path

OLD_NAMES = ("strategies", "configs")


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target

    def create_module(self, spec):
        if "." not in spec.name:  # warn once, for the package, not for each submodule
            warnings.warn(f"'import {spec.name}' is deprecated and will be removed in the next release; "
                          f"import {self.target} instead", FutureWarning, stacklevel=2)
        module = importlib.import_module(self.target)
        self.spec = module.__spec__
        return module

    def exec_module(self, module):
        # the target module ran when it was imported; the import system has just stamped the old
        # name's spec on it, so give it back its own (pickling and relative imports read __spec__)
        module.__spec__ = self.spec


class OldNameFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        top = fullname.partition(".")[0]
        if top not in OLD_NAMES:
            return None
        new = f"activecrl.{fullname}"
        if fullname == top:
            found = importlib.machinery.PathFinder.find_spec(top)
            if found is not None and not _same_folder(found, f"activecrl.{top}"):
                return None  # the user's own module of that name
        elif sys.modules.get(top) is not sys.modules.get(f"activecrl.{top}"):
            return None  # a submodule of the user's own package
        return importlib.util.spec_from_loader(fullname, _Alias(new))


def _same_folder(found, new: str) -> bool:
    """Whether ``found`` is activecrl's own folder (a checkout's top-level ``strategies/``)."""
    ours = importlib.util.find_spec(new)
    folders = lambda spec: {Path(p).resolve() for p in (spec.submodule_search_locations or [])}  # noqa: E731
    return bool(ours and folders(found) & folders(ours))


def install() -> None:
    # first on the path: in a checkout's root the folder would otherwise load a second copy of
    # every strategy under the old name; find_spec steps aside for any other module of that name
    if not any(isinstance(f, OldNameFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, OldNameFinder())
