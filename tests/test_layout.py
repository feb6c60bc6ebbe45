"""The package layout: strategies/ and configs/ install under activecrl, the old top-level names
still import for one release (with a FutureWarning), and a user's own module of that name wins."""

import subprocess
import sys
import warnings

import pytest

import activecrl.strategies as new_strategies


def _run(code, cwd):
    return subprocess.run([sys.executable, "-W", "always", "-c", code], cwd=cwd, capture_output=True, text=True)


def test_old_name_is_the_same_package_with_a_warning():
    sys.modules.pop("strategies", None)
    try:
        with pytest.warns(FutureWarning, match="import activecrl.strategies instead"):
            import strategies
        from strategies import Strategy  # noqa: F401
        import strategies.coreset as old_coreset

        import activecrl.strategies.coreset as coreset
        assert strategies is new_strategies and old_coreset is coreset
        # one module, one registry: the alias must not load a second copy of any strategy
        assert coreset.__name__ == coreset.__spec__.name == "activecrl.strategies.coreset"
    finally:
        for name in [n for n in sys.modules if n == "strategies" or n.startswith("strategies.")]:
            del sys.modules[name]


def test_a_users_own_strategies_module_wins(tmp_path):
    (tmp_path / "strategies.py").write_text("MINE = True\n")
    proc = _run("import activecrl, strategies; print(strategies.MINE, strategies.__file__)", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("True") and str(tmp_path) in proc.stdout
    assert "deprecated" not in proc.stderr


def test_old_name_from_another_folder(tmp_path):
    code = ("import activecrl; from strategies import get_strategy; import strategies.base as b; "
            "import activecrl.strategies.base as nb; print(b is nb, get_strategy('entropy').name)")
    proc = _run(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "entropy"] and "FutureWarning" in proc.stderr


def test_configs_old_name():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import configs

        import activecrl.configs
    assert configs is activecrl.configs
    sys.modules.pop("configs", None)
