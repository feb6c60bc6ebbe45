"""The shared MC-dropout engine (activecrl.inference.mc_dropout): what the strategy and method tests do not reach."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from activecrl.core.errors import ConfigError
from activecrl.inference.mc_dropout import (active_dropouts, dropout_only_in_head, dropout_only_train, mc_dropout_stats,
                                  seeded)
from activecrl.inference.outputs import PoolOutputs
from activecrl.strategies import QueryContext, get_strategy


class Net(nn.Module):
    head_only_dropout = True
    num_classes = 3

    def __init__(self, body_p=0.0):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Dropout(body_p), nn.ReLU())
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Linear(6, 3))

    def forward(self, x, return_features=False):
        f = self.body(x)
        return (self.classifier(f), f) if return_features else self.classifier(f)


class Data:
    """eval_batches in the given order; ``drop`` skips the last row, ``shift`` yields wrong indices."""

    def __init__(self, n=30, drop=False, shift=0):
        self.x, self.n, self.drop, self.shift = torch.randn(n, 5), n, drop, shift
        self.device = torch.device("cpu")

    def eval_batches(self, indices=None, batch_size=1024):
        idx = torch.arange(self.n) if indices is None else torch.as_tensor(indices, dtype=torch.long)
        idx = idx[:-1] if self.drop else idx
        for s in range(0, len(idx), batch_size):
            b = idx[s:s + batch_size]
            yield self.x[b], torch.zeros(len(b), dtype=torch.long), b + self.shift


def test_helpers_and_modes():
    torch.manual_seed(0)
    head, body = Net(), Net(body_p=0.2)
    assert len(active_dropouts(head)) == 1 and dropout_only_in_head(head)
    assert len(active_dropouts(body)) == 2 and not dropout_only_in_head(body)
    head.train()
    with dropout_only_train(head) as m:
        assert m is head and not head.body[1].training
        assert head.body[2].training and head.classifier[0].training
    assert all(m.training for m in head.modules())


def test_seeded_repeats_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    with seeded(torch.device("cpu"), 7):
        a = torch.rand(4)
    with seeded("cpu", 7):
        b = torch.rand(4)
    assert torch.equal(a, b) and torch.equal(torch.get_rng_state(), state)


def test_features_computed_once_when_not_given():
    """Head path without cached features: one eval pass, then the same numbers as full passes."""
    torch.manual_seed(0)
    model, data = Net(), Data()
    idx = np.random.default_rng(0).permutation(30)[:12]
    head = mc_dropout_stats(model, data, idx, n_samples=4, seed=3, batch_size=5)
    full = mc_dropout_stats(model, data, idx, n_samples=4, seed=3, batch_size=5, head_only=False)
    assert head.head_only and not full.head_only
    torch.testing.assert_close(head.mean_probs, full.mean_probs, rtol=0, atol=1e-6)
    torch.testing.assert_close(head.mean_entropy, full.mean_entropy, rtol=0, atol=1e-6)
    # a strategy whose pool comes without features ranks by the same engine's numbers
    ctx = QueryContext(pool=PoolOutputs(idx, torch.zeros(12, 3)), model=model, data=data, batch_size=5)
    seed = int(np.random.default_rng(5).integers(2**63 - 1))  # what the engine draws from the strategy's rng
    expected = mc_dropout_stats(model, data, idx, n_samples=4, seed=seed, batch_size=5).predictive_entropy
    picks = get_strategy("mc_dropout", n_samples=4).query(ctx, 3, np.random.default_rng(5))
    np.testing.assert_array_equal(np.sort(picks), np.sort(idx[np.argsort(-expected.numpy(), kind="stable")[:3]]))


def test_full_passes_check_what_data_yields():
    torch.manual_seed(0)
    model = Net(body_p=0.2)
    empty = mc_dropout_stats(model, Data(), [], n_samples=2, head_only=False)
    assert empty.mean_probs.shape == (0, 3) and empty.mean_entropy.shape == (0,)
    with pytest.raises(ConfigError, match="must cover the 30"):
        mc_dropout_stats(model, Data(drop=True), n_samples=2)
    with pytest.raises(ConfigError, match="not among the indices"):
        mc_dropout_stats(model, Data(shift=1), [3, 4, 5], n_samples=2)
    with pytest.raises(ConfigError, match="context.data"):
        mc_dropout_stats(model, None, [3, 4], n_samples=2)
    with pytest.raises(ConfigError, match="seed must be an integer"):
        mc_dropout_stats(model, Data(), n_samples=2, seed=1.5)
