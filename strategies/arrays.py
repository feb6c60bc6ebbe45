"""One call from plain arrays to the rows to label: ``query("entropy", 100, logits=logits)``.

The active-learning loop builds a ``QueryContext`` of ``PoolOutputs``; a notebook has numpy
arrays or torch tensors with one row per sample. ``query`` checks them all before any work
(shapes, finite values, probabilities, the labeled rows and the pool, the budget, what the
named strategy reads), builds the same ``QueryContext`` with row numbers as indices, and
returns the strategy's picks as row numbers: the two paths give the same picks.
"""

from __future__ import annotations

import numpy as np
import torch

from activecrl.core.errors import ConfigError
from activecrl.core.validate import check_int
from activecrl.inference.outputs import PoolOutputs

from activecrl.strategies.base import QueryContext, Strategy, get_strategy

__all__ = ["query"]

_SHAPES = {"logits": "(n, n_classes)", "probs": "(n, n_classes)", "features": "(n, d)", "embeddings": "(n, d)"}
_SUM_TOL = 1e-3  # rows of probabilities may sum to 1 within this (they are renormalised)


def query(strategy: str | type | Strategy, budget: int, *, logits=None, probs=None, features=None,
          embeddings=None, labeled=None, pool=None, n_classes: int | None = None,
          rng: np.random.Generator | int | None = None, device: str | torch.device = "cpu",
          **params) -> np.ndarray:
    """Row numbers of the ``budget`` samples to label next, best first for scoring strategies.

    Every array has one row per sample (numpy or torch, on any device): ``logits`` or ``probs``
    (n, n_classes) for the strategies that read class scores (entropy, least_conf, margin,
    badge); ``features`` (n, d) for core-set, BADGE, TypiClust and ProbCover, which TypiClust
    and ProbCover take from ``embeddings`` (n, d) instead when given. ``labeled``: row numbers
    already labeled (core-set, TypiClust and ProbCover read their rows). ``pool``: the
    candidate rows (default: every row not in ``labeled``); ties go to the earlier position in
    ``pool``. ``n_classes``: the class count when no logits or probs give it (ProbCover's
    default number of clusters). ``strategy``: a registered name, ``"module:Class"``, a
    ``Strategy`` class or instance, with its parameters as ``**params``. ``rng``: a
    ``numpy.random.Generator`` or a seed, for the strategies that draw.

    Returns an int64 array of ``budget`` distinct row numbers from ``pool``. Bad input raises
    ``ConfigError`` saying which argument is wrong and how; MC dropout and BALD sample the
    model, which this call does not take: use ``Strategy.query`` with a ``QueryContext``.
    """
    chosen = get_strategy(strategy, **params)
    budget = check_int("budget", budget, 0)
    if logits is not None and probs is not None:
        raise ConfigError("logits and probs must not both be given, got both instead; pass one of them")
    arrays = {name: _matrix(name, x) for name, x in
              (("logits", logits), ("probs", probs), ("features", features), ("embeddings", embeddings))
              if x is not None}
    _check_needs(chosen, arrays)
    n = _row_count(arrays, pool)
    if "probs" in arrays:
        _check_probs(arrays["probs"])
    labeled = _row_indices("labeled", [] if labeled is None else labeled, n)
    if pool is None:
        pool = _complement(labeled, n)
    else:
        pool = _row_indices("pool", pool, n)
        _check_disjoint(pool, labeled)
    if budget > len(pool):
        raise ConfigError(f"budget must be at most the {len(pool)} rows of the pool, got {budget} instead; "
                          f"lower the budget")
    context = QueryContext(pool=_outputs(arrays, pool), labeled=_outputs(arrays, labeled) if len(labeled) else None,
                           embeddings=arrays.get("embeddings"), n_classes=_class_count(arrays, n_classes),
                           device=device)
    return chosen.query(context, budget, rng)


