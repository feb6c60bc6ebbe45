"""Shared fixtures: tiny synthetic and digits datasets, CPU only, a private data dir."""

import pytest
import torch

from activecrl.data import ImageDataset


@pytest.fixture(autouse=True)
def _private_data_dir(tmp_path_factory, monkeypatch):
    # never touch the user's ~/.cache during tests; one shared dir so digits is decoded once
    monkeypatch.setenv("ACTIVECRL_DATA", str(tmp_path_factory.getbasetemp() / "data"))


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # The tests use tiny tensors: intra-op threads only add wake-up latency, which on a shared
    # 2-core machine doubles the run time.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_blobs_dataset(n_train=120, n_test=60, n_classes=3, size=8, channels=1, seed=0, noise=60):
    """Images whose class is their mean brightness pattern: learnable in a few epochs."""
    g = torch.Generator().manual_seed(seed)

    def split(n):
        labels = torch.arange(n) % n_classes
        base = torch.zeros(n, channels, size, size)
        for k in range(n_classes):  # class k lights up horizontal band k
            rows = slice(k * size // n_classes, (k + 1) * size // n_classes)
            base[labels == k, :, rows, :] = 200.0
        images = (base + noise * torch.randn(n, channels, size, size, generator=g)).clamp(0, 255)
        return images.to(torch.uint8), labels.long()

    xtr, ytr = split(n_train)
    xte, yte = split(n_test)
    return ImageDataset(name="blobs", train_images=xtr, train_labels=ytr, test_images=xte, test_labels=yte,
                        classes=[f"c{k}" for k in range(n_classes)], mean=(0.3,) * channels, std=(0.35,) * channels,
                        augment=False)


@pytest.fixture
def blobs():
    return make_blobs_dataset()
