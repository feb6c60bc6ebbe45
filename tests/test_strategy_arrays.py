"""Strategies on plain arrays (``strategies.query``) and the fast uncertainty ranking.

The one call must give the picks of the ``QueryContext`` path, keep the precision of
probabilities, and refuse bad input before any work; entropy, least confidence and margin must
pick exactly what ranking every row by its float64 score picks (the implementation before the
float32 pre-filter, kept below as the reference), on random, tie-heavy and near-tie inputs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from activecrl.core.errors import ConfigError
from activecrl.inference.outputs import PoolOutputs
from activecrl.strategies import STRATEGIES, QueryContext, get_strategy, query, select_top
from activecrl.strategies import uncertainty

UNCERTAINTY = ("entropy", "least_conf", "margin")


def reference_picks(name: str, logits, pool_indices, budget: int) -> np.ndarray:
    """Every row's float64 score, then ``select_top`` (the ranking the strategies must keep)."""
    logp = torch.log_softmax(torch.as_tensor(logits).to(torch.float64), dim=1)
    if name == "entropy":
        scores = -(logp.exp() * logp).sum(dim=1)
    elif name == "least_conf":
        scores = -logp.max(dim=1).values.exp()
    elif logp.shape[1] < 2:
        scores = torch.zeros(logp.shape[0], dtype=torch.float64)
    else:
        top2 = logp.exp().topk(2, dim=1).values
        scores = -(top2[:, 0] - top2[:, 1])
    return select_top(scores, pool_indices, budget)


