"""Approximate delta-ball graph of a large pool (ProbCover above its ``exact_max`` rows): an
inverted-file (IVF) search whose cells are compared in dense BLAS blocks.

* ``train_cells``: ``n_cells`` k-means centroids (faiss ``Kmeans``, 10 iterations, on a random
  sample of 16 rows per cell, as an IVF index is trained on a sample); each row belongs to the
  cell of its nearest centroid.
* ``cell_ball_graph``: every row lists its ``nprobe`` nearest centroids (as an IVF search
  probes ``nprobe`` lists); then, cell by cell, the rows that probe the cell are compared with
  its members in one matrix product (an inverted list scanned for a batch of queries at once)
  and the pairs closer than delta are kept. The relation is symmetric, so a pair found from
  either end is an edge both ways. Every kept pair is checked with its exact distance, so the
  graph is a subgraph of the exact one (no false edge): it misses only the pairs in which
  neither point probes the other's cell. With ``nprobe = n_cells`` every cell is probed and it
  is the exact graph. ``max_degree`` keeps each row's nearest ``max_degree`` neighbours within
  delta (memory O(n max_degree): capped in every block and compacted as edges accumulate).
  Work O(n nprobe (n / n_cells) d), memory O(n (d + nprobe) + edges).
* ``ball_check``: the exact out-neighbours of a few rows (one block product), to estimate the
  number of edges before building and ``graph_recall``, the recall of the built graph.

Why not faiss ``IndexIVFFlat.range_search``, the obvious tool: it scans a list one query and one
vector at a time, where the same comparisons grouped by list are one BLAS product, and it gives
each pair from one end only. With the same cells and ``nprobe`` on 50,000 x 512 clustered rows
(one thread; ``bench/README.md``) it took 22.6 s of CPU for a recall of 0.980, this 2.5 s for
0.998.
"""

from __future__ import annotations

import logging

import numpy as np

from activecrl.core.kmeans import kmeans, nearest_centroids
from activecrl.strategies._geometry import _BLOCK_ELEMENTS, cap_nearest, edges_to_csr, too_many_edges

logger = logging.getLogger(__name__)

__all__ = ["default_cells", "train_cells", "cell_ball_graph", "ball_check", "graph_recall"]

_TRAIN_PER_CELL = 16  # training rows per cell (faiss warns below 39; 16 gave the same recall here)
_TRAIN_ITER = 10


def default_cells(n: int) -> int:
    """``sqrt(n)`` cells of about ``sqrt(n)`` rows (224 cells at 50,000 rows)."""
    return max(1, min(n, int(round(np.sqrt(n)))))


def train_cells(x: np.ndarray, n_cells: int, rng: np.random.Generator) -> np.ndarray:
    """(n_cells, d) float32 k-means centroids trained on a random sample of the rows."""
    return kmeans(x, n_cells, rng, niter=_TRAIN_ITER, train_sample=_TRAIN_PER_CELL * n_cells)


