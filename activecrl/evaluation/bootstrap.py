"""Bootstrap intervals for the test metrics: how much a number moves with the test sample.

``bootstrap_metrics(probs, labels, confidence, n_resamples, seed)`` draws ``n_resamples`` test sets
of the same size with replacement (seeded) and recomputes every metric of ``METRIC_NAMES`` on each;
``percentile_intervals`` turns the draws into 95 % percentile intervals (2.5th and 97.5th
percentile, linear interpolation: what fd-shifts' ``evaluate_ci`` reports; Efron & Tibshirani
1993, ch. 13).

Vectorised, not one ``classification_metrics`` call per resample: a resample is fully described by
how often it drew each test sample, so each chunk of resamples becomes a count matrix ``C`` (B, n)
and every metric a matrix product or a cumulative sum over it:

- accuracy, NLL, Brier: per-sample terms, ``C @ term / n``;
- ECE: the 15 confidence bins are fixed per sample, so ``C @ onehot(bin) * (hit - conf)``;
- AURC, E-AURC, AUGRC, FPR-95%-TPR, AUPR-Err: the samples are sorted by confidence once; the
  resample's tie groups are the original groups with a non-zero count, so the per-group counts
  (``np.add.reduceat`` over the sorted columns) and their cumulative sums give each resample's
  risk-coverage and precision-recall curves exactly (a group drawn zero times adds a zero-width
  step). Each value equals ``classification_metrics`` on ``probs[idx]`` (tests check this).

Measured in ``bench/bench_bootstrap.py`` against the loop over ``classification_metrics``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from activecrl.core.errors import ConfigError, DataError
from activecrl.core.io import atomic_write_json
from activecrl.evaluation.metrics import METRIC_NAMES, _NLL_EPS, _optimal_aurc, _probs_labels, _real_1d, classification_metrics
from activecrl.core.validate import check_int

logger = logging.getLogger(__name__)

__all__ = ["bootstrap_metrics", "resample_indices", "paired_difference", "percentile_intervals", "bootstrap_intervals", "check_n_resamples", "rescore_run",
           "rescore_runs"]

_CHUNK = 64  # resamples per count matrix: 64 x 10,000 float64 = 5 MB
_ECE_BINS = 15


def check_n_resamples(n_resamples, option: str = "n_resamples") -> int:
    return check_int(option, n_resamples, 1, " (the number of bootstrap resamples, e.g. 1000)")


class _Prepared:
    """Per-sample terms and the confidence order, computed once for all resamples."""

    def __init__(self, probs, labels, confidence=None):
        p, y = _probs_labels(probs, labels)
        n = y.size
        self.n = n
        pred = p.argmax(axis=1)
        self.hit = (pred == y).astype(np.float64)
        self.nll = -np.log(np.maximum(p[np.arange(n), y], _NLL_EPS))
        onehot = np.zeros_like(p)
        onehot[np.arange(n), y] = 1.0
        self.brier = np.sum((p - onehot) ** 2, axis=1)
        maxp = p.max(axis=1)
        edges = np.arange(_ECE_BINS + 1) / _ECE_BINS  # the bins of metrics.ece
        bins = np.clip(np.searchsorted(edges, maxp, side="left") - 1, 0, _ECE_BINS - 1)
        # (n, 15) matrix: sample i's (hit - conf) in its bin's column
        self.ece_terms = np.zeros((n, _ECE_BINS))
        self.ece_terms[np.arange(n), bins] = self.hit - maxp
        conf = maxp if confidence is None else _real_1d(confidence, "confidence", n=n, match="probs")
        # highest confidence first; group starts where the confidence changes
        self.order = np.argsort(-conf, kind="stable")
        sorted_conf = conf[self.order]
        self.starts = np.flatnonzero(np.r_[True, sorted_conf[1:] != sorted_conf[:-1]])
        self.err_sorted = 1.0 - self.hit[self.order]


def _chunk_metrics(prep: _Prepared, counts: np.ndarray) -> dict[str, np.ndarray]:
    """All metrics for a (B, n) matrix of draw counts (each row sums to n)."""
    n = prep.n
    out = {"accuracy": counts @ prep.hit / n, "nll": counts @ prep.nll / n, "brier": counts @ prep.brier / n}
    out["ece"] = np.abs(counts @ prep.ece_terms).sum(axis=1) / n
    c_sorted = counts[:, prep.order]
    g_n = np.add.reduceat(c_sorted, prep.starts, axis=1)  # (B, G) draws per tie group, top first
    g_err = np.add.reduceat(c_sorted * prep.err_sorted, prep.starts, axis=1)
    cum_n, cum_err = np.cumsum(g_n, axis=1), np.cumsum(g_err, axis=1)
    n_err = cum_err[:, -1]
    n_pos = n - n_err
    with np.errstate(invalid="ignore", divide="ignore"):
        # AURC: sum over groups of width * selective risk (0/0 only where the width is 0)
        risk = np.where(cum_n > 0, cum_err / np.where(cum_n > 0, cum_n, 1), 0.0)
        out["aurc"] = np.sum(g_n / n * risk, axis=1)
        # AUGRC: trapezoids between (cum_n/n, cum_err/n), starting at (0, 0)
        prev_err = np.concatenate([np.zeros((len(counts), 1)), cum_err[:, :-1]], axis=1)
        out["augrc"] = np.sum(g_n / n * (cum_err + prev_err) / (2 * n), axis=1)
        error_rate = n_err / n
        optimal = np.array([_optimal_aurc(float(r)) for r in error_rate])
        out["eaurc"] = out["aurc"] - optimal
        # FPR at 95 % TPR: first group (from the top) where 20 TP >= 19 P; correct = positive
        cum_pos = cum_n - cum_err
        j = np.argmax(20 * cum_pos >= 19 * n_pos[:, None], axis=1)
        fpr = cum_err[np.arange(len(counts)), j] / np.where(n_err > 0, n_err, 1)
        out["fpr95"] = np.where(n_err == 0, 0.0, np.where(n_pos == 0, 1.0, fpr))
        # AUPR-Err: errors positive, lowest confidence first; AP = sum_k (R_k - R_{k-1}) P_k over groups
        r_n, r_err = np.cumsum(g_n[:, ::-1], axis=1), np.cumsum(g_err[:, ::-1], axis=1)
        precision = np.where(r_n > 0, r_err / np.where(r_n > 0, r_n, 1), 0.0)
        ap = np.sum(g_err[:, ::-1] * precision, axis=1) / np.where(n_err > 0, n_err, 1)
        out["aupr_err"] = np.where(n_err == 0, 0.0, ap)
    return out


def bootstrap_info(n_resamples: int, seed: int) -> dict:
    """How ``ci95`` was made (metrics.json ``bootstrap``)."""
    return {"n_resamples": int(n_resamples), "seed": int(seed), "level": 0.95,
            "method": "percentile intervals over test sets resampled with replacement, from predictions.npz"}


def _index_chunks(n: int, n_resamples: int, seed: int):
    rng = np.random.default_rng(seed)
    for start in range(0, n_resamples, _CHUNK):
        yield rng.integers(0, n, size=(min(_CHUNK, n_resamples - start), n))


def resample_indices(n: int, n_resamples: int, seed: int = 0) -> np.ndarray:
    """The (n_resamples, n) test indices ``bootstrap_metrics`` draws for a test set of size n."""
    return np.concatenate(list(_index_chunks(n, check_n_resamples(n_resamples), seed)))


def bootstrap_metrics(probs, labels, confidence=None, *, n_resamples: int = 1000,
                      seed: int = 0) -> dict[str, np.ndarray]:
    """``{metric: (n_resamples,) values}`` over test sets drawn with replacement.

    Same arguments and conventions as :func:`activecrl.evaluation.metrics.classification_metrics` (ranking
    metrics use ``confidence``, default the max probability). The draws depend only on ``seed``,
    ``n_resamples`` and the test-set size, so two models scored on the same test set with the same
    seed see the same resamples (a paired bootstrap: subtract the returned arrays).
    """
    n_resamples = check_n_resamples(n_resamples)
    prep = _Prepared(probs, labels, confidence)
    parts: dict[str, list[np.ndarray]] = {m: [] for m in METRIC_NAMES}
    for idx in _index_chunks(prep.n, n_resamples, seed):
        b = len(idx)
        # draw counts per row: one bincount over row-offset indices
        counts = np.bincount((idx + prep.n * np.arange(b)[:, None]).ravel(),
                             minlength=b * prep.n).reshape(b, prep.n).astype(np.float64)
        for name, values in _chunk_metrics(prep, counts).items():
            parts[name].append(values)
    return {m: np.concatenate(parts[m]) for m in METRIC_NAMES}


def percentile_intervals(draws: dict[str, np.ndarray], level: float = 0.95) -> dict[str, list[float]]:
    """``{metric: [low, high]}``: the central ``level`` percentile interval of each metric's draws."""
    if not 0 < level < 1:
        raise ConfigError(f"level must be in (0, 1), e.g. 0.95, got {level!r} instead")
    tail = (1 - level) / 2 * 100
    return {m: [float(v) for v in np.percentile(values, [tail, 100 - tail])] for m, values in draws.items()}


