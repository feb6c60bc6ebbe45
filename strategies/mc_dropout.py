"""MC dropout strategies: ``mc_dropout`` (predictive entropy) and ``bald`` (mutual information).

The sampling itself (dropout-only stochastic passes, head-only sampling on the pool's cached
features, seeding that leaves the global RNG alone) lives in :mod:`activecrl.mc_dropout`; this
module only feeds it a ``QueryContext`` and ranks the pool by its statistics.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from activecrl.errors import ConfigError
from activecrl.mc_dropout import MCDropoutStats, check_n_samples
from activecrl.mc_dropout import mc_dropout_stats as _sample

from .base import QueryContext, Strategy, register_strategy, select_top

logger = logging.getLogger(__name__)

__all__ = ["MCDropoutStats", "mc_dropout_stats", "mc_probs", "MCDropoutStrategy", "BALDStrategy"]


def mc_dropout_stats(model: nn.Module | None, context: QueryContext, n_samples: int = 50, seed=0,
                     head_only: bool | None = None, amp: bool = False) -> MCDropoutStats:
    """Mean softmax and mean per-sample entropy over ``n_samples`` dropout samples of the pool.

    ``head_only``: None samples the head on ``context.pool.features`` when the model promises
    ``head_only_dropout`` and the features are there, else full passes over ``context.data``;
    True/False force one path. ``seed``: int or ``np.random.Generator``. See
    :func:`activecrl.mc_dropout.mc_dropout_stats`.
    """
    if model is None:
        raise ConfigError("MC dropout needs the trained model in context.model, got None instead")
    features = context.pool.features
    if head_only is None and features is None:
        if getattr(model, "head_only_dropout", False):
            logger.info("pool outputs have no features; MC dropout falls back to full passes")
        head_only = False
    return _sample(model, context.data, context.pool.indices, features=features, n_samples=n_samples,
                   seed=seed, batch_size=context.batch_size, head_only=head_only, amp=amp)


def mc_probs(model: nn.Module | None, context: QueryContext, n_samples: int = 50, seed=0,
             head_only: bool | None = None) -> torch.Tensor:
    """Mean softmax over ``n_samples`` dropout samples, (n, K) float64 CPU."""
    return mc_dropout_stats(model, context, n_samples, seed, head_only).mean_probs


@register_strategy("mc_dropout")
class MCDropoutStrategy(Strategy):
    """Highest entropy of the mean softmax over ``n_samples`` MC dropout samples."""

    requires_dropout = True
    _min_samples = 1

    def __init__(self, n_samples: int = 50):
        self.n_samples = n_samples

    def scores(self, stats: MCDropoutStats) -> torch.Tensor:
        return stats.predictive_entropy

    def select(self, context: QueryContext, budget: int, rng: np.random.Generator) -> np.ndarray:
        stats = mc_dropout_stats(context.model, context, check_n_samples(self.n_samples, self._min_samples),
                                 seed=rng)
        return select_top(self.scores(stats), context.pool.indices, budget)


@register_strategy("bald")
class BALDStrategy(MCDropoutStrategy):
    """Highest mutual information between prediction and weights (Houlsby et al. 2011):
    entropy of the mean softmax minus the mean of the per-sample entropies."""

    _min_samples = 2  # one sample has zero mutual information everywhere

    def scores(self, stats: MCDropoutStats) -> torch.Tensor:
        return stats.mutual_information
