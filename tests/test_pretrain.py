"""SimCLR pretraining (--method simclr): the NT-Xent loss, the written files, their order, determinism, learning."""

import json
import math

import numpy as np
import pytest
import torch

from activecrl.core.errors import ConfigError, RegistryError
from activecrl.embeddings.pretrain import PretrainConfig, SimCLRAugment, knn_accuracy, nt_xent, pretrain
from tests.conftest import make_blobs_dataset


def test_nt_xent_on_a_hand_made_case():
    # two images with orthogonal projections, both views identical: each view's positive has
    # cosine 1, its two negatives cosine 0, so every term is -log(e / (e + 2)) at temperature 1
    e = torch.eye(2)
    assert nt_xent(e, e.clone(), 1.0).item() == pytest.approx(-math.log(math.e / (math.e + 2)), rel=1e-6)
    # scale does not matter (the projections are normalised); temperature does
    assert nt_xent(3 * e, e, 0.5).item() == pytest.approx(-math.log(math.exp(2) / (math.exp(2) + 2)), rel=1e-6)


def test_nt_xent_equals_the_papers_sum():
    g = torch.Generator().manual_seed(0)
    z1, z2, t = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g), 0.3
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1).double()
    n = len(z)
    total = 0.0
    for i in range(n):
        positive = (i + 5) % n
        denominator = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(n) if k != i)
        total += -math.log(math.exp(float(z[i] @ z[positive]) / t) / denominator)
    assert nt_xent(z1, z2, t).item() == pytest.approx(total / n, rel=1e-5)


def test_augment_is_seeded_and_keeps_range_and_shape():
    x = torch.rand(6, 3, 8, 8)
    aug = SimCLRAugment()
    a = aug(x, torch.Generator().manual_seed(1))
    b = aug(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and 0 <= a.min() and a.max() <= 1
    assert not torch.equal(a, aug(x, torch.Generator().manual_seed(2)))
    gray = SimCLRAugment(jitter=(0.0, 0.0, 0.0, 0.0), grayscale_p=1.0)(x, torch.Generator().manual_seed(0))
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])
    one_channel = aug(torch.rand(4, 1, 8, 8), torch.Generator().manual_seed(0))
    assert one_channel.shape == (4, 1, 8, 8)


def test_knn_accuracy_on_hand_made_points():
    train = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float32)
    labels = np.array([0, 0, 1, 1])
    test = np.array([[1, 0.05], [0.05, 1]], dtype=np.float32)
    assert knn_accuracy(train, labels, test, np.array([0, 1]), k=2) == 1.0
    assert knn_accuracy(train, labels, test, np.array([1, 0]), k=2) == 0.0


def _config(**changes):
    return PretrainConfig(**{**dict(dataset="blobs", method="simclr", epochs=2, batch_size=16, device="cpu", knn_k=5), **changes})


def test_pretrain_writes_embeddings_in_training_split_order(tmp_path):
    ds = make_blobs_dataset(n_train=40, n_test=20, channels=3)
    result = pretrain(_config(), tmp_path / "pre", dataset=ds)
    emb = np.load(tmp_path / "pre" / "embeddings.npy")
    assert emb.dtype == np.float32 and emb.shape == (40, 128)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)  # L2-normalised
    assert np.load(tmp_path / "pre" / "test_embeddings.npy").shape == (20, 128)
    saved = torch.load(tmp_path / "pre" / "encoder.pt", weights_only=True)
    from activecrl.models import build_model

    encoder = build_model(saved["model"], **{k: v for k, v in saved["build_config"].items() if k != "name"})
    encoder.load_state_dict(saved["encoder"])
    encoder.eval()
    # row i is image i: recompute three rows one image at a time, in a shuffled order
    mean = torch.tensor(ds.mean).view(1, -1, 1, 1)
    std = torch.tensor(ds.std).view(1, -1, 1, 1)
    for i in (31, 0, 17):
        x = (ds.train_images[i:i + 1].float() / 255 - mean) / std
        row = torch.nn.functional.normalize(encoder.forward_features(x), dim=1)[0].detach().numpy()
        np.testing.assert_allclose(emb[i], row, atol=1e-5)
    config = json.loads((tmp_path / "pre" / "config.json").read_text())
    assert config["method"] == "simclr" and config["n_train"] == 40 and config["l2_normalised"] is True
    assert config["knn_accuracy"] == result.knn_accuracy and 0 <= config["knn_accuracy"] <= 1
    assert len(config["epoch_losses"]) == 2


def test_pretrain_is_deterministic(tmp_path):
    ds = make_blobs_dataset(n_train=40, n_test=10, channels=3)
    a = pretrain(_config(knn_k=0), tmp_path / "a", dataset=ds)
    b = pretrain(_config(knn_k=0), tmp_path / "b", dataset=ds)
    c = pretrain(_config(knn_k=0, seed=1), tmp_path / "c", dataset=ds)
    np.testing.assert_array_equal(a.embeddings, b.embeddings)
    assert a.epoch_losses == b.epoch_losses
    assert not np.array_equal(a.embeddings, c.embeddings)


def test_simclr_loss_decreases():
    from activecrl.embeddings.pretrain import simclr_fit

    ds = make_blobs_dataset(n_train=64, n_test=8, channels=3)
    _, result = simclr_fit(_config(epochs=12, batch_size=32, lr=0.1, knn_k=0), ds)
    first, last = np.mean(result.epoch_losses[:3]), np.mean(result.epoch_losses[-3:])
    assert last < first - 0.1, result.epoch_losses


def test_bad_pretrain_input_writes_nothing(tmp_path):
    with pytest.raises(ConfigError, match="epochs must be an integer >= 1"):
        PretrainConfig(method="simclr", epochs=0)
    with pytest.raises(ConfigError, match="temperature must be a positive number"):
        PretrainConfig(temperature=0)
    with pytest.raises(ConfigError, match="--crop-scale must be"):
        PretrainConfig(crop_scale=(0.5, 0.2))
    with pytest.raises(RegistryError, match="small_cnn"):
        pretrain(_config(model="nope"), tmp_path / "pre", dataset=make_blobs_dataset())
    assert not (tmp_path / "pre").exists()


def test_pretrain_refuses_to_overwrite(tmp_path):
    ds = make_blobs_dataset(n_train=20, n_test=10, channels=3)
    pretrain(_config(epochs=1, knn_k=0), tmp_path / "pre", dataset=ds)
    before = (tmp_path / "pre" / "embeddings.npy").read_bytes()
    with pytest.raises(ConfigError, match="already holds a run"):
        pretrain(_config(epochs=1, knn_k=0, seed=5), tmp_path / "pre", dataset=ds)
    assert (tmp_path / "pre" / "embeddings.npy").read_bytes() == before
