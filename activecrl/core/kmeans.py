"""The one faiss k-means of the project: TypiClust's and ProbCover's clusters
(``strategies/_geometry.py: kmeans``), ProbCover's inverted-file cells
(``strategies/_cellgraph.py: train_cells``) and the patch features' codebook
(``activecrl.embeddings.patches``).

:func:`kmeans` runs faiss ``Kmeans`` (Lloyd iterations) on every row it is given, never a faiss
subsample, and differs between callers only in what it is told:

* ``init``: ``"random"`` (faiss picks ``k`` seeded random rows) or ``"k-means++"``
  (Arthur and Vassilvitskii 2007, :func:`kmeans_pp_seeds`, drawn with ``rng``);
* ``init_sample``: the k-means++ seeds come from a random sample of ``max(init_sample, 3 k)``
  rows (as scikit-learn's ``MiniBatchKMeans`` seeds on a sample);
* ``train_sample``: Lloyd runs on a random sample of that many rows only (as an IVF index is
  trained on a sample).

Randomness comes from ``rng``, drawn in a fixed order (the sample, then the k-means++ seeds, then
faiss's seed), so a result is a function of ``rng``'s state alone. An ``int`` seed is passed to
faiss as it is (modulo 2**31) and allows no sampling.
:func:`nearest_centroids` is the exact nearest-centroid search that turns centroids into labels.
"""

from __future__ import annotations

import numpy as np

from activecrl.core.errors import ConfigError

__all__ = ["kmeans", "kmeans_pp_seeds", "nearest_centroids"]

_FAISS_SEEDS = 2**31  # faiss takes a 31-bit seed
_NO_SUBSAMPLE = 1 << 30  # faiss max_points_per_centroid: above every n used, so faiss trains on every row


def kmeans(x: np.ndarray, k: int, rng: np.random.Generator | int, *, niter: int = 20, init: str = "random",
           init_sample: int | None = None, train_sample: int | None = None) -> np.ndarray:
    """(k, d) float32 centroids of ``niter`` Lloyd iterations on the rows of ``x`` (module docstring)."""
    import faiss  # lazily: only the embedding strategies and the patch features need it

    n, d = x.shape
    if not 1 <= k <= n:
        raise ConfigError(f"k-means needs 1 <= clusters <= points, got {k} clusters for {n} points instead")
    if init not in ("random", "k-means++"):
        raise ConfigError(f"k-means init must be 'random' or 'k-means++', got {init!r} instead")
    if isinstance(rng, (int, np.integer)) and (init != "random" or init_sample or train_sample):
        raise ConfigError("k-means with a sample or k-means++ seeds needs a numpy Generator, got an int seed "
                          "instead; pass np.random.default_rng(seed)")
    if train_sample is not None:
        x = x[_sample_rows(n, train_sample, rng)]
    init_centroids = _kmeans_pp_init(x, k, rng, init_sample) if init == "k-means++" else None
    km = faiss.Kmeans(d, int(k), niter=int(niter), seed=_faiss_seed(rng), verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=_NO_SUBSAMPLE)
    km.train(np.ascontiguousarray(x, dtype=np.float32), init_centroids=init_centroids)
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def nearest_centroids(x: np.ndarray, centroids: np.ndarray, n_nearest: int = 1) -> np.ndarray:
    """(n, n_nearest) int64 ids of each row's nearest centroids, nearest first (exact, faiss BLAS)."""
    import faiss

    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(centroids)
    return index.search(x, int(n_nearest))[1].astype(np.int64)


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


def _kmeans_pp_init(x: np.ndarray, k: int, rng: np.random.Generator, init_sample: int | None) -> np.ndarray:
    """(k, d) float32 k-means++ seeds drawn from a sample of ``max(init_sample, 3 k)`` rows (all without it)."""
    sample = _sample_rows(x.shape[0], max(int(init_sample), 3 * k), rng) if init_sample else np.arange(x.shape[0])
    return np.ascontiguousarray(x[sample[kmeans_pp_seeds(x[sample], k, rng)]], dtype=np.float32)


def _sample_rows(n: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted ids of ``m`` distinct random rows of ``n`` (every row, in order, and no draw when m >= n)."""
    return np.sort(rng.choice(n, size=m, replace=False)) if m < n else np.arange(n)


def _faiss_seed(rng: np.random.Generator | int) -> int:
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(0, _FAISS_SEEDS - 1))
    return int(rng) % _FAISS_SEEDS