def bootstrap_intervals(probs, labels, confidence=None, *, n_resamples: int = 1000,
                        seed: int = 0) -> dict[str, list[float]]:
    """95 % percentile bootstrap intervals of every metric: ``{metric: [low, high]}`` (``ci95``)."""
    return percentile_intervals(bootstrap_metrics(probs, labels, confidence, n_resamples=n_resamples, seed=seed))


def rescore_runs(run_dirs, *, n_resamples: int | None = None, seed: int | None = None) -> list[dict]:
    """:func:`rescore_run` for several runs: every run is checked and computed before any file is written."""
    done = [_rescored(d, n_resamples=n_resamples, seed=seed) for d in run_dirs]
    for path, blob in done:
        atomic_write_json(path, blob)
    return [blob for _, blob in done]


def rescore_run(run_dir, *, n_resamples: int | None = None, seed: int | None = None) -> dict:
    """Update an ``activecrl train`` run's ``metrics.json`` from its ``predictions.npz``.

    Adds every metric of ``METRIC_NAMES`` the file lacks (one added to activecrl after the run, such
    as ``augrc``) and, with ``n_resamples``, the bootstrap ``ci95`` (seed: the run's training seed
    unless given). Metrics already stored are kept as they are; the recomputation is checked
    against them (``predictions.npz`` holds float32 probabilities, so ECE/NLL/Brier may differ in the
    7th digit) and a larger disagreement is an error, since then the file is not the run's.
    Returns the new ``metrics.json`` content; the file is replaced atomically, only at the end.
    """
    return rescore_runs([run_dir], n_resamples=n_resamples, seed=seed)[0]


