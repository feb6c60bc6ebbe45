"""Core-set sampling: k-center greedy on penultimate features (Sener & Savarese, ICLR 2018).

Centers start as the labeled set; each pick is the pool point farthest from its nearest center,
which then becomes a center. Only a vector ``min_dist`` (n_pool,) of squared distances to the
nearest center is kept, never an n x n or pool x labeled matrix:

* initialisation: nearest labeled point of every pool point, with faiss ``IndexFlatL2`` (k=1) on
  the CPU or chunked matrix products on a GPU;
* each pick: ``argmax(min_dist)``, then one matrix-vector product with the new center updates
  ``min_dist = minimum(min_dist, |x|^2 + |c|^2 - 2 x.c)`` (squared norms precomputed).

Memory is O(n_pool * d) (the features themselves, once, on the device) plus O(n_pool).
Squared Euclidean distances leave the argmax unchanged. Picked points are marked with -inf so
they are never picked again, even when every remaining distance is 0 (duplicate features).
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np
import torch

from .base import QueryContext, Strategy, register_strategy

logger = logging.getLogger(__name__)

__all__ = ["CoresetStrategy", "k_center_greedy", "nearest_center_sq_dist"]

_CHUNK_ELEMENTS = 1 << 24  # 16M floats (64 MB) per chunk of the GPU initialisation


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


def nearest_center_sq_dist(x: torch.Tensor, centers: torch.Tensor, device: torch.device | str = "cpu",
                           use_faiss: bool | None = None) -> torch.Tensor:
    """Squared distance of every row of ``x`` to its nearest row of ``centers``, (n,) float32 on
    ``device``; memory O((n + m) * d) plus a bounded chunk. ``use_faiss`` (default: on the CPU)
    picks faiss ``IndexFlatL2``; otherwise chunked matrix products run on ``device``."""
    device = torch.device(device)
    n, d = x.shape
    if centers.shape[0] == 0:
        return torch.full((n,), float("inf"), device=device)
    if use_faiss is None:
        use_faiss = device.type == "cpu"
    if use_faiss:
        import faiss  # lazily: only core-set needs it

        index = faiss.IndexFlatL2(d)
        index.add(np.ascontiguousarray(centers.detach().cpu().numpy(), dtype=np.float32))
        dist, _ = index.search(np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32), 1)
        return torch.from_numpy(dist[:, 0]).clamp_min_(0).to(device)
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
    x = pool_features.to(device, torch.float32).contiguous()
    n = x.shape[0]
    k = min(int(budget), n)
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    with _exact_fp32(device):
        sq = (x * x).sum(dim=1)
        if labeled_features is not None and labeled_features.shape[0] > 0:
            min_dist = nearest_center_sq_dist(x, labeled_features, device).to(device)
            first = None
        else:
            first = int(rng.integers(n))
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


@register_strategy("coreset")
class CoresetStrategy(Strategy):
    """k-center greedy on penultimate features, starting from the labeled set as centers."""

    needs_features = True

    def select(self, context: QueryContext, budget: int, rng: np.random.Generator) -> np.ndarray:
        n = len(context.pool)
        if budget >= n:
            return context.pool.indices.numpy().copy()
        labeled = context.labeled.features if context.labeled is not None else None
        positions = k_center_greedy(context.pool.features, labeled, budget, rng, context.device)
        return context.pool.indices.numpy()[positions]
