"""BADGE: k-means++ seeding on last-layer gradient embeddings (Ash, Zhang, Krishnamurthy,
Langford and Agarwal, "Deep Batch Active Learning by Diverse, Uncertain Gradient Lower
Bounds", ICLR 2020; public code: github.com/JordanAsh/badge,
``query_strategies/badge_sampling.py``).

The gradient embedding of pool point ``i`` is the gradient of the cross-entropy at the
predicted class ``y_i = argmax p_i`` with respect to the last layer's weights:
``g_i = (p_i - e_{y_i}) (x) f_i`` (``f_i`` the penultimate features; the authors' code stores
``e - p``, the same distances). BADGE picks the budget by k-means++ seeding on the ``g_i``: the
first centre is the point of largest ``|g_i|`` (as their code does), each next one is drawn
with probability proportional to its squared distance to the nearest centre chosen so far
(D^2 sampling, here with the strategy's ``rng``). The labeled set plays no part (as in theirs).

``g_i`` has ``C * d`` entries (CIFAR-100 with a 512-d ResNet: 51,200), so the ``n x C d`` matrix
is never built. With ``q_i = p_i - e_{y_i}``, ``<g_i, g_j> = <q_i, q_j> <f_i, f_j>``, so

    |g_i - g_c|^2 = |q_i|^2 |f_i|^2 + |q_c|^2 |f_c|^2 - 2 <q_i, q_c> <f_i, f_c>,

two matrix-vector products per pick (``Q q_c`` and ``F f_c``): time O(k n (C + d)) instead of
O(k n C d), memory O(n (C + d)).

Differences from the authors' code: sampling uses ``rng`` (one uniform draw per pick, inverse
CDF) instead of ``scipy.stats.rv_discrete``; picked points have distance 0 and can never be
drawn again; when every remaining point coincides with a centre (all distances 0, where their
code stops in the debugger) the rest are drawn uniformly from the unpicked points.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from activecrl.core.errors import ConfigError

from activecrl.strategies.base import QueryContext, Strategy, register_strategy

logger = logging.getLogger(__name__)

__all__ = ["BadgeStrategy", "gradient_factors", "badge_kmeans_pp", "d2_sample"]


def gradient_factors(logits: torch.Tensor, features: torch.Tensor, dtype=torch.float32
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Q, F)`` with ``Q = softmax(logits) - onehot(argmax)`` (n, C) and ``F = features`` (n, d):
    the gradient embedding of row i is ``Q[i] (x) F[i]`` (outer product, flattened C-major)."""
    p = torch.softmax(logits.to(torch.float64), dim=1)
    q = p.clone()
    q[torch.arange(len(p)), p.argmax(dim=1)] -= 1.0
    return q.to(dtype).contiguous(), features.to(dtype).contiguous()


def d2_sample(weights: np.ndarray, rng: np.random.Generator) -> int | None:
    """One index drawn with probability ``weights / weights.sum()`` (float64, one ``rng.random()``
    per call, inverse CDF); zero-weight indices are never drawn; None when the sum is 0."""
    cdf = np.cumsum(weights, dtype=np.float64)
    total = cdf[-1]
    if not total > 0:
        return None
    i = int(np.searchsorted(cdf, rng.random() * total, side="right"))
    i = min(i, len(cdf) - 1)
    while weights[i] <= 0:  # only by rounding at the very end of the CDF
        i -= 1
    return i


def badge_kmeans_pp(q: torch.Tensor, f: torch.Tensor, k: int, rng: np.random.Generator,
                    device: torch.device | str = "cpu") -> np.ndarray:
    """Positions of ``min(k, n)`` k-means++ seeds on the rows ``q[i] (x) f[i]``, in pick order,
    from the factors alone (module docstring)."""
    device = torch.device(device)
    n = q.shape[0]
    k = min(int(k), n)
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    q, f = q.to(device), f.to(device)
    g_sq = (q * q).sum(dim=1) * (f * f).sum(dim=1)  # |g_i|^2
    picks = np.empty(k, dtype=np.int64)
    picks[0] = int(torch.argmax(g_sq))  # first maximum, as np.argmax in the authors' code
    on_cpu = device.type == "cpu"
    if on_cpu:  # element-wise work in numpy (torch's threaded small kernels cost more here)
        g_sq_np = g_sq.numpy()
        d2 = np.full(n, np.inf, dtype=g_sq_np.dtype)
        qd_t, fd_t = torch.empty(n, dtype=q.dtype), torch.empty(n, dtype=q.dtype)
        qd, fd = qd_t.numpy(), fd_t.numpy()
    else:
        d2 = torch.full((n,), float("inf"), dtype=q.dtype, device=device)
    picked = np.zeros(n, dtype=bool)
    for i in range(k):
        c = int(picks[i])
        picked[c] = True
        if on_cpu:
            torch.mv(q, q[c], out=qd_t)
            torch.mv(f, f[c], out=fd_t)
            qd *= fd
            qd *= -2.0
            qd += g_sq_np
            qd += g_sq_np[c]
            np.maximum(qd, 0.0, out=qd)
            np.minimum(d2, qd, out=d2)
            d2[c] = 0.0
        else:
            new = (g_sq + g_sq[c] - 2.0 * torch.mv(q, q[c]) * torch.mv(f, f[c])).clamp_min_(0)
            torch.minimum(d2, new, out=d2)
            d2[c] = 0.0
        if i + 1 == k:
            break
        w = d2 if on_cpu else d2.double().cpu().numpy()
        nxt = d2_sample(w, rng)
        if nxt is None:  # every remaining point sits on a centre
            rest = np.flatnonzero(~picked)
            picks[i + 1:] = rng.choice(rest, size=k - i - 1, replace=False)
            logger.info("badge: all gradient embeddings coincide with a centre after %d picks; "
                        "%d drawn at random", i + 1, k - i - 1)
            break
        picks[i + 1] = nxt
    return picks


@register_strategy("badge")
class BadgeStrategy(Strategy):
    """k-means++ seeding on last-layer gradient embeddings (Ash et al., ICLR 2020).

    Reads the pool's logits and penultimate features of the current model (the gradient is
    taken with respect to the layer that maps those features to those logits); never
    ``context.embeddings``.
    """

    needs_features = True

    def select(self, context: QueryContext, budget: int, rng: np.random.Generator) -> np.ndarray:
        who = self._label()
        logits, feats = context.pool.logits, context.pool.features
        if logits.shape[1] < 2:
            raise ConfigError(f"{who} needs class logits (at least 2 columns) of the pool, got "
                              f"shape {tuple(logits.shape)} instead")
        for what, t in (("logits", logits), ("features", feats)):
            if not torch.isfinite(t).all():
                bad = int((~torch.isfinite(t).all(dim=1)).sum())
                raise ConfigError(f"{who}: pool {what} must be finite, got {bad} row(s) with NaN or "
                                  f"inf instead; the model diverged or the features are corrupt")
        q, f = gradient_factors(logits, feats)
        positions = badge_kmeans_pp(q, f, min(budget, len(context.pool)), rng, context.device)
        return context.pool.indices.numpy()[positions]
