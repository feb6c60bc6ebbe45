"""ProbCover on large pools, on small hand-made data: the cell-probing graph against the exact
one, the sampled purity radius against the exact one, the degree cap, and bad parameters."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from activecrl.core.errors import ConfigError
from activecrl.inference.outputs import PoolOutputs
from activecrl.strategies import QueryContext, get_strategy
from activecrl.strategies._cellgraph import ball_check, cell_ball_graph, graph_recall
from activecrl.strategies._geometry import GraphTooLarge, ball_graph, kmeans, other_label_pass
from activecrl.strategies.probcover import purity_delta, purity_delta_and_graph, sampled_purity_delta


def ctx(x, n_classes=4):
    n = len(x)
    return QueryContext(pool=PoolOutputs(indices=np.arange(n), logits=np.zeros((n, n_classes), np.float32),
                                         features=x))


def clustered(n=600, d=8, k=12, seed=0, spread=0.3, scale=4.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * scale
    blob = rng.integers(k, size=n)
    return (centres[blob] + rng.normal(size=(n, d)) * spread).astype(np.float32), blob


def brute_force(x, delta):
    d = np.sqrt(((x[:, None].astype(np.float64) - x[None]) ** 2).sum(-1))
    return d, d < delta


def edge_set(ptr, idx):
    return set(zip(np.repeat(np.arange(len(ptr) - 1), np.diff(ptr)).tolist(), idx.tolist()))


def clear_delta(d, around):
    """A radius near ``around`` with no pair distance within 1e-5 (relative) of it: float32
    rounding cannot move a pair across it."""
    for r in around * (1 + 0.001 * np.arange(100)):
        if not (np.abs(d - r) < 1e-5 * r).any():
            return float(r)
    raise AssertionError("no clear radius")


# ---------------------------------------------------------------------------- the cell graph
@pytest.mark.parametrize("n_cells", [1, 7, 30])
def test_cell_graph_probing_every_cell_is_the_exact_graph(n_cells):
    x, _ = clustered()
    d, within = brute_force(x, 1.0)
    delta = clear_delta(d, 1.0)
    ptr, idx = cell_ball_graph(x, delta, np.random.default_rng(0), nprobe=n_cells, n_cells=n_cells)
    ptr_ref, idx_ref = ball_graph(x, delta, 10**7, "t")
    np.testing.assert_array_equal(ptr, ptr_ref)
    np.testing.assert_array_equal(idx, idx_ref)
    assert edge_set(ptr, idx) == set(zip(*np.nonzero(d < delta)))
    # capped: each row's 4 nearest within delta, as the exact graph with the same cap
    ptr, idx = cell_ball_graph(x, delta, np.random.default_rng(0), nprobe=n_cells, n_cells=n_cells, max_degree=4)
    ptr_ref, idx_ref = ball_graph(x, delta, 10**7, "t", max_degree=4)
    np.testing.assert_array_equal(ptr, ptr_ref)
    np.testing.assert_array_equal(ptr, np.r_[0, np.cumsum(np.minimum(4, (d < delta).sum(axis=1)))])
    for i in range(600):
        ranked = np.sort(d[i][d[i] < delta])
        if len(ranked) > 4 and ranked[4] - ranked[3] < 1e-5 * ranked[4]:
            continue  # a near tie for the last place: float32 rounding decides
        near = set(np.argsort(np.where(d[i] < delta, d[i], np.inf), kind="stable")[:min(4, len(ranked))].tolist())
        assert set(idx[ptr[i]:ptr[i + 1]].tolist()) == set(idx_ref[ptr[i]:ptr[i + 1]].tolist()) == near


def test_cell_graph_with_few_probes_holds_no_false_edge_and_is_symmetric():
    x, _ = clustered(800, 16, k=6, spread=1.0)
    d, _ = brute_force(x, 1.0)
    delta = clear_delta(d, 3.5)
    ptr, idx = cell_ball_graph(x, delta, np.random.default_rng(1), nprobe=2, n_cells=40)
    got, exact = edge_set(ptr, idx), set(zip(*np.nonzero(d < delta)))
    assert got <= exact and got == {(b, a) for a, b in got}
    assert 0.5 < len(got) / len(exact) < 1  # approximate, and not trivially so
    rows = np.arange(0, 800, 7)
    neigh = ball_check(x, rows, delta)
    assert [set(e.tolist()) for e in neigh] == [set(np.flatnonzero(d[r] < delta).tolist()) for r in rows]
    recall = graph_recall(ptr, idx, rows, neigh)
    assert recall == sum(len(set(idx[ptr[r]:ptr[r + 1]].tolist())) for r in rows) / sum(map(len, neigh))


def test_degree_cap_in_the_exact_pass_equals_the_capped_ball_graph():
    x, _ = clustered()
    labels, _ = kmeans(x, 12, np.random.default_rng(0))
    delta, ptr, idx = purity_delta_and_graph(x, labels, 0.8, np.random.default_rng(0), 10**7, "t", max_degree=3)
    ptr_ref, idx_ref = ball_graph(x, delta, 10**7, "t", max_degree=3)
    assert delta == purity_delta(x, labels, 0.8) and np.diff(ptr).max() == 3
    np.testing.assert_array_equal(ptr, ptr_ref)
    np.testing.assert_array_equal(idx, idx_ref)
    with pytest.raises(GraphTooLarge, match="max_degree=3 still allows 1,800: pass a smaller max_degree"):
        other_label_pass(x, labels, radius=delta, max_edges=1000, max_degree=3)


# ---------------------------------------------------------------------------- the sampled radius
def test_sampled_purity_delta_is_close_to_the_exact_one_on_blobs():
    rng = np.random.default_rng(0)
    x = (4 * np.eye(4, 8)[rng.integers(4, size=4000)] + rng.normal(size=(4000, 8))).astype(np.float32)
    labels, _ = kmeans(x, 4, np.random.default_rng(1))  # overlapping blobs: m is spread out
    m = other_label_pass(x, labels)[0]
    alpha, s = 0.95, 500
    exact = purity_delta(x, labels, alpha)
    assert sampled_purity_delta(x, labels, alpha, np.random.default_rng(2), 4000) == exact  # the whole pool
    se = np.sqrt(alpha * (1 - alpha) / s)
    for seed in range(5):
        est = sampled_purity_delta(x, labels, alpha, np.random.default_rng(seed), s)
        assert abs(np.mean(m >= est) - alpha) < 3 * se  # the purity at the estimate (docstring's error)
        assert abs(est / exact - 1) < 0.08


# ---------------------------------------------------------------------------- the strategy
def test_strategy_on_the_approximate_path_matches_the_exact_path_when_every_cell_is_probed():
    x, _ = clustered(500, 8, k=10, spread=0.6)
    exact = get_strategy("probcover", normalize=False, n_clusters=10, alpha=0.8)
    a = exact.query(ctx(x), 12, np.random.default_rng(0))
    approx = get_strategy("probcover", normalize=False, n_clusters=10, alpha=0.8, exact_max=0,
                          delta_sample=500, nprobe=20, n_cells=20)
    b = approx.query(ctx(x), 12, np.random.default_rng(0))
    assert not exact.approximate_ and approx.approximate_ and approx.graph_recall_ == 1.0
    assert approx.delta_ == exact.delta_ and exact.n_greedy_ == approx.n_greedy_ == 9
    np.testing.assert_array_equal(a[:9], b[:9])  # then all is covered: random fill, other rng states


@pytest.mark.parametrize("nprobe", [2, 8])
def test_greedy_on_the_approximate_graph_picks_one_point_per_separated_blob(nprobe):
    rng = np.random.default_rng(3)
    blob = rng.integers(8, size=1200)
    x = (3 * np.eye(8, 32)[blob] + 0.2 * rng.normal(size=(1200, 32))).astype(np.float32)
    s = get_strategy("probcover", n_clusters=8, exact_max=0, delta_sample=300, nprobe=nprobe)
    picks = s.query(ctx(x), 8, np.random.default_rng(0))
    assert s.approximate_ and s.n_greedy_ == 8 and s.graph_recall_ > (0.9 if nprobe == 8 else 0.5)
    assert sorted(blob[picks].tolist()) == list(range(8))


@pytest.mark.parametrize("exact_max", [None, 0])
def test_graph_past_max_edges_is_capped_with_a_warning(exact_max, caplog):
    x, blob = clustered(400, 16, k=4, spread=0.2, seed=5)  # balls hold whole blobs: ~40,000 edges
    s = get_strategy("probcover", n_clusters=4, max_edges=8000, exact_max=exact_max, delta_sample=400, nprobe=20)
    with caplog.at_level(logging.WARNING, logger="strategies.probcover"):
        picks = s.query(ctx(x), 4, np.random.default_rng(0))
    assert s.max_degree_ == 20 and "keeping each point's 20 nearest" in caplog.text
    assert len(set(picks.tolist())) == 4
    with pytest.raises(ConfigError, match=r"max_edges=8,000 edges, got .* max_degree=30 still allows 12,000"):
        get_strategy("probcover", n_clusters=4, max_edges=8000, max_degree=30, exact_max=exact_max,
                     delta_sample=400, nprobe=20).query(ctx(x), 4, np.random.default_rng(0))


def test_exact_limit_by_device():
    s = get_strategy("probcover")
    assert s.exact_limit(torch.device("cpu")) == 20_000 and s.exact_limit(torch.device("cuda")) == float("inf")
    assert get_strategy("probcover", exact_max=5).exact_limit(torch.device("cuda")) == 5


@pytest.mark.parametrize("params, message", [
    (dict(exact_max=-1), "exact_max must be an integer >= 0 or None, got -1 instead"),
    (dict(delta_sample=0), "delta_sample must be an integer >= 1, got 0 instead"),
    (dict(nprobe=0), "nprobe must be an integer >= 1, got 0 instead"),
    (dict(nprobe=2.5), "nprobe must be an integer >= 1, got 2.5 instead"),
    (dict(n_cells=0), "n_cells must be an integer >= 1 or None, got 0 instead"),
    (dict(max_degree=0), "max_degree must be an integer >= 1 or None, got 0 instead"),
    (dict(max_degree=True), "max_degree must be an integer >= 1 or None, got True instead"),
])
def test_bad_parameters(params, message):
    x, _ = clustered(50, 4)
    with pytest.raises(ConfigError, match=f"probcover.*{message}"):
        get_strategy("probcover", **params).query(ctx(x), 3, np.random.default_rng(0))