def _matrix(name: str, x) -> np.ndarray:
    """``x`` as a finite 2-D float array: float64 stays float64 (scores keep their precision)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = (x if x.dtype == torch.float64 else x.float()).numpy()
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise ConfigError(f"{name} must be a numeric {_SHAPES[name]} array, got dtype {x.dtype} instead")
    if x.ndim != 2 or x.shape[1] < 1:
        raise ConfigError(f"{name} must be a 2-D {_SHAPES[name]} array with at least one column, "
                          f"got shape {x.shape} instead")
    x = x.astype(np.float64 if x.dtype == np.float64 else np.float32, copy=False)
    if not np.isfinite(x).all():
        bad = ~np.isfinite(x).all(axis=1)
        raise ConfigError(f"{name} must be finite, got {int(bad.sum())} row(s) with NaN or inf instead "
                          f"(e.g. row {int(np.flatnonzero(bad)[0])})")
    return x


def _row_count(arrays: dict[str, np.ndarray], pool) -> int:
    """The rows the arrays share; without arrays (random sampling) no bound, and ``pool`` is needed."""
    if not arrays:
        if pool is None:
            raise ConfigError("pool must be given when no arrays are, got None instead; pass pool=<row "
                              "numbers> or the arrays the strategy reads")
        return np.iinfo(np.int64).max
    (first, x), *rest = arrays.items()
    for name, y in rest:
        if len(y) != len(x):
            raise ConfigError(f"{name} must have one row per row of {first} ({len(x)} rows), "
                              f"got {len(y)} rows instead")
    return len(x)


def _check_probs(p: np.ndarray) -> None:
    if (p < 0).any():
        row = int(np.flatnonzero((p < 0).any(axis=1))[0])
        raise ConfigError(f"probs must be non-negative, got a negative value in row {row} instead; "
                          f"pass logits=... for unnormalised scores")
    off = np.abs(p.sum(axis=1, dtype=np.float64) - 1.0)
    if (off > _SUM_TOL).any():
        row = int(np.argmax(off))
        raise ConfigError(f"probs must sum to 1 in every row (within {_SUM_TOL:g}), got row {row} summing "
                          f"to {float(p[row].sum(dtype=np.float64)):.6g} instead; pass logits=... for "
                          f"unnormalised scores")


def _row_indices(name: str, x, n: int) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.size == 0:
        return np.empty(0, dtype=np.int64)
    if x.ndim != 1 or not np.issubdtype(x.dtype, np.integer):
        hint = "; for a boolean mask pass np.flatnonzero(mask)" if x.dtype == bool else ""
        raise ConfigError(f"{name} must be a 1-D array of row numbers (integers), got shape {x.shape} "
                          f"and dtype {x.dtype} instead{hint}")
    x = x.astype(np.int64, copy=False)
    outside = (x < 0) | (x >= n)
    if outside.any():
        raise ConfigError(f"{name} must hold row numbers in [0, {n}), got {int(outside.sum())} outside "
                          f"instead (e.g. {x[outside][:5].tolist()})")
    s = np.sort(x)
    repeated = s[1:][s[1:] == s[:-1]]
    if repeated.size:
        raise ConfigError(f"{name} must not repeat a row, got {repeated.size} repeat(s) instead "
                          f"(e.g. {np.unique(repeated)[:5].tolist()})")
    return x


def _complement(labeled: np.ndarray, n: int) -> np.ndarray:
    keep = np.ones(n, dtype=bool)
    keep[labeled] = False
    return np.flatnonzero(keep)


def _check_disjoint(pool: np.ndarray, labeled: np.ndarray) -> None:
    both = pool[np.isin(pool, labeled)] if len(labeled) else pool[:0]
    if both.size:
        raise ConfigError(f"pool and labeled must not share rows, got {both.size} in both instead "
                          f"(e.g. {both[:5].tolist()}); leave the labeled rows out of pool, or omit pool "
                          f"(it defaults to every row not labeled)")


def _check_needs(strategy: Strategy, arrays: dict[str, np.ndarray]) -> None:
    who = strategy._label()
    if strategy.requires_dropout:
        raise ConfigError(f"{who} samples the trained model with dropout, which strategies.query does not "
                          f"take; call Strategy.query with a QueryContext(pool=..., model=..., data=...) instead")
    if strategy.needs_logits and "logits" not in arrays and "probs" not in arrays:
        raise ConfigError(f"{who} reads class scores: logits or probs must be an (n, n_classes) array, "
                          f"got neither instead")
    if not strategy.needs_features or "features" in arrays:
        return
    if strategy.uses_embeddings:
        if "embeddings" not in arrays:
            raise ConfigError(f"{who} reads an embedding: features or embeddings must be an (n, d) array, "
                              f"got neither instead")
        return
    unread = " (it does not read embeddings: pass them as features)" if "embeddings" in arrays else ""
    raise ConfigError(f"{who} reads features: features must be an (n, d) array, got None instead{unread}")


def _class_count(arrays: dict[str, np.ndarray], n_classes) -> int | None:
    n_classes = check_int("n_classes", n_classes, 1, none_ok=True)
    scores = arrays.get("logits", arrays.get("probs"))
    if scores is not None and n_classes is not None and n_classes != scores.shape[1]:
        raise ConfigError(f"n_classes must match the {scores.shape[1]} columns of the class scores, "
                          f"got {n_classes} instead; omit n_classes")
    return n_classes if n_classes is not None else (None if scores is None else scores.shape[1])


def _outputs(arrays: dict[str, np.ndarray], rows: np.ndarray) -> PoolOutputs:
    """The ``PoolOutputs`` of ``rows``: their row numbers as indices; probabilities become float64
    log-probabilities, no class scores become zero columns (as the loop passes them)."""
    every = len(rows) == len(next(iter(arrays.values()), rows)) and np.array_equal(rows, np.arange(len(rows)))

    def take(name):  # every row in order (no labeled set): the caller's array itself, no copy
        return arrays[name] if every else np.take(arrays[name], rows, axis=0)

    features = take("features") if "features" in arrays else None
    if "probs" in arrays:
        return PoolOutputs.from_probs(take("probs"), indices=rows, features=features)
    logits = take("logits") if "logits" in arrays else np.empty((len(rows), 0), np.float32)
    return PoolOutputs(indices=rows, logits=logits, features=features)