def hard_logits(kind: str, n: int, c: int, rng: np.random.Generator) -> np.ndarray:
    """Logits where float32 scores tie or nearly tie: the cases a float32 pre-filter could misrank."""
    z = rng.normal(size=(n, c)) * rng.uniform(0.2, 8)
    if kind == "rounded":  # few distinct values: many exact ties, equal scores from permuted rows
        z = np.round(z)
    elif kind == "duplicated":  # rows repeated at several pool positions
        z = z[rng.integers(0, max(1, n // 8), size=n)]
    elif kind == "permuted":  # the same values in another order (n even): equal scores up to rounding
        z[1::2] = z[::2][:, ::-1]
    elif kind == "ulp":  # neighbours one float32 step apart: tied in float32, ordered in float64
        base = z[rng.integers(0, max(1, n // 8), size=n)].astype(np.float32)
        step = np.nextafter(base, np.float32(np.inf)) - base
        return base + step * rng.integers(0, 3, size=base.shape)
    return z.astype(np.float32)


# ---------------------------------------------------------------------------- fast ranking
@pytest.mark.parametrize("name", UNCERTAINTY)
@pytest.mark.parametrize("kind", ["random", "rounded", "duplicated", "permuted", "ulp"])
@pytest.mark.parametrize("c", [2, 3, 10, 33, 100])
def test_fast_ranking_picks_what_float64_ranking_picks(name, kind, c):
    rng = np.random.default_rng(c * 7 + len(kind))
    n = 1500
    z = hard_logits(kind, n, c, rng)
    idx = rng.permutation(10 * n)[:n]
    for dtype in (np.float32, np.float64):  # float64: logits from probabilities
        ctx = QueryContext(pool=PoolOutputs(indices=idx, logits=z.astype(dtype)))
        for k in (1, 37, 700, n):
            got = get_strategy(name).query(ctx, k, 0)
            np.testing.assert_array_equal(got, reference_picks(name, ctx.pool.logits, idx, k))


@pytest.mark.parametrize("name", UNCERTAINTY)
@pytest.mark.parametrize("c", [2, 7, 33, 300])
def test_float32_scores_stay_within_their_error_bound(name, c):
    strategy = get_strategy(name)
    rng = np.random.default_rng(c)
    for scale in (1e-3, 0.5, 4, 60, 1e4):
        for offset in (0.0, -700.0):  # log-probabilities: far from 0, given in float64
            z = rng.normal(size=(400, c)) * scale + offset
            for dtype in (np.float32, np.float64):
                x = z.astype(dtype)
                approx = uncertainty._float32_scores(strategy._float32, torch.from_numpy(x).float()).numpy()
                exact = strategy._exact(torch.from_numpy(x)).numpy()
                bound = uncertainty._error_bound(x, rounded=dtype != np.float32)
                assert np.abs(approx - exact).max() <= bound


@pytest.mark.parametrize("name", UNCERTAINTY)
def test_fast_ranking_on_one_class_and_non_finite_logits(name):
    idx = np.arange(100, 110)
    one = torch.zeros(10, 1)
    ctx = QueryContext(pool=PoolOutputs(indices=idx, logits=one))
    np.testing.assert_array_equal(get_strategy(name).query(ctx, 4, 0), reference_picks(name, one, idx, 4))
    z = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    z[3, 1], z[6, 0] = float("nan"), float("inf")  # NaN scores: taken last, as select_top does
    ctx = QueryContext(pool=PoolOutputs(indices=idx, logits=z))
    np.testing.assert_array_equal(get_strategy(name).query(ctx, 10, 0), reference_picks(name, z, idx, 10))


def test_fast_ranking_keeps_the_callers_thread_count():
    before = torch.get_num_threads()
    ctx = QueryContext(pool=PoolOutputs(indices=np.arange(50), logits=torch.randn(50, 5)))
    get_strategy("entropy").query(ctx, 5, 0)
    assert torch.get_num_threads() == before


# ---------------------------------------------------------------------------- one call on arrays
def arrays(n=120, c=5, d=6, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(c, d)) * 4
    y = rng.integers(0, c, size=n)
    features = (centers[y] + rng.normal(size=(n, d))).astype(np.float32)
    logits = (rng.normal(size=(n, c)) * 2).astype(np.float32)
    labeled = np.sort(rng.choice(n, size=15, replace=False))
    return logits, features, labeled


PARAMS = {"typiclust": {"min_cluster_size": 0}}


@pytest.mark.parametrize("name", [s for s in STRATEGIES.names() if s not in ("mc_dropout", "bald")])
def test_query_gives_the_picks_of_the_context_path(name):
    logits, features, labeled = arrays()
    pool = np.setdiff1d(np.arange(len(logits)), labeled)
    params = PARAMS.get(name, {})
    got = query(name, 12, logits=logits, features=features, labeled=labeled, rng=3, **params)
    ctx = QueryContext(pool=PoolOutputs(indices=pool, logits=logits[pool], features=features[pool]),
                       labeled=PoolOutputs(indices=labeled, logits=logits[labeled], features=features[labeled]))
    want = get_strategy(name, **params).query(ctx, 12, np.random.default_rng(3))
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.int64 and not np.isin(got, labeled).any()


def test_query_takes_tensors_and_an_explicit_pool():
    logits, features, labeled = arrays()
    pool = np.array([90, 3, 55, 17, 41, 8, 64])  # ties go to the earlier position here
    got = query("margin", 3, logits=torch.from_numpy(logits), labeled=torch.from_numpy(labeled), pool=pool)
    np.testing.assert_array_equal(got, reference_picks("margin", logits[pool], pool, 3))
    np.testing.assert_array_equal(query("margin", 3, logits=logits, labeled=labeled, pool=list(pool)), got)


def test_probabilities_keep_the_order_of_the_logits():
    # 100 classes, 2,000 picks: float32 log-probabilities reorder near-ties here
    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(20_000, 100)) * 0.5).astype(np.float32)
    probs = torch.softmax(torch.from_numpy(logits).double(), dim=1).numpy()
    log32 = np.log(probs).astype(np.float32)
    for name in UNCERTAINTY:
        from_logits = query(name, 2000, logits=logits)
        assert not np.array_equal(query(name, 2000, logits=log32), from_logits)  # the case is hard
        np.testing.assert_array_equal(query(name, 2000, probs=probs), from_logits)


def test_pool_outputs_keep_float64_log_probabilities():
    p = np.array([[0.5, 0.5 - 1e-12, 1e-12], [1.0, 0.0, 0.0]])
    out = PoolOutputs.from_probs(p)
    assert out.logits.dtype == torch.float64
    assert torch.isfinite(out.logits).all()
    assert float(out.logits[0, 1]) == np.log(0.5 - 1e-12)


@pytest.mark.parametrize("name", ["coreset", "typiclust", "probcover"])
def test_feature_strategies_need_no_logits(name):
    logits, features, labeled = arrays()
    params = {**PARAMS.get(name, {}), **({"n_clusters": 5} if name == "probcover" else {})}
    got = query(name, 10, features=features, labeled=labeled, rng=1, **params)
    np.testing.assert_array_equal(got, query(name, 10, logits=logits, features=features, labeled=labeled,
                                             rng=1, **PARAMS.get(name, {})))


def test_probcover_class_count_from_n_classes_or_an_error():
    logits, features, labeled = arrays()
    with_logits = query("probcover", 10, logits=logits, features=features, labeled=labeled, rng=1)
    np.testing.assert_array_equal(query("probcover", 10, features=features, labeled=labeled, rng=1,
                                        n_classes=5), with_logits)
    with pytest.raises(ConfigError, match=r"n_clusters must be an integer >= 2, got None and no class count"):
        query("probcover", 10, features=features, labeled=labeled, rng=1)


def test_typiclust_and_probcover_read_embeddings():
    _, features, labeled = arrays()
    got = query("typiclust", 5, embeddings=features, labeled=labeled, rng=2, min_cluster_size=0)
    np.testing.assert_array_equal(got, query("typiclust", 5, features=features, labeled=labeled, rng=2,
                                             min_cluster_size=0))


def test_random_needs_only_the_pool():
    got = query("random", 3, pool=[7, 9, 11, 13], labeled=[2], rng=0)
    assert len(got) == 3 and set(got.tolist()) <= {7, 9, 11, 13}
    assert len(query("entropy", 0, logits=np.zeros((4, 3)))) == 0


LOGITS = np.zeros((6, 3), np.float32)
FEATURES = np.zeros((6, 2), np.float32)


@pytest.mark.parametrize("call, message", [
    (lambda: query("entropy", 2), r"reads class scores: logits or probs must be an \(n, n_classes\) array, got neither"),
    (lambda: query("entropy", 2, logits=LOGITS, probs=LOGITS + 1 / 3), "logits and probs must not both be given"),
    (lambda: query("entropy", 2, logits=LOGITS[0]), r"logits must be a 2-D \(n, n_classes\) array .* got shape \(3,\)"),
    (lambda: query("entropy", 2, logits=np.full((6, 3), "a")), "logits must be a numeric"),
    (lambda: query("entropy", 2, logits=np.where(np.eye(6, 3) > 0, np.nan, 0)), r"logits must be finite, got 3 row\(s\)"),
    (lambda: query("entropy", 2, probs=np.full((6, 3), 0.3)), r"probs must sum to 1 in every row .* got row 0 summing to 0.9"),
    (lambda: query("entropy", 2, probs=np.tile([1.5, -0.5, 0.0], (6, 1))), "probs must be non-negative"),
    (lambda: query("coreset", 2, logits=LOGITS), r"reads features: features must be an \(n, d\) array, got None"),
    (lambda: query("coreset", 2, embeddings=FEATURES), "it does not read embeddings: pass them as features"),
    (lambda: query("typiclust", 2), "features or embeddings must be an"),
    (lambda: query("badge", 2, features=FEATURES), "reads class scores"),
    (lambda: query("mc_dropout", 2, logits=LOGITS), "samples the trained model with dropout"),
    (lambda: query("margin", 2, logits=LOGITS, features=FEATURES[:5]), r"features must have one row per row of logits \(6 rows\), got 5"),
    (lambda: query("margin", 2, logits=LOGITS, labeled=[1, 6]), r"labeled must hold row numbers in \[0, 6\), got 1 outside"),
    (lambda: query("margin", 2, logits=LOGITS, labeled=[1, 1]), r"labeled must not repeat a row, got 1 repeat"),
    (lambda: query("margin", 2, logits=LOGITS, labeled=np.ones(6, bool)), "np.flatnonzero"),
    (lambda: query("margin", 2, logits=LOGITS, labeled=[1, 2], pool=[2, 3, 4]), r"pool and labeled must not share rows, got 1 in both"),
    (lambda: query("margin", 5, logits=LOGITS, labeled=[0, 1]), "budget must be at most the 4 rows of the pool, got 5"),
    (lambda: query("margin", -1, logits=LOGITS), "budget must be an integer >= 0"),
    (lambda: query("margin", 2, logits=LOGITS, n_classes=4), "n_classes must match the 3 columns"),
    (lambda: query("random", 2), "pool must be given when no arrays are"),
    (lambda: query("margin", 2, logits=LOGITS, bogus=1), "accepts parameters"),
])
def test_query_refuses_bad_input_up_front(call, message):
    with pytest.raises(ConfigError, match=message):
        call()


def test_query_context_refuses_a_pool_that_overlaps_the_labeled_set():
    pool = PoolOutputs(indices=[3, 4, 5], logits=torch.zeros(3, 2))
    labeled = PoolOutputs(indices=[5, 6], logits=torch.zeros(2, 2))
    with pytest.raises(ConfigError, match=r"pool and labeled must not share indices, got 1 index\(es\) in both"):
        QueryContext(pool=pool, labeled=labeled)
