"""Query strategies: the select contract for every registered strategy, hand-computed orderings,
core-set against brute force, MC dropout head sampling against full passes, and the registry."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from activecrl.core.errors import ConfigError, RegistryError
from activecrl.inference.outputs import PoolOutputs
from activecrl.strategies import (
    STRATEGIES,
    QueryContext,
    Strategy,
    StrategyError,
    get_strategy,
    k_center_greedy,
    register_strategy,
    select_top,
)

from activecrl.inference.mc_dropout import mc_dropout_stats
from activecrl.models import build_model

K, D, IN = 4, 8, 6


def pool_stats(model, ctx, **kw):
    """The MC-dropout engine on a query context's pool, as the mc_dropout / bald strategies call it."""
    return mc_dropout_stats(model, ctx.data, ctx.pool.indices, features=ctx.pool.features,
                            batch_size=ctx.batch_size, **kw)



# ---------------------------------------------------------------------------- helpers
class HeadDropoutNet(nn.Module):
    """ConfidenceModel-like: deterministic body (with BatchNorm), Dropout only in the head."""

    head_only_dropout = True

    def __init__(self, p=0.5, d_in=IN, d=D, k=K):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d_in, d), nn.BatchNorm1d(d), nn.ReLU())
        self.classifier = nn.Sequential(nn.Dropout(p), nn.Linear(d, k))
        with torch.no_grad():  # non-trivial running statistics
            self.body[1].running_mean.uniform_(-0.5, 0.5)
            self.body[1].running_var.uniform_(0.5, 2.0)

    def features(self, x):
        return self.body(x)

    def forward(self, x, return_features=False):
        f = self.body(x)
        out = self.classifier(f)
        return (out, f) if return_features else out


class BodyDropoutNet(HeadDropoutNet):
    head_only_dropout = False

    def __init__(self, p=0.5):
        super().__init__(p)
        self.body = nn.Sequential(nn.Linear(IN, D), nn.Dropout(p), nn.ReLU())


class FakeData:
    """The part of DeviceData that strategies use: ordered, unaugmented eval batches."""

    def __init__(self, x):
        self.x = x
        self.y = torch.zeros(len(x), dtype=torch.long)
        self.device = torch.device("cpu")
        self.calls = 0

    def eval_batches(self, indices=None, batch_size=1024):
        self.calls += 1
        idx = torch.arange(len(self.x)) if indices is None else torch.as_tensor(indices, dtype=torch.long)
        for s in range(0, len(idx), batch_size):
            b = idx[s:s + batch_size]
            yield self.x[b], self.y[b], b


def assert_near(a, b, atol):
    assert a.shape == b.shape
    diff = float((a - b).abs().max())
    assert diff <= atol, f"max |difference| {diff:.3g} > {atol:g}"


def eval_features(model, data, indices, batch_size):
    model.eval()
    with torch.no_grad():
        return torch.cat([model.features(x) for x, _, _ in data.eval_batches(indices, batch_size)])


def make_context(n_pool=60, n_labeled=20, seed=0):
    rng = np.random.default_rng(seed)
    perm = rng.permutation(1000)
    pool_idx, lab_idx = perm[:n_pool], perm[n_pool:n_pool + n_labeled]
    probs = rng.dirichlet(np.ones(K), size=n_pool)
    pool = PoolOutputs.from_probs(probs, indices=pool_idx, features=rng.normal(size=(n_pool, D)))
    labeled = PoolOutputs.from_probs(rng.dirichlet(np.ones(K), size=n_labeled), indices=lab_idx,
                                     features=rng.normal(size=(n_labeled, D)))
    torch.manual_seed(seed)
    return QueryContext(pool=pool, labeled=labeled, model=HeadDropoutNet())


