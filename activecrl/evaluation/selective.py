"""Selective classification with guaranteed risk (SGR).

Geifman & El-Yaniv, "Selective Classification for Deep Neural Networks", NeurIPS 2017,
Algorithm 1. Given a labeled sample of ``m`` points drawn i.i.d. from the population the
classifier will run on, a confidence ``kappa`` per point and whether the classifier erred on it,
SGR searches a confidence threshold ``theta`` by binary search. For each threshold tried it
computes the selective empirical risk ``r`` (errors / points covered, ``kappa >= theta``) and its
binomial tail bound ``B*(r, delta / k, m_covered)``: the largest true risk under which seeing at
most ``r * m_covered`` errors still has probability ``delta / k`` (the exact inversion of the
binomial CDF, the one-sided Clopper-Pearson upper limit). ``delta`` is split evenly over the
``k`` thresholds the search can try, so with probability at least ``1 - delta`` every bound
computed holds at once (union bound), and the threshold returned has true selective risk at
most ``risk``.

One departure from the paper's index range: the paper searches ``z`` in ``[1, m]`` with
``ceil((z_min + z_max) / 2)`` and so never tries full coverage. Here the search runs over the
number of points covered, ``0..m`` (0 = reject everything, needs no bound), so full coverage is a
candidate; that takes ``k = ceil(log2(m + 1))`` steps, and ``delta`` is split over those ``k``.
The threshold returned is the one of largest coverage whose bound is at most ``risk`` among
those tried (any of them is covered by the union bound, and the search keeps the best).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from activecrl.core.errors import ConfigError

__all__ = ["SGRResult", "binomial_upper_bound", "sgr", "search_steps", "audit_size_needed"]


@dataclass(frozen=True)
class SGRResult:
    """The threshold SGR certified (``threshold = inf`` and coverage 0 when none could be).

    ``coverage``: fraction of the sample covered; ``n_covered``/``errors``: on the sample;
    ``empirical_risk``: errors / n_covered; ``bound``: the risk bound that holds with probability
    at least ``1 - delta`` (``nan`` when nothing is covered); ``delta_step``: delta per threshold.
    """

    threshold: float
    coverage: float
    n_covered: int
    errors: int
    empirical_risk: float
    bound: float
    risk: float
    delta: float
    delta_step: float
    steps: int

    @property
    def certified(self) -> bool:
        return self.n_covered > 0


def binomial_upper_bound(errors: int, n: int, delta: float) -> float:
    """``B*``: the largest ``b`` with ``P(Binomial(n, b) <= errors) >= delta``.

    The exact inversion of the binomial CDF: ``P(Bin(n, b) <= k) = I_{1-b}(n - k, k + 1)``, so the
    solution is the ``1 - delta`` quantile of ``Beta(k + 1, n - k)`` (1 when every point erred).
    """
    from scipy.special import betaincinv  # the Beta quantile; imported here: scipy costs ~1 s at start-up

    if n <= 0:
        raise ConfigError(f"the bound needs at least one point, got n={n} instead")
    if not 0 <= errors <= n:
        raise ConfigError(f"errors must be between 0 and n={n}, got {errors} instead")
    if errors == n:
        return 1.0
    return float(betaincinv(errors + 1, n - errors, 1.0 - delta))


def search_steps(m: int) -> int:
    """Thresholds the binary search over ``0..m`` covered points can try: ``ceil(log2(m + 1))``."""
    return max(1, math.ceil(math.log2(m + 1)))


def _check_risk_delta(risk: float, delta: float) -> None:
    if not 0 < risk < 1:
        raise ConfigError(f"--risk must be in (0, 1), got {risk} instead (e.g. --risk 0.05 for at most 5 % errors)")
    if not 0 < delta < 1:
        raise ConfigError(f"--delta must be in (0, 1), got {delta} instead (e.g. --delta 0.05 for 95 % confidence)")


def audit_size_needed(risk: float, delta: float) -> int:
    """The smallest ``m`` for which even zero errors at full coverage certify ``risk``.

    With no errors on ``m`` points the bound is ``1 - (delta / k)^(1/m)`` with
    ``k = search_steps(m)``; it is at most ``risk`` iff ``m >= ln(delta / k) / ln(1 - risk)``.
    ``k`` grows with ``m``, so the smallest such ``m`` is found by stepping up from the bound at
    ``k = 1`` (a few steps: ``k`` changes only at powers of two).
    """
    _check_risk_delta(risk, delta)
    m = max(1, math.ceil(math.log(delta) / math.log1p(-risk)))
    while binomial_upper_bound(0, m, delta / search_steps(m)) > risk:
        m = max(m + 1, math.ceil(math.log(delta / search_steps(m)) / math.log1p(-risk)))
    return m


def sgr(confidence, errors, risk: float, delta: float) -> SGRResult:
    """Algorithm 1 of Geifman & El-Yaniv (2017) on a sample: see the module docstring.

    ``confidence``: (m,) the classifier's confidence (higher = more sure); ``errors``: (m,) bool or
    0/1, whether its prediction was wrong. Returns the certified threshold: predictions with
    ``confidence >= threshold`` have risk at most ``risk`` with probability at least ``1 - delta``.
    """
    _check_risk_delta(risk, delta)
    kappa = np.asarray(confidence, dtype=np.float64).ravel()
    err = np.asarray(errors).ravel().astype(np.int64)
    if kappa.size != err.size:
        raise ConfigError(f"confidence and errors must have the same length, got {kappa.size} and {err.size} instead")
    if kappa.size == 0:
        raise ConfigError("SGR needs at least one labeled audit point, got none")
    if not np.isfinite(kappa).all():
        raise ConfigError("confidence must be finite, got NaN or infinite values instead")
    m = kappa.size
    k = search_steps(m)
    delta_step = delta / k
    order = np.argsort(-kappa, kind="stable")
    sorted_kappa = kappa[order]
    cum_err = np.cumsum(err[order])
    best = SGRResult(math.inf, 0.0, 0, 0, math.nan, math.nan, risk, delta, delta_step, k)
    lo, hi = 0, m + 1  # covering lo points is certified (lo = 0 trivially); hi points is not known to be
    while hi - lo > 1:
        z = (lo + hi) // 2
        theta = sorted_kappa[z - 1]
        # ties: the threshold covers every point as confident as the z-th
        covered = int(np.searchsorted(-sorted_kappa, -theta, side="right"))
        n_err = int(cum_err[covered - 1])
        bound = binomial_upper_bound(n_err, covered, delta_step)
        if bound <= risk:
            lo = z
            if covered > best.n_covered:
                best = SGRResult(float(theta), covered / m, covered, n_err, n_err / covered, bound, risk, delta, delta_step, k)
        else:
            hi = z
    return best