def cell_ball_graph(x: np.ndarray, delta: float, rng: np.random.Generator, nprobe: int,
                    n_cells: int | None = None, max_degree: int | None = None,
                    max_edges: int = 1 << 62, who: str = "probcover") -> tuple[np.ndarray, np.ndarray]:
    """Out-neighbour CSR ``(ptr, idx)`` of ``x -> y`` for ``|x - y| < delta`` found by probing
    ``nprobe`` of ``n_cells`` (default ``default_cells(n)``) k-means cells (module docstring);
    at most ``max_degree`` nearest per row when given. The same float32 expression as
    ``_geometry.ball_graph``. Raises ``GraphTooLarge`` past ``max_edges`` edges."""
    n, d = x.shape
    g = min(n, n_cells or default_cells(n))
    centroids = train_cells(x, g, rng)
    probes = nearest_centroids(x, centroids, min(int(nprobe), g))
    members, m_start, m_end = _group(probes[:, 0], g)  # rows of each cell
    queries, q_start, q_end = _group(probes.ravel(), g)  # rows probing each cell
    queries //= probes.shape[1]
    x = np.ascontiguousarray(x, dtype=np.float32)
    x_sq = np.einsum("ij,ij->i", x, x, dtype=np.float64).astype(np.float32)
    d2_cut = np.float32(delta) ** 2
    it = np.int32 if n < 2**31 else np.int64
    edges = _Edges(n, max_degree)
    for c in np.flatnonzero(m_end > m_start):
        t = members[m_start[c]:m_end[c]]
        b, b_sq = x[t], x_sq[t]
        q_all = queries[q_start[c]:q_end[c]]
        step = max(1, _BLOCK_ELEMENTS // len(t))
        for s in range(0, len(q_all), step):
            q = q_all[s:s + step]
            dot = x[q] @ b.T
            dot -= 0.5 * b_sq[None, :]  # a.b - |b|^2 / 2 > (|a|^2 - delta^2) / 2  <=>  |a - b| < delta
            hit = dot > (0.5 * (x_sq[q] - d2_cut))[:, None]
            if max_degree is not None:
                hit = _nearest_in_block(hit, dot, max_degree)
            i, j = np.nonzero(hit)
            src, dst = q[i].astype(edges.it), t[j].astype(edges.it)
            d2 = x_sq[src] - 2.0 * dot[i, j] if max_degree is not None else None
            # the relation is symmetric: a pair found from one end is also the reverse edge, unless
            # that one is found from the other end (the target probes the source's cell)
            back = ~(probes[dst] == probes[src, :1]).any(axis=1)
            edges.add(np.concatenate([src, dst[back]]), np.concatenate([dst, src[back]]),
                      None if d2 is None else np.concatenate([d2, d2[back]]))
            if max_degree is None and edges.total > max_edges:  # capped: at most 3 n max_degree
                raise too_many_edges(who, max_edges, delta, n, max_degree)
    src, dst = edges.final()
    if len(src) > max_edges:
        raise too_many_edges(who, max_edges, delta, n, max_degree)
    return edges_to_csr(n, src, dst)


class _Edges:
    """The edges found so far; with a cap, each source's nearest ``cap`` (compacted whenever
    more than ``2 n cap`` edges wait, so memory stays O(n cap))."""

    def __init__(self, n: int, cap: int | None):
        self.n, self.cap, self.it = n, cap, np.int32 if n < 2**31 else np.int64
        self.parts: list[tuple] = []
        self.total = self.pending = 0  # edges held (after the last compaction), edges added since

    def add(self, src: np.ndarray, dst: np.ndarray, d2: np.ndarray | None) -> None:
        self.parts.append((src, dst, d2))
        self.total += len(src)
        self.pending += len(src)
        if self.cap is not None and self.pending > 2 * self.n * self.cap:
            self.parts = [self.final(with_d2=True)]
            self.total, self.pending = len(self.parts[0][0]), 0

    def final(self, with_d2: bool = False) -> tuple:
        cat = [np.concatenate([p[k] for p in self.parts]) if self.parts else np.empty(0, dt)
               for k, dt in ((0, self.it), (1, self.it), (2, np.float32)) if k < 2 or self.cap is not None]
        self.parts = []
        if self.cap is not None:
            keep = cap_nearest(cat[0], cat[1], cat[2], self.cap)
            cat = [a[keep] for a in cat]
        return tuple(cat) if with_d2 else tuple(cat[:2])


def _nearest_in_block(hit: np.ndarray, dot: np.ndarray, k: int) -> np.ndarray:
    """``hit`` less the pairs that are among neither their row's nor their column's ``k``
    nearest hits in this block (``dot`` larger = nearer; ties kept): a row's ``k`` nearest
    overall are among its ``k`` nearest in each block it meets, as source or as target (the
    reverse edge), so this bounds the memory of a capped graph without changing it."""
    vals = np.where(hit, dot, -np.inf)  # the k-th largest is -inf for a row or column of < k hits
    h, w = vals.shape
    if w <= k or h <= k:
        return hit
    keep = vals >= np.partition(vals, w - k, axis=1)[:, w - k:w - k + 1]
    keep |= vals >= np.partition(vals, h - k, axis=0)[h - k:h - k + 1]
    return keep & hit


def _group(labels: np.ndarray, g: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions in ``labels`` sorted by label, and each label's [start, end) among them."""
    order = np.argsort(labels, kind="stable")
    end = np.cumsum(np.bincount(labels, minlength=g))
    return order, end - np.bincount(labels, minlength=g), end


def ball_check(x: np.ndarray, rows: np.ndarray, delta: float) -> list[np.ndarray]:
    """The exact out-neighbours of a few ``rows`` (nearest first, ties by row), from one product
    of those rows with all rows in bounded blocks; the same float32 expression as the graphs.
    Their sizes estimate the graph's edges before it is built, their prefixes (``max_degree``)
    its recall after."""
    n = x.shape[0]
    x_sq = (x.astype(np.float64) ** 2).sum(axis=1).astype(np.float32)
    d2_cut = np.float32(delta) ** 2
    neigh = []
    step = max(1, _BLOCK_ELEMENTS // max(1, n))
    for s in range(0, len(rows), step):
        r = rows[s:s + step]
        dot = x[r] @ x.T
        dot -= 0.5 * x_sq[None, :]
        hit = dot > (0.5 * (x_sq[r] - d2_cut))[:, None]
        for k in range(len(r)):
            j = np.flatnonzero(hit[k])
            neigh.append(j[np.argsort(-dot[k, j], kind="stable")])
    return neigh


def graph_recall(ptr: np.ndarray, idx: np.ndarray, rows: np.ndarray, exact: list[np.ndarray]) -> float:
    """Fraction of the exact out-edges of ``rows`` that the graph ``(ptr, idx)`` holds."""
    found = sum(len(np.intersect1d(idx[ptr[r]:ptr[r + 1]], e, assume_unique=True)) for r, e in zip(rows, exact))
    want = sum(len(e) for e in exact)
    return found / want if want else 1.0