# ---------------------------------------------------------------------------- contract
@pytest.mark.parametrize("name", STRATEGIES.names())
def test_contract_every_registered_strategy(name):
    ctx = make_context()
    # fewer MC samples keep the test quick on a busy machine; typiclust's default drops clusters
    # of <= 5 points, which at 80 points is nearly all of them (its error is tested elsewhere)
    params = {"mc_dropout": {"n_samples": 5}, "bald": {"n_samples": 5}, "typiclust": {"min_cluster_size": 0}}
    strategy = get_strategy(name, **params.get(name, {}))
    assert isinstance(strategy, Strategy)
    pool = set(ctx.pool.indices.tolist())
    labeled = set(ctx.labeled.indices.tolist())
    for budget in (0, 1, 7, 60, 100):
        out = strategy.query(ctx, budget, np.random.default_rng(1))
        assert isinstance(out, np.ndarray) and out.dtype == np.int64 and out.ndim == 1
        assert len(out) == min(budget, len(ctx.pool))
        assert len(set(out.tolist())) == len(out)
        assert set(out.tolist()) <= pool and not set(out.tolist()) & labeled
    assert set(strategy.query(ctx, 100, np.random.default_rng(1)).tolist()) == pool
    a = strategy.query(ctx, 9, np.random.default_rng(5))
    b = strategy.query(ctx, 9, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("budget", [-1, 2.5, "3", True, None])
def test_budget_must_be_non_negative_integer(budget):
    with pytest.raises(ConfigError, match="budget must be an integer >= 0"):
        get_strategy("entropy").query(make_context(), budget, np.random.default_rng(0))


def test_numpy_integer_budget_and_empty_pool():
    ctx = make_context()
    assert len(get_strategy("margin").query(ctx, np.int64(3), np.random.default_rng(0))) == 3
    empty = QueryContext(pool=ctx.pool.subset(torch.arange(0)))
    assert get_strategy("random").query(empty, 5, np.random.default_rng(0)).shape == (0,)


# ---------------------------------------------------------------------------- hand-computed
HAND = np.array([[0.9, 0.05, 0.05],   # confident
                 [0.34, 0.33, 0.33],  # flat: max entropy, lowest max prob
                 [0.5, 0.5, 0.0],     # two-way tie: smallest margin
                 [0.6, 0.3, 0.1]])
HAND_IDX = np.array([500, 10, 77, 3])


@pytest.mark.parametrize("name, order", [
    ("entropy", [1, 3, 2, 0]),     # H: 0.39, 1.10, 0.69, 0.90
    ("least_conf", [1, 2, 3, 0]),  # max p: 0.9, 0.34, 0.5, 0.6
    ("margin", [2, 1, 3, 0]),      # p1 - p2: 0.85, 0.01, 0.0, 0.3
])
def test_uncertainty_orderings(name, order):
    ctx = QueryContext(pool=PoolOutputs.from_probs(HAND, indices=HAND_IDX))
    for budget in range(1, 5):
        out = get_strategy(name).query(ctx, budget, np.random.default_rng(0))
        np.testing.assert_array_equal(out, HAND_IDX[order[:budget]])


def test_scores_in_float64_keep_tiny_differences():
    # entropies differ by ~1e-13: equal in float32, ordered in float64
    logits = torch.tensor([[0.0, 2e-6], [0.0, 1e-6]])
    ctx = QueryContext(pool=PoolOutputs(indices=torch.tensor([7, 8]), logits=logits))
    assert get_strategy("entropy").query(ctx, 1, np.random.default_rng(0)).tolist() == [8]


def test_select_top_ties_and_nan():
    idx = np.array([40, 41, 42, 43, 44])
    assert select_top(np.array([1.0, 2.0, 2.0, 0.0, 2.0]), idx, 2).tolist() == [41, 42]
    assert select_top(np.array([np.nan, 1.0, 0.0, 3.0, 2.0]), idx, 5).tolist() == [43, 44, 41, 42, 40]
    assert select_top(torch.zeros(5), torch.as_tensor(idx), 9).tolist() == idx.tolist()
    with pytest.raises(ConfigError, match="scores must have shape"):
        select_top(np.zeros(4), idx, 2)


def test_random_is_uniform_without_replacement():
    ctx = make_context(n_pool=10)
    counts = np.zeros(1000)
    rng = np.random.default_rng(0)
    for _ in range(300):
        counts[get_strategy("random").query(ctx, 3, rng)] += 1
    hits = counts[ctx.pool.indices.numpy()]
    assert hits.sum() == 900 and hits.min() > 50 and hits.max() < 130


# ---------------------------------------------------------------------------- core-set
def brute_force_k_center(pool, labeled, budget, first=None):
    """Textbook k-center greedy in float64 with the full distance matrices."""
    d_pp = ((pool[:, None, :] - pool[None, :, :]) ** 2).sum(-1)
    if labeled is not None and len(labeled):
        min_d = ((pool[:, None, :] - labeled[None, :, :]) ** 2).sum(-1).min(1)
        picks = []
    else:
        picks = [first]
        min_d = d_pp[first].copy()
    while len(picks) < budget:
        j = int(np.argmax(min_d))
        picks.append(j)
        min_d = np.minimum(min_d, d_pp[j])
    return np.array(picks)


def test_coreset_matches_brute_force():
    rng = np.random.default_rng(0)
    pool_f = rng.normal(size=(300, 16))
    lab_f = rng.normal(size=(20, 16))
    pool_idx = rng.permutation(1000)[:300]
    ctx = QueryContext(pool=PoolOutputs.from_probs(np.full((300, 3), 1 / 3), indices=pool_idx,
                                                   features=pool_f),
                       labeled=PoolOutputs.from_probs(np.full((20, 3), 1 / 3), indices=1000 + np.arange(20),
                                                      features=lab_f))
    out = get_strategy("coreset").query(ctx, 50, np.random.default_rng(0))
    np.testing.assert_array_equal(out, pool_idx[brute_force_k_center(pool_f, lab_f, 50)])


def test_nearest_center_faiss_and_chunked_torch_agree(monkeypatch):
    import activecrl.strategies.coreset as cs
    rng = np.random.default_rng(2)
    x = torch.as_tensor(rng.normal(size=(70, 5)), dtype=torch.float32)
    c = torch.as_tensor(rng.normal(size=(9, 5)), dtype=torch.float32)
    exact = ((x.double()[:, None] - c.double()[None]) ** 2).sum(-1).min(1).values
    monkeypatch.setattr(cs, "_CHUNK_ELEMENTS", 40)  # 4 rows per chunk: many chunks
    for use_faiss in (True, False):
        got = cs.nearest_center_sq_dist(x, c, "cpu", use_faiss=use_faiss)
        assert_near(got.double(), exact, 1e-4)


def test_coreset_without_labeled_starts_from_rng_point():
    rng = np.random.default_rng(1)
    pool_f = rng.normal(size=(120, 8))
    first = int(np.random.default_rng(3).integers(120))
    picks = k_center_greedy(torch.as_tensor(pool_f, dtype=torch.float32), None, 25, np.random.default_rng(3))
    np.testing.assert_array_equal(picks, brute_force_k_center(pool_f, None, 25, first=first))


@pytest.mark.parametrize("labeled", [True, False])
def test_coreset_accelerator_loop_matches_cpu_loop(labeled):
    """The torch loop used on GPUs, run on the CPU, picks what the numpy-updated CPU loop picks."""
    import activecrl.strategies.coreset as cs
    rng = np.random.default_rng(4)
    x = torch.as_tensor(rng.normal(size=(200, 12)), dtype=torch.float32)
    c = torch.as_tensor(rng.normal(size=(15, 12)), dtype=torch.float32)
    sq = (x * x).sum(1)
    first = None if labeled else 17
    init = cs.nearest_center_sq_dist(x, c, "cpu", use_faiss=False) if labeled else torch.full((200,), np.inf)
    a = cs._greedy_cpu(x, sq, init.clone(), 40, first)
    b = cs._greedy_torch(x, sq, init.clone(), 40, first)
    np.testing.assert_array_equal(a, b)
    want = brute_force_k_center(x.double().numpy(), c.double().numpy() if labeled else None, 40, first=first)
    np.testing.assert_array_equal(a, want)


def test_coreset_duplicate_features_never_repicks():
    feats = np.ones((10, 4))
    ctx = QueryContext(pool=PoolOutputs.from_probs(np.full((10, 2), 0.5), indices=np.arange(100, 110),
                                                   features=feats),
                       labeled=PoolOutputs.from_probs(np.full((2, 2), 0.5), indices=[0, 1],
                                                      features=np.ones((2, 4))))
    out = get_strategy("coreset").query(ctx, 6, np.random.default_rng(0))
    assert out.tolist() == list(range(100, 106))  # all distances 0: next unpicked position
    import activecrl.strategies.coreset as cs
    x = torch.ones(10, 4)
    picks = cs._greedy_torch(x, (x * x).sum(1), torch.zeros(10), 6, None)  # the GPU loop
    assert picks.tolist() == list(range(6))


def clustered(n, d, n_clusters, seed, scale=6.0):
    """Well-separated blobs, like penultimate features of a trained classifier."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=scale, size=(n_clusters, d))
    return centers[rng.integers(n_clusters, size=n)] + rng.normal(size=(n, d))


@pytest.mark.parametrize("labeled", [True, False])
def test_coreset_grouped_path_matches_brute_force_and_skips_work(monkeypatch, labeled):
    """CPU pools >= _PRUNE_MIN_N take the grouped path; forced here on a small clustered pool:
    it picks what float64 brute force picks, while skipping most rows and most labeled points."""
    import activecrl.strategies.coreset as cs
    monkeypatch.setattr(cs, "_PRUNE_MIN_N", 1)
    feats = clustered(960, 16, 6, seed=5)
    pool_f, lab_f = feats[:900], (feats[900:] if labeled else None)
    first = None if labeled else int(np.random.default_rng(3).integers(900))
    picks = k_center_greedy(torch.as_tensor(pool_f, dtype=torch.float32),
                            None if lab_f is None else torch.as_tensor(lab_f, dtype=torch.float32), 80,
                            np.random.default_rng(3))
    np.testing.assert_array_equal(picks, brute_force_k_center(pool_f, lab_f, 80, first=first))
    x = torch.as_tensor(pool_f, dtype=torch.float32)
    stats = {}
    cs._k_center_grouped(x, (x * x).sum(1), None if lab_f is None else torch.as_tensor(lab_f, dtype=torch.float32),
                         80, first, stats)
    assert stats["groups"] == 30 and stats["rows_fraction"] < 0.5
    if labeled:
        assert stats["init_fraction"] < 0.5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coreset_grouped_loop_is_the_plain_loop(seed):
    """Given the same initial distances, the grouped loop picks exactly what _greedy_cpu picks
    (the skipped rows could not have changed min_dist, rounding included), in the same order."""
    import activecrl.strategies.coreset as cs
    feats = torch.as_tensor(clustered(3100, 24, 8, seed=seed, scale=2.0 + seed), dtype=torch.float32)
    x, c = feats[:3000], feats[3000:]
    sq = (x * x).sum(1)
    init = cs.nearest_center_sq_dist(x, c, "cpu")
    plain = cs._greedy_cpu(x, sq, init.clone(), 300, None)
    stats = {}
    grouped = cs._k_center_grouped(x, sq, None, 300, None, stats, min_dist=init.numpy())
    np.testing.assert_array_equal(grouped, plain)
    assert stats["rows_fraction"] < 0.9
    # the grouped nearest-labeled search finds the same distances (up to float32 rounding)
    groups = cs._Groups(x, 54)
    found = cs._nearest_center_grouped(groups, c, cs._sq_dist_err(24, float(sq.max()) * 4), float(sq.max()) * 4)
    exact = ((x.double()[:, None] - c.double()[None]) ** 2).sum(-1).min(1).values.numpy()
    np.testing.assert_allclose(found, exact[groups.perm], rtol=1e-5, atol=1e-3)


def test_coreset_grouped_ties_go_to_first_pool_position(monkeypatch):
    """Equal distances across groups: the grouped path breaks ties by pool position, as the
    plain loop (np.argmax) does, whatever order the groups are laid out in."""
    import activecrl.strategies.coreset as cs
    monkeypatch.setattr(cs, "_PRUNE_MIN_N", 1)
    a, b = np.zeros(4), np.r_[2.0, np.zeros(3)]
    pool_f = np.stack([b if i % 3 else a for i in range(30)])  # duplicates of two points
    lab_f = np.r_[1.0, np.zeros(3)][None]  # equidistant from both
    x = torch.as_tensor(pool_f, dtype=torch.float32)
    got = k_center_greedy(x, torch.as_tensor(lab_f, dtype=torch.float32), 8, np.random.default_rng(0))
    want = cs._greedy_cpu(x, (x * x).sum(1), cs.nearest_center_sq_dist(x, torch.as_tensor(lab_f, dtype=torch.float32)),
                          8, None)
    np.testing.assert_array_equal(got, want)
    assert got.tolist() == [0, 1, 2, 3, 4, 5, 6, 7]


def test_coreset_needs_features():
    ctx = QueryContext(pool=PoolOutputs.from_probs(HAND, indices=HAND_IDX))
    with pytest.raises(ConfigError, match="needs penultimate features"):
        get_strategy("coreset").query(ctx, 2, np.random.default_rng(0))


# ---------------------------------------------------------------------------- MC dropout
def mc_setup(model_cls=HeadDropoutNet, p=0.5, seed=0):
    torch.manual_seed(seed)
    gen = np.random.default_rng(seed)
    data = FakeData(torch.randn(200, IN))
    model = model_cls(p=p) if model_cls is not BodyDropoutNet else BodyDropoutNet(p)
    pool_idx = gen.permutation(200)[:50]  # unordered, not 0..n-1
    logits = torch.randn(50, K)
    feats = eval_features(model, data, pool_idx, 16) if model_cls is HeadDropoutNet else None
    ctx = QueryContext(pool=PoolOutputs(indices=pool_idx, logits=logits, features=feats),
                       model=model, data=data, batch_size=16)
    return model, data, ctx


def test_mc_head_sampling_equals_full_passes():
    model, data, ctx = mc_setup()
    head = pool_stats(model, ctx, n_samples=6, seed=123)
    full = pool_stats(model, ctx, n_samples=6, seed=123, head_only=False)
    assert head.head_only and not full.head_only
    assert_near(head.mean_probs, full.mean_probs, 1e-6)
    assert_near(head.mean_entropy, full.mean_entropy, 1e-6)
    # the samples really are stochastic, and seeded
    assert (head.mutual_information > 1e-4).any()
    other = pool_stats(model, ctx, n_samples=6, seed=124)
    assert not torch.allclose(head.mean_probs, other.mean_probs)
    for name in ("mc_dropout", "bald"):
        strategy = get_strategy(name, n_samples=6)
        picks_head = strategy.query(ctx, 12, np.random.default_rng(9))
        full_ctx = QueryContext(pool=PoolOutputs(ctx.pool.indices, ctx.pool.logits), model=model,
                                data=data, batch_size=16)  # no features: full passes
        np.testing.assert_array_equal(picks_head, strategy.query(full_ctx, 12, np.random.default_rng(9)))


def test_mc_full_passes_for_dropout_in_body():
    model, data, ctx = mc_setup(BodyDropoutNet)
    stats = pool_stats(model, ctx, n_samples=5, seed=0)
    assert not stats.head_only and data.calls == 5
    with pytest.raises(ConfigError, match="inside model.classifier"):
        pool_stats(model, ctx, n_samples=5, seed=0, head_only=True)
    no_data = QueryContext(pool=ctx.pool, model=model)
    with pytest.raises(ConfigError, match="context.data"):
        get_strategy("bald", n_samples=3).query(no_data, 2, np.random.default_rng(0))


@pytest.mark.parametrize("p", [0.0, None])
def test_mc_zero_dropout_raises(p):
    model, data, ctx = mc_setup(p=p or 0.0)
    if p is None:  # no Dropout module at all
        model.classifier = nn.Sequential(nn.Linear(D, K))
    for name in ("mc_dropout", "bald"):
        assert get_strategy(name).n_samples == 50 and get_strategy(name).requires_dropout
        with pytest.raises(ConfigError, match="dropout rate 0; train with --dropout"):
            get_strategy(name).query(ctx, 3, np.random.default_rng(0))


def test_mc_keeps_batchnorm_in_eval_and_restores_modes_and_rng():
    model, data, ctx = mc_setup()
    model.train()
    bn = model.body[1]
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    rng_state = torch.get_rng_state()
    for head_only in (True, False):
        pool_stats(model, ctx, n_samples=4, seed=0, head_only=head_only)
    for k, v in bn.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(m.training for m in model.modules())
    assert torch.equal(torch.get_rng_state(), rng_state)


@pytest.mark.parametrize("name, n_samples", [("mc_dropout", 0), ("mc_dropout", -2), ("mc_dropout", 1.5),
                                             ("bald", 1)])
def test_mc_bad_n_samples(name, n_samples):
    with pytest.raises(ConfigError, match="n_samples must be an integer"):
        get_strategy(name, n_samples=n_samples).query(make_context(), 3, np.random.default_rng(0))


def test_mc_with_real_confidence_model():
    torch.manual_seed(0)
    model = build_model("small_cnn", num_classes=3, in_channels=3, image_size=8, dropout=0.5)
    assert model.head_only_dropout
    data = FakeData(torch.randn(20, 3, 8, 8))
    idx = np.arange(3, 17)
    model.eval()
    with torch.no_grad():
        logits, feats = zip(*[model(x, return_features=True) for x, _, _ in data.eval_batches(idx, 8)])
    ctx = QueryContext(pool=PoolOutputs(idx, torch.cat(logits), torch.cat(feats)), model=model, data=data,
                       batch_size=8)
    head = pool_stats(model, ctx, n_samples=2, seed=1)
    full = pool_stats(model, ctx, n_samples=2, seed=1, head_only=False)
    assert head.head_only and not full.head_only
    assert_near(head.mean_probs, full.mean_probs, 1e-5)
    # really sampled: not the deterministic softmax of the eval-mode logits
    assert not torch.allclose(head.mean_probs, torch.softmax(torch.cat(logits).double(), 1), atol=1e-4)


# ---------------------------------------------------------------------------- registry
def test_registry_duplicate_and_unknown():
    with pytest.raises(RegistryError, match="already registered"):
        @register_strategy("entropy")
        class Again(Strategy):
            def select(self, context, budget, rng):
                return context.pool.indices.numpy()[:budget]
    with pytest.raises(RegistryError, match="valid strategies are: .*coreset.*entropy"):
        get_strategy("entropi")
    with pytest.raises(RegistryError, match="expects a Strategy subclass"):
        register_strategy("not_a_strategy")(object)


def test_register_user_strategy():
    @register_strategy("first_k_test")
    class FirstK(Strategy):
        def select(self, context, budget, rng):
            return context.pool.indices.numpy()[:budget]
    try:
        assert "first_k_test" in STRATEGIES and FirstK.name == "first_k_test"
        ctx = make_context()
        assert get_strategy("first_k_test").query(ctx, 3, np.random.default_rng(0)).tolist() == \
            ctx.pool.indices[:3].tolist()
    finally:
        STRATEGIES.unregister("first_k_test")


def test_bad_params_listed():
    with pytest.raises(ConfigError, match=r"accepts parameters \['n_samples'\], got \['samples'\]"):
        get_strategy("mc_dropout", samples=3)


USER_MODULE = textwrap.dedent("""
    import numpy as np
    from activecrl.strategies import Strategy

    class LastK(Strategy):
        name = "last_k"
        def __init__(self, offset=0):
            self.offset = offset
        def select(self, context, budget, rng):
            idx = context.pool.indices.numpy()
            return idx[len(idx) - budget - self.offset:len(idx) - self.offset]

    class Dupes(Strategy):
        name = "dupes"
        def select(self, context, budget, rng):
            return np.repeat(context.pool.indices.numpy()[:1], budget)

    class Positions(Strategy):
        name = "positions"
        def select(self, context, budget, rng):
            return np.arange(budget)

    class NotAStrategy:
        pass
""")


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_user_strategies.py").write_text(USER_MODULE)
    (tmp_path / "broken_user_strategies.py").write_text("import no_such_dependency_for_activecrl_test\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_user_strategies"


def test_user_strategy_by_path(user_module):
    ctx = make_context()
    s = get_strategy(f"{user_module}:LastK", offset=1)
    assert repr(s) == "LastK(offset=1)"
    assert s.query(ctx, 2, np.random.default_rng(0)).tolist() == ctx.pool.indices[-3:-1].tolist()


def test_user_strategy_path_errors(user_module):
    with pytest.raises(ConfigError, match="must be a subclass of strategies.Strategy"):
        get_strategy(f"{user_module}:NotAStrategy")
    with pytest.raises(ConfigError, match="has no attribute 'Nope'.*Dupes, LastK, Positions"):
        get_strategy(f"{user_module}:Nope")
    with pytest.raises(ConfigError, match="could not be found"):
        get_strategy("no_such_pkg_for_activecrl.mod:Cls")
    with pytest.raises(ConfigError, match="failed to import: No module named 'no_such_dependency"):
        get_strategy("broken_user_strategies:Cls")
    with pytest.raises(ConfigError, match="must look like"):
        get_strategy(f"{user_module}:")


@pytest.mark.parametrize("cls, message", [
    ("Dupes", "strategy 'dupes'.*must return unique indices"),
    ("Positions", "strategy 'positions'.*outside the pool"),
    ("LastK", "strategy 'last_k'.*exactly min\\(budget, len\\(pool\\)\\) = 4 indices, got 3"),
])
def test_contract_violations_name_the_strategy(user_module, cls, message):
    ctx = make_context()
    params = {"offset": -1} if cls == "LastK" else {}  # offset -1 returns one too few
    with pytest.raises(StrategyError, match=message):
        get_strategy(f"{user_module}:{cls}", **params).query(ctx, 4, np.random.default_rng(0))


def test_user_strategy_from_entry_point(user_module, tmp_path, monkeypatch):
    dist = tmp_path / "my_strategy_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-strategy-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[activecrl.strategies]\nlast_k_plugin = {user_module}:LastK\n")
    monkeypatch.setattr(STRATEGIES, "_entry_points_loaded", False)
    try:
        s = get_strategy("last_k_plugin", offset=0)
        ctx = make_context()
        assert s.query(ctx, 2, np.random.default_rng(0)).tolist() == ctx.pool.indices[-2:].tolist()
    finally:
        STRATEGIES.unregister("last_k_plugin")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_coreset_matches_cpu():
    from activecrl.strategies.coreset import k_center_greedy

    g = torch.Generator().manual_seed(0)
    centers = torch.randn(8, 32, generator=g) * 10
    pool = centers[torch.randint(0, 8, (3000,), generator=g)] + torch.randn(3000, 32, generator=g)
    labeled = pool[:50] + 0.01
    cpu = k_center_greedy(pool, labeled, 100, np.random.default_rng(0), device="cpu")
    gpu = k_center_greedy(pool, labeled, 100, np.random.default_rng(0), device="cuda")
    assert set(cpu.tolist()) == set(gpu.tolist())
