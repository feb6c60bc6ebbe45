"""Metrics on small hand-computed cases; every expected value is worked out in a comment."""

import json
import math

import numpy as np
import pytest

from activecrl.core.errors import ConfigError
from activecrl.evaluation.metrics import (
    LOWER_IS_BETTER,
    METRIC_NAMES,
    OOD_METRIC_NAMES,
    PAPER_SCALE,
    accuracy,
    aupr_error,
    augrc,
    aurc,
    brier,
    classification_metrics,
    ece,
    eaurc,
    fpr_at_95_tpr,
    nll,
    ood_metrics,
    risk_coverage_curve,
)


def optimal(r):
    return r + (1 - r) * math.log(1 - r)


def brute_force_aurc(conf, correct):
    """Paper's definition without ties: mean over i of the error rate among the top-i samples."""
    order = np.argsort(-np.asarray(conf), kind="stable")
    err = 1.0 - np.asarray(correct, dtype=float)[order]
    return float(np.mean(np.cumsum(err) / np.arange(1, len(err) + 1)))


# ----------------------------------------------------------------------------- accuracy


def test_accuracy_counts_argmax_matches():
    probs = [[0.7, 0.3], [0.4, 0.6], [0.9, 0.1], [0.2, 0.8]]
    assert accuracy(probs, [0, 0, 0, 1]) == pytest.approx(3 / 4)  # sample 1 predicts class 1


# ----------------------------------------------------------------------------- risk-coverage / AURC


def test_aurc_brief_tie_example():
    # Groups: {0.9}: coverage 1/2, risk 1/2; {0.5}: coverage 1, risk 2/4.
    # AURC = 1/2 * 1/2 + 1/2 * 1/2 = 1/2.
    assert aurc([0.9, 0.9, 0.5, 0.5], [1, 0, 1, 0]) == pytest.approx(0.5)


def test_risk_coverage_and_aurc_with_uneven_tie_groups():
    conf = [0.9, 0.9, 0.8, 0.5, 0.5, 0.5]
    correct = [1, 0, 1, 1, 1, 0]
    # Group 0.9: 2 samples, 1 error -> coverage 2/6, risk 1/2
    # Group 0.8: 3 samples so far, 1 error -> coverage 3/6, risk 1/3
    # Group 0.5: 6 samples, 2 errors -> coverage 1, risk 1/3
    coverage, risk = risk_coverage_curve(conf, correct)
    np.testing.assert_allclose(coverage, [2 / 6, 3 / 6, 1.0])
    np.testing.assert_allclose(risk, [1 / 2, 1 / 3, 1 / 3])
    # AURC = 2/6 * 1/2 + 1/6 * 1/3 + 3/6 * 1/3 = 7/18 (a per-sample mean would give 0.269 or
    # 0.436 depending on how the ties happen to be ordered).
    assert aurc(conf, correct) == pytest.approx(7 / 18)
    # Tie groups make the result independent of the input order.
    perm = [5, 1, 3, 0, 4, 2]
    assert aurc(np.take(conf, perm), np.take(correct, perm)) == pytest.approx(7 / 18)


def test_aurc_without_ties_is_per_sample_mean_by_hand():
    # Sorted: 0.9 (wrong), 0.7 (right), 0.4 (right): risks 1, 1/2, 1/3 -> mean 11/18.
    assert aurc([0.4, 0.9, 0.7], [1, 0, 1]) == pytest.approx(11 / 18)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aurc_matches_brute_force_on_random_data_without_ties(seed):
    rng = np.random.default_rng(seed)
    conf = rng.permutation(500) / 500.0  # distinct values
    correct = rng.random(500) < 0.7
    assert aurc(conf, correct) == pytest.approx(brute_force_aurc(conf, correct), abs=1e-12)
    coverage, _ = risk_coverage_curve(conf, correct)
    np.testing.assert_allclose(coverage, np.arange(1, 501) / 500)


