"""Uncertainty sampling from one eval pass: entropy, least confidence, margin.

The ranking is that of float64 scores (``log_softmax`` in float64), so near-equal probabilities
that float32 rounding would merge into ties keep their order. Higher score = more uncertain;
``select_top`` breaks exact ties by pool position.

Computing every score in float64 is what made these strategies slow (a float64 copy of the
logits, float64 ``exp``/``log``), so ``select`` ranks in two steps: a float32 pass over the
whole pool (one thread, in cache-sized blocks of rows) with a bound on its error,
then the float64 scores of only the rows that can still reach the top ``budget`` (float32 score
within twice that bound of the ``budget``-th largest). The float64 ranking of those rows is
the float64 ranking of the pool, so the picks and their order are those of the float64 scores
of every row.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch

from activecrl.strategies.base import QueryContext, Strategy, register_strategy, select_top

_U32 = 2.0 ** -24  # float32 unit roundoff
_BLOCK = 1 << 18  # elements per block of rows: the block's temporaries stay in cache
_SMALL = 32  # up to this many classes a block is transposed: reductions then run along rows of the pool


# ---------------------------------------------------------------------- float64 scores (the reference)
def _log_probs(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.to(torch.float64), dim=1)


def entropy_scores(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of softmax(logits), float64."""
    logp = _log_probs(logits)
    return -(logp.exp() * logp).sum(dim=1)


def _least_conf_scores(logits: torch.Tensor) -> torch.Tensor:
    return -_log_probs(logits).max(dim=1).values.exp()


def _margin_scores(logits: torch.Tensor) -> torch.Tensor:
    p = _log_probs(logits).exp()
    if p.shape[1] < 2:
        return torch.zeros(p.shape[0], dtype=torch.float64)
    top2 = p.topk(2, dim=1).values
    return -(top2[:, 0] - top2[:, 1])