def _rescored(run_dir, *, n_resamples: int | None, seed: int | None):
    run_dir = Path(run_dir)
    metrics_path, pred_path = run_dir / "metrics.json", run_dir / "predictions.npz"
    if n_resamples is not None:
        n_resamples = check_n_resamples(n_resamples, "--bootstrap")
    for path in (metrics_path, pred_path):
        if not path.is_file():
            raise DataError(f"{run_dir} must be an `activecrl train` run folder with {path.name}, but {path} is "
                            "missing; pass the --out folder of a finished train run (predictions.npz is written "
                            "by every run; copies without it cannot be rescored)")
    try:
        blob = json.loads(metrics_path.read_text())
        with np.load(pred_path) as z:
            probs, labels = z["probs"], z["labels"]
            confidence = z["confidence"] if "confidence" in z.files else None
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
        raise DataError(f"{run_dir} holds an unreadable metrics.json or predictions.npz ({exc})") from None
    stored = blob.get("metrics") or {}
    fresh = classification_metrics(probs, labels, confidence)
    for name, value in stored.items():
        if name in fresh and abs(fresh[name] - value) > 1e-5 * max(1.0, abs(value)):
            raise DataError(f"{pred_path} does not reproduce the stored {name} ({value} stored, {fresh[name]} "
                            "recomputed); the predictions do not belong to this metrics.json")
    added = [m for m in METRIC_NAMES if m not in stored]
    merged = {**stored, **{m: fresh[m] for m in added}}
    blob["metrics"] = {**{m: merged[m] for m in METRIC_NAMES}, **merged}  # METRIC_NAMES order first
    if added:
        logger.info("%s: added %s", run_dir, ", ".join(added))
    if n_resamples is not None:
        if seed is None:
            seed = int(((blob.get("config") or {}).get("train") or {}).get("seed", 0))
        blob["ci95"] = bootstrap_intervals(probs, labels, confidence, n_resamples=n_resamples, seed=seed)
        blob["bootstrap"] = bootstrap_info(n_resamples, seed)
    return metrics_path, blob


def paired_difference(run_a, run_b, *, n_resamples: int = 1000, seed: int = 0) -> dict[str, dict]:
    """Paired bootstrap of ``metric(a) - metric(b)`` for two train runs scored on the same test set.

    Both runs' ``predictions.npz`` are resampled with the same indices, so test-set noise common
    to both cancels. Returns ``{metric: {"diff", "ci95", "significant"}}`` where significant means
    the 95 % percentile interval of the difference excludes 0. This is test-set noise only: it
    says nothing about another training seed.
    """
    arrays = []
    for run in (run_a, run_b):
        path = Path(run) / "predictions.npz"
        if not path.is_file():
            raise DataError(f"{run} must be an `activecrl train` run folder with predictions.npz, but {path} is missing")
        with np.load(path) as z:
            arrays.append((z["probs"], z["labels"], z["confidence"] if "confidence" in z.files else None))
    if not np.array_equal(arrays[0][1], arrays[1][1]):
        raise DataError(f"{run_a} and {run_b} must be scored on the same test set (same labels in the same order) "
                        "for a paired bootstrap, got different label arrays instead")
    draws = [bootstrap_metrics(*a, n_resamples=n_resamples, seed=seed) for a in arrays]
    point = [classification_metrics(*a) for a in arrays]
    out = {}
    for m in METRIC_NAMES:
        low, high = (float(v) for v in np.percentile(draws[0][m] - draws[1][m], [2.5, 97.5]))
        out[m] = {"diff": point[0][m] - point[1][m], "ci95": [low, high], "significant": bool(low > 0 or high < 0)}
    return out
