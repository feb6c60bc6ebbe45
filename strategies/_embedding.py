"""Shared geometry of the embedding strategies (typiclust, probcover): k-means, nearest
neighbours and the delta-ball graph through faiss / BLAS, never an n x n matrix.

* ``kmeans``: k-means++ seeds drawn with the strategy's ``rng``, then faiss ``Kmeans``
  (deterministic given ``rng``); labels from one exact nearest-centroid search, so the clusters
  are Voronoi cells of the returned centroids.
* ``knn_mean_dist``: mean Euclidean distance of each row to its k nearest other rows
  (faiss ``IndexFlatL2``), memory O(m * k).
* ``Cells``: a Voronoi partition of the rows by about sqrt(n) random pivots. For ``x`` in the
  cell of pivot ``a`` and any ``y`` in the cell of pivot ``b``, ``|x - y|`` is at least the
  distance of ``x`` to the bisecting hyperplane, ``(|x - p_b|^2 - |x - p_a|^2) / (2 |p_a - p_b|)``:
  a ball search around the rows of one cell only visits the cells that bound allows.
* ``ball_graph``: the directed graph ``x -> y`` iff ``|x - y| < delta`` (ProbCover's graph) as
  CSR arrays, built cell by cell with bounded blocks; memory O(n * d + edges).
* ``other_label_nn_dist``: distance of rows to the nearest row with another label (for the
  ball-purity radius), bounded blocks.
"""

from __future__ import annotations

import logging

import numpy as np

from activecrl.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["normalize_rows", "seed_from", "kmeans_pp_seeds", "kmeans", "knn_mean_dist", "Cells", "ball_graph",
           "other_label_nn_dist", "csr_rows"]

