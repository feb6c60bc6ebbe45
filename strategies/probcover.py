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
``m(x)``. All ``m(x)`` come from one exact pass over all pairs in bounded blocks (torch, on the
context's device), and the same pass keeps the pairs within an upper estimate of delta, so the
graph needs no second pass (``purity_delta_and_graph``). With a given delta the graph is built
by ``_embedding.ball_graph`` (pruned by cells and a lower-bound sketch).

Differences from the authors' code, all at the edges: once every point is covered (all
out-degrees 0, where their code would pick point 0 again) the remaining picks are drawn
uniformly from the unpicked pool with ``rng``; the graph is built in memory O(n * d + edges)
in bounded blocks, not as an edge DataFrame of all pairs.
"""

from __future__ import annotations

import logging

import numpy as np

from activecrl.errors import ConfigError
from activecrl.validate import check_int

from ._embedding import ball_graph, csr_rows, edges_to_csr, kmeans, normalize_rows, other_label_pass
from .base import QueryContext, Strategy, register_strategy

logger = logging.getLogger(__name__)

__all__ = ["ProbCoverStrategy", "purity_delta", "purity_delta_and_graph", "max_coverage_greedy"]


def _allowed_impure(n: int, alpha: float) -> int:
    return int(np.floor((1.0 - alpha) * n + 1e-9))


def purity_delta(x: np.ndarray, labels: np.ndarray, alpha: float, device="cpu") -> float:
    """The largest delta whose ball purity (fraction of points whose open delta-ball holds only
    their own cluster label) is at least ``alpha``: the ``(floor((1 - alpha) n) + 1)``-th smallest
    distance from a point to the nearest point of another cluster. Exact (one pass over all
    pairs, bounded blocks); inf when there is one cluster only."""
    n = x.shape[0]
    j = _allowed_impure(n, alpha)
    if j >= n:
        return float("inf")
    m = other_label_pass(x, labels, device=device)[0]
    return float(np.partition(m, j)[j])


def purity_delta_and_graph(x: np.ndarray, labels: np.ndarray, alpha: float, rng: np.random.Generator,
                           max_edges: int, who: str, device="cpu", sample: int = 1024):
    """``(delta, ptr, idx)``: ``purity_delta`` and the delta-ball graph from one pass over all
    pairs. The pass keeps the pairs within an upper estimate ``u`` of delta (a high quantile of
    the same distances on ``sample`` random rows); if delta turns out above ``u`` (rare) the
    graph is built in a second pass."""
    n = x.shape[0]
    j = _allowed_impure(n, alpha)
    if j >= n:
        return float("inf"), None, None
    s = min(n, sample)
    probe = np.sort(rng.choice(n, size=s, replace=False))
    m_probe = np.sort(other_label_pass(x, labels, probe, device=device)[0])
    q = (j + 1) / n
    q_hi = min(1.0, q + 4.0 * np.sqrt(q * (1 - q) / s) + 1.0 / s)
    u = float(m_probe[min(s - 1, int(np.ceil(q_hi * s)))]) * (1 + 1e-3)
    if not np.isfinite(u):
        u = 0.0
    m, src, dst, d2 = other_label_pass(x, labels, radius=u, device=device, max_edges=max_edges, who=who)
    delta = float(np.partition(m, j)[j])
    if not (np.isfinite(delta) and 0 < delta <= u):
        logger.debug("purity radius %.4g above its estimate %.4g: second pass", delta, u)
        return delta, None, None
    keep = d2 < np.float32(delta) ** 2
    return (delta, *edges_to_csr(n, src[keep], dst[keep]))


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

    def _clusters(self, x: np.ndarray, context: QueryContext, rng: np.random.Generator) -> np.ndarray:
        """k-means pseudo-labels of all rows for the purity radius."""
        who = self._label()
        k = self.n_clusters if self.n_clusters is not None else context.pool.logits.shape[1]
        if k < 2:
            raise ConfigError(
                f"{who} needs the number of classes (>= 2) for its purity radius, got {k} (pool logits "
                f"of width {context.pool.logits.shape[1]}) instead; pass n_clusters=<classes> or delta=<radius>"
            )
        if k > len(x):
            raise ConfigError(f"{who}: n_clusters must be at most the {len(x)} points, got {k} instead")
        return kmeans(x, k, rng, self.kmeans_iter)[0]

    def select(self, context: QueryContext, budget: int, rng: np.random.Generator) -> np.ndarray:
        self._check_params()
        pool_x, lab_x = self.embedding(context)
        n_pool, n_lab = len(pool_x), len(lab_x)
        b = min(budget, n_pool)
        x = np.concatenate([lab_x, pool_x]) if n_lab else pool_x
        if self.normalize:
            x = normalize_rows(x)
        ptr = idx = None
        if self.delta is not None:
            delta = float(self.delta)
        else:
            labels = self._clusters(x, context, rng)
            delta, ptr, idx = purity_delta_and_graph(x, labels, float(self.alpha), rng, int(self.max_edges),
                                                     self._label(), context.device)
            if not np.isfinite(delta) or delta <= 0:
                logger.warning("%s: purity radius is %s (one k-means cluster, or duplicate points on a "
                               "cluster boundary)", self._label(), delta)
                delta = float(np.finfo(np.float32).max) if not np.isfinite(delta) else float(np.finfo(np.float32).tiny)
        self.delta_ = delta
        if ptr is None:
            ptr, idx = ball_graph(x, delta, int(self.max_edges), self._label())
        picks, greedy = max_coverage_greedy(ptr, idx, n_lab, b, rng)
        self.n_greedy_ = greedy
        if greedy < b:
            logger.info("%s: every point is covered after %d picks (delta %.4g); %d drawn at random",
                        self._label(), greedy, delta, b - greedy)
        return context.pool.indices.numpy()[picks - n_lab]
