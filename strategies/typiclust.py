"""TypiClust: the most typical point of the largest uncovered clusters (Hacohen, Dekel and
Weinshall, "Active Learning on a Budget: Opposite Strategies Suit High and Low Budgets",
ICML 2022; public code: github.com/avihu111/TypiClust, ``deep-al/pycls/al/typiclust.py``).

Recipe, as in the authors' code: the rows are the labeled set then the pool, L2-normalised;
k-means into ``min(|labeled| + budget, 500)`` clusters; clusters of at most 5 points are
dropped; the rest are ordered by how many labeled points they hold (fewest first), then by
size (largest first). Pick ``i`` takes cluster ``i mod (number of clusters)`` and, among its
points not yet labeled or picked, the most typical one: typicality is the inverse mean
Euclidean distance to its ``min(20, m // 2)`` nearest neighbours among those ``m`` points (the
paper's definition; their code averages faiss's squared distances). Large budgets thus take
several points from each cluster in turn.

Differences from the authors' code, all at the edges (where theirs fails): a cluster whose
points are all taken is skipped in the cycle; a single remaining point is typical by
definition; a budget larger than the unlabeled points in the kept clusters raises
``ConfigError``. k-means is faiss's, seeded from ``rng`` (theirs: scikit-learn ``KMeans`` up
to 50 clusters, ``MiniBatchKMeans`` above).
"""

from __future__ import annotations

import logging

import numpy as np

from activecrl.core.errors import ConfigError
from activecrl.core.validate import check_int

from activecrl.strategies._geometry import kmeans, knn_mean_dist, normalize_rows
from activecrl.strategies.base import QueryContext, Strategy, register_strategy

logger = logging.getLogger(__name__)

__all__ = ["TypiClustStrategy", "typicality"]


def typicality(x: np.ndarray, k: int) -> np.ndarray:
    """``1 / (mean distance to the k nearest other rows + 1e-5)`` (TypiClust's definition, with
    its 1e-5 guard), float64; for a single row, 1."""
    if len(x) == 1:
        return np.ones(1)
    return 1.0 / (knn_mean_dist(x, min(k, len(x) - 1)) + 1e-5)


@register_strategy("typiclust")
class TypiClustStrategy(Strategy):
    """Most typical point of each of the largest clusters without labels (Hacohen et al., ICML 2022).

    Parameters (the authors' values): ``k_nn`` (20 neighbours for typicality),
    ``max_clusters`` (500: larger budgets take several points per cluster),
    ``min_cluster_size`` (5: clusters of at most this many points are never sampled),
    ``normalize`` (L2-normalise the rows first), ``kmeans_iter`` (faiss k-means iterations).
    """

    needs_features = True
    needs_logits = False
    uses_embeddings = True

    def __init__(self, k_nn: int = 20, max_clusters: int = 500, min_cluster_size: int = 5,
                 normalize: bool = True, kmeans_iter: int = 20):
        self.k_nn = k_nn
        self.max_clusters = max_clusters
        self.min_cluster_size = min_cluster_size
        self.normalize = normalize
        self.kmeans_iter = kmeans_iter

    def _check_params(self) -> None:
        for name, low in (("k_nn", 1), ("max_clusters", 1), ("min_cluster_size", 0), ("kmeans_iter", 1)):
            check_int(f"{self._label()}: {name}", getattr(self, name), low)

    def select(self, context: QueryContext, budget: int, rng: np.random.Generator) -> np.ndarray:
        self._check_params()
        who = self._label()
        pool_x, lab_x = self.embedding(context)
        n_pool, n_lab = len(pool_x), len(lab_x)
        b = min(budget, n_pool)
        x = np.concatenate([lab_x, pool_x]) if n_lab else pool_x
        if self.normalize:
            x = normalize_rows(x)
        n_clusters = min(n_lab + b, int(self.max_clusters), len(x))
        labels, _ = kmeans(x, n_clusters, rng, self.kmeans_iter)
        sizes = np.bincount(labels, minlength=n_clusters)
        lab_counts = np.bincount(labels[:n_lab], minlength=n_clusters)
        # fewest labeled first, then largest, then lowest id
        order = np.lexsort((np.arange(n_clusters), -sizes, lab_counts))
        order = order[sizes[order] > self.min_cluster_size]
        free = sizes - lab_counts
        available = int(free[order].sum())
        if available < b:
            raise ConfigError(
                f"{who}: budget must be at most the {available} unlabeled points in clusters of more "
                f"than min_cluster_size={self.min_cluster_size} points ({len(order)} of {n_clusters} "
                f"k-means clusters), got {b} instead; lower the budget or min_cluster_size"
            )
        self.n_clusters_ = n_clusters
        # members of each cluster, labeled rows removed (they never enter typicality)
        by_cluster = np.argsort(labels[n_lab:], kind="stable") + n_lab
        ends = np.cumsum(np.bincount(labels[n_lab:], minlength=n_clusters))
        members = {int(c): by_cluster[ends[c] - free[c]:ends[c]] for c in order}
        picks = []
        i = 0
        while len(picks) < b:
            c = int(order[i % len(order)])
            i += 1
            rows = members[c]
            if len(rows) == 0:
                continue  # exhausted: the authors' code would fail here
            k = min(int(self.k_nn), len(rows) // 2)
            typ = typicality(x[rows], max(k, 1))
            j = int(np.argmax(typ))
            picks.append(int(rows[j]))
            members[c] = np.delete(rows, j)
        return context.pool.indices.numpy()[np.asarray(picks, dtype=np.int64) - n_lab]
