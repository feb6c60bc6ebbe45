"""Core-set sampling: k-center greedy on penultimate features (Sener & Savarese, ICLR 2018).

Centers start as the labeled set; each pick is the pool point farthest from its nearest center,
which then becomes a center. Only a vector ``min_dist`` (n_pool,) of squared distances to the
nearest center is kept, never an n x n or pool x labeled matrix:

* initialisation: nearest labeled point of every pool point, with faiss ``IndexFlatL2`` (k=1) on
  the CPU, faiss's GPU index on CUDA when faiss has GPU support (the ``gpu`` extra), else chunked
  matrix products on the GPU (:func:`nearest_center_backend`);
* each pick: ``argmax(min_dist)``, then one matrix-vector product with the new center updates
  ``min_dist = minimum(min_dist, |x|^2 + |c|^2 - 2 x.c)`` (squared norms precomputed).

On the CPU, pools of ``_PRUNE_MIN_N`` points or more are first split into about sqrt(n) groups
of nearby points (one assignment to random pivots; each group gets its centroid ``p`` and a
radius ``R`` bounding ``|x - p|``), stored as contiguous blocks of one permuted copy. The
triangle inequality ``|x - c| >= |c - p| - R`` then skips work that cannot change anything,
with margins that cover float32 rounding (from the same initial distances the loop picks
exactly what the plain loop picks; the grouped search finds the initial distances up to float32
rounding, so exact near-ties may come out in another order):

* a pick ``c`` leaves a group untouched when ``(|c - p| - R)^2`` exceeds the group's largest
  ``min_dist`` (plus the rounding bound): only the other groups' rows enter the mat-vec;
* the nearest-labeled search of a group only looks at labeled points that can beat the labeled
  point nearest to its centroid (``|l - p| - R <= R + min_l |l - p|``).

On features with cluster structure (penultimate features of a trained classifier) most groups
are skipped; on structureless features nothing is, and the cost is the plain loop's plus the
partition (one product with sqrt(n) pivots) and O(n) bookkeeping per pick.

Memory is O(n_pool * d) (the features on the device; on the CPU path one permuted copy more)
plus O(n_pool). Squared Euclidean distances leave the argmax unchanged. Picked points are marked
with -inf so they are never picked again, even when every remaining distance is 0 (duplicate
features); ties go to the first position in the pool, as ``np.argmax`` does.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import torch

from activecrl.strategies.base import QueryContext, Strategy, register_strategy

logger = logging.getLogger(__name__)

__all__ = ["CoresetStrategy", "k_center_greedy", "nearest_center_backend", "nearest_center_sq_dist"]

_CHUNK_ELEMENTS = 1 << 24  # 16M floats (64 MB) per chunk of the GPU initialisation
_PRUNE_MIN_N = 4096  # CPU pools at least this big are grouped (below, the plain loop is as fast)
_GROUPS_PER_SQRT_N = 1.0  # about sqrt(n) groups
_MAX_GROUPS = 1024
_MIN_SKIP_ROWS = 256  # skipped stretches shorter than this are computed with their neighbours
_EPS32 = float(np.finfo(np.float32).eps)
_EPS64 = float(np.finfo(np.float64).eps)


@contextlib.contextmanager
def _exact_fp32(device: torch.device):
    """Keep float32 matmuls in full precision (TF32 would blur distances) on CUDA."""
    if device.type != "cuda":
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def nearest_center_backend(device: torch.device | str) -> str:
    """Which search finds the nearest labeled point for features on ``device``:

    * ``"faiss-gpu"``: CUDA features and a faiss built with GPU support that sees a GPU
      (``pip install "activecrl[gpu]"`` installs faiss-gpu where PyPI has it);
    * ``"torch"``: CUDA (or another accelerator) otherwise: chunked matrix products on the device;
    * ``"faiss-cpu"``: CPU features (faiss-cpu is a core dependency).
    """
    device = torch.device(device)
    if device.type == "cpu":
        return "faiss-cpu"
    if device.type == "cuda" and _faiss_has_gpu():
        return "faiss-gpu"
    return "torch"


def _faiss_has_gpu() -> bool:
    try:
        import faiss  # lazily: only core-set needs it
    except ImportError:
        return False
    # faiss-cpu builds have no GPU classes; a GPU build on a machine without a GPU sees none
    return hasattr(faiss, "StandardGpuResources") and hasattr(faiss, "GpuIndexFlatL2") and faiss.get_num_gpus() > 0


def _faiss_nearest(x: torch.Tensor, centers: torch.Tensor, gpu: torch.device | None) -> np.ndarray:
    """Exact nearest-center squared distances with faiss ``IndexFlatL2`` (k=1), on GPU ``gpu`` if given."""
    import faiss

    d = x.shape[1]
    if gpu is not None:
        config = faiss.GpuIndexFlatConfig()
        config.device = gpu.index if gpu.index is not None else torch.cuda.current_device()
        resources = faiss.StandardGpuResources()  # scratch memory; must outlive the index
        index = faiss.GpuIndexFlatL2(resources, d, config)
    else:
        index = faiss.IndexFlatL2(d)
    index.add(np.ascontiguousarray(centers.detach().cpu().numpy(), dtype=np.float32))
    dist, _ = index.search(np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32), 1)
    return dist[:, 0]


def nearest_center_sq_dist(x: torch.Tensor, centers: torch.Tensor, device: torch.device | str = "cpu",
                           use_faiss: bool | None = None) -> torch.Tensor:
    """Squared distance of every row of ``x`` to its nearest row of ``centers``, (n,) float32 on
    ``device``; memory O((n + m) * d) plus a bounded chunk. ``use_faiss=None`` picks the search
    with :func:`nearest_center_backend`; True forces faiss (its GPU index when ``device`` is CUDA
    and faiss has GPU support), False chunked matrix products on ``device``."""
    device = torch.device(device)
    n, d = x.shape
    if centers.shape[0] == 0:
        return torch.full((n,), float("inf"), device=device)
    backend = nearest_center_backend(device)
    if use_faiss is not None:
        backend = ("faiss-gpu" if backend == "faiss-gpu" else "faiss-cpu") if use_faiss else "torch"
    logger.info("core-set nearest-center search: %s (%d x %d points, d=%d)", backend, n, centers.shape[0], d)
    if backend != "torch":
        dist = _faiss_nearest(x, centers, device if backend == "faiss-gpu" else None)
        return torch.from_numpy(dist).clamp_min_(0).to(device)
    xs = x.to(device, torch.float32)
    cs = centers.to(device, torch.float32)
    c_sq = (cs * cs).sum(dim=1)
    out = torch.empty(n, device=device)
    rows = max(1, _CHUNK_ELEMENTS // max(1, cs.shape[0]))
    with _exact_fp32(device):
        for start in range(0, n, rows):
            xc = xs[start:start + rows]
            d2 = (xc * xc).sum(dim=1, keepdim=True) + c_sq[None, :] - 2.0 * (xc @ cs.T)
            out[start:start + rows] = d2.min(dim=1).values
    return out.clamp_min_(0)


def k_center_greedy(pool_features: torch.Tensor, labeled_features: torch.Tensor | None, budget: int,
                    rng: np.random.Generator, device: torch.device | str = "cpu") -> np.ndarray:
    """Positions (into ``pool_features``) of ``min(budget, n)`` k-center greedy picks, in pick order.

    With no labeled points the first center is a pool point drawn with ``rng``.
    """
    device = torch.device(device)
    x = pool_features.detach().to(device, torch.float32).contiguous()
    n = x.shape[0]
    k = min(int(budget), n)
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    has_labeled = labeled_features is not None and labeled_features.shape[0] > 0
    first = None if has_labeled else int(rng.integers(n))
    with _exact_fp32(device):
        sq = (x * x).sum(dim=1)
        if device.type == "cpu" and n >= _PRUNE_MIN_N:
            logger.info("core-set nearest-center search: faiss-cpu, grouped (%d pool points, d=%d)", n, x.shape[1])
            return _k_center_grouped(x, sq, labeled_features if has_labeled else None, k, first)
        if has_labeled:
            min_dist = nearest_center_sq_dist(x, labeled_features, device).to(device)
        else:
            min_dist = torch.full((n,), float("inf"), device=device)
        if device.type == "cpu":
            return _greedy_cpu(x, sq, min_dist, k, first)
        return _greedy_torch(x, sq, min_dist, k, first)


def _greedy_torch(x, sq, min_dist, k, first) -> np.ndarray:
    """The greedy loop on an accelerator: no host synchronisation per pick."""
    picks = torch.empty(k, dtype=torch.long, device=x.device)
    for i in range(k):
        j = torch.argmax(min_dist) if first is None or i > 0 else torch.tensor(first, device=x.device)
        picks[i] = j
        d_new = (sq + sq[j] - 2.0 * torch.mv(x, x[j])).clamp_min_(0)
        torch.minimum(min_dist, d_new, out=min_dist)
        min_dist[j] = float("-inf")  # picked: never again, even if all the rest are 0
    return picks.cpu().numpy()


def _greedy_cpu(x, sq, min_dist, k, first) -> np.ndarray:
    """The greedy loop on the CPU: the matrix-vector product through torch (BLAS, threaded), the
    O(n) element-wise updates in numpy, single-threaded: torch's threaded element-wise kernels
    pay a thread wake-up per call, which dominates on a busy machine."""
    xt = x
    sq = sq.numpy()
    md = np.ascontiguousarray(min_dist.numpy(), dtype=np.float32)
    dot_t = torch.empty(x.shape[0], dtype=torch.float32)
    dot = dot_t.numpy()  # shares memory with dot_t
    picks = np.empty(k, dtype=np.int64)
    for i in range(k):
        j = int(np.argmax(md)) if first is None or i > 0 else first  # first maximal position on ties
        picks[i] = j
        torch.mv(xt, xt[j], out=dot_t)
        dot *= -2.0
        dot += sq
        dot += sq[j]
        np.maximum(dot, 0.0, out=dot)
        np.minimum(md, dot, out=md)
        md[j] = -np.inf  # picked: never again, even if all the rest are 0
    return picks


# ------------------------------------------------------------------ grouped CPU path (pruning)
@contextlib.contextmanager
def _faiss_threads(n: int):
    """faiss searches on small blocks: one OpenMP thread (team start-up dominates otherwise)."""
    import faiss

    old = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(old)


def _sq_dist_err(d: int, max_sq: float) -> float:
    """Bound on the float32 rounding error of ``|x|^2 + |c|^2 - 2 x.c`` (dot products of length
    ``d``; both squared norms at most ``max_sq``), with a factor 4 to spare."""
    return 4.0 * (2 * d + 8) * _EPS32 * max_sq


class _Groups:
    """The pool split into groups of nearby rows, each a contiguous block of ``xp``.

    ``perm[i]`` is the pool position of row ``i`` of ``xp``; group ``g`` is rows
    ``start[g]:end[g]``, with centroid ``center[g]`` (float32 values, held in float64) and
    ``radius[g] >= |x - center[g]|`` for each of its rows (rounding included). Groups are laid
    out along a nearest-neighbour chain of their pivots, so neighbouring groups tend to be
    adjacent blocks and one mat-vec covers several.
    """

    def __init__(self, x: torch.Tensor, n_groups: int):
        n, d = x.shape
        xn = x.numpy()
        # local generator: the grouping changes the speed, never the picks
        pivots = x[torch.from_numpy(np.sort(np.random.default_rng(0).choice(n, n_groups, replace=False)))]
        p_sq = (pivots * pivots).sum(dim=1)
        label = np.empty(n, dtype=np.int64)
        rows = max(1, _CHUNK_ELEMENTS // n_groups)
        for s in range(0, n, rows):
            score = x[s:s + rows] @ pivots.T
            label[s:s + rows] = score.mul_(-2.0).add_(p_sq).argmin(dim=1).numpy()
        rank = np.empty(n_groups, dtype=np.int64)
        rank[_chain_order(pivots.numpy().astype(np.float64))] = np.arange(n_groups)
        label = rank[label]
        self.perm = np.argsort(label, kind="stable")
        counts = np.bincount(label, minlength=n_groups)
        counts = counts[counts > 0]
        self.end = np.cumsum(counts)
        self.start = self.end - counts
        self.xp = np.take(xn, self.perm, axis=0)  # (n, d) float32, C-contiguous
        self.center = np.empty((len(counts), d))
        self.radius = np.empty(len(counts))
        slack = 1.0 + 2.0 * (d + 4) * _EPS32  # float32 rounding of the squared radius
        for g, (s, e) in enumerate(zip(self.start.tolist(), self.end.tolist())):
            block = self.xp[s:e]
            c = block.sum(axis=0) / np.float32(e - s)  # any center will do: radius is measured from it
            diff = block - c
            self.center[g] = c
            self.radius[g] = np.sqrt(float(np.einsum("ij,ij->i", diff, diff).max()) * slack)
        self.center_sq = (self.center * self.center).sum(axis=1)

    def center_dist(self, points: np.ndarray, max_sq: float) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds on ``|point - center|`` (float64), shape (len(points), groups)."""
        p = points.astype(np.float64)
        d2 = (p * p).sum(axis=1)[:, None] + self.center_sq[None, :] - 2.0 * (p @ self.center.T)
        err = 4.0 * (points.shape[1] + 2) * _EPS64 * (max_sq + float(self.center_sq.max()))
        return np.sqrt(np.maximum(d2 - err, 0.0)), np.sqrt(d2 + err)


