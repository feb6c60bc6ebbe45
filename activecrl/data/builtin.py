"""Datasets by name: the ``DATASETS`` registry, its built-in entries and ``load_dataset``.

``load_dataset`` is the one entry point for labeled data: a registered name goes to its loader
(``digits`` ships with scikit-learn, so it works offline; ``cifar10``, ``cifar100`` and ``svhn``
come through torchvision), anything that looks like a path goes to the ImageFolder reader in
``folders.py``; either way the result passes through the cache in ``cache.py``. Third-party
datasets register with ``@register_dataset("name")``, the ``activecrl.datasets`` entry-point
group, or are given as ``"package.module:loader"``; a loader is called as
``fn(data_dir=..., download=...) -> ImageDataset``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from activecrl.core.errors import ConfigError, DataError, RegistryError
from activecrl.core.registry import Registry
from activecrl.data.cache import (_CACHE_FORMAT, _dataset_to_dict, _fingerprint, _read_dataset_cache, _safe, _write_cache,
                    decode_lock, default_data_dir)
from activecrl.data.dataset import ImageDataset
from activecrl.data.folders import (ARCHIVE_SUFFIXES, _dataset_name_from_path, _load_image_folder_dataset,
                                    image_folder_train_files)

logger = logging.getLogger(__name__)

DATASETS: Registry[Callable[..., ImageDataset]] = Registry("dataset", "activecrl.datasets")
register_dataset = DATASETS.register


def load_dataset(name_or_path: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                 download: bool = True, *, augment: bool | None = None,
                 cache: bool = True) -> ImageDataset:
    """Load a dataset by registered name (``DATASETS.names()``) or from a folder/archive path.

    The first load decodes the images and writes ``<data_dir>/cache/<name>-*.pt``; later
    loads read that file. For a path the cache key includes the resolved path and the size and
    modification time of the archive (or of every file in the directory), so editing the data
    invalidates the cache. ``augment`` overrides the dataset's default (e.g. ``False`` for SVHN
    if you don't want mirrored digits). ``cache=False`` neither reads nor writes the cache.
    """
    root = default_data_dir(data_dir)
    path = _as_path_if_path(name_or_path)
    if path is None:
        name = str(name_or_path)
        try:
            DATASETS.get(name)  # an unknown name fails before the cache is looked at
        except RegistryError as exc:
            raise RegistryError(f"{exc}; or pass a path to an ImageFolder directory (with train/ and test/ "
                                f"subfolders) or a .tar/.tar.gz/.tgz archive of one") from None
        cache_file = root / "cache" / f"{_safe(name)}-v{_CACHE_FORMAT}.pt"

        def decode() -> ImageDataset:
            return DATASETS.create(name, data_dir=root, download=download)
    else:
        key = _fingerprint(path)
        name = _dataset_name_from_path(path)
        cache_file = root / "cache" / f"{_safe(name)}-{key}.pt"

        def decode() -> ImageDataset:
            return _load_image_folder_dataset(path, name)

    dataset = _read_dataset_cache(cache_file) if cache else None
    if dataset is None:
        with decode_lock(cache_file) if cache else contextlib.nullcontext():
            # another process may have decoded it while this one waited for the lock
            dataset = _read_dataset_cache(cache_file) if cache else None
            if dataset is None:
                dataset = _decode_and_cache(name_or_path, decode, cache_file if cache else None)
    if augment is not None:
        dataset = dataclasses.replace(dataset, augment=bool(augment))
    return dataset


def _decode_and_cache(name_or_path, decode, cache_file: Path | None) -> ImageDataset:
    start = time.perf_counter()
    logger.info("decoding dataset %s (first use; cached afterwards in %s)", name_or_path, cache_file)
    dataset = decode()
    if not isinstance(dataset, ImageDataset):
        raise DataError(f"dataset loader for {name_or_path!r} must return an ImageDataset, "
                        f"got {type(dataset).__name__} instead")
    logger.info("decoded %s in %.1f s: %r", name_or_path, time.perf_counter() - start, dataset)
    if cache_file is not None:
        _write_cache(cache_file, _dataset_to_dict(dataset))
    return dataset


def dataset_train_files(name_or_path) -> list[str] | None:
    """The files of the training split of a folder dataset (relative paths, in row order); None for a
    registered name, whose images have no files."""
    path = _as_path_if_path(name_or_path)
    return None if path is None else image_folder_train_files(path)


def _as_path_if_path(name_or_path) -> Path | None:
    """A path when the argument names one; ``None`` when it is a registered name."""
    if isinstance(name_or_path, os.PathLike):
        path = Path(name_or_path).expanduser()
    else:
        if not isinstance(name_or_path, str) or not name_or_path:
            raise ConfigError(f"dataset must be a registered name or a path, got {name_or_path!r} instead")
        looks_like_path = (os.sep in name_or_path or "/" in name_or_path or name_or_path.startswith("~")
                           or name_or_path.lower().endswith(ARCHIVE_SUFFIXES))
        if not looks_like_path and name_or_path in DATASETS:
            return None
        path = Path(name_or_path).expanduser()
        if not looks_like_path and not path.exists():
            return None  # let the registry raise "unknown dataset ..., valid datasets are ..."
    if not path.exists():
        raise DataError(f"dataset path {path} does not exist; pass a registered dataset name "
                        f"({', '.join(DATASETS.names())}), an ImageFolder directory with train/ and "
                        f"test/ subfolders, or a .tar/.tar.gz/.tgz archive of one")
    return path.resolve()



# ---------------------------------------------------------------------------------------------
# registered datasets
# ---------------------------------------------------------------------------------------------
@register_dataset("digits")
def digits(data_dir: Path, download: bool) -> ImageDataset:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images), offline.

    Pixel values 0..16 are scaled to 0..255. The split is fixed: stratified, 25% test,
    ``random_state=0`` (1,347 train / 450 test). No augmentation: a 4-pixel crop shift or a
    mirror on an 8x8 digit changes the digit.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[:, None]
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=0.25, stratify=labels, random_state=0)
    train_idx.sort()
    test_idx.sort()
    return ImageDataset(
        name="digits",
        train_images=torch.from_numpy(images[train_idx]), train_labels=torch.from_numpy(labels[train_idx]),
        test_images=torch.from_numpy(images[test_idx]), test_labels=torch.from_numpy(labels[test_idx]),
        classes=[str(d) for d in range(10)], augment=False,
    )


_TORCHVISION_FILES = {
    "cifar10": "cifar-10-python.tar.gz or the extracted cifar-10-batches-py/",
    "cifar100": "cifar-100-python.tar.gz or the extracted cifar-100-python/",
    "svhn": "train_32x32.mat and test_32x32.mat",
}


def _torchvision_missing(name: str, root: Path, download: bool, exc: Exception) -> DataError:
    how = "the download failed (no internet?)" if download else "download is off and the files are not there"
    return DataError(
        f"{name} is not available in {root}: {how} ({type(exc).__name__}: {exc}). To fix: on a machine with "
        f"internet access, run once with `--dataset {name} --data-dir DIR` (it downloads there; in Python: "
        f"load_dataset({name!r}, data_dir=DIR)) and copy DIR here, then pass `--data-dir DIR` (or set "
        f"$ACTIVECRL_DATA); or put torchvision's files "
        f"({_TORCHVISION_FILES.get(name, 'as torchvision expects them')}) in {root}; or give the path of an "
        f"ImageFolder directory or archive instead of the name (`--dataset /path/to/{name}.tar.gz`)"
    )


def _torchvision_split(name: str, root: Path, download: bool, factory):
    try:
        if download:
            root.mkdir(parents=True, exist_ok=True)
        return factory(str(root), download)
    except DataError:
        raise
    except Exception as exc:  # torchvision raises RuntimeError, URLError, OSError, ...
        raise _torchvision_missing(name, root, download, exc) from exc


def _cifar(name: str, cls_name: str, data_dir: Path, download: bool) -> ImageDataset:
    import torchvision

    cls = getattr(torchvision.datasets, cls_name)
    root = Path(data_dir) / name
    train = _torchvision_split(name, root, download, lambda r, d: cls(r, train=True, download=d))
    test = _torchvision_split(name, root, download, lambda r, d: cls(r, train=False, download=d))

    def chw(data) -> torch.Tensor:  # CIFAR .data is (N, H, W, C) uint8 numpy
        return torch.from_numpy(np.ascontiguousarray(data)).permute(0, 3, 1, 2).contiguous()

    return ImageDataset(
        name=name,
        train_images=chw(train.data), train_labels=torch.as_tensor(train.targets, dtype=torch.int64),
        test_images=chw(test.data), test_labels=torch.as_tensor(test.targets, dtype=torch.int64),
        classes=list(train.classes), augment=True,
    )


@register_dataset("cifar10")
def cifar10(data_dir: Path, download: bool) -> ImageDataset:
    """CIFAR-10 via torchvision (``data_dir/cifar10``); pad-4 crop + flip augmentation."""
    return _cifar("cifar10", "CIFAR10", data_dir, download)


@register_dataset("cifar100")
def cifar100(data_dir: Path, download: bool) -> ImageDataset:
    """CIFAR-100 via torchvision (``data_dir/cifar100``); pad-4 crop + flip augmentation."""
    return _cifar("cifar100", "CIFAR100", data_dir, download)


@register_dataset("svhn")
def svhn(data_dir: Path, download: bool) -> ImageDataset:
    """SVHN (train 73,257 / test 26,032) via torchvision (``data_dir/svhn``; needs scipy).

    ``augment=True``: the paper trains every dataset with pad-4 random crops and horizontal
    flips, so SVHN gets them too, although a mirrored digit is not always the same digit
    (2 and 5, for instance). Pass ``load_dataset("svhn", augment=False)`` to turn them off.
    """
    import torchvision

    root = Path(data_dir) / "svhn"
    cls = torchvision.datasets.SVHN
    train = _torchvision_split("svhn", root, download, lambda r, d: cls(r, split="train", download=d))
    test = _torchvision_split("svhn", root, download, lambda r, d: cls(r, split="test", download=d))
    return ImageDataset(  # SVHN .data is already (N, C, H, W) uint8; labels are 0..9
        name="svhn",
        train_images=torch.from_numpy(np.ascontiguousarray(train.data)),
        train_labels=torch.as_tensor(np.asarray(train.labels), dtype=torch.int64),
        test_images=torch.from_numpy(np.ascontiguousarray(test.data)),
        test_labels=torch.as_tensor(np.asarray(test.labels), dtype=torch.int64),
        classes=[str(d) for d in range(10)], augment=True,
    )
