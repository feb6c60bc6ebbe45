"""Every preset in configs/ loads into ALConfig; the budget regimes match Lüth et al. (2023)."""

import pytest

from activecrl.config import load_toml, preset_names
from activecrl.loop import ALConfig

PRESETS = preset_names()


@pytest.mark.parametrize("name", PRESETS)
def test_preset_loads_with_five_trials(name):
    config = ALConfig.from_dict(load_toml(name))
    assert config.trials == 5


@pytest.mark.parametrize("name, labels", [("cifar10_low", 50), ("cifar10_mid", 250), ("cifar10_high", 1000)])
def test_budget_regimes(name, labels):
    assert name in PRESETS
    config = ALConfig.from_dict(load_toml(name))
    assert config.initial == config.budget == labels and config.stages == 10
    assert config.model == "small_cnn" and config.pool_subset is None
