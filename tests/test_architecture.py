"""ARCHITECTURE.md and the import-linter layers name every module of the package."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {"activecrl": ROOT / "activecrl", "activecrl.strategies": ROOT / "strategies"}


def _modules() -> list[str]:
    names = []
    for package, folder in FOLDERS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                continue
            names.append(".".join([package, *parts]))
    return names


def test_every_module_is_in_a_layer():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = [name for contract in config["contracts"] for layer in contract["layers"]
              for name in re.split(r"[|:]", layer)]
    listed = {name.strip() for name in layers}
    exempt = {"activecrl._old_names"}  # imported by the package's __init__ only, before anything else
    missing = [m for m in _modules() if m not in exempt
               and not any(m == name or m.startswith(name + ".") for name in listed)]
    assert missing == [], f"add these modules to [tool.importlinter] layers in pyproject.toml: {missing}"


def test_every_module_is_on_the_map():
    text = (ROOT / "ARCHITECTURE.md").read_text()
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text))
    missing = [m for m in _modules() if m.rsplit(".", 1)[-1] not in words]
    assert missing == [], f"ARCHITECTURE.md does not mention these modules: {missing}"


def test_every_package_is_installed():
    # setuptools installs exactly the listed packages: a subpackage left out works in a checkout
    # and is missing from the wheel
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = set()
    for package, folder in FOLDERS.items():
        for init in folder.rglob("__init__.py"):
            parts = init.parent.relative_to(folder).parts
            found.add(".".join([package, *parts]))
    found.add("activecrl.configs")
    assert found == set(config["packages"])
