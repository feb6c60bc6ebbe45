"""--embeddings and --initial-strategy: loading, checks before anything is written, resume."""

import json

import numpy as np
import pytest

from activecrl.embeddings.load import load_embeddings
from activecrl.core.errors import ConfigError
from activecrl.al.loop import ALConfig, read_records, run_active_learning
from activecrl.training.trainers import TrainConfig
from tests.conftest import make_blobs_dataset

TINY = dict(dataset="blobs", model="small_cnn", trainer="baseline", strategy="random", initial=12, budget=9,
            stages=2, trials=1, seed=3, device="cpu", train=TrainConfig(epochs=1, batch_size=16, milestones=(0.6, 0.8)))


def _emb(tmp_path, array, name="emb.npy"):
    path = tmp_path / name
    np.save(path, array)
    return str(path)


def test_load_embeddings_folder_and_file(tmp_path):
    rows = np.random.default_rng(0).normal(size=(30, 4))
    (tmp_path / "pre").mkdir()
    np.save(tmp_path / "pre" / "embeddings.npy", rows)
    array, info = load_embeddings(tmp_path / "pre", 30)
    assert array.dtype == np.float32 and array.shape == (30, 4)
    np.testing.assert_allclose(array, rows, rtol=1e-6)
    assert info["shape"] == [30, 4] and len(info["sha256"]) == 64
    assert load_embeddings(tmp_path / "pre" / "embeddings.npy", 30)[1]["sha256"] == info["sha256"]


@pytest.mark.parametrize("array, message", [
    (np.zeros((29, 4)), "one row per training-split image \\(30 rows\\), got 29"),
    (np.zeros(30), "must be 2-D"),
    (np.zeros((30, 2, 2)), "must be 2-D"),
    (np.where(np.eye(30, 4) > 0, np.nan, 0.0), "must be finite"),
    (np.full((30, 4), np.inf), "must be finite"),
    (np.array([["a"] * 4] * 30), "real numbers"),
])
def test_bad_embeddings_are_refused(tmp_path, array, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_embeddings(_emb(tmp_path, array), 30)
    assert "--embeddings" in str(info.value)


def test_folder_without_embeddings_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="--embeddings.*without it"):
        load_embeddings(tmp_path, 30)
    with pytest.raises(ConfigError, match="--embeddings.*does not exist"):
        load_embeddings(tmp_path / "nope.npy", 30)
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(ConfigError, match="--embeddings.*could not be read"):
        load_embeddings(tmp_path / "junk.npy", 30)


@pytest.mark.parametrize("bad", [np.zeros((10, 3)), np.full((60, 3), np.nan)])
def test_run_with_bad_embeddings_writes_nothing(tmp_path, bad):
    ds = make_blobs_dataset(n_train=60, n_test=20)
    with pytest.raises(ConfigError, match="--embeddings"):
        run_active_learning(ALConfig(**TINY, embeddings=_emb(tmp_path, bad)), tmp_path / "run", dataset=ds)
    assert not (tmp_path / "run").exists()


def test_initial_strategy_validation():
    with pytest.raises(ConfigError, match="initial_strategy must be one of random, typiclust, probcover"):
        ALConfig(initial_strategy="kmeans")
    with pytest.raises(ConfigError, match="--initial-strategy typiclust .*--embeddings"):
        ALConfig(initial_strategy="typiclust")


def test_embeddings_reach_the_strategy_in_index_order(tmp_path, monkeypatch):
    """The context carries the --embeddings matrix; Strategy.embedding gives the pool's and the labeled set's rows."""
    from activecrl.strategies import STRATEGIES

    TypiClust = STRATEGIES.get("typiclust")
    ds = make_blobs_dataset(n_train=60, n_test=20)
    table = np.arange(60 * 2, dtype=np.float32).reshape(60, 2)  # row i = (2i, 2i+1)
    seen = []
    original = TypiClust.select

    def spy(self, context, budget, rng):
        seen.append((context, self.embedding(context)))
        return original(self, context, budget, rng)

    monkeypatch.setattr(TypiClust, "select", spy)
    forward = []
    import activecrl.al.loop as loop

    real_predict = loop.predict
    monkeypatch.setattr(loop, "predict", lambda *a, **k: forward.append(k) or real_predict(*a, **k))
    config = ALConfig(**{**TINY, "strategy": "typiclust", "strategy_params": {"min_cluster_size": 0, "k_nn": 3}},
                      embeddings=_emb(tmp_path, table))
    records = run_active_learning(config, tmp_path / "run", dataset=ds)
    (context, (pool_rows, labeled_rows)), = seen
    assert context.model is None and all(k.get("features") is False for k in forward)  # no pool forward pass
    np.testing.assert_array_equal(pool_rows[:, 0], 2 * context.pool.indices.numpy())
    np.testing.assert_array_equal(labeled_rows[:, 0], 2 * np.asarray(records[0].initial))
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["embeddings"].endswith("emb.npy") and saved["embeddings_fingerprint"]["shape"] == [60, 2]


