"""Every preset in configs/ loads into ALConfig; the budget regimes match Lüth et al. (2023)."""

import pytest

from activecrl.core.config import from_dict, load_toml, preset_names
from activecrl.al.loop import ALConfig

PRESETS = [name for name in preset_names() if "_train_" not in name]  # `activecrl run` presets (train's: below)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_loads_with_five_trials(name):
    config = ALConfig.from_dict(load_toml(name))
    assert config.trials == 5


@pytest.mark.parametrize("name, labels", [("cifar10_low", 50), ("cifar10_mid", 250), ("cifar10_high", 1000)])
def test_budget_regimes(name, labels):
    assert name in PRESETS
    config = ALConfig.from_dict(load_toml(name))
    assert config.initial == config.budget == labels and config.stages == 10
    assert config.model == "small_cnn4" and config.pool_subset is None
    # the CPU recipe (README "A CPU recipe not behind a plain script")
    assert (config.train.schedule, config.train.nesterov, config.train.weight_decay) == ("onecycle", True, 5e-4)


def test_train_preset_is_the_papers_schedule():
    from activecrl.methods.run import TrainRunConfig
    from activecrl.training.trainers import TrainConfig

    config = from_dict(TrainRunConfig, load_toml("cifar10_train_paper"))
    assert config.train == TrainConfig() and config.train.milestone_epochs() == [150, 250]