_BLOCK_ELEMENTS = 1 << 23  # 8M float32 (32 MB) per distance block
_MAX_CELLS = 1024
_SMALL_KNN = 2048  # rows up to which k-NN is one numpy block (2048^2 floats = 16 MB)


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (TypiClust/ProbCover's code normalises its embeddings);
    all-zero rows stay zero."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norm, np.float32(1e-12)), dtype=np.float32)


def seed_from(rng: np.random.Generator) -> int:
    """A faiss seed drawn from ``rng`` (faiss takes a 31-bit int)."""
    return int(rng.integers(0, 2**31 - 1))


def kmeans_pp_seeds(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur and Vassilvitskii, 2007) of ``k`` rows of ``x``: the first drawn
    uniformly, each next one with probability proportional to its squared distance to the
    nearest seed so far. One matrix-vector product per seed; memory O(n)."""
    n = x.shape[0]
    x_sq = (x.astype(np.float64) ** 2).sum(axis=1)
    seeds = np.empty(k, dtype=np.int64)
    seeds[0] = rng.integers(n)
    d2 = np.full(n, np.inf)
    for i in range(k):
        c = seeds[i]
        np.minimum(d2, np.maximum(x_sq + x_sq[c] - 2.0 * (x @ x[c]).astype(np.float64), 0.0), out=d2)
        d2[seeds[:i + 1]] = 0.0
        if i + 1 == k:
            break
        cdf = np.cumsum(d2)
        if not cdf[-1] > 0:  # fewer distinct rows than seeds: the rest at random
            rest = np.setdiff1d(np.arange(n), seeds[:i + 1])
            seeds[i + 1:] = rng.choice(rest, size=k - i - 1, replace=False)
            break
        seeds[i + 1] = min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), n - 1)
    return seeds


def kmeans(x: np.ndarray, k: int, rng: np.random.Generator, niter: int = 20,
           init_sample: int = 10_000) -> tuple[np.ndarray, np.ndarray]:
    """k-means of the rows of ``x`` into ``k`` clusters: (labels (n,) int64, centroids (k, d)
    float32). Seeds: k-means++ on a random sample of ``max(init_sample, 3 k)`` rows (as
    scikit-learn's ``MiniBatchKMeans`` seeds on a sample; TypiClust's code uses scikit-learn),
    then ``niter`` Lloyd iterations of faiss ``Kmeans`` on every row. Labels come from one exact
    nearest-centroid search, so the clusters are the Voronoi cells of the centroids."""
    import faiss  # lazily: only the embedding strategies need it

    n, d = x.shape
    if not 1 <= k <= n:
        raise ConfigError(f"k-means needs 1 <= clusters <= points, got {k} clusters for {n} points instead")
    m = min(n, max(int(init_sample), 3 * k))
    sample = np.sort(rng.choice(n, size=m, replace=False)) if m < n else np.arange(n)
    init = np.ascontiguousarray(x[sample[kmeans_pp_seeds(x[sample], k, rng)]], dtype=np.float32)
    km = faiss.Kmeans(d, int(k), niter=int(niter), seed=seed_from(rng), verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=max(256, -(-n // k)))
    km.train(x, init_centroids=init)
    centroids = np.ascontiguousarray(km.centroids, dtype=np.float32)
    index = faiss.IndexFlatL2(d)
    index.add(centroids)
    labels = index.search(x, 1)[1][:, 0].astype(np.int64)
    return labels, centroids


def knn_mean_dist(x: np.ndarray, k: int) -> np.ndarray:
    """Mean Euclidean distance of every row of ``x`` to its ``k`` nearest other rows (the row
    itself, first in the sorted answer, is dropped, as TypiClust's code does), float64.
    Up to ``_SMALL_KNN`` rows (TypiClust's clusters: tens to hundreds) one BLAS block and a
    partial sort (faiss's per-call thread start-up costs more there); above, faiss
    ``IndexFlatL2``. Memory O(m * k) plus a bounded block."""
    m, d = x.shape
    if k < 1 or k >= m:
        raise ConfigError(f"k nearest neighbours needs 1 <= k < rows, got k={k} for {m} rows instead")
    if m <= _SMALL_KNN:
        x_sq = (x.astype(np.float64) ** 2).sum(axis=1).astype(np.float32)
        dist = np.sort(np.partition(_sq_block(x, x_sq, x, x_sq), k, axis=1)[:, :k + 1], axis=1)[:, 1:]
    else:
        import faiss

        index = faiss.IndexFlatL2(d)
        index.add(x)
        dist = index.search(x, k + 1)[0][:, 1:]
    return np.sqrt(np.maximum(dist.astype(np.float64), 0.0)).mean(axis=1)


def csr_rows(ptr: np.ndarray, idx: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Concatenated ``idx[ptr[r]:ptr[r + 1]]`` for the ``rows`` (vectorised)."""
    starts = ptr[rows]
    lens = ptr[rows + 1] - starts
    total = int(lens.sum())
    if total == 0:
        return idx[:0]
    offs = np.repeat(starts - np.cumsum(lens) + lens, lens) + np.arange(total)
    return idx[offs]


class Cells:
    """Voronoi cells of about sqrt(n) random pivot rows (the pivots change the speed, never a
    result). ``order`` lists the rows cell by cell; cell ``c`` is ``order[start[c]:end[c]]``."""

    def __init__(self, x: np.ndarray, n_cells: int | None = None):
        n, d = x.shape
        g = n_cells or min(_MAX_CELLS, max(1, int(np.sqrt(n))))
        g = min(g, n)
        self.pivots = x[np.sort(np.random.default_rng(0).choice(n, g, replace=False))].astype(np.float64)
        self.p_sq = (self.pivots ** 2).sum(axis=1)
        label = np.empty(n, dtype=np.int64)
        rows = max(1, _BLOCK_ELEMENTS // g)
        for s in range(0, n, rows):
            label[s:s + rows] = self.sq_dist(x[s:s + rows]).argmin(axis=1)
        self.label = label
        self.order = np.argsort(label, kind="stable")
        counts = np.bincount(label, minlength=g)
        self.end = np.cumsum(counts)
        self.start = self.end - counts
        pp = self.p_sq[:, None] + self.p_sq[None, :] - 2.0 * (self.pivots @ self.pivots.T)
        self.pivot_dist = np.sqrt(np.maximum(pp, 0.0))

    def sq_dist(self, rows: np.ndarray) -> np.ndarray:
        """Squared distances (float64) of ``rows`` to every pivot."""
        r = rows.astype(np.float64)
        return np.maximum((r * r).sum(axis=1)[:, None] + self.p_sq[None, :] - 2.0 * (r @ self.pivots.T), 0.0)

    def lower_bound(self, rows: np.ndarray, cell: int) -> np.ndarray:
        """(len(rows), n_cells): lower bounds on the distance of each row (all in ``cell``) to any
        row of each cell, from the bisecting hyperplanes; 0 for ``cell`` itself."""
        d2 = self.sq_dist(rows)
        sep = np.maximum(self.pivot_dist[cell], 1e-300)
        lb = (d2 - d2[:, cell:cell + 1]) / (2.0 * sep[None, :])
        lb[:, cell] = 0.0
        return lb


def _sq_block(a: np.ndarray, a_sq: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    """Squared distances between the rows of ``a`` and ``b`` (float32 BLAS, clamped at 0)."""
    out = a @ b.T
    out *= -2.0
    out += a_sq[:, None]
    out += b_sq[None, :]
    np.maximum(out, 0.0, out=out)
    return out


def _within(a: np.ndarray, a_sq: np.ndarray, b: np.ndarray, b_sq: np.ndarray, d2_cut: float):
    """(i, j) with ``|a_i - b_j|^2 < d2_cut``, as ``a_i . b_j - |b_j|^2 / 2 > (|a_i|^2 - d2_cut) / 2``:
    one product and two passes over the block."""
    dot = a @ b.T
    dot -= 0.5 * b_sq[None, :]
    return np.nonzero(dot > (0.5 * (a_sq - d2_cut))[:, None])


def ball_graph(x: np.ndarray, delta: float, max_edges: int, who: str
               ) -> tuple[np.ndarray, np.ndarray]:
    """Out-neighbour CSR ``(ptr, idx)`` of ``x -> y`` iff ``|x - y| < delta`` over the rows of
    ``x`` (every row is its own neighbour when ``delta > 0``). Raises ``ConfigError`` naming
    ``who`` when the graph would exceed ``max_edges`` edges."""
    n, d = x.shape
    cells = Cells(x)
    x_sq = (x.astype(np.float64) ** 2).sum(axis=1).astype(np.float32)
    # rounding margin of the float64 bounds (points within it of the plane are searched anyway)
    margin = 1e-6 * (1.0 + float(np.sqrt(x_sq.max(initial=0.0))))
    d2_cut = np.float32(delta) ** 2
    srcs, dsts, total = [], [], 0
    for c in range(len(cells.start)):
        rows = cells.order[cells.start[c]:cells.end[c]]
        if len(rows) == 0:
            continue
        xa = x[rows]
        reach = cells.lower_bound(xa, c).min(axis=0) < delta + margin
        cand = np.concatenate([cells.order[cells.start[b]:cells.end[b]] for b in np.flatnonzero(reach)])
        yb, yb_sq = x[cand], x_sq[cand]
        step = max(1, _BLOCK_ELEMENTS // max(1, len(cand)))
        for s in range(0, len(rows), step):
            i, j = _within(xa[s:s + step], x_sq[rows[s:s + step]], yb, yb_sq, d2_cut)
            total += len(i)
            if total > max_edges:
                raise ConfigError(
                    f"{who}: the delta-ball graph must fit in max_edges={max_edges:,} edges, got more "
                    f"than that at delta={delta:.4g} (n={n:,}) instead; pass a smaller delta (or none, "
                    f"to choose it by purity) or raise max_edges"
                )
            srcs.append(rows[s:s + step][i].astype(np.int64))
            dsts.append(cand[j].astype(np.int64))
    src = np.concatenate(srcs) if srcs else np.empty(0, np.int64)
    dst = np.concatenate(dsts) if dsts else np.empty(0, np.int64)
    order = np.lexsort((dst, src))
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(src, minlength=n), out=ptr[1:])
    return ptr, dst[order]


def other_label_nn_dist(x: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """For each of ``rows``: Euclidean distance to the nearest row of ``x`` whose label differs
    (inf when every row has that label), float64; bounded blocks of ``rows`` x n."""
    n = x.shape[0]
    x_sq = (x.astype(np.float64) ** 2).sum(axis=1).astype(np.float32)
    out = np.empty(len(rows))
    step = max(1, _BLOCK_ELEMENTS // max(1, n))
    for s in range(0, len(rows), step):
        r = rows[s:s + step]
        blk = _sq_block(x[r], x_sq[r], x, x_sq)
        blk[labels[r][:, None] == labels[None, :]] = np.inf
        out[s:s + step] = np.sqrt(blk.min(axis=1).astype(np.float64))
    return out
