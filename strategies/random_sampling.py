"""Uniform random sampling without replacement (the baseline every curve is compared with)."""

from __future__ import annotations

import numpy as np

from activecrl.strategies.base import QueryContext, Strategy, register_strategy


@register_strategy("random")
class RandomStrategy(Strategy):
    """Label ``budget`` pool samples drawn uniformly without replacement from ``rng``."""

    needs_model_outputs = False  # no forward pass over the pool
    needs_logits = False

    def select(self, context: QueryContext, budget: int, rng: np.random.Generator) -> np.ndarray:
        n = len(context.pool)
        positions = rng.choice(n, size=min(budget, n), replace=False)
        return context.pool.indices.numpy()[positions]
