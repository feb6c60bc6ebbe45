"""SGR (selective classification with guaranteed risk): the bound, the search, the guarantee."""

import math

import numpy as np
import pytest
from scipy import stats

from activecrl.core.errors import ConfigError
from activecrl.evaluation.selective import audit_size_needed, binomial_upper_bound, search_steps, sgr


@pytest.mark.parametrize("errors,n,delta", [(0, 10, 0.05), (3, 20, 0.01), (7, 50, 0.1), (49, 50, 0.05)])
def test_bound_is_the_exact_binomial_inversion(errors, n, delta):
    b = binomial_upper_bound(errors, n, delta)
    assert stats.binom.cdf(errors, n, b) == pytest.approx(delta, rel=1e-6)
    assert errors / n < b < 1


def test_bound_hand_values():
    # zero errors: (1 - b)^n = delta
    assert binomial_upper_bound(0, 10, 0.05) == pytest.approx(1 - 0.05 ** 0.1)
    assert binomial_upper_bound(5, 5, 0.05) == 1.0


def test_bound_monotonic_in_errors_and_in_n():
    bounds = [binomial_upper_bound(k, 40, 0.05) for k in range(41)]
    assert all(a < b for a, b in zip(bounds, bounds[1:]))
    assert binomial_upper_bound(2, 100, 0.05) < binomial_upper_bound(2, 50, 0.05)


def test_all_correct_sample_is_certified_at_full_coverage():
    res = sgr(np.linspace(0.5, 1, 200), np.zeros(200, bool), risk=0.05, delta=0.05)
    assert res.coverage == 1.0 and res.errors == 0 and res.bound <= 0.05
    assert res.threshold == 0.5 and res.steps == search_steps(200) == 8
    assert res.delta_step == pytest.approx(0.05 / 8)


def test_errors_at_low_confidence_are_cut_off():
    conf = np.arange(300) / 300
    err = conf < 0.3  # the 90 least confident are all wrong
    res = sgr(conf, err, risk=0.05, delta=0.05)
    assert res.certified and res.errors <= 5 and res.threshold >= 0.28  # a few errors fit under the bound
    assert res.bound <= 0.05 and 0.5 < res.coverage <= 0.72


def test_coverage_zero_when_impossible():
    res = sgr(np.linspace(0, 1, 20), np.zeros(20, bool), risk=0.01, delta=0.05)  # too few points for 1 %
    assert not res.certified and res.coverage == 0 and math.isinf(res.threshold)
    res = sgr(np.linspace(0, 1, 500), np.ones(500, bool), risk=0.1, delta=0.05)  # always wrong
    assert res.coverage == 0


def test_ties_are_covered_together():
    conf = np.array([0.9] * 50 + [0.2] * 50)
    res = sgr(conf, np.r_[np.zeros(50), np.ones(50)].astype(bool), risk=0.2, delta=0.05)
    assert res.n_covered == 50 and res.threshold == 0.9


def test_audit_size_needed_is_the_smallest_that_can_certify():
    for risk, delta in [(0.05, 0.05), (0.01, 0.1), (0.2, 0.01)]:
        m = audit_size_needed(risk, delta)
        assert binomial_upper_bound(0, m, delta / search_steps(m)) <= risk
        assert binomial_upper_bound(0, m - 1, delta / search_steps(m - 1)) > risk
        assert sgr(np.ones(m), np.zeros(m, bool), risk, delta).coverage == 1.0
        assert sgr(np.ones(m - 1), np.zeros(m - 1, bool), risk, delta).coverage == 0.0


def test_bad_arguments():
    with pytest.raises(ConfigError, match="--risk"):
        sgr([0.5], [0], risk=0, delta=0.1)
    with pytest.raises(ConfigError, match="--delta"):
        audit_size_needed(0.1, 1.5)
    with pytest.raises(ConfigError, match="same length"):
        sgr([0.5, 0.6], [0], risk=0.1, delta=0.1)


def test_guarantee_holds_in_simulation():
    """Realized risk of the certified threshold exceeds R in at most ~delta of the draws."""
    rng = np.random.default_rng(0)
    risk, delta, m, draws = 0.1, 0.2, 300, 300
    violations = certified = 0
    for _ in range(draws):
        conf = rng.random(m)
        err = rng.random(m) < 0.3 * (1 - conf)  # true risk above t: 0.15 (1 - t)
        res = sgr(conf, err, risk, delta)
        if res.certified:
            certified += 1
            violations += 0.15 * (1 - res.threshold) > risk
    assert certified > draws // 2
    # binomial slack over the draws: mean delta * draws = 60, sd ~ 7
    assert violations <= delta * draws + 3 * math.sqrt(draws * delta * (1 - delta))
