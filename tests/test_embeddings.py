"""--embeddings and --initial-strategy: loading, checks before anything is written, resume."""

import json

import numpy as np
import pytest

from activecrl.embeddings import load_embeddings
from activecrl.errors import ConfigError
from activecrl.loop import ALConfig, read_records, run_active_learning
from activecrl.trainers import TrainConfig
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
    """Pool and labeled rows of the context are the --embeddings rows of those indices."""
    from strategies import get_strategy
    from strategies import STRATEGIES

    RandomSampling = STRATEGIES.get("random")

    ds = make_blobs_dataset(n_train=60, n_test=20)
    table = np.arange(60 * 2, dtype=np.float32).reshape(60, 2)  # row i = (2i, 2i+1)
    seen = []
    original = RandomSampling.select

    def spy(self, context, budget, rng):
        seen.append(context)
        return original(self, context, budget, rng)

    monkeypatch.setattr(RandomSampling, "select", spy)
    records = run_active_learning(ALConfig(**TINY, embeddings=_emb(tmp_path, table)), tmp_path / "run", dataset=ds)
    (context,) = seen
    pool = context.pool.indices.numpy()
    np.testing.assert_array_equal(context.embeddings.numpy()[:, 0], 2 * pool)
    np.testing.assert_array_equal(context.labeled_embeddings.numpy()[:, 0], 2 * np.asarray(records[0]["initial"]))
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["embeddings"].endswith("emb.npy") and saved["embeddings_fingerprint"]["shape"] == [60, 2]
    assert get_strategy("random")  # the spy did not leak into the registry
