"""results/make_cifar10_archive.py writes an archive activecrl reads as the dataset it was given."""

import importlib.util
from pathlib import Path

import numpy as np

from activecrl.data import load_dataset

SCRIPT = Path(__file__).resolve().parent.parent / "results" / "make_cifar10_archive.py"


def test_archive_round_trip(tmp_path):
    spec = importlib.util.spec_from_file_location("make_cifar10_archive", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rng = np.random.default_rng(0)
    # smooth images: JPEG keeps them close, so the pixels can be checked, not only the shapes
    base = rng.integers(0, 256, size=(12, 1, 1, 3))
    images = np.clip(base + rng.integers(-3, 4, size=(12, 32, 32, 3)), 0, 255).astype(np.uint8)
    labels = np.arange(12) % 3
    path = module.write_archive({"train": (images[:9], labels[:9]), "test": (images[9:], labels[9:])},
                                ("a", "b", "c"), tmp_path / "tiny.tar.gz")
    ds = load_dataset(str(path), data_dir=tmp_path / "cache")
    assert ds.classes == ["a", "b", "c"] and (ds.n_train, ds.n_test) == (9, 3)
    assert sorted(ds.train_labels.tolist()) == sorted(labels[:9].tolist())
    # each training image is found again (within JPEG's error) under its label
    decoded = ds.train_images.permute(0, 2, 3, 1).numpy().astype(int)
    for image, label in zip(images[:9], labels[:9]):
        errors = np.abs(decoded - image.astype(int)).mean(axis=(1, 2, 3))
        assert ds.train_labels[int(errors.argmin())] == label and errors.min() < 4
