"""ProbCover: greedy maximum coverage by delta-balls in an embedding (Yehuda, Dekel, Hacohen and
Weinshall, "Active Learning Through a Covering Lens", NeurIPS 2022; public code:
github.com/avihu111/TypiClust, ``deep-al/pycls/al/prob_cover.py``).

Recipe, as in the authors' code: the rows are the labeled set then the pool, L2-normalised;
the graph has an edge ``x -> y`` iff ``|x - y| < delta``. Points in the ball of a labeled point
are covered and their incoming edges removed; each pick is the point with the most outgoing
edges to uncovered points (first such point on ties), after which the points of its ball are
covered and their incoming edges removed.

delta, as in the paper (Sec. 4.2): k-means with as many clusters as classes gives
pseudo-labels; the ball around ``x`` is pure when every point in it has ``x``'s cluster; purity
``pi(delta)`` is the fraction of pure balls, and delta is the largest value with
``pi(delta) >= alpha`` (0.95). Instead of trying a grid of values we find that largest value
exactly: a ball ``{y : |x - y| < delta}`` is pure iff ``delta <= m(x)``, the distance from x to
the nearest point of another cluster, so delta is the ``(floor((1 - alpha) n) + 1)``-th smallest
``m(x)``. Only the points that can be among those smallest are measured: the k-means clusters
are Voronoi cells of their centroids, so ``m(x)`` is at least the distance from ``x`` to the
nearest bisecting hyperplane; points are measured in increasing order of that bound until the
bound of the next one exceeds the current answer.

Differences from the authors' code, all at the edges: once every point is covered (all
out-degrees 0, where their code would pick point 0 again) the remaining picks are drawn
uniformly from the unpicked pool with ``rng``; the graph is built in memory O(n * d + edges)
with pruned cells (``_embedding.ball_graph``), not as an edge DataFrame of all pairs.
"""

from __future__ import annotations

import logging

import numpy as np

from activecrl.errors import ConfigError
from activecrl.validate import check_int

from ._embedding import ball_graph, csr_rows, kmeans, normalize_rows, other_label_nn_dist
from .base import QueryContext, Strategy, register_strategy

logger = logging.getLogger(__name__)

__all__ = ["ProbCoverStrategy", "purity_delta", "max_coverage_greedy"]


