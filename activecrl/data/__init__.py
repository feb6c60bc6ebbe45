"""Datasets as uint8 tensors, decoded once and cached; a device-resident batch iterator.

Two halves:

- **Loading.** ``load_dataset(name_or_path)`` returns an :class:`ImageDataset` whose images are
  (N, C, H, W) uint8 CPU tensors. A name is looked up in ``DATASETS`` (``digits``, which
  scikit-learn ships, so it works offline; ``cifar10``, ``cifar100`` and ``svhn`` through
  torchvision); anything else is a path to an ImageFolder-style directory or ``.tar`` /
  ``.tar.gz`` / ``.tgz`` archive holding ``train/<class>/*`` and ``test/<class>/*``.
  Every dataset is decoded once into ``<data_dir>/cache/*.pt`` (written atomically), so later
  loads are a single ``torch.load``. ``load_image_folder`` does the same for unlabeled image
  sets (out-of-distribution data).
- **Batching.** :class:`DeviceData` holds a whole split on the training device as uint8 and
  builds each mini-batch there with tensor ops (gather by index, random crop with zero
  padding, horizontal flip, normalisation), in the style of airbench: no per-image Python, no
  worker processes, no host-to-device copies in the training loop.

Where things live (import from ``activecrl.data``; the submodules are an implementation detail):

- ``dataset.py``  ``ImageDataset``, its validation helpers, ``channel_stats``.
- ``cache.py``    ``default_data_dir``, the ``<data_dir>/cache`` read/write and fingerprinting.
- ``folders.py``  ImageFolder directories and tar archives: safe member checks, parallel
  decoding, ``load_image_folder``.
- ``builtin.py``  the ``DATASETS`` registry, the digits/CIFAR/SVHN loaders, ``load_dataset``.
- ``device.py``   ``DeviceData``, ``device_split``, ``device_splits`` and ``train_steps`` (the last-batch rule).
- ``features.py`` ``FeatureData``: embeddings (N, d) batched like ``DeviceData``.
- ``stream.py``   image sources decoded and resized batch by batch (``TensorSource``, ``FileSource``).

Imports only go down this list (``builtin`` -> ``folders`` -> ``cache`` -> ``dataset``;
``device`` -> ``dataset``; ``features`` -> ``device``; ``stream`` -> ``folders``), so there are no cycles.
"""

from activecrl.data.builtin import (DATASETS, cifar10, cifar100, dataset_train_files, digits, load_dataset,
                                    register_dataset, svhn)
from activecrl.data.cache import default_data_dir
from activecrl.data.dataset import MIN_AUGMENT_SIZE, ImageDataset, channel_stats
from activecrl.data.device import DeviceData, device_split, device_splits, train_steps
from activecrl.data.features import FeatureData, feature_stats
from activecrl.data.folders import ARCHIVE_SUFFIXES, IMAGE_EXTENSIONS, load_image_folder

__all__ = [
    "ImageDataset",
    "DATASETS",
    "register_dataset",
    "DeviceData",
    "FeatureData",
    "feature_stats",
    "default_data_dir",
    "device_split",
    "device_splits",
    "train_steps",
    "load_dataset",
    "dataset_train_files",
    "load_image_folder",
    "IMAGE_EXTENSIONS",
    "channel_stats",
]