def test_perfect_ranking_by_hand():
    # The one error has the lowest confidence: risks 0, 0, 0, 1/4 -> AURC 1/16.
    conf, correct = [0.9, 0.8, 0.7, 0.6], [1, 1, 1, 0]
    assert aurc(conf, correct) == pytest.approx(1 / 16)
    # E-AURC subtracts the paper's large-n optimum r + (1-r) ln(1-r) with r = 1/4; at n = 4 the
    # discrete perfect ranking sits slightly above it.
    assert eaurc(conf, correct) == pytest.approx(1 / 16 - optimal(0.25))
    assert eaurc(conf, correct) == pytest.approx(0.0282614, abs=1e-6)


def test_perfect_ranking_eaurc_vanishes_as_n_grows():
    # Errors at the bottom: the discrete AURC is a right Riemann sum of the increasing optimal
    # risk curve, so 0 < E-AURC <= r / n.
    n, r = 10_000, 0.2
    conf = np.arange(n, 0, -1) / n
    correct = np.arange(n) < n * (1 - r)
    value = eaurc(conf, correct)
    assert 0.0 < value <= r / n
    assert aurc(conf, correct) == pytest.approx(optimal(r), abs=r / n)


def test_worst_ranking_by_hand():
    # The error has the highest confidence: risks 1, 1/2, 1/3, 1/4 -> AURC 25/48.
    conf, correct = [0.9, 0.8, 0.7, 0.6], [0, 1, 1, 1]
    assert aurc(conf, correct) == pytest.approx(25 / 48)
    assert eaurc(conf, correct) == pytest.approx(25 / 48 - optimal(0.25))
    assert fpr_at_95_tpr(conf, correct) == pytest.approx(1.0)
    # Errors-as-positives ranked by -conf: the only error comes last (precision 1/4).
    assert aupr_error(conf, correct) == pytest.approx(0.25)


def test_all_correct_edge_case():
    conf, correct = [0.9, 0.6, 0.6, 0.2], [True] * 4
    assert aurc(conf, correct) == 0.0
    assert eaurc(conf, correct) == 0.0
    assert fpr_at_95_tpr(conf, correct) == 0.0
    assert aupr_error(conf, correct) == 0.0  # documented choice: no errors -> 0.0, not NaN


def test_all_wrong_edge_case():
    conf, correct = [0.9, 0.6, 0.2], [0, 0, 0]
    assert aurc(conf, correct) == pytest.approx(1.0)
    assert eaurc(conf, correct) == pytest.approx(0.0)  # optimum is 1 when r = 1 (no ln 0)
    assert fpr_at_95_tpr(conf, correct) == 1.0
    assert aupr_error(conf, correct) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- AUPR-Error, FPR95


