"""Uncertainty sampling from one eval pass: entropy, least confidence, margin.

Scores are computed from the logits in float64 (``log_softmax``), so near-equal probabilities
that float32 rounding would merge into ties keep their order. Higher score = more uncertain;
``select_top`` breaks exact ties by pool position.
"""

from __future__ import annotations

import numpy as np
import torch

from activecrl.strategies.base import QueryContext, Strategy, register_strategy, select_top


def _log_probs(context: QueryContext) -> torch.Tensor:
    return torch.log_softmax(context.pool.logits.to(torch.float64), dim=1)


def entropy_scores(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of softmax(logits), float64."""
    logp = torch.log_softmax(logits.to(torch.float64), dim=1)
    return -(logp.exp() * logp).sum(dim=1)


class _ScoreStrategy(Strategy):
    def scores(self, context: QueryContext) -> torch.Tensor:  # (n,) float64, higher = query first
        raise NotImplementedError

    def select(self, context: QueryContext, budget: int, rng: np.random.Generator) -> np.ndarray:
        return select_top(self.scores(context), context.pool.indices, budget)


@register_strategy("entropy")
class EntropyStrategy(_ScoreStrategy):
    """Highest predictive entropy ``-sum_k p_k log p_k``."""

    def scores(self, context):
        return entropy_scores(context.pool.logits)


@register_strategy("least_conf")
class LeastConfidenceStrategy(_ScoreStrategy):
    """Lowest maximum class probability (the paper's sampling for CRL-softmax)."""

    def scores(self, context):
        return -_log_probs(context).max(dim=1).values.exp()


@register_strategy("margin")
class MarginStrategy(_ScoreStrategy):
    """Smallest gap between the two most probable classes, ``p1 - p2``."""

    def scores(self, context):
        p = _log_probs(context).exp()
        if p.shape[1] < 2:
            return torch.zeros(p.shape[0], dtype=torch.float64)
        top2 = p.topk(2, dim=1).values
        return -(top2[:, 0] - top2[:, 1])
