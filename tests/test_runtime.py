"""The automatic CPU thread count: from the CPUs this process may use and the model size, never the load."""

import pytest
import torch

from activecrl.core.errors import ConfigError
from activecrl.models import build_model
from activecrl.core.runtime import available_cpus, default_threads, resolve_threads, torch_threads


def test_default_threads_follow_model_size_and_available_cpus(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert default_threads(95_000, cpus=2) == 1  # small_cnn: one thread, however many CPUs
    assert default_threads(95_000, cpus=64) == 1
    assert default_threads(11_200_000, cpus=2) == 2  # ResNet-18: every CPU ...
    assert default_threads(11_200_000, cpus=64) == 12  # ... up to one per million parameters
    assert default_threads(0, cpus=8) == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's cap is respected
    assert default_threads(11_200_000, cpus=64) == 3


def test_resolve_threads_is_deterministic_and_validated(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    small = build_model("small_cnn", num_classes=10, in_channels=1, image_size=8)
    assert resolve_threads(None, small) == 1
    assert resolve_threads(3, small) == 3  # an explicit count wins
    assert [resolve_threads(None, small) for _ in range(3)] == [1, 1, 1]
    assert 1 <= available_cpus()
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ConfigError, match="threads must be an integer >= 1"):
            resolve_threads(bad, small)


def test_torch_threads_restores_the_previous_count():
    before = torch.get_num_threads()
    with torch_threads(2) as n:
        assert n == 2 and torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