def test_aupr_error_by_hand():
    # Errors are positives, ranked by -conf: 0.6 (err), 0.7, 0.8 (err), 0.9.
    # AP = sum over recall steps of precision: 1/2 * 1 + 1/2 * 2/3 = 5/6.
    assert aupr_error([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx(5 / 6)


def test_fpr95_takes_first_threshold_reaching_95_percent():
    pos = np.arange(99, 79, -1) / 100  # 20 correct predictions: 0.99 ... 0.80
    neg = np.array([0.955, 0.805, 0.5, 0.1])  # 4 errors
    conf = np.concatenate([pos, neg])
    correct = np.r_[np.ones(20), np.zeros(4)]
    # TPR >= 0.95 needs 19 of 20 positives: threshold 0.81, which accepts only the error at
    # 0.955 -> FPR 1/4. (Requiring TPR > 0.95 or TPR = 1 would also accept 0.805 -> 1/2.)
    assert fpr_at_95_tpr(conf, correct) == pytest.approx(0.25)
    # An error tied with the 19th positive cannot be separated from it: FPR 2/4.
    neg_tied = np.array([0.955, 0.81, 0.5, 0.1])
    assert fpr_at_95_tpr(np.concatenate([pos, neg_tied]), correct) == pytest.approx(0.5)


# ----------------------------------------------------------------------------- calibration


def test_ece_by_hand_with_confidence_on_a_bin_edge():
    a = [2 / 15] * 7 + [1 / 15, 0, 0]  # max 2/15 exactly: right edge of bin (1/15, 2/15]
    b = [0.1] * 10  # max 0.1, also in bin 1
    c = [0.9, 0.1] + [0] * 8  # max 0.9: bin (13/15, 14/15]
    probs = [a, b, c, c]
    labels = [0, 1, 0, 1]  # a right, b wrong (argmax 0), c right, c wrong
    # Bin 1: acc 1/2, mean conf (2/15 + 0.1)/2 -> (2/4) * |1/2 - 7/60| = 23/120
    # Bin 13: acc 1/2, conf 0.9 -> (2/4) * 0.4 = 1/5
    # (Putting 2/15 in bin 2 instead would give 0.441667.)
    assert ece(probs, labels) == pytest.approx(23 / 120 + 1 / 5)


def test_ece_bin_zero_includes_zero_and_perfect_calibration_is_zero():
    assert ece([[0.0, 0.0]], [0]) == pytest.approx(1.0)  # conf 0, correct -> gap 1
    # Half right at confidence 1/2: perfectly calibrated.
    assert ece([[0.5, 0.5], [0.5, 0.5]], [0, 1]) == pytest.approx(0.0)


def test_ece_n_bins_changes_binning():
    probs, labels = [[0.6, 0.4], [0.9, 0.1]], [0, 1]
    # One bin: |1/2 - 0.75| = 0.25. Two bins both in (0.5, 1]: same. Ten bins: separate
    # bins -> 1/2 * |1 - 0.6| + 1/2 * |0 - 0.9| = 0.65.
    assert ece(probs, labels, n_bins=1) == pytest.approx(0.25)
    assert ece(probs, labels, n_bins=10) == pytest.approx(0.65)


def test_nll_by_hand_and_clipped_at_zero_probability():
    probs = [[0.5, 0.5], [0.8, 0.2]]
    assert nll(probs, [0, 0]) == pytest.approx((math.log(2) - math.log(0.8)) / 2)
    # p = 0 for the true class is clipped to 1e-12: finite, -ln(1e-12) / 1.
    assert nll([[1.0, 0.0]], [1]) == pytest.approx(-math.log(1e-12))


def test_brier_by_hand():
    probs = [[0.5, 0.5], [0.8, 0.2], [0.0, 1.0]]
    # (0.25 + 0.25) + (0.04 + 0.04) + (1 + 1) = 2.58 over 3 samples.
    assert brier(probs, [0, 0, 0]) == pytest.approx(2.58 / 3)
    assert brier([[0.2, 0.3, 0.5]], [2]) == pytest.approx(0.04 + 0.09 + 0.25)


# ----------------------------------------------------------------------------- summary dict


def test_classification_metrics_keys_types_and_confidence_override():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    labels = np.array([0, 0, 0, 1])  # only the least confident sample is wrong
    out = classification_metrics(probs, labels)
    assert tuple(out) == METRIC_NAMES
    assert all(type(v) is float for v in out.values())
    json.dumps(out)
    assert out["accuracy"] == pytest.approx(0.75)
    assert out["aurc"] == pytest.approx(1 / 16)  # perfect ranking by max prob
    assert out["brier"] == pytest.approx(brier(probs, labels))
    # A confidence that ranks the error first changes ranking metrics only.
    flipped = classification_metrics(probs, labels, confidence=[0.1, 0.2, 0.3, 0.9])
    assert flipped["aurc"] == pytest.approx(25 / 48)
    assert flipped["fpr95"] == pytest.approx(1.0)
    for key in ("accuracy", "ece", "nll", "brier"):
        assert flipped[key] == out[key]


def test_table_constants():
    assert set(PAPER_SCALE) == set(METRIC_NAMES)
    assert PAPER_SCALE["aurc"] == PAPER_SCALE["eaurc"] == 1000
    assert PAPER_SCALE["nll"] == 10 and PAPER_SCALE["ece"] == 100
    assert LOWER_IS_BETTER == {"aurc", "eaurc", "augrc", "fpr95", "ece", "nll", "brier"}
    assert PAPER_SCALE["augrc"] == 1000


def test_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    probs = torch.tensor([[0.7, 0.3], [0.4, 0.6]], requires_grad=True)
    labels = torch.tensor([0, 0])
    assert accuracy(probs, labels) == pytest.approx(0.5)
    assert aurc(torch.tensor([0.7, 0.6]), torch.tensor([True, False])) == pytest.approx(0.25)


# ----------------------------------------------------------------------------- OOD


def test_ood_perfect_separation():
    out = ood_metrics([0.9, 0.8, 0.7], [0.2, 0.1])
    assert tuple(out) == OOD_METRIC_NAMES
    assert out == pytest.approx(
        {"fpr95": 0.0, "detection_error": 0.0, "auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0}
    )


def test_ood_overlap_by_hand():
    # Descending: 0.9 in, 0.7 out, 0.6 in, 0.4 in, 0.3 out. (TPR, FPR) per threshold:
    # (1/3, 0), (1/3, 1/2), (2/3, 1/2), (1, 1/2), (1, 1).
    out = ood_metrics([0.9, 0.6, 0.4], [0.7, 0.3])
    assert out["fpr95"] == pytest.approx(0.5)  # first TPR >= 0.95 at 0.4
    # 0.5(1-TPR) + 0.5 FPR: 1/3, 7/12, 5/12, 1/4, 1/2 -> min 1/4
    assert out["detection_error"] == pytest.approx(0.25)
    assert out["auroc"] == pytest.approx(4 / 6)  # in > out for 4 of 6 pairs
    assert out["aupr_in"] == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)  # precision at each in
    assert out["aupr_out"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 4)  # by -score: 0.3 then 0.7


def test_ood_fpr95_keeps_ties_together():
    score_in = [0.9] * 18 + [0.5] * 2
    # TPR 18/20 < 0.95 at 0.9; the 0.5 group brings TPR to 1 and the tied OOD sample with it.
    assert ood_metrics(score_in, [0.5, 0.1])["fpr95"] == pytest.approx(0.5)
    # Exactly 19/20 counts as 95 %.
    assert ood_metrics([0.9] * 19 + [0.2], [0.5, 0.1])["fpr95"] == 0.0


# ----------------------------------------------------------------------------- validation


def test_labels_length_mismatch_message():
    probs = np.full((5, 3), 1 / 3)
    with pytest.raises(ConfigError) as err:
        accuracy(probs, [0, 1, 2, 0])
    assert "labels must be a 1-D array of length n = 5 to match probs, got shape (4,)" in str(
        err.value
    )


@pytest.mark.parametrize(
    ("probs", "labels", "match"),
    [
        ([0.5, 0.5], [0], r"probs must be a non-empty 2-D array .* got shape \(2,\)"),
        (np.zeros((0, 3)), [], r"non-empty 2-D .* got shape \(0, 3\)"),
        ([[0.5, 0.5]], [2], r"class indices in \[0, 2\) .* got 2"),
        ([[0.5, 0.5]], [-1], r"class indices in \[0, 2\) .* got -1"),
        ([[0.5, 0.5]], [0.5], r"labels must be integer"),
        ([[0.5, np.nan]], [0], r"probs must be finite"),
        ([[2.0, -1.0]], [0], r"not logits"),
        ([[0.5, 0.5]], [[0]], r"labels must be a 1-D array of length n = 1"),
    ],
)
def test_bad_probs_or_labels_raise_config_error(probs, labels, match):
    for fn in (accuracy, nll, brier, ece, classification_metrics):
        with pytest.raises(ConfigError, match=match):
            fn(probs, labels)


@pytest.mark.parametrize(
    ("conf", "correct", "match"),
    [
        ([], [], r"confidence must be a non-empty 1-D array"),
        ([0.5, 0.4], [1], r"correct must be a 1-D array of length n = 2 to match confidence"),
        ([0.5, np.inf], [1, 0], r"confidence must be finite"),
        ([0.5, 0.4], [1, 2], r"correct must hold booleans or 0/1"),
        ([[0.5, 0.4]], [1, 0], r"confidence must be a non-empty 1-D array"),
    ],
)
def test_bad_confidence_or_correct_raise_config_error(conf, correct, match):
    for fn in (risk_coverage_curve, aurc, eaurc, aupr_error, fpr_at_95_tpr):
        with pytest.raises(ConfigError, match=match):
            fn(conf, correct)


def test_other_validation_errors():
    with pytest.raises(ConfigError, match="n_bins must be an integer >= 1"):
        ece([[0.5, 0.5]], [0], n_bins=0)
    with pytest.raises(ConfigError, match="confidence must be a 1-D array of length n = 2"):
        classification_metrics([[0.5, 0.5], [0.6, 0.4]], [0, 1], confidence=[0.3])
    with pytest.raises(ConfigError, match="score_out must be a non-empty 1-D array"):
        ood_metrics([0.5], [])


# ----------------------------------------------------------------------------- AUGRC (Traub et al. 2024)


def _fd_shifts_augrc(conf, correct):
    """Transcription of fd-shifts' ``generalized_risk_stats`` + ``-np.trapz`` (its rc_stats.py), as a
    cross-check: ascending confidence, a point each time the confidence changes, then (0, 0)."""
    conf, residuals = np.asarray(conf, float), 1.0 - np.asarray(correct, float)
    n = len(residuals)
    idx = np.argsort(conf)
    residuals, confidence = residuals[idx], conf[idx]
    cov, error_sum = n, residuals.sum()
    coverages, risks = [1.0], [error_sum / n]
    for i in range(n - 1):
        cov -= 1
        error_sum -= residuals[i]
        if confidence[i] != confidence[i + 1]:
            coverages.append(cov / n)
            risks.append(error_sum / n)
    coverages.append(0.0)
    risks.append(0.0)
    c, r = np.array(coverages), np.array(risks)
    return -float(np.sum(np.diff(c) * (r[1:] + r[:-1]) / 2))  # -np.trapz(risks, coverages)


def test_augrc_without_ties():
    # (coverage, generalised risk) points: (0,0), (1/4,0), (2/4,1/4), (3/4,1/4), (1,2/4); trapezoids of
    # width 1/4 with mean heights 0, 1/8, 1/4, 3/8 -> (3/4) / 4 = 3/16.
    assert augrc([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx(3 / 16)
    # all wrong: generalised risk = coverage, area 1/2; all right: 0
    assert augrc([0.3, 0.2, 0.1], [0, 0, 0]) == pytest.approx(0.5)
    assert augrc([0.3, 0.2, 0.1], [1, 1, 1]) == 0.0


def test_augrc_groups_ties():
    # group {0.9, 0.9}: 2 accepted, 1 wrong -> (2/5, 1/5); then everything -> (1, 2/5).
    # area = 0.4 * (0 + 0.2) / 2 + 0.6 * (0.2 + 0.4) / 2 = 0.04 + 0.18 = 0.22
    conf, correct = [0.9, 0.9, 0.5, 0.5, 0.5], [1, 0, 1, 1, 0]
    assert augrc(conf, correct) == pytest.approx(0.22)
    # the order of samples inside a tie group cannot matter
    assert augrc(conf[::-1], correct[::-1]) == pytest.approx(0.22)
    # one big tie: a straight line to (1, error rate) -> error rate / 2
    assert augrc([0.5] * 4, [1, 1, 1, 0]) == pytest.approx(0.125)


def test_augrc_perfect_ranking_is_half_error_rate_squared():
    # errors last: risk 0 up to coverage 1 - r, then linear to r -> r^2 / 2 (fd-shifts' augrc_optimal)
    conf = np.linspace(1, 0, 20)
    correct = np.r_[np.ones(15), np.zeros(5)]
    assert augrc(conf, correct) == pytest.approx(0.5 * 0.25 ** 2)


def test_augrc_matches_fd_shifts_transcription():
    rng = np.random.default_rng(0)
    for n, levels in [(7, 3), (50, 5), (200, 1000), (1, 1)]:
        conf = rng.integers(0, levels, n) / levels  # many ties when levels is small
        correct = rng.random(n) < 0.6
        assert augrc(conf, correct) == pytest.approx(_fd_shifts_augrc(conf, correct), abs=1e-15)


def test_augrc_in_classification_metrics_and_bad_input():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    out = classification_metrics(probs, [0, 0, 0])
    assert out["augrc"] == pytest.approx(augrc([0.9, 0.8, 0.6], [1, 0, 1]))
    with pytest.raises(ConfigError, match="correct must"):
        augrc([0.1, 0.2], [0, 2])
