"""Query strategies: which unlabeled samples to label next.

``get_strategy("entropy")`` or ``get_strategy("my_pkg.my_mod:MyStrategy", **params)`` gives a
``Strategy``; ``strategy.query(QueryContext(pool=..., labeled=...), budget, rng)`` returns the
training-split indices to label. From plain arrays (a notebook), ``query("entropy", budget,
logits=...)`` checks them and returns row numbers: see ``activecrl.strategies.arrays``. Built-ins: random, entropy, least_conf, margin, mc_dropout,
bald, coreset, badge, typiclust, probcover (the last two work in ``context.embeddings`` when
given, through ``Strategy.embedding``). Add one by subclassing ``Strategy`` and implementing
``select``; register it with ``@register_strategy("name")``, load it by path, or expose it in
the ``activecrl.strategies`` entry-point group.
"""

from activecrl.strategies.base import (
    STRATEGIES,
    QueryContext,
    Strategy,
    StrategyError,
    get_strategy,
    register_strategy,
    select_top,
)

# built-ins register themselves on import
from activecrl.strategies import random_sampling, uncertainty, mc_dropout, coreset, badge, typiclust, probcover  # noqa: E402,F401
from activecrl.strategies.arrays import query
from activecrl.strategies.badge import BadgeStrategy, badge_kmeans_pp, gradient_factors
from activecrl.strategies.coreset import CoresetStrategy, k_center_greedy
from activecrl.strategies.mc_dropout import BALDStrategy, MCDropoutStrategy
from activecrl.strategies.probcover import ProbCoverStrategy, max_coverage_greedy, purity_delta
from activecrl.strategies.random_sampling import RandomStrategy
from activecrl.strategies.typiclust import TypiClustStrategy, typicality
from activecrl.strategies.uncertainty import EntropyStrategy, LeastConfidenceStrategy, MarginStrategy, entropy_scores

__all__ = [
    "STRATEGIES", "QueryContext", "Strategy", "StrategyError", "get_strategy", "register_strategy",
    "select_top", "query", "RandomStrategy", "EntropyStrategy", "LeastConfidenceStrategy", "MarginStrategy",
    "MCDropoutStrategy", "BALDStrategy", "CoresetStrategy",
    "k_center_greedy", "entropy_scores", "BadgeStrategy", "badge_kmeans_pp",
    "gradient_factors", "TypiClustStrategy", "typicality", "ProbCoverStrategy", "purity_delta",
    "max_coverage_greedy",
]