# ---------------------------------------------------------------------- float32 scores (the filter)
# Each takes a float32 block ``z`` of logits with the classes along ``dim`` and returns the
# block's scores on the float64 scores' scale. ``y = z - max`` is <= 0, ``S = sum exp(y)`` is in [1, C].
def _shifted(z: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    y = z - z.amax(dim=dim, keepdim=True)
    return y, y.exp()


def _entropy32(z: torch.Tensor, dim: int) -> torch.Tensor:
    y, e = _shifted(z, dim)
    s = e.sum(dim=dim)
    return s.log() - e.mul_(y).sum(dim=dim) / s  # log S - sum p*y


def _least_conf32(z: torch.Tensor, dim: int) -> torch.Tensor:
    y = z - z.amax(dim=dim, keepdim=True)
    return -1.0 / y.exp_().sum(dim=dim)  # -max p


def _margin32(z: torch.Tensor, dim: int) -> torch.Tensor:
    """``-(p1 - p2) = (exp(y2) - 1) / S``, ``y2`` the runner-up of ``y`` (0 when the maximum is tied)."""
    if dim == 0:  # few class rows: a running top-2 costs three vector operations per class
        y, e = _shifted(z, 0)
        first, second = y[0].clone(), torch.full_like(y[0], -math.inf)
        for row in y[1:]:
            torch.maximum(second, torch.minimum(first, row), out=second)
            torch.maximum(first, row, out=first)
        return second.exp_().sub_(1.0).div_(e.sum(dim=0))
    top, where = z.max(dim=1, keepdim=True)
    y = z - top
    s = y.exp().sum(dim=1)
    return y.scatter_(1, where, -math.inf).amax(dim=1).exp_().sub_(1.0).div_(s)  # one maximum out


def _float32_scores(kernel, z: torch.Tensor) -> torch.Tensor:
    """``kernel`` on cache-sized blocks of rows of the float32 logits ``z``."""
    n, c = z.shape
    out = torch.empty(n, dtype=torch.float32)
    rows = max(1, _BLOCK // c)
    for start in range(0, n, rows):
        block = z[start:start + rows]
        if c <= _SMALL:  # a few classes: reduce across class rows of contiguous pool columns
            out[start:start + rows] = kernel(block.t().contiguous(), 0)
        else:
            out[start:start + rows] = kernel(block, 1)
    return out


def _error_bound(z: np.ndarray, rounded: bool) -> float:
    """Bound on |float32 score - float64 score| for the three scores, C = number of classes.

    Rounding in exp, the sums (at most C terms), log and the division is at most about
    ``(C + 3) u`` relative to the terms, each score being at most ``log C`` (entropy) or 1
    (the others) times those; rounding ``z - max`` moves each ``y`` by ``u |y|``, which moves a
    score by at most ``C u`` since ``p |y| <= 1/e``. ``8 (C + 6) u (1 + 2 log C)`` covers both
    with a factor of more than 2 to spare. Logits given in float64 are rounded to float32 first:
    each moves by ``u |z|``, and the sum of the scores' derivatives in the logits is at most
    ``2 log C`` (entropy) or 2, hence the second term.
    """
    c = z.shape[1]
    bound = 8 * (c + 6) * _U32 * (1 + 2 * math.log(c))
    if rounded:
        bound += 4 * _U32 * float(np.abs(z).max()) * (1 + math.log(c))
    return bound


def _candidates(approx: np.ndarray, k: int, bound: float) -> np.ndarray:
    """Positions whose float64 score may be among the ``k`` largest, in pool order.

    The ``k`` rows of largest float32 score have float64 scores >= t - bound (t: the k-th largest
    float32 score), so the k-th largest float64 score is too, and every row that reaches it has a
    float32 score >= t - 2 bound.
    """
    t = float(np.partition(approx, approx.size - k)[approx.size - k])
    low = np.nextafter(np.float32(t - 2 * bound), np.float32(-np.inf))  # rounded down, never up
    return np.flatnonzero(approx >= low)


@contextlib.contextmanager
def _one_torch_thread():
    """Run torch on one thread: a pass over the pool is a few milliseconds, and waking the
    intra-op thread pool for each operation costs more than it saves, most of all on a busy CPU."""
    n = torch.get_num_threads()
    if n > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if n > 1:
            torch.set_num_threads(n)


class _ScoreStrategy(Strategy):
    _exact = staticmethod(entropy_scores)  # (n, C) logits -> (n,) float64, higher = query first
    _float32 = staticmethod(_entropy32)

    def scores(self, context: QueryContext) -> torch.Tensor:
        """Float64 score of every pool row (higher = query first); ``select`` ranks by these."""
        return self._exact(context.pool.logits)

    def select(self, context: QueryContext, budget: int, rng: np.random.Generator) -> np.ndarray:
        logits = context.pool.logits.detach().cpu()
        n, c = logits.shape
        k = min(budget, n)
        if c < 2 or k == 0:
            return select_top(self.scores(context), context.pool.indices, budget)
        with _one_torch_thread():
            approx = _float32_scores(self._float32, logits.to(torch.float32)).numpy()
            bound = _error_bound(logits.numpy(), rounded=logits.dtype != torch.float32)
            if not (np.isfinite(bound) and np.isfinite(approx).all()):  # inf/NaN logits: select_top's NaN rule
                return select_top(self.scores(context), context.pool.indices, budget)
            cand = _candidates(approx, k, bound)
            exact = self._exact(logits[torch.from_numpy(cand)])  # row by row the arithmetic of the whole pool
        return select_top(exact, context.pool.indices.numpy()[cand], k)


@register_strategy("entropy")
class EntropyStrategy(_ScoreStrategy):
    """Highest predictive entropy ``-sum_k p_k log p_k``."""


@register_strategy("least_conf")
class LeastConfidenceStrategy(_ScoreStrategy):
    """Lowest maximum class probability (the paper's sampling for CRL-softmax)."""

    _exact = staticmethod(_least_conf_scores)
    _float32 = staticmethod(_least_conf32)


@register_strategy("margin")
class MarginStrategy(_ScoreStrategy):
    """Smallest gap between the two most probable classes, ``p1 - p2``."""

    _exact = staticmethod(_margin_scores)
    _float32 = staticmethod(_margin32)