def _three_blobs(n_per=30, seed=0):
    """(3 * n_per, 4) embeddings in three tight, far-apart blobs; row i is in blob i % 3."""
    rng = np.random.default_rng(seed)
    centres = np.array([[10, 0, 0, 0], [0, 10, 0, 0], [0, 0, 10, 0]], dtype=np.float64)
    return (centres[np.arange(3 * n_per) % 3] + 0.3 * rng.normal(size=(3 * n_per, 4))).astype(np.float32)


@pytest.mark.parametrize("initial_strategy", ["typiclust", "probcover"])
def test_cold_start_seed_set_covers_every_blob(tmp_path, initial_strategy):
    ds = make_blobs_dataset(n_train=90, n_test=20)
    table = _three_blobs()
    config = ALConfig(**{**TINY, "initial": 3, "stages": 1, "trials": 2}, initial_strategy=initial_strategy,
                      embeddings=_emb(tmp_path, table))
    records = run_active_learning(config, tmp_path / "run", dataset=ds)
    for r in records:
        assert sorted(np.asarray(r.initial) % 3) == [0, 1, 2]  # one seed per blob
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["initial_strategy"] == initial_strategy


def test_typiclust_seed_is_the_point_nearest_each_blob_centre(tmp_path):
    ds = make_blobs_dataset(n_train=90, n_test=20)
    table = _three_blobs()
    config = ALConfig(**{**TINY, "initial": 3, "stages": 1, "trials": 1}, initial_strategy="typiclust",
                      embeddings=_emb(tmp_path, table))
    (record,) = run_active_learning(config, tmp_path / "run", dataset=ds)
    for i in record.initial:
        members = np.flatnonzero(np.arange(90) % 3 == i % 3)
        unit = table / np.linalg.norm(table, axis=1, keepdims=True)  # typiclust works on the unit sphere
        distance = np.linalg.norm(unit[members] - unit[members].mean(0), axis=1)
        assert distance[members == i][0] <= np.sort(distance)[5]  # typical = dense: among the 20% most central


def test_resume_with_a_cold_start_equals_uninterrupted(tmp_path):
    from tests.test_loop import _Crash

    ds = make_blobs_dataset(n_train=90, n_test=20)
    cfg = ALConfig(**{**TINY, "strategy": "probcover", "initial": 6, "budget": 6, "stages": 3, "trials": 2},
                   initial_strategy="typiclust", embeddings=_emb(tmp_path, _three_blobs()))
    full = run_active_learning(cfg, tmp_path / "full", dataset=ds)
    for after in (1, 3):  # mid-trial, and before the second trial's seed set was drawn
        out = tmp_path / f"cut{after}"
        with pytest.raises(KeyboardInterrupt):
            run_active_learning(cfg, out, dataset=ds, callbacks=_Crash(after=after))
        resumed = run_active_learning(ALConfig(device="cpu"), out, dataset=ds, resume=True)

        def strip(rs):
            return [{k: v for k, v in r.to_json().items() if not k.endswith(("_seconds", "_mib"))} for r in rs]

        assert strip(resumed) == strip(full)


def test_resume_refuses_changed_embeddings(tmp_path):
    ds = make_blobs_dataset(n_train=60, n_test=20)
    path = _emb(tmp_path, np.ones((60, 3)))
    run_active_learning(ALConfig(**{**TINY, "trials": 1, "stages": 1}, embeddings=path), tmp_path / "run", dataset=ds)
    np.save(path, np.zeros((60, 3)))
    before = (tmp_path / "run" / "results.jsonl").read_text()
    with pytest.raises(ConfigError, match="--embeddings .* changed since this run started"):
        run_active_learning(ALConfig(device="cpu"), tmp_path / "run", dataset=ds, resume=True)
    assert (tmp_path / "run" / "results.jsonl").read_text() == before


def test_seed_set_larger_than_the_clusters_allow_fails_before_writing(tmp_path):
    ds = make_blobs_dataset(n_train=90, n_test=20)
    config = ALConfig(**{**TINY, "initial": 80}, initial_strategy="typiclust", embeddings=_emb(tmp_path, _three_blobs()))
    with pytest.raises(ConfigError, match="typiclust"):
        run_active_learning(config, tmp_path / "run", dataset=ds)
    assert not (tmp_path / "run").exists()
