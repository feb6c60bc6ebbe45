"""Shared geometry of the embedding strategies (typiclust, probcover): k-means, nearest
neighbours and the delta-ball graph through faiss / BLAS, never an n x n matrix.

* ``kmeans``: k-means++ seeds drawn with the strategy's ``rng``, then faiss ``Kmeans``
  (``activecrl.core.kmeans``, deterministic given ``rng``); labels from one exact
  nearest-centroid search, so the clusters are Voronoi cells of the returned centroids.
* ``knn_mean_dist``: mean Euclidean distance of each row to its k nearest other rows (one
  numpy block for small sets, faiss ``IndexFlatL2`` above), memory O(m * k).
* ``Cells``: a Voronoi partition of the rows by about sqrt(n) random pivots. For ``x`` in the
  cell of pivot ``a`` and any ``y`` in the cell of pivot ``b``, ``|x - y|`` is at least the
  distance of ``x`` to the bisecting hyperplane, ``(|x - p_b|^2 - |x - p_a|^2) / (2 |p_a - p_b|)``:
  a ball search around the rows of one cell only visits the cells that bound allows.
* ``ball_graph``: the directed graph ``x -> y`` iff ``|x - y| < delta`` (ProbCover's graph with
  a given delta) as CSR arrays, built cell by cell with bounded blocks, candidate pairs from a
  lower-bound ``Sketch`` on wide embeddings; memory O(n * d + edges).
* ``other_label_pass``: one exact pass over all pairs (torch, any device): distance of each row
  to the nearest row with another label (ProbCover's purity radius) and the pairs within a
  radius (its graph).
* ``cap_nearest``: each row's ``max_degree`` nearest out-neighbours (ProbCover's degree cap);
  ``GraphTooLarge``: the memory guard's error, naming the remedies.

The approximate graph of large pools is in ``_cellgraph.py``.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from activecrl.core.errors import ConfigError
from activecrl.core.kmeans import kmeans as core_kmeans, nearest_centroids

logger = logging.getLogger(__name__)

__all__ = ["normalize_rows", "kmeans", "knn_mean_dist", "Cells", "ball_graph",
           "csr_rows", "other_label_pass", "edges_to_csr", "cap_nearest", "GraphTooLarge", "too_many_edges"]

_BLOCK_ELEMENTS = 1 << 23  # 8M float32 (32 MB) per distance block
_MAX_CELLS = 1024
_SKETCH_DIMS = 64  # principal directions of the ball graph's lower-bound sketch
_SKETCH_MIN_N = 4096  # below, one full pass is cheap
_PAIR_FRACTION = 0.02  # above this fraction of sketch candidates a block is compared in full
_SMALL_KNN = 2048  # rows up to which k-NN is one numpy block (2048^2 floats = 16 MB)


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (TypiClust/ProbCover's code normalises its embeddings);
    all-zero rows stay zero."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norm, np.float32(1e-12)), dtype=np.float32)


def kmeans(x: np.ndarray, k: int, rng: np.random.Generator, niter: int = 20,
           init_sample: int = 10_000) -> tuple[np.ndarray, np.ndarray]:
    """k-means of the rows of ``x`` into ``k`` clusters: (labels (n,) int64, centroids (k, d)
    float32). Seeds: k-means++ on a random sample of ``max(init_sample, 3 k)`` rows (as
    scikit-learn's ``MiniBatchKMeans`` seeds on a sample; TypiClust's code uses scikit-learn),
    then ``niter`` Lloyd iterations of faiss ``Kmeans`` on every row. Labels come from one exact
    nearest-centroid search, so the clusters are the Voronoi cells of the centroids."""
    centroids = core_kmeans(x, k, rng, niter=niter, init="k-means++", init_sample=init_sample)
    return nearest_centroids(x, centroids)[:, 0], centroids


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


class Sketch:
    """Rows in ``r + 1`` dimensions whose distances bound the true ones from below:
    ``z_i = [(x_i - mu) V, |res_i|]`` with ``V`` the top ``r`` principal directions (of a sample)
    and ``res_i`` the part of ``x_i - mu`` outside them. Then
    ``|x_i - x_j|^2 = |P(x_i - x_j)|^2 + |res_i - res_j|^2 >= |P(x_i - x_j)|^2 + (|res_i| - |res_j|)^2``
    (orthogonal projection, then the reverse triangle inequality), i.e. ``|z_i - z_j| <= |x_i - x_j|``.
    Pairs farther than delta in the sketch are never compared in full."""

    def __init__(self, x: np.ndarray, r: int, sample: int = 10_000):
        n, d = x.shape
        pick = np.sort(np.random.default_rng(0).choice(n, min(n, sample), replace=False))
        xs = x[pick].astype(np.float64)
        self.mu = xs.mean(axis=0)
        xs -= self.mu
        _, vecs = np.linalg.eigh(xs.T @ xs)
        self.v = np.ascontiguousarray(vecs[:, ::-1][:, :r])  # (d, r), float64
        z = np.empty((n, r + 1), dtype=np.float32)
        step = max(1, _BLOCK_ELEMENTS // d)
        for s in range(0, n, step):
            xc = x[s:s + step].astype(np.float64) - self.mu
            p = xc @ self.v
            z[s:s + step, :r] = p
            z[s:s + step, r] = np.sqrt(np.maximum((xc * xc).sum(axis=1) - (p * p).sum(axis=1), 0.0))
        self.z = z
        # float32 rounding of z against the float64 values: distances may shrink by this much
        self.slack = 8.0 * (r + 2) * float(np.finfo(np.float32).eps) * float(np.abs(z).max(initial=0.0))


def _pair_within(x: np.ndarray, x_sq: np.ndarray, i: np.ndarray, j: np.ndarray, d2_cut: float) -> np.ndarray:
    """Mask of the pairs ``(i[k], j[k])`` with ``|x_i - x_j|^2 < d2_cut`` (the same float32
    expression as ``_within``), in bounded chunks."""
    out = np.empty(len(i), dtype=bool)
    step = max(1, _BLOCK_ELEMENTS // x.shape[1])
    for s in range(0, len(i), step):
        a, b = i[s:s + step], j[s:s + step]
        dot = np.einsum("ij,ij->i", x[a], x[b])
        out[s:s + step] = dot - 0.5 * x_sq[b] > 0.5 * (x_sq[a] - d2_cut)
    return out


def ball_graph(x: np.ndarray, delta: float, max_edges: int, who: str, sketch_dims: int | None = None,
               max_degree: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Out-neighbour CSR ``(ptr, idx)`` of ``x -> y`` iff ``|x - y| < delta`` over the rows of
    ``x`` (every row is its own neighbour when ``delta > 0``), each row's ``max_degree`` nearest
    only when given (``cap_nearest``). Raises ``GraphTooLarge`` naming ``who`` when the graph
    would exceed ``max_edges`` edges.

    Candidate pairs come from a ``Sketch`` of ``sketch_dims`` dimensions (default: 64 when
    ``d >= 256`` and n >= 4096, else none), pruned further by ``Cells`` built on the sketch;
    only pairs within delta in the sketch are compared in full."""
    n, d = x.shape
    if sketch_dims is None:
        sketch_dims = _SKETCH_DIMS if d >= 4 * _SKETCH_DIMS and n >= _SKETCH_MIN_N else 0
    x_sq = (x.astype(np.float64) ** 2).sum(axis=1).astype(np.float32)
    d2_cut = np.float32(delta) ** 2
    if sketch_dims:
        sk = Sketch(x, int(sketch_dims))
        z, slack = sk.z, sk.slack
    else:
        z, slack = x, 0.0
    z_sq = (z.astype(np.float64) ** 2).sum(axis=1).astype(np.float32)
    # a pair is a candidate when its sketch distance is below delta plus rounding margins
    scale = 1.0 + float(np.sqrt(z_sq.max(initial=0.0)))
    margin = 1e-5 * scale + 2.0 * slack
    z_cut = np.float32((delta + margin) ** 2) if sketch_dims else d2_cut
    cells = Cells(z)
    srcs, dsts, total = [], [], 0
    for c in range(len(cells.start)):
        rows = cells.order[cells.start[c]:cells.end[c]]
        if len(rows) == 0:
            continue
        za = z[rows]
        reach = cells.lower_bound(za, c).min(axis=0) < delta + margin
        cand = np.concatenate([cells.order[cells.start[b]:cells.end[b]] for b in np.flatnonzero(reach)])
        yb, yb_sq = z[cand], z_sq[cand]
        step = max(1, _BLOCK_ELEMENTS // max(1, len(cand)))
        for s in range(0, len(rows), step):
            r = rows[s:s + step]
            i, j = _within(za[s:s + step], z_sq[r], yb, yb_sq, z_cut)
            if sketch_dims and len(i) > _PAIR_FRACTION * len(r) * len(cand):
                # the sketch prunes little here: one full product is cheaper than gathered pairs
                i, j = _within(x[r], x_sq[r], x[cand], x_sq[cand], d2_cut)
                src, dst = r[i].astype(np.int64), cand[j].astype(np.int64)
            else:
                src, dst = r[i].astype(np.int64), cand[j].astype(np.int64)
                if sketch_dims:
                    keep = _pair_within(x, x_sq, src, dst, d2_cut)
                    src, dst = src[keep], dst[keep]
            if max_degree is not None and len(src) > max_degree and np.bincount(src - r.min()).max() > max_degree:
                keep = cap_nearest(src, dst, _pair_d2(x, x_sq, src, dst), max_degree)
                src, dst = src[keep], dst[keep]
            total += len(src)
            if total > max_edges:
                raise too_many_edges(who, max_edges, delta, n, max_degree)
            srcs.append(src)
            dsts.append(dst)
    src = np.concatenate(srcs) if srcs else np.empty(0, np.int64)
    dst = np.concatenate(dsts) if dsts else np.empty(0, np.int64)
    return edges_to_csr(n, src, dst)


def edges_to_csr(n: int, src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Out-neighbour CSR ``(ptr, idx)`` of the edges ``src -> dst`` (targets sorted per row;
    ``idx`` int32 below 2**31 rows). One sort of ``src * n + dst`` keys: numpy sorts int64 values
    many times faster than it lexsorts or argsorts (0.65 s against 11 s for 2 * 10^7 edges)."""
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(src, minlength=n), out=ptr[1:])
    key = src.astype(np.int64) * n
    key += dst
    key.sort()
    key %= n
    return ptr, key.astype(np.int32 if n < 2**31 else np.int64)


def _pair_d2(x: np.ndarray, x_sq: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """``|x_i - x_j|^2`` of the pairs (float32, the graphs' expression), in bounded chunks."""
    out = np.empty(len(i), dtype=np.float32)
    step = max(1, _BLOCK_ELEMENTS // x.shape[1])
    for s in range(0, len(i), step):
        a, b = i[s:s + step], j[s:s + step]
        out[s:s + step] = x_sq[a] - 2.0 * (np.einsum("ij,ij->i", x[a], x[b]) - 0.5 * x_sq[b])
    return out


def cap_nearest(src: np.ndarray, dst: np.ndarray, d2: np.ndarray, max_degree: int) -> np.ndarray:
    """Mask of the edges ``src -> dst`` to keep: each source's ``max_degree`` shortest (``d2``;
    ties: the smaller ``dst`` first). One sort of int64 keys (source, then the bits of ``d2``,
    which order as its value for floats >= 0) gives each source's ``max_degree``-th distance;
    only the sources with a tie there are sorted again. No argsort of all edges: numpy sorts
    values many times faster."""
    bits = np.maximum(d2, 0).astype(np.float32).view(np.uint32).astype(np.int64)
    key = src.astype(np.int64) << 32
    key |= bits
    key.sort()
    s = key >> 32
    first = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    over = first[np.diff(np.r_[first, len(s)]) > max_degree]
    limit = np.full(int(src.max(initial=-1)) + 1, np.iinfo(np.int64).max)
    limit[s[over]] = key[over + max_degree - 1] & 0xFFFFFFFF
    del key, s
    keep = bits <= limit[src]
    counts = np.bincount(src[keep], minlength=len(limit))
    if (counts > max_degree).any():  # ties at the last place: keep the smaller targets
        tied = np.flatnonzero(keep & (counts > max_degree)[src])
        tied = tied[np.lexsort((dst[tied], bits[tied], src[tied]))]
        ts = src[tied]
        start = np.flatnonzero(np.r_[True, ts[1:] != ts[:-1]])
        rank = np.arange(len(ts)) - np.repeat(start, np.diff(np.r_[start, len(ts)]))
        keep[tied[rank >= max_degree]] = False
    return keep


class GraphTooLarge(ConfigError):
    """The delta-ball graph would exceed ``max_edges`` (``too_many_edges`` names the remedies)."""


def too_many_edges(who: str, max_edges: int, delta: float, n: int, max_degree: int | None = None,
                   estimate: float | None = None) -> GraphTooLarge:
    got = f"about {estimate:,.0f}" if estimate is not None else "more than that"
    fits = max_edges // max(1, n)
    if max_degree is not None:
        cap = f"max_degree={max_degree} still allows {max_degree * n:,}: pass a smaller max_degree, "
    elif fits >= 2:
        cap = (f"pass max_degree=K to keep each point's K nearest neighbours within delta "
               f"(K <= {fits:,} fits), ")
    else:
        cap = "pass "
    return GraphTooLarge(
        f"{who}: the delta-ball graph must fit in max_edges={max_edges:,} edges, got {got} at "
        f"delta={delta:.4g} (n={n:,}) instead; {cap}a smaller delta (or none, to choose it by "
        f"purity) or raise max_edges"
    )


def other_label_pass(x: np.ndarray, labels: np.ndarray, rows: np.ndarray | None = None, radius: float = 0.0,
                     device: torch.device | str = "cpu", max_edges: int = 1 << 62, who: str = "probcover",
                     max_degree: int | None = None):
    """One exact pass over ``rows`` x all rows (bounded blocks, torch on ``device``, no TF32):
    ``m`` (float64, per row: distance to the nearest row with another label, inf if none) and
    the pairs within ``radius``: ``(src, dst, d2)`` with ``d2 = |x_src - x_dst|^2 < radius^2``
    (float32, the same expression as ``ball_graph``), each row's ``max_degree`` nearest only
    when given. ProbCover gets its purity radius and, when that radius is below ``radius``, its
    graph from this one pass (the nearest ``max_degree`` within ``radius`` that lie within a
    smaller radius are the nearest ``max_degree`` within that one)."""
    from activecrl.strategies.coreset import _exact_fp32

    device = torch.device(device)
    n = x.shape[0]
    rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64)
    by_label = np.argsort(labels, kind="stable")
    lab_sorted = labels[by_label]
    bounds = np.flatnonzero(np.r_[True, lab_sorted[1:] != lab_sorted[:-1], True])
    seg_label = torch.as_tensor(lab_sorted[bounds[:-1]], device=device)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
    x_sq = (xt.double() ** 2).sum(dim=1).float()
    xs, xs_half = xt[torch.as_tensor(by_label, device=device)], 0.5 * x_sq[torch.as_tensor(by_label, device=device)]
    lab_t = torch.as_tensor(labels, device=device)
    by_label_t = torch.as_tensor(by_label, device=device)
    r2 = float(np.float32(radius) ** 2)
    m = np.empty(len(rows))
    srcs, dsts, d2s, total = [], [], [], 0
    step = max(1, _BLOCK_ELEMENTS // max(1, n))
    with _exact_fp32(device):
        for s in range(0, len(rows), step):
            r = torch.as_tensor(rows[s:s + step], device=device)
            t = xt[r] @ xs.T
            t -= xs_half[None, :]  # t = a.b - |b|^2 / 2, so |a - b|^2 = |a|^2 - 2 t
            best = torch.stack([t[:, a:b].max(dim=1).values for a, b in zip(bounds[:-1], bounds[1:])], dim=1)
            best[lab_t[r][:, None] == seg_label[None, :]] = float("-inf")
            a_sq = x_sq[r]
            m2 = (a_sq - 2.0 * best.max(dim=1).values).clamp_min_(0)
            m[s:s + step] = m2.double().sqrt().cpu().numpy()
            if radius > 0:
                i, j = torch.nonzero(t > (0.5 * (a_sq - r2))[:, None], as_tuple=True)
                src, dst, d2 = r[i].cpu().numpy(), by_label_t[j].cpu().numpy(), (a_sq[i] - 2.0 * t[i, j]).cpu().numpy()
                if max_degree is not None and len(i) > max_degree and \
                        int(torch.bincount(i).max()) > max_degree:
                    keep = cap_nearest(src, dst, d2, max_degree)
                    src, dst, d2 = src[keep], dst[keep], d2[keep]
                total += len(src)
                if total > max_edges:
                    raise too_many_edges(who, max_edges, radius, n, max_degree)
                d2s.append(d2)
                srcs.append(src)
                dsts.append(dst)
    cat = (lambda parts, dt: np.concatenate(parts) if parts else np.empty(0, dt))
    return m, cat(srcs, np.int64), cat(dsts, np.int64), cat(d2s, np.float32)
