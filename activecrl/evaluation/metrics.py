"""Evaluation metrics: accuracy, confidence ranking, calibration and OOD detection.

Every function is a pure function of array-likes (lists, numpy arrays, CPU torch tensors),
computes in float64 and returns plain Python floats, so results can go straight into JSON.
All values are fractions (the paper's tables scale them; see ``PAPER_SCALE``).

Ties matter for ranking metrics: many samples can share a confidence (e.g. a saturated
softmax of exactly 1.0). A threshold cannot split such samples, so everywhere below samples
with equal confidence (or score) form one group and enter or leave together.

Bad input raises :class:`activecrl.core.errors.ConfigError` saying what was expected and what arrived.
"""

from __future__ import annotations

import math

import numpy as np

from activecrl.core.errors import ConfigError
from activecrl.core.validate import check_int

__all__ = [
    "METRIC_NAMES",
    "OOD_METRIC_NAMES",
    "PAPER_SCALE",
    "PAPER_SCALE_NOTE",
    "CURVE_UNITS",
    "CURVE_UNITS_NOTE",
    "format_metric",
    "metric_unit",
    "format_mean_std",
    "LOWER_IS_BETTER",
    "accuracy",
    "risk_coverage_curve",
    "aurc",
    "eaurc",
    "augrc",
    "aupr_error",
    "fpr_at_95_tpr",
    "ece",
    "nll",
    "brier",
    "classification_metrics",
    "ood_metrics",
]

METRIC_NAMES = ("accuracy", "aurc", "eaurc", "augrc", "aupr_err", "fpr95", "ece", "nll", "brier")
OOD_METRIC_NAMES = ("fpr95", "detection_error", "auroc", "aupr_in", "aupr_out")

# Multipliers that reproduce the paper's table units (Table 1: AURC and E-AURC x 10^3,
# NLL x 10, everything else in percent). AUGRC x 10^3 as Traub et al. (2024) report it.
PAPER_SCALE = {name: 100.0 for name in METRIC_NAMES}
PAPER_SCALE.update(aurc=1000.0, eaurc=1000.0, augrc=1000.0, nll=10.0)

PAPER_SCALE_NOTE = "AURC, E-AURC, AUGRC ×10³; NLL ×10; others in %"

# (multiplier, decimals) of the active-learning tables (per-stage summaries, AUBC): accuracy and
# ECE in %, the AURCs x 10^3 with one decimal (their spread over trials dwarfs the second)
CURVE_UNITS = {"accuracy": (100.0, 2), "ece": (100.0, 2), "aurc": (1000.0, 1), "eaurc": (1000.0, 1),
               "augrc": (1000.0, 1)}
CURVE_UNITS_NOTE = "AURC, E-AURC, AUGRC ×10³; accuracy, ECE in %"

LOWER_IS_BETTER = frozenset({"aurc", "eaurc", "augrc", "fpr95", "ece", "nll", "brier"})

_NLL_EPS = 1e-12  # keeps -ln p finite when a model puts exactly 0 on the true class


# ----------------------------------------------------------------------------- validation


def _to_numpy(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, possibly requiring grad or on another device
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{name} must be array-like, got {type(x).__name__} instead ({exc})"
        ) from None


def _real_1d(x, name: str, n: int | None = None, match: str = "") -> np.ndarray:
    """A finite float64 vector, optionally of length ``n`` to match another argument."""
    arr = _to_numpy(x, name)
    if n is not None and (arr.ndim != 1 or arr.shape[0] != n):
        raise ConfigError(
            f"{name} must be a 1-D array of length n = {n} to match {match}, got shape "
            f"{arr.shape} instead; pass one value per sample"
        )
    if arr.ndim != 1 or arr.shape[0] == 0:
        raise ConfigError(
            f"{name} must be a non-empty 1-D array (one value per sample), got shape {arr.shape} "
            "instead"
        )
    if arr.dtype.kind not in "biuf":
        raise ConfigError(f"{name} must be numeric, got dtype {arr.dtype} instead")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise ConfigError(f"{name} must be finite, got {arr[bad]} at index {bad} instead")
    return arr


def _confidence_correct(confidence, correct) -> tuple[np.ndarray, np.ndarray]:
    conf = _real_1d(confidence, "confidence")
    corr = _real_1d(correct, "correct", n=conf.shape[0], match="confidence")
    if not np.all((corr == 0) | (corr == 1)):
        raise ConfigError(
            "correct must hold booleans or 0/1 (1 = prediction was right), got values "
            f"{np.unique(corr)[:5].tolist()} instead; pass argmax(probs) == labels"
        )
    return conf, corr.astype(bool)


