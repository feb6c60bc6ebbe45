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
``m(x)``.

Up to ``exact_max`` rows (20,000 on the CPU; no limit on CUDA) everything is exact: all ``m(x)``
come from one pass over all pairs in bounded blocks (torch, on the context's device), and the
same pass keeps the pairs within an upper estimate of delta, so the graph needs no second pass
(``purity_delta_and_graph``); with a given delta the graph is built by ``_geometry.ball_graph``
(pruned by cells and a lower-bound sketch). That pass is O(n^2 d): 64 s of CPU at 50,000 x 512
on one thread.

Above, both are estimated, in O(s n d + n nprobe (n / cells) d) with memory O(n d + edges):

* delta from ``delta_sample`` (s) random rows: their ``m(x)`` exactly, against all rows, and
  the same quantile among them (``sampled_purity_delta``; its error is a purity error of about
  ``sqrt(alpha (1 - alpha) / s)``: 0.95 +- 0.01 at s = 2,000);
* the graph from an inverted-file search (``_cellgraph.cell_ball_graph``): every row probes
  its ``nprobe`` nearest of ``n_cells`` k-means cells, and a pair is an edge when found from
  either end. No false edges; the recall (fraction of the exact edges held) is measured on
  256 random points after every build (``graph_recall_``, logged; a warning below 0.9).

The degree cap. On clean, well separated clusters the purity radius is about the gap between
clusters, every ball holds most of its cluster and the exact graph has ~n^2 / classes edges
(2.5 * 10^8 for 50,000 points in 10 clusters): gigabytes, and the exact greedy covers
everything within a few dozen picks and draws the rest of the budget at random. ``max_degree=K``
keeps each point's K nearest neighbours within delta: a ball becomes the smaller of its delta
ball and its K-nearest-neighbour ball, so a pick covers at most K points and the budget keeps
spreading over dense regions, at the scale of K neighbours (where many points reach K, the
first of them wins, as on any tie). By default (``max_degree=None``) there is no cap unless the
graph would pass ``max_edges`` (estimated from the 256 points before the approximate graph is
built; found while building the exact one): then the cap is ``min(100, max_edges // n)`` and a
warning says so, instead of an error after the work. 100 because the graph's cost grows with the
cap in that regime (50,000 x 512 whole-class balls, one thread: 16 s of CPU and 1.0 GB extra
peak at K = 100, 45 s and 5.9 GB at K = 1,000; ``bench/README.md``), and 1,000 picks of K = 100
can still cover 100,000 points. The ``GraphTooLarge`` error remains when no cap of at least 2 fits
or an explicit ``max_degree`` does not.

Differences from the authors' code, all at the edges: once every point is covered (all
out-degrees 0, where their code would pick point 0 again) the remaining picks are drawn
uniformly from the unpicked pool with ``rng``; the graph is built in memory O(n * d + edges)
in bounded blocks, not as an edge DataFrame of all pairs; delta is estimated and the graph
approximate above ``exact_max`` rows; and the optional degree cap.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from activecrl.core.errors import ConfigError
from activecrl.core.validate import check_int

from activecrl.strategies._cellgraph import ball_check, cell_ball_graph, default_cells, graph_recall
from activecrl.strategies._geometry import (GraphTooLarge, ball_graph, csr_rows, edges_to_csr, kmeans, normalize_rows,
                         other_label_pass, too_many_edges)
from activecrl.strategies.base import QueryContext, Strategy, register_strategy

logger = logging.getLogger(__name__)

__all__ = ["ProbCoverStrategy", "purity_delta", "sampled_purity_delta", "purity_delta_and_graph",
           "max_coverage_greedy"]

_EXACT_MAX_CPU = 20_000  # rows up to which the CPU computes delta and the graph exactly
_CHECK_ROWS = 256  # random points whose exact balls estimate the edges and measure the recall
_LOW_RECALL = 0.9  # below, the recall is logged as a warning
# the automatic degree cap: in the regime that needs it the graph's cost grows with the cap (50,000
# x 512, balls of whole classes: 16 s of CPU and 1.0 GB at 100, 45 s and 5.9 GB at 1,000)
_AUTO_MAX_DEGREE = 100


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


def sampled_purity_delta(x: np.ndarray, labels: np.ndarray, alpha: float, rng: np.random.Generator,
                         sample: int, device="cpu") -> float:
    """``purity_delta`` estimated on ``sample`` rows drawn without replacement: the
    ``(floor((1 - alpha) s) + 1)``-th smallest of their exact ``m(x)`` (each against all rows,
    bounded blocks), so ``sample >= n`` gives ``purity_delta`` itself. Cost O(sample * n * d).

    Sampling error: the estimate is a sample quantile of ``m``, so what it gets wrong is the
    purity, not a scale: the fraction of all points whose ball at the estimate is pure is
    ``alpha`` up to binomial noise, standard error about ``sqrt(alpha (1 - alpha) / s)``
    (0.0049 for alpha = 0.95, s = 2,000: the purity is within 0.95 +- 0.01 in 95% of draws).
    How far that moves delta depends on how steep the distribution of ``m`` is around its
    ``1 - alpha`` quantile (on clustered data, a few percent; see the tests)."""
    n = x.shape[0]
    s = min(n, int(sample))
    rows = np.sort(rng.choice(n, size=s, replace=False)) if s < n else np.arange(n)
    j = _allowed_impure(s, alpha)
    if j >= s:
        return float("inf")
    m = other_label_pass(x, labels, rows, device=device)[0]
    return float(np.partition(m, j)[j])


def purity_delta_and_graph(x: np.ndarray, labels: np.ndarray, alpha: float, rng: np.random.Generator,
                           max_edges: int, who: str, device="cpu", sample: int = 1024,
                           max_degree: int | None = None):
    """``(delta, ptr, idx)``: ``purity_delta`` and the delta-ball graph (each point's
    ``max_degree`` nearest when given) from one pass over all pairs. The pass keeps the pairs
    within an upper estimate ``u`` of delta (a high quantile of the same distances on ``sample``
    random rows); if delta turns out above ``u`` (rare) the graph is built in a second pass."""
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
    m, src, dst, d2 = other_label_pass(x, labels, radius=u, device=device, max_edges=max_edges, who=who,
                                       max_degree=max_degree)
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
    in_ptr, in_idx = edges_to_csr(n, idx, src)  # in-neighbour CSR of the same edges
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
    k-means clusters of the purity; None: the number of classes, ``context.n_classes`` or else
    the width of the pool logits), ``normalize`` (L2-normalise the rows first, as the authors' code does),
    ``kmeans_iter``, ``max_edges`` (memory guard of the graph) and ``max_degree`` (keep each
    point's nearest ``max_degree`` neighbours within delta; None: all, unless the graph would
    pass ``max_edges``, see the module docstring).

    Large pools (more than ``exact_max`` rows; None: 20,000 on the CPU, no limit on CUDA, where
    the exact pass is a few matrix products): delta from ``delta_sample`` random rows
    (``sampled_purity_delta``) and the graph from ``nprobe`` of ``n_cells`` k-means cells
    (``_cellgraph.cell_ball_graph``). After a query: ``delta_``, ``n_greedy_``,
    ``approximate_``, ``max_degree_`` (the cap used), ``graph_recall_`` (approximate graph:
    fraction of the exact edges of ``_CHECK_ROWS`` random points that it holds; else None).
    """

    needs_features = True
    needs_logits = False  # class count: n_clusters, else context.n_classes, else the width of the logits
    uses_embeddings = True

    def __init__(self, delta: float | None = None, alpha: float = 0.95, n_clusters: int | None = None,
                 normalize: bool = True, kmeans_iter: int = 20, max_edges: int = 200_000_000,
                 max_degree: int | None = None, exact_max: int | None = None, delta_sample: int = 2000,
                 nprobe: int = 8, n_cells: int | None = None):
        self.delta = delta
        self.alpha = alpha
        self.n_clusters = n_clusters
        self.normalize = normalize
        self.kmeans_iter = kmeans_iter
        self.max_edges = max_edges
        self.max_degree = max_degree
        self.exact_max = exact_max
        self.delta_sample = delta_sample
        self.nprobe = nprobe
        self.n_cells = n_cells

    def _check_params(self) -> None:
        who = self._label()
        if self.delta is not None and (isinstance(self.delta, bool) or not isinstance(self.delta, (int, float))
                                       or not np.isfinite(self.delta) or self.delta <= 0):
            raise ConfigError(f"{who}: delta must be a positive number or None, got {self.delta!r} instead")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 < self.alpha <= 1:
            raise ConfigError(f"{who}: alpha must be in (0, 1], got {self.alpha!r} instead")
        for name, low, none_ok in (("n_clusters", 1, True), ("kmeans_iter", 1, False), ("max_edges", 1, False),
                                   ("max_degree", 1, True), ("exact_max", 0, True), ("delta_sample", 1, False),
                                   ("nprobe", 1, False), ("n_cells", 1, True)):
            check_int(f"{who}: {name}", getattr(self, name), low, none_ok=none_ok)

    def exact_limit(self, device) -> float:
        """Rows up to which delta and the graph are exact on ``device``."""
        if self.exact_max is not None:
            return self.exact_max
        return float("inf") if torch.device(device).type == "cuda" else _EXACT_MAX_CPU

    def _clusters(self, x: np.ndarray, context: QueryContext, rng: np.random.Generator) -> np.ndarray:
        """k-means pseudo-labels of all rows for the purity radius."""
        who = self._label()
        width = context.pool.logits.shape[1]
        k = next((c for c in (self.n_clusters, context.n_classes) if c is not None), width)
        if k == 0:
            raise ConfigError(
                f"{who} needs the number of classes for its purity radius: n_clusters must be an integer "
                f">= 2, got None and no class count (no logits, no n_classes) instead; pass "
                f"n_clusters=<classes> or n_classes=<classes> (strategies.query), or delta=<radius>"
            )
        if k < 2:
            raise ConfigError(
                f"{who} needs the number of classes (>= 2) for its purity radius, got {k} (pool logits "
                f"of width {width}) instead; pass n_clusters=<classes> or delta=<radius>"
            )
        if k > len(x):
            raise ConfigError(f"{who}: n_clusters must be at most the {len(x)} points, got {k} instead")
        return kmeans(x, k, rng, self.kmeans_iter)[0]

    def _usable(self, delta: float) -> float:
        if np.isfinite(delta) and delta > 0:
            return delta
        logger.warning("%s: purity radius is %s (one k-means cluster, or duplicate points on a cluster boundary)",
                       self._label(), delta)
        return float(np.finfo(np.float32).max) if not np.isfinite(delta) else float(np.finfo(np.float32).tiny)

    def _auto_cap(self, n: int, why: str, error: GraphTooLarge | None = None, estimate: float | None = None) -> int:
        """The cap when the graph would pass ``max_edges`` and no ``max_degree`` was given:
        ``_AUTO_MAX_DEGREE``, or less if that does not fit; an error if a point cannot keep at
        least one neighbour besides itself."""
        cap = min(_AUTO_MAX_DEGREE, int(self.max_edges) // n)
        if cap < 2:
            raise error or too_many_edges(self._label(), int(self.max_edges), self.delta_, n, estimate=estimate)
        logger.warning("%s: the delta-ball graph would pass max_edges=%s (%s); keeping each point's %d nearest "
                       "neighbours within delta (set max_degree to choose, or raise max_edges)",
                       self._label(), f"{int(self.max_edges):,}", why, cap)
        return cap

    def _exact(self, x, labels, device, rng, cap):
        who, ptr, idx = self._label(), None, None
        if self.delta is not None:
            delta = float(self.delta)
        else:
            delta, ptr, idx = purity_delta_and_graph(x, labels, float(self.alpha), rng, int(self.max_edges), who,
                                                     device, max_degree=cap)
            if not (np.isfinite(delta) and delta > 0):
                delta, ptr = self._usable(delta), None
        if ptr is None:
            ptr, idx = ball_graph(x, delta, int(self.max_edges), who, max_degree=cap)
        return delta, ptr, idx

    def _approximate(self, x, labels, device, rng):
        n, who = len(x), self._label()
        if self.delta is not None:
            delta = float(self.delta)
        else:
            delta = self._usable(sampled_purity_delta(x, labels, float(self.alpha), rng, int(self.delta_sample),
                                                      device))
        check = np.sort(rng.choice(n, size=min(n, _CHECK_ROWS), replace=False))
        exact = ball_check(x, check, delta)
        estimate = n * float(np.mean([len(e) for e in exact]))
        cap = self.max_degree
        if cap is None and estimate > self.max_edges:
            self.delta_ = delta
            cap = self._auto_cap(n, f"about {estimate:,.0f} edges estimated on {len(check)} points",
                                 estimate=estimate)

        def build(k):
            return cell_ball_graph(x, delta, rng, int(self.nprobe), self.n_cells, k, int(self.max_edges), who)

        self.delta_ = delta
        try:
            ptr, idx = build(cap)
        except GraphTooLarge as e:
            if cap is not None:
                raise
            cap = self._auto_cap(n, "more edges than estimated", e)
            ptr, idx = build(cap)
        recall = graph_recall(ptr, idx, check, [e[:cap] for e in exact])
        g = min(n, self.n_cells or default_cells(n))
        low = recall < _LOW_RECALL
        (logger.warning if low else logger.info)(
            "%s: approximate delta-ball graph (%s rows, %d of %d cells probed%s) holds %.1f%% of the exact edges "
            "of %d random points%s", who, f"{n:,}", min(int(self.nprobe), g), g,
            "" if cap is None else f", at most {cap} neighbours each", 100 * recall, len(check),
            "; raise nprobe for more" if low else "")
        return delta, ptr, idx, cap, recall

    def select(self, context: QueryContext, budget: int, rng: np.random.Generator) -> np.ndarray:
        self._check_params()
        pool_x, lab_x = self.embedding(context)
        n_pool, n_lab = len(pool_x), len(lab_x)
        b = min(budget, n_pool)
        x = np.concatenate([lab_x, pool_x]) if n_lab else pool_x
        if self.normalize:
            x = normalize_rows(x)
        labels = self._clusters(x, context, rng) if self.delta is None else None
        self.approximate_ = len(x) > self.exact_limit(context.device)
        self.graph_recall_ = None
        cap = self.max_degree
        if self.approximate_:
            delta, ptr, idx, cap, self.graph_recall_ = self._approximate(x, labels, context.device, rng)
        else:
            try:
                delta, ptr, idx = self._exact(x, labels, context.device, rng, cap)
            except GraphTooLarge as e:
                if cap is not None:
                    raise
                cap = self._auto_cap(len(x), "found while building it", e)
                delta, ptr, idx = self._exact(x, labels, context.device, rng, cap)
        self.delta_, self.max_degree_ = delta, cap
        picks, greedy = max_coverage_greedy(ptr, idx, n_lab, b, rng)
        self.n_greedy_ = greedy
        if greedy < b:
            logger.info("%s: every point is covered after %d picks (delta %.4g); %d drawn at random",
                        self._label(), greedy, delta, b - greedy)
        return context.pool.indices.numpy()[picks - n_lab]
