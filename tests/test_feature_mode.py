"""`activecrl run --embeddings E --model linear|mlp`: the loop trains a head on embedding rows."""

import numpy as np
import pytest
import torch

from activecrl.al.loop import ALConfig, run_active_learning
from activecrl.core.errors import ConfigError
from activecrl.data import FeatureData
from activecrl.inference.predict import predict
from activecrl.models import build_model
from tests.conftest import make_blobs_dataset

TINY = dict(initial=20, budget=15, stages=3, trials=1, seed=0, device="cpu",
            train=dict(epochs=15, batch_size=16, lr=0.05, milestones=(0.6, 0.8)))


def _embeddings(ds, folder, width=None):
    """Flattened pixels as the embedding of each split (what `activecrl embed` writes)."""
    folder.mkdir()
    for name, images in (("embeddings.npy", ds.train_images), ("test_embeddings.npy", ds.test_images)):
        rows = images.flatten(1).float().numpy()
        np.save(folder / name, (rows if width is None else rows[:, :width]).astype(np.float16))
    return folder


@pytest.mark.parametrize("model", ["linear", "mlp"])
def test_feature_mode_runs_every_stage_on_the_embeddings(tmp_path, model):
    ds = make_blobs_dataset(n_train=150, n_test=40)
    emb = _embeddings(ds, tmp_path / "emb")
    records = run_active_learning(ALConfig(**TINY, model=model, embeddings=str(emb)), tmp_path / "run", dataset=ds)
    assert [r.n_labeled for r in records] == [20, 35, 50]
    assert records[-1].metrics["accuracy"] > 0.9  # the bands are linearly separable in pixel space


def test_feature_mode_equals_a_head_trained_by_hand(tmp_path):
    # the loop's feature path is exactly FeatureData + build_model + the trainer: same seed, same accuracy
    ds = make_blobs_dataset(n_train=150, n_test=40)
    emb = _embeddings(ds, tmp_path / "emb")
    config = ALConfig(**{**TINY, "stages": 1}, model="linear", embeddings=str(emb), strategy="random")
    record = run_active_learning(config, tmp_path / "run", dataset=ds)[0]
    from activecrl.core.runtime import seed_everything
    from activecrl.al.loop import torch_seed
    from activecrl.training.trainers import build_trainer

    train = FeatureData(np.load(emb / "embeddings.npy"), ds.train_labels)
    test = FeatureData(np.load(emb / "test_embeddings.npy"), ds.test_labels, stats=(train.mean, train.std))
    seed = torch_seed(0, 0, 0)
    seed_everything(seed)
    model = build_model("linear", num_classes=3, in_channels=train.dim, image_size=8)
    build_trainer("crl", config.train.updated(seed=seed)).fit(model, train, torch.tensor(record.initial))
    out = predict(model, test, features=False)
    accuracy = (out.logits.argmax(1) == ds.test_labels[out.indices]).double().mean().item()
    assert record.metrics["accuracy"] == pytest.approx(accuracy)


def test_feature_mode_needs_embeddings_of_both_splits(tmp_path):
    ds = make_blobs_dataset(n_train=150, n_test=40)
    with pytest.raises(ConfigError, match="--model linear trains on embeddings, got no --embeddings"):
        run_active_learning(ALConfig(**TINY, model="linear"), tmp_path / "a", dataset=ds)
    emb = _embeddings(ds, tmp_path / "emb")
    (emb / "test_embeddings.npy").unlink()
    with pytest.raises(ConfigError, match="test_embeddings.npy"):
        run_active_learning(ALConfig(**TINY, model="linear", embeddings=str(emb)), tmp_path / "b", dataset=ds)
    np.save(emb / "test_embeddings.npy", np.zeros((40, 5), dtype=np.float32))
    with pytest.raises(ConfigError, match="width of the training embeddings"):
        run_active_learning(ALConfig(**TINY, model="linear", embeddings=str(emb)), tmp_path / "c", dataset=ds)
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()  # refused before anything is written


def test_timm_backbone_in_the_loop(tmp_path):
    pytest.importorskip("timm")
    ds = make_blobs_dataset(n_train=60, n_test=20, channels=3, size=16)
    config = ALConfig(**{**TINY, "initial": 10, "budget": 5, "stages": 2,
                         "train": dict(epochs=1, batch_size=8, milestones=(0.6, 0.8))},
                      model="timm:resnet18", input_size=32, freeze_backbone=True, strategy="entropy")
    records = run_active_learning(config, tmp_path / "run", dataset=ds)
    assert [r.n_labeled for r in records] == [10, 15]


@pytest.mark.parametrize("shape", [(1, 3), (5, 2), (4096, 7), (10_001, 33), (300, 1)])
def test_feature_stats_are_numpys_float64_stats_bit_for_bit(monkeypatch, shape):
    from activecrl.data import features

    monkeypatch.setattr(features, "_STATS_ROWS", 64)  # many chunks, and a partial last one
    rng = np.random.default_rng(shape[0])
    x = (rng.standard_normal(shape) * 10 ** rng.uniform(-3, 3, shape[1]) + rng.uniform(-50, 50, shape[1]))
    x = x.astype(np.float32)
    mean, std = features.feature_stats(x)
    assert np.array_equal(mean, x.astype(np.float64).mean(axis=0))
    assert np.array_equal(std, x.astype(np.float64).std(axis=0))
    standardised = FeatureData(x).features
    expected = (torch.from_numpy(x) - torch.from_numpy(mean).float()) / (torch.from_numpy(std).float() + 1e-6)
    assert torch.equal(standardised, expected)