def _probs_labels(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    p = _to_numpy(probs, "probs")
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
        raise ConfigError(
            f"probs must be a non-empty 2-D array of shape (n, num_classes), got shape {p.shape} "
            "instead; for a single sample use probs[None]"
        )
    if p.dtype.kind not in "biuf":
        raise ConfigError(f"probs must be numeric, got dtype {p.dtype} instead")
    p = p.astype(np.float64)
    if not np.all(np.isfinite(p)):
        row = int(np.flatnonzero(~np.all(np.isfinite(p), axis=1))[0])
        raise ConfigError(f"probs must be finite, got {p[row].tolist()} in row {row} instead")
    # Logits passed by mistake would give silently wrong NLL/ECE/Brier, so insist on [0, 1].
    if p.min() < 0.0 or p.max() > 1.0:
        raise ConfigError(
            f"probs must lie in [0, 1], got values in [{p.min():.4g}, {p.max():.4g}] instead; "
            "pass softmax probabilities, not logits"
        )
    n, k = p.shape
    y = _to_numpy(labels, "labels")
    if y.ndim != 1 or y.shape[0] != n:
        raise ConfigError(
            f"labels must be a 1-D array of length n = {n} to match probs, got shape {y.shape} "
            "instead; pass one class index per row of probs"
        )
    if y.dtype.kind not in "biuf" or (y.dtype.kind == "f" and not np.all(y == np.round(y))):
        raise ConfigError(f"labels must be integer class indices, got dtype {y.dtype} instead")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= k:
        bad = int(y[(y < 0) | (y >= k)][0])
        raise ConfigError(
            f"labels must be class indices in [0, {k}) for probs with {k} columns, got {bad} "
            "instead; check that num_classes matches the dataset"
        )
    return p, y


# ----------------------------------------------------------------------------- helpers


def _groups_from_top(score: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative (count, positives) over tie groups of ``score``, highest score first.

    Entry j covers every sample whose score is >= the j-th largest distinct score.
    """
    _, inverse, counts = np.unique(-score, return_inverse=True, return_counts=True)
    pos = np.bincount(inverse, weights=positive.astype(np.float64), minlength=counts.size)
    return np.cumsum(counts), np.cumsum(pos)


def _fpr_at_95(score: np.ndarray, positive: np.ndarray) -> float:
    """FPR at the first threshold from the top where TPR >= 95 %; assumes both classes exist."""
    cum_n, cum_pos = _groups_from_top(score, positive)
    n_pos = positive.sum()
    # Integer comparison (20 * TP >= 19 * P) so 19/20 is not lost to float rounding.
    j = int(np.argmax(20 * cum_pos >= 19 * n_pos))
    return float((cum_n[j] - cum_pos[j]) / (positive.size - n_pos))


# ----------------------------------------------------------------------------- classification


def accuracy(probs, labels) -> float:
    """Fraction of samples whose argmax class equals the label."""
    p, y = _probs_labels(probs, labels)
    return float(np.mean(p.argmax(axis=1) == y))


def risk_coverage_curve(confidence, correct) -> tuple[np.ndarray, np.ndarray]:
    """Risk-coverage curve of selective classification, one point per confidence tie group.

    Groups are visited from the highest confidence down. For the group with confidence c:
    ``coverage = #{i : conf_i >= c} / n`` and ``risk`` = error rate among those samples.
    Returns ``(coverage, risk)`` float64 arrays; coverage increases to exactly 1.
    """
    conf, corr = _confidence_correct(confidence, correct)
    cum_n, cum_err = _groups_from_top(conf, ~corr)
    return cum_n / conf.size, cum_err / cum_n


def aurc(confidence, correct) -> float:
    """Area under the risk-coverage curve (Geifman et al., 2019), lower is better.

    ``AURC = sum_g (|g| / n) * risk(conf >= c_g)`` over tie groups g. Without ties this is the
    paper's per-sample mean ``(1/n) sum_i risk at coverage i/n``; with ties a group counts as a
    single step, because no threshold can accept only part of it.
    """
    coverage, risk = risk_coverage_curve(confidence, correct)
    widths = np.diff(coverage, prepend=0.0)
    return float(np.sum(widths * risk))


def _optimal_aurc(error_rate: float) -> float:
    # r + (1 - r) ln(1 - r): AURC of a perfect ranking in the large-n limit, as in Geifman et
    # al. (2019) and the paper's code. (1 - r) ln(1 - r) -> 0 as r -> 1, so r = 1 gives 1.
    if error_rate >= 1.0:
        return 1.0
    return error_rate + (1.0 - error_rate) * math.log(1.0 - error_rate)


def eaurc(confidence, correct) -> float:
    """Excess AURC: ``AURC - (r + (1 - r) ln(1 - r))`` with r the overall error rate.

    The subtracted term is the continuous (large-n) optimum, as in the paper. For finite n a
    perfect ranking therefore scores slightly above 0 (about r / 2n), not exactly 0; it is
    exactly 0 when every prediction is right or every prediction is wrong.
    """
    conf, corr = _confidence_correct(confidence, correct)
    return aurc(conf, corr) - _optimal_aurc(float(np.mean(~corr)))


def augrc(confidence, correct) -> float:
    """Area under the generalised risk-coverage curve (Traub et al., NeurIPS 2024), lower is better.

    The generalised risk at a threshold is the fraction of *all* n samples that are accepted and
    wrong (the selective risk times the coverage), so it measures the chance that a sample is both
    accepted and misclassified. Points: one per confidence tie group, ``(#accepted / n,
    #accepted errors / n)`` from the highest confidence down, plus ``(0, 0)``; the area is the
    trapezoid rule over them, exactly as fd-shifts (``RiskCoverageStats.augrc``:
    ``generalized_risk_stats`` + ``-np.trapz``) computes it, without its x1000 display scale.
    Without ties every step adds one sample and this equals
    ``(1/n) sum_k (E_k - 1[k-th is an error] / 2) / n`` with E_k the errors among the top k;
    a tie group is accepted or rejected whole, and the straight line across it is the expected
    generalised risk when a random part of the group is accepted.
    """
    conf, corr = _confidence_correct(confidence, correct)
    cum_n, cum_err = _groups_from_top(conf, ~corr)
    coverage = np.concatenate([[0.0], cum_n / conf.size])
    risk = np.concatenate([[0.0], cum_err / conf.size])
    return float(np.sum(np.diff(coverage) * (risk[1:] + risk[:-1]) / 2))


def aupr_error(confidence, correct) -> float:
    """Average precision for detecting errors: errors are positives, score = -confidence.

    Uses ``sklearn.metrics.average_precision_score``. With no errors there is nothing to
    detect and AP is undefined; we return 0.0 (a JSON-safe number) rather than NaN.
    """
    from sklearn.metrics import average_precision_score  # seconds to import: only where it is used

    conf, corr = _confidence_correct(confidence, correct)
    if corr.all():
        return 0.0
    return float(average_precision_score(~corr, -conf))


def fpr_at_95_tpr(confidence, correct) -> float:
    """False-positive rate at 95 % true-positive rate; correct predictions are positives.

    Thresholds are tried from the highest confidence down (whole tie groups at a time); the
    first whose TPR >= 0.95 gives the reported FPR = fraction of errors accepted there.
    Edge cases (TPR or FPR undefined): no errors -> 0.0, since no error can be accepted;
    no correct predictions -> 1.0, the worst value, since nothing separates right from wrong.
    """
    conf, corr = _confidence_correct(confidence, correct)
    if corr.all():
        return 0.0
    if not corr.any():
        return 1.0
    return _fpr_at_95(conf, corr)


def ece(probs, labels, n_bins: int = 15) -> float:
    """Expected calibration error (Naeini et al., 2015) on the max probability.

    Bin b covers confidences in ``(b / n_bins, (b + 1) / n_bins]`` (bin 0 also holds 0), and
    ``ECE = sum_b (|b| / n) * |accuracy(b) - mean confidence(b)|``.
    """
    n_bins = check_int("n_bins", n_bins, 1)
    p, y = _probs_labels(probs, labels)
    conf = p.max(axis=1)
    hit = (p.argmax(axis=1) == y).astype(np.float64)
    # Edges k / n_bins are correctly rounded, so a confidence written as 2/15 lands in bin 1.
    edges = np.arange(n_bins + 1) / n_bins
    bins = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    # (|b| / n) * |acc(b) - conf(b)| == |sum_{i in b} (hit_i - conf_i)| / n; empty bins add 0.
    gap = np.bincount(bins, weights=hit - conf, minlength=n_bins)
    return float(np.sum(np.abs(gap)) / conf.size)


def nll(probs, labels) -> float:
    """Negative log-likelihood ``mean_i -ln p_i[y_i]``, with p clipped at 1e-12 to stay finite."""
    p, y = _probs_labels(probs, labels)
    return float(-np.mean(np.log(np.maximum(p[np.arange(y.size), y], _NLL_EPS))))


def brier(probs, labels) -> float:
    """Brier score ``mean_i sum_k (p_ik - 1[y_i = k])^2`` (ranges over [0, 2])."""
    p, y = _probs_labels(probs, labels)
    onehot = np.zeros_like(p)
    onehot[np.arange(y.size), y] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def classification_metrics(probs, labels, confidence=None) -> dict[str, float]:
    """All of ``METRIC_NAMES`` as plain floats.

    ``correct = argmax(probs) == labels``. Ranking metrics (aurc, eaurc, aupr_err, fpr95) use
    ``confidence``, which defaults to the max probability (pass e.g. an MC-dropout or
    Mahalanobis score instead); accuracy, ece, nll and brier always use ``probs``.
    """
    p, y = _probs_labels(probs, labels)
    correct = p.argmax(axis=1) == y
    if confidence is None:
        conf = p.max(axis=1)
    else:
        conf = _real_1d(confidence, "confidence", n=y.size, match="probs")
    return {
        "accuracy": float(np.mean(correct)),
        "aurc": aurc(conf, correct),
        "eaurc": eaurc(conf, correct),
        "augrc": augrc(conf, correct),
        "aupr_err": aupr_error(conf, correct),
        "fpr95": fpr_at_95_tpr(conf, correct),
        "ece": ece(p, y),
        "nll": nll(p, y),
        "brier": brier(p, y),
    }


# ----------------------------------------------------------------------------- OOD detection


def ood_metrics(score_in, score_out) -> dict[str, float]:
    """Out-of-distribution detection metrics; higher score = more in-distribution.

    In-distribution samples are the positives. Keys (``OOD_METRIC_NAMES``):
    ``fpr95``: fraction of OOD samples accepted at the first threshold from the top (tie groups
    whole) where in-distribution TPR >= 0.95; ``detection_error``: min over thresholds of
    ``0.5 (1 - TPR) + 0.5 FPR`` (thresholds include accept-nothing, so it is at most 0.5);
    ``auroc``; ``aupr_in``: average precision with in-distribution positive, score as is;
    ``aupr_out``: average precision with OOD positive and score negated.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    s_in = _real_1d(score_in, "score_in")
    s_out = _real_1d(score_out, "score_out")
    score = np.concatenate([s_in, s_out])
    is_in = np.concatenate([np.ones(s_in.size, bool), np.zeros(s_out.size, bool)])
    cum_n, cum_pos = _groups_from_top(score, is_in)
    tpr = cum_pos / s_in.size
    fpr = (cum_n - cum_pos) / s_out.size
    return {
        "fpr95": _fpr_at_95(score, is_in),
        "detection_error": float(min(0.5, np.min(0.5 * (1.0 - tpr) + 0.5 * fpr))),
        "auroc": float(roc_auc_score(is_in, score)),
        "aupr_in": float(average_precision_score(is_in, score)),
        "aupr_out": float(average_precision_score(~is_in, -score)),
    }


def metric_unit(metric: str) -> str:
    """The unit a human reads ``metric`` in (``PAPER_SCALE``): "%", "×10³", "×10"; files keep fractions."""
    return {100.0: "%", 1000.0: "×10³", 10.0: "×10"}.get(PAPER_SCALE.get(metric, 1.0), "")


def format_metric(value: float | None, metric: str, *, paper_scale: bool = True) -> str:
    """A metric as the tables print it: in the paper's units (``PAPER_SCALE``) with 2 decimals, or
    (``paper_scale=False``) the fraction with 4; "–" where a run lacks it."""
    if value is None:
        return "–"
    return f"{value * PAPER_SCALE.get(metric, 1.0):.2f}" if paper_scale else f"{value:.4f}"


def format_mean_std(mean: float, std: float, metric: str) -> str:
    """``mean±std`` in the ``CURVE_UNITS`` of ``metric``; the mean alone for a NaN std (one trial has no
    spread: not a misleading ±0), "–" for a NaN mean (a metric the run did not record)."""
    scale, digits = CURVE_UNITS[metric]
    if mean != mean:  # NaN
        return "–"
    return f"{mean * scale:.{digits}f}±{std * scale:.{digits}f}" if std == std else f"{mean * scale:.{digits}f}"