def _chain_order(p: np.ndarray) -> np.ndarray:
    """A nearest-neighbour chain through the rows of ``p`` (greedy, from row 0)."""
    g = p.shape[0]
    sq = (p * p).sum(axis=1)
    dist = sq[:, None] + sq[None, :] - 2.0 * (p @ p.T)
    order = np.empty(g, dtype=np.int64)
    seen = np.zeros(g, dtype=bool)
    cur = 0
    for i in range(g):
        order[i] = cur
        seen[cur] = True
        if i + 1 < g:
            row = np.where(seen, np.inf, dist[cur])
            cur = int(np.argmin(row))
    return order


def _nearest_center_grouped(groups: _Groups, centers: torch.Tensor, err: float, max_sq: float,
                            stats: dict | None = None) -> np.ndarray:
    """``nearest_center_sq_dist`` for the rows of ``groups.xp``: each group searches only the
    centers that can be nearest to one of its rows. ``err`` bounds the rounding of a squared
    distance, so a skipped center's distance is larger than the one found, rounding included."""
    import faiss

    c = np.ascontiguousarray(centers.detach().cpu().numpy(), dtype=np.float32)
    m, d = c.shape
    n_groups = len(groups.start)
    cand = np.empty((m, n_groups), dtype=bool)
    lo_all = []
    u_hi = np.full(n_groups, np.inf)
    rows = max(1, _CHUNK_ELEMENTS // (8 * max(n_groups, d)))
    for s in range(0, m, rows):  # bounded float64 temporaries
        lo, hi = groups.center_dist(c[s:s + rows], max_sq)
        lo_all.append(lo)
        np.minimum(u_hi, hi.min(axis=0), out=u_hi)
    r = groups.radius
    reach = (r + u_hi) ** 2 + 2.0 * err  # squared distance of some center to any row, plus rounding
    for s, lo in zip(range(0, m, rows), lo_all):
        gap = lo - r[None, :]
        cand[s:s + rows] = ~((gap > 0) & (gap * gap > reach[None, :]))
    del lo_all
    out = np.empty(groups.xp.shape[0], dtype=np.float32)
    sizes = groups.end - groups.start
    searched = float((cand.sum(axis=0) * sizes).sum()) / max(1, m * groups.xp.shape[0])
    if stats is not None:
        stats["init_fraction"] = searched if searched <= 0.5 else 1.0
    if searched > 0.5:  # little to skip: one search
        index = faiss.IndexFlatL2(d)
        index.add(c)
        out[:] = index.search(groups.xp, 1)[0][:, 0]
    else:
        with _faiss_threads(1):
            for g, (s, e) in enumerate(zip(groups.start.tolist(), groups.end.tolist())):
                index = faiss.IndexFlatL2(d)
                index.add(c[cand[:, g]])
                out[s:e] = index.search(groups.xp[s:e], 1)[0][:, 0]
    np.maximum(out, 0.0, out=out)
    return out


def _k_center_grouped(x: torch.Tensor, sq: torch.Tensor, labeled: torch.Tensor | None, k: int,
                      first: int | None, stats: dict | None = None,
                      min_dist: np.ndarray | None = None) -> np.ndarray:
    """k-center greedy on the CPU with groups (module docstring): the picks of ``_greedy_cpu``.
    ``min_dist`` (pool order), when given, replaces the nearest-labeled search (tests)."""
    n, d = x.shape
    groups = _Groups(x, min(_MAX_GROUPS, n, max(1, int(_GROUPS_PER_SQRT_N * np.sqrt(n)))))
    perm, start, end, r = groups.perm, groups.start, groups.end, groups.radius
    sqp = sq.numpy()[perm]
    max_sq = float(sqp.max()) if n else 0.0
    if min_dist is not None:
        md = np.ascontiguousarray(np.asarray(min_dist, dtype=np.float32)[perm])
    elif labeled is not None:
        lab_f = labeled.detach().cpu().float()
        lab_sq = float((lab_f * lab_f).sum(dim=1).max())
        md = _nearest_center_grouped(groups, labeled, _sq_dist_err(d, max(max_sq, lab_sq)), max(max_sq, lab_sq),
                                     stats)
    else:
        md = np.full(n, np.inf, dtype=np.float32)
    err = _sq_dist_err(d, max_sq)
    xt = torch.from_numpy(groups.xp)
    dot_t = torch.empty(n, dtype=torch.float32)
    dot = dot_t.numpy()  # shares memory with dot_t
    inv = np.empty(n, dtype=np.int64)
    inv[perm] = np.arange(n)
    picks = np.empty(k, dtype=np.int64)
    n_groups = len(start)
    rows_done = 0
    for i in range(k):
        if i == 0 and first is not None:
            j = int(inv[first])
        else:
            j = int(np.argmax(md))
            ties = np.flatnonzero(md == md[j])
            if len(ties) > 1:  # the first maximal pool position, as the plain loop
                j = int(ties[np.argmin(perm[ties])])
        picks[i] = perm[j]
        # groups whose rows are all farther from the new center than their current min_dist
        lo, _ = groups.center_dist(groups.xp[j:j + 1], max_sq)
        gap = lo[0] - r
        top = np.maximum.reduceat(md, start).astype(np.float64)
        keep = (gap > 0) & (gap * gap > top + err)
        active = np.flatnonzero(~keep)
        if len(active) == n_groups:
            runs = [(0, n)]
        elif len(active) == 0:  # cannot happen (the pick's own group is active); kept for safety
            runs = []
        else:  # blocks of adjacent active groups; short skipped stretches are computed anyway
            # (harmless: their new distances are larger) to save calls
            brk = np.flatnonzero(start[active[1:]] - end[active[:-1]] > _MIN_SKIP_ROWS)
            runs = zip(start[active[np.r_[0, brk + 1]]].tolist(), end[active[np.r_[brk, len(active) - 1]]].tolist())
        c = xt[j]
        sq_c = sqp[j]
        for s, e in runs:
            torch.mv(xt[s:e], c, out=dot_t[s:e])
            blk = dot[s:e]
            blk *= -2.0  # the same operations, in the same order, as _greedy_cpu
            blk += sqp[s:e]
            blk += sq_c
            np.maximum(blk, 0.0, out=blk)
            np.minimum(md[s:e], blk, out=md[s:e])
            rows_done += e - s
        md[j] = -np.inf  # picked: never again, even if all the rest are 0
    if stats is not None:
        stats.update(groups=n_groups, rows_fraction=rows_done / max(1, k * n))
    return picks


@register_strategy("coreset")
class CoresetStrategy(Strategy):
    """k-center greedy on penultimate features, starting from the labeled set as centers."""

    needs_features = True
    needs_logits = False

    def select(self, context: QueryContext, budget: int, rng: np.random.Generator) -> np.ndarray:
        n = len(context.pool)
        if budget >= n:
            return context.pool.indices.numpy().copy()
        labeled = context.labeled.features if context.labeled is not None else None
        positions = k_center_greedy(context.pool.features, labeled, budget, rng, context.device)
        return context.pool.indices.numpy()[positions]
