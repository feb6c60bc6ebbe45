"""Post-hoc temperature scaling (Guo et al. 2017), for every method.

A random ``holdout_fraction`` of the training split is held out (seeded by the training seed;
:func:`holdout_split`), the method trains on the rest, and one temperature T is fitted by
minimising the NLL of the method's held-out predictions (:func:`fit_temperature`); test
probabilities become ``softmax(log p / T)`` (for a single model that is ``softmax(logits / T)``).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

from activecrl.core.errors import ConfigError

logger = logging.getLogger(__name__)


def _nll_at(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    return float(np.mean(logsumexp(z, axis=1) - z[np.arange(labels.size), labels]))


def fit_temperature(logits, labels, *, bounds: tuple[float, float] = (0.01, 100.0)) -> float:
    """The single temperature T minimising ``NLL(softmax(logits / T), labels)``.

    The NLL is convex in 1/T, so a bounded 1-D search on log T (scipy's Brent) finds the optimum.
    ``logits`` may be any log-probabilities (e.g. the log of an ensemble's averaged probabilities).
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    if z.ndim != 2 or y.ndim != 1 or y.shape[0] != z.shape[0] or z.shape[0] == 0:
        raise ConfigError(f"logits must be (n, K) and labels (n,) with n > 0, got shapes {z.shape} and {y.shape} "
                          "instead")
    if not np.all(np.isfinite(z)):
        raise ConfigError("logits must be finite to fit a temperature; clip log-probabilities first")
    y = y.astype(np.int64)
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    res = minimize_scalar(lambda log_t: _nll_at(z, y, math.exp(log_t)), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-6})
    t = float(math.exp(res.x))
    if min(abs(res.x - lo), abs(res.x - hi)) < 1e-3:
        logger.warning("fitted temperature %.4g lies at the edge of the search range %s", t, bounds)
    return t


def apply_temperature(log_probs, temperature: float) -> np.ndarray:
    """``softmax(log_probs / T)`` row-wise, float64."""
    z = np.asarray(log_probs, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def log_probs(probs: np.ndarray) -> np.ndarray:
    """``log p`` clipped away from -inf: the logits of a method that only has probabilities."""
    return np.log(np.clip(probs, 1e-300, None))


def holdout_split(fraction: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(held-out indices, indices to train on) of an ``n``-image training split, both sorted."""
    n_hold = int(round(fraction * n))
    if n_hold < 1 or n - n_hold < 2:
        raise ConfigError(f"holdout_fraction {fraction} of {n} training images leaves {n_hold} "
                          f"held out and {n - n_hold} to train on; both must be >= 1 (train >= 2)")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[:n_hold]), np.sort(perm[n_hold:])


def temperature_scale(method, data, holdout: np.ndarray, labels: np.ndarray, logits: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Fit T on ``method``'s predictions of the ``holdout`` rows of ``data`` (true ``labels``) and
    apply it to the test ``logits``: (probs, logits / T, what to record)."""
    hold_probs, hold_logits = method.predictive(data, torch.from_numpy(holdout))
    hold_logits = log_probs(hold_probs) if hold_logits is None else hold_logits
    temperature = fit_temperature(hold_logits, labels)
    logger.info("temperature scaling: T = %.4f fitted on %d held-out training images", temperature, holdout.size)
    info = {"temperature": temperature, "holdout_nll_before": _nll_at(hold_logits, labels, 1.0),
            "holdout_nll_after": _nll_at(hold_logits, labels, temperature)}
    return apply_temperature(logits, temperature), logits / temperature, info