def purity_delta(x: np.ndarray, labels: np.ndarray, centroids: np.ndarray, alpha: float,
                 chunk: int = 2048) -> float:
    """The largest delta whose ball purity (fraction of points whose open delta-ball holds only
    their own cluster) is at least ``alpha``; ``labels`` are the Voronoi cells of ``centroids``.
    Exact; inf when there is one cluster only."""
    n = x.shape[0]
    j = int(np.floor((1.0 - alpha) * n + 1e-9))  # impure balls allowed
    if j >= n:
        return float("inf")
    # lower bound on m(x): distance to the nearest bisecting hyperplane of the centroids
    c = centroids.astype(np.float64)
    c_sq = (c * c).sum(axis=1)
    sep = np.sqrt(np.maximum(c_sq[:, None] + c_sq[None, :] - 2.0 * (c @ c.T), 0.0))
    lb = np.empty(n)
    step = max(1, (1 << 22) // max(1, len(c)))
    for s in range(0, n, step):
        xs = x[s:s + step].astype(np.float64)
        d2 = (xs * xs).sum(axis=1)[:, None] + c_sq[None, :] - 2.0 * (xs @ c.T)
        own = labels[s:s + step]
        h = (d2 - d2[np.arange(len(xs)), own][:, None]) / (2.0 * np.maximum(sep[own], 1e-300))
        h[np.arange(len(xs)), own] = np.inf
        lb[s:s + step] = np.maximum(h.min(axis=1), 0.0)
    # rounding of the float32 distances: compare against a slightly lowered bound
    lb_safe = lb * (1.0 - 1e-5) - 1e-6
    order = np.argsort(lb_safe, kind="stable")
    found = np.empty(0)
    done = 0
    while done < n:
        if len(found) > j and np.partition(found, j)[j] <= lb_safe[order[done]]:
            break  # every unmeasured m(x) >= its bound >= the current answer
        rows = order[done:done + chunk]
        found = np.concatenate([found, other_label_nn_dist(x, labels, rows)])
        done += len(rows)
    logger.debug("purity delta: measured %d of %d points", done, n)
    return float(np.partition(found, j)[j])


def max_coverage_greedy(ptr: np.ndarray, idx: np.ndarray, n_labeled: int, budget: int,
                        rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Greedy max coverage on the out-neighbour CSR graph of rows ``[labeled..., pool...]``:
    (positions of the picks among all rows, in pick order; number of picks made greedily, the
    rest drawn at random once nothing new can be covered)."""
    n = len(ptr) - 1
    src = np.repeat(np.arange(n), np.diff(ptr))
    in_order = np.argsort(idx, kind="stable")  # in-neighbour CSR of the same edges
    in_idx = src[in_order]
    in_ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(idx, minlength=n), out=in_ptr[1:])
    del src
    degree = np.diff(ptr).astype(np.int64)
    covered = np.zeros(n, dtype=bool)

    def cover(points: np.ndarray) -> None:
        points = np.unique(points)
        points = points[~covered[points]]
        covered[points] = True
        degree[:] -= np.bincount(csr_rows(in_ptr, in_idx, points), minlength=n)

    if n_labeled:
        cover(csr_rows(ptr, idx, np.arange(n_labeled)))
    picks = np.empty(budget, dtype=np.int64)
    pool_deg = degree[n_labeled:]  # a view: stays current
    picked = np.zeros(n - n_labeled, dtype=bool)
    greedy = 0
    for i in range(budget):
        cand = np.where(picked, -1, pool_deg)
        j = int(np.argmax(cand))
        if cand[j] <= 0:
            rest = np.flatnonzero(~picked)
            picks[i:] = n_labeled + rng.choice(rest, size=budget - i, replace=False)
            break
        picks[i] = n_labeled + j
        picked[j] = True
        greedy += 1
        cover(csr_rows(ptr, idx, np.array([n_labeled + j])))
    return picks, greedy


@register_strategy("probcover")
class ProbCoverStrategy(Strategy):
    """Greedy max coverage by delta-balls in the embedding (Yehuda et al., NeurIPS 2022).

    Parameters: ``delta`` (ball radius in the normalised embedding; None: the largest radius
    with k-means ball purity >= ``alpha``), ``alpha`` (0.95, the paper's), ``n_clusters`` (the
    k-means clusters of the purity; None: the number of classes, the width of the pool
    logits), ``normalize`` (L2-normalise the rows first, as the authors' code does),
    ``kmeans_iter`` and ``max_edges`` (memory guard of the graph).
    """

    needs_features = True
    uses_embeddings = True

    def __init__(self, delta: float | None = None, alpha: float = 0.95, n_clusters: int | None = None,
                 normalize: bool = True, kmeans_iter: int = 20, max_edges: int = 200_000_000):
        self.delta = delta
        self.alpha = alpha
        self.n_clusters = n_clusters
        self.normalize = normalize
        self.kmeans_iter = kmeans_iter
        self.max_edges = max_edges

    def _check_params(self) -> None:
        who = self._label()
        if self.delta is not None and (isinstance(self.delta, bool) or not isinstance(self.delta, (int, float))
                                       or not np.isfinite(self.delta) or self.delta <= 0):
            raise ConfigError(f"{who}: delta must be a positive number or None, got {self.delta!r} instead")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 < self.alpha <= 1:
            raise ConfigError(f"{who}: alpha must be in (0, 1], got {self.alpha!r} instead")
        for name in ("n_clusters", "kmeans_iter", "max_edges"):
            check_int(f"{who}: {name}", getattr(self, name), 1, none_ok=name == "n_clusters")

    def choose_delta(self, x: np.ndarray, context: QueryContext, rng: np.random.Generator) -> float:
        """delta by ball purity of a k-means clustering of ``x`` (all rows)."""
        who = self._label()
        k = self.n_clusters if self.n_clusters is not None else context.pool.logits.shape[1]
        if k < 2:
            raise ConfigError(
                f"{who} needs the number of classes (>= 2) for its purity radius, got {k} (pool logits "
                f"of width {context.pool.logits.shape[1]}) instead; pass n_clusters=<classes> or delta=<radius>"
            )
        if k > len(x):
            raise ConfigError(f"{who}: n_clusters must be at most the {len(x)} points, got {k} instead")
        labels, centroids = kmeans(x, k, rng, self.kmeans_iter)
        delta = purity_delta(x, labels, centroids, self.alpha)
        if not np.isfinite(delta) or delta <= 0:
            logger.warning("%s: purity radius is %s (k-means found one cluster or duplicate points); "
                           "every point covers only itself or all", who, delta)
            delta = float(np.finfo(np.float32).max) if not np.isfinite(delta) else float(np.finfo(np.float32).tiny)
        return delta

    def select(self, context: QueryContext, budget: int, rng: np.random.Generator) -> np.ndarray:
        self._check_params()
        pool_x, lab_x = self.embedding(context)
        n_pool, n_lab = len(pool_x), len(lab_x)
        b = min(budget, n_pool)
        x = np.concatenate([lab_x, pool_x]) if n_lab else pool_x
        if self.normalize:
            x = normalize_rows(x)
        delta = float(self.delta) if self.delta is not None else self.choose_delta(x, context, rng)
        self.delta_ = delta
        ptr, idx = ball_graph(x, delta, int(self.max_edges), self._label())
        picks, greedy = max_coverage_greedy(ptr, idx, n_lab, b, rng)
        self.n_greedy_ = greedy
        if greedy < b:
            logger.info("%s: every point is covered after %d picks (delta %.4g); %d drawn at random",
                        self._label(), greedy, delta, b - greedy)
        return context.pool.indices.numpy()[picks - n_lab]
