"""Bootstrap intervals: exact agreement with the metric functions, a known distribution, rescoring saved runs."""

import json
import math

import numpy as np
import pytest

from activecrl.evaluation.bootstrap import (
    bootstrap_intervals,
    bootstrap_metrics,
    resample_indices,
    rescore_run,
    rescore_runs,
)
from activecrl.core.errors import ConfigError, DataError
from activecrl.evaluation.metrics import METRIC_NAMES, classification_metrics


def _predictions(n=300, k=4, seed=0, ties=True):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k)) * 2
    if ties:
        logits = np.round(logits)  # equal max probabilities: tie groups in every ranking metric
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return probs, rng.integers(0, k, n)


@pytest.mark.parametrize("ties", [True, False])
def test_each_resample_equals_classification_metrics(ties):
    probs, labels = _predictions(ties=ties)
    conf = np.random.default_rng(1).random(len(labels)) if not ties else None
    draws = bootstrap_metrics(probs, labels, conf, n_resamples=70, seed=5)  # 70: more than one chunk
    idx = resample_indices(len(labels), 70, seed=5)
    for r in (0, 33, 64, 69):
        expected = classification_metrics(probs[idx[r]], labels[idx[r]], None if conf is None else conf[idx[r]])
        for m in METRIC_NAMES:
            assert draws[m][r] == pytest.approx(expected[m], abs=1e-12), m


def test_edge_resamples_all_right_or_all_wrong():
    # 3 samples, one wrong: some of the 120 resamples are all right or all wrong (prob (2/3)^3, (1/3)^3)
    probs = np.array([[0.9, 0.1], [0.7, 0.3], [0.4, 0.6]])
    labels = np.array([0, 0, 0])
    draws = bootstrap_metrics(probs, labels, n_resamples=120, seed=0)
    idx = resample_indices(3, 120, seed=0)
    for r in range(120):
        expected = classification_metrics(probs[idx[r]], labels[idx[r]])
        assert all(draws[m][r] == pytest.approx(expected[m], abs=1e-12) for m in METRIC_NAMES)
    assert {0.0, 1.0} <= set(draws["accuracy"])  # both edge cases happened


def test_accuracy_interval_of_bernoulli_outcomes_is_normal_approximation():
    # n outcomes correct with probability p: the accuracy's bootstrap distribution is
    # Binomial(n, p_hat) / n, so the 95 % interval is p_hat -+ 1.96 sqrt(p_hat (1 - p_hat) / n)
    n, p = 2000, 0.7
    rng = np.random.default_rng(0)
    correct = rng.random(n) < p
    labels = np.zeros(n, dtype=int)
    probs = np.where(correct[:, None], [[0.8, 0.2]], [[0.3, 0.7]])
    p_hat = correct.mean()
    half = 1.96 * math.sqrt(p_hat * (1 - p_hat) / n)
    low, high = bootstrap_intervals(probs, labels, n_resamples=2000, seed=1)["accuracy"]
    # Monte-Carlo error of a 2.5 % quantile over 2000 resamples: about 0.06 of the half-width
    assert low == pytest.approx(p_hat - half, abs=0.15 * half)
    assert high == pytest.approx(p_hat + half, abs=0.15 * half)


def test_seeded_and_validated():
    probs, labels = _predictions(n=50)
    a = bootstrap_intervals(probs, labels, n_resamples=30, seed=3)
    assert a == bootstrap_intervals(probs, labels, n_resamples=30, seed=3)
    assert a != bootstrap_intervals(probs, labels, n_resamples=30, seed=4)
    assert set(a) == set(METRIC_NAMES) and all(lo <= hi for lo, hi in a.values())
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ConfigError, match="n_resamples must be an integer >= 1"):
            bootstrap_metrics(probs, labels, n_resamples=bad)


def test_train_config_bootstrap_field():
    from activecrl.methods.run import TrainRunConfig

    assert TrainRunConfig().bootstrap == 0
    with pytest.raises(ConfigError, match="bootstrap must be an integer >= 0"):
        TrainRunConfig(bootstrap=-1)


def _saved_run(path, probs, labels, stored=None):
    path.mkdir(parents=True)
    conf = probs.max(1)
    np.savez(path / "predictions.npz", probs=probs.astype(np.float32), confidence=conf, labels=labels,
             logits=np.log(probs).astype(np.float32))
    metrics = classification_metrics(probs, labels)
    metrics.pop("augrc")  # as saved before AUGRC existed
    metrics.update(stored or {})
    (path / "metrics.json").write_text(json.dumps({"config": {"train": {"seed": 2}}, "metrics": metrics}))
    return metrics


def test_rescore_adds_augrc_and_intervals_keeps_stored_values(tmp_path):
    probs, labels = _predictions(n=120, ties=False)
    before = _saved_run(tmp_path / "run", probs, labels)
    blob = rescore_run(tmp_path / "run", n_resamples=40)
    assert {k: blob["metrics"][k] for k in before} == before  # stored values untouched
    assert blob["metrics"]["augrc"] == pytest.approx(classification_metrics(probs, labels)["augrc"], abs=1e-6)
    assert list(blob["metrics"]) == list(METRIC_NAMES)
    assert blob["bootstrap"]["seed"] == 2 and blob["bootstrap"]["n_resamples"] == 40
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == blob


def test_rescore_bad_input_writes_nothing(tmp_path):
    probs, labels = _predictions(n=60)
    _saved_run(tmp_path / "good", probs, labels)
    _saved_run(tmp_path / "wrong", probs, labels, stored={"accuracy": 0.01})  # npz is not this run's
    (tmp_path / "bare").mkdir()
    good_before = (tmp_path / "good" / "metrics.json").read_text()
    with pytest.raises(DataError, match="does not reproduce the stored accuracy"):
        rescore_runs([tmp_path / "good", tmp_path / "wrong"], n_resamples=10)
    with pytest.raises(DataError, match="predictions.npz"):
        rescore_runs([tmp_path / "good", tmp_path / "bare"], n_resamples=10)
    with pytest.raises(ConfigError, match="--bootstrap must be an integer >= 1"):
        rescore_runs([tmp_path / "good"], n_resamples=0)
    assert (tmp_path / "good" / "metrics.json").read_text() == good_before


def test_paired_difference(tmp_path):
    from activecrl.evaluation.bootstrap import paired_difference

    probs, labels = _predictions(n=400, ties=False)
    _saved_run(tmp_path / "a", probs, labels)
    worse = probs.copy()
    wrong = np.arange(0, 400, 3)  # make every third prediction wrong (some already were)
    worse[wrong] = np.roll(np.eye(4)[labels[wrong]] * 0.9 + 0.025, 1, axis=1)
    _saved_run(tmp_path / "b", worse, labels)
    same = paired_difference(tmp_path / "a", tmp_path / "a", n_resamples=50)
    assert all(v["diff"] == 0 and v["ci95"] == [0.0, 0.0] and not v["significant"] for v in same.values())
    diff = paired_difference(tmp_path / "a", tmp_path / "b", n_resamples=200)
    assert diff["accuracy"]["diff"] > 0.05 and diff["accuracy"]["significant"]
    _saved_run(tmp_path / "c", probs[:300], labels[:300])
    with pytest.raises(DataError, match="same test set"):
        paired_difference(tmp_path / "a", tmp_path / "c", n_resamples=10)
