"""MC dropout strategies: ``mc_dropout`` (predictive entropy) and ``bald`` (mutual information).

The sampling itself (dropout-only stochastic passes, head-only sampling on the pool's cached
features, seeding that leaves the global RNG alone) lives in :mod:`activecrl.inference.mc_dropout`; this
module only feeds it a ``QueryContext`` and ranks the pool by its statistics.
"""

from __future__ import annotations

import numpy as np
import torch

from activecrl.core.errors import ConfigError
from activecrl.inference.mc_dropout import MCDropoutStats, mc_dropout_stats
from activecrl.core.validate import check_int

from activecrl.strategies.base import QueryContext, Strategy, register_strategy, select_top

__all__ = ["MCDropoutStrategy", "BALDStrategy"]


def _pool_stats(context: QueryContext, n_samples: int, seed) -> MCDropoutStats:
    """:func:`activecrl.inference.mc_dropout.mc_dropout_stats` of the pool, on its cached features when the
    model's dropout is all in the head (else, or without features, as the engine decides)."""
    if context.model is None:
        raise ConfigError("MC dropout needs the trained model in context.model, got None instead")
    return mc_dropout_stats(context.model, context.data, context.pool.indices, features=context.pool.features,
                            n_samples=n_samples, seed=seed, batch_size=context.batch_size)


@register_strategy("mc_dropout")
class MCDropoutStrategy(Strategy):
    """Highest entropy of the mean softmax over ``n_samples`` MC dropout samples."""

    requires_dropout = True
    needs_logits = False  # it samples the model instead
    _min_samples = 1

    def __init__(self, n_samples: int = 50):
        self.n_samples = n_samples

    def scores(self, stats: MCDropoutStats) -> torch.Tensor:
        return stats.predictive_entropy

    def select(self, context: QueryContext, budget: int, rng: np.random.Generator) -> np.ndarray:
        stats = _pool_stats(context, check_int("n_samples", self.n_samples, self._min_samples), seed=rng)
        return select_top(self.scores(stats), context.pool.indices, budget)


@register_strategy("bald")
class BALDStrategy(MCDropoutStrategy):
    """Highest mutual information between prediction and weights (Houlsby et al. 2011):
    entropy of the mean softmax minus the mean of the per-sample entropies."""

    _min_samples = 2  # one sample has zero mutual information everywhere

    def scores(self, stats: MCDropoutStats) -> torch.Tensor:
        return stats.mutual_information
