"""The in-memory dataset type: :class:`ImageDataset` and the checks that guard it.

Everything else in ``activecrl.data`` produces or consumes an ``ImageDataset``: the loaders
build one, the cache stores and restores one, ``device_split`` moves one split to the device.
The validation helpers live here (not with their callers) because ``DeviceData`` reuses them
for its own arguments, so both places reject bad input with the same messages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from activecrl.core.errors import DataError

#: Images smaller than this (on their short side) are not cropped/flipped by default: on 8x8
#: digits a 4-pixel shift or a mirror changes what the image shows.
MIN_AUGMENT_SIZE = 16


@dataclass
class ImageDataset:
    """A labeled image dataset with a fixed train/test split, as uint8 CPU tensors.

    ``mean``/``std`` are per-channel on the [0, 1] scale; when left ``None`` they are computed
    from the training images. ``augment`` says whether training should use random crops (zero
    padding 4) and horizontal flips; ``None`` picks ``True`` for images of at least
    ``MIN_AUGMENT_SIZE`` pixels on their short side, ``False`` for smaller ones.
    """

    name: str
    train_images: torch.Tensor  # (N, C, H, W) uint8, CPU
    train_labels: torch.Tensor  # (N,) int64
    test_images: torch.Tensor  # (M, C, H, W) uint8, CPU
    test_labels: torch.Tensor  # (M,) int64
    classes: list[str]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    augment: bool | None = None
    skipped: list[str] = field(default_factory=list)  # files of a folder left out as undecodable (--skip-bad-images)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise DataError(f"dataset name must be a non-empty string, got {self.name!r} instead")
        self.train_images = _check_images(self.train_images, f"{self.name}: train_images")
        self.test_images = _check_images(self.test_images, f"{self.name}: test_images", allow_empty=True)
        if self.test_images.shape[1:] != self.train_images.shape[1:]:
            raise DataError(
                f"{self.name}: test images must have the same (C, H, W) as the training images "
                f"{tuple(self.train_images.shape[1:])}, got {tuple(self.test_images.shape[1:])} instead"
            )
        classes = list(self.classes) if isinstance(self.classes, (list, tuple)) else None
        if not classes or not all(isinstance(c, str) for c in classes):
            raise DataError(f"{self.name}: classes must be a non-empty list of strings, got {self.classes!r} instead")
        if len(set(classes)) != len(classes):
            raise DataError(f"{self.name}: class names must be unique, got {classes} instead")
        self.classes = classes
        k = len(classes)
        self.train_labels = _check_labels(self.train_labels, self.train_images.shape[0], k, f"{self.name}: train_labels")
        self.test_labels = _check_labels(self.test_labels, self.test_images.shape[0], k, f"{self.name}: test_labels")
        c = self.in_channels
        if self.mean is None or self.std is None:
            mean, std = channel_stats(self.train_images)
            self.mean = mean if self.mean is None else self.mean
            self.std = std if self.std is None else self.std
        self.mean = _check_stat(self.mean, c, "mean", self.name)
        self.std = _check_stat(self.std, c, "std", self.name)
        if any(s <= 0 for s in self.std):
            raise DataError(f"{self.name}: std must be positive in every channel, got {self.std} instead "
                            f"(a constant channel cannot be normalised; pass std explicitly)")
        if self.augment is None:
            self.augment = min(self.train_images.shape[2:]) >= MIN_AUGMENT_SIZE
        self.augment = bool(self.augment)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.train_images.shape[1])

    @property
    def image_size(self) -> int:
        """Side length of the (square) images; non-square images raise ``DataError``."""
        h, w = self.train_images.shape[2:]
        if h != w:
            raise DataError(f"{self.name}: images are {h}x{w}, not square; the models expect square "
                            f"images, so resize them (e.g. load_image_folder(..., size=N))")
        return int(h)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.train_images.shape[1:])  # type: ignore[return-value]

    @property
    def n_train(self) -> int:
        return int(self.train_images.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.test_images.shape[0])

    def __repr__(self) -> str:
        c, h, w = self.image_shape
        return (f"ImageDataset({self.name!r}, train={self.n_train}, test={self.n_test}, "
                f"classes={self.num_classes}, images={c}x{h}x{w}, augment={self.augment})")


def _check_images(images, what: str, allow_empty: bool = False, require_cpu: bool = True) -> torch.Tensor:
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise DataError(f"{what} must be a uint8 tensor of shape (N, C, H, W), got {type(images).__name__} instead")
    if images.dtype != torch.uint8:
        raise DataError(f"{what} must have dtype uint8 (pixel values 0..255), got {images.dtype} instead")
    if images.ndim != 4:
        raise DataError(f"{what} must have shape (N, C, H, W), got shape {tuple(images.shape)} instead")
    if require_cpu and images.device.type != "cpu":
        raise DataError(f"{what} must be a CPU tensor (DeviceData moves it to the device), "
                        f"got one on {images.device} instead")
    n, c, h, w = images.shape
    if c < 1 or h < 1 or w < 1 or (n < 1 and not allow_empty):
        raise DataError(f"{what} must hold at least one image, got shape {tuple(images.shape)} instead")
    return images.contiguous()


def _check_labels(labels, n: int, k: int, what: str) -> torch.Tensor:
    if isinstance(labels, (np.ndarray, list, tuple)):
        labels = torch.as_tensor(np.asarray(labels))
    if not isinstance(labels, torch.Tensor):
        raise DataError(f"{what} must be an int64 tensor of shape ({n},), got {type(labels).__name__} instead")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise DataError(f"{what} must hold integer class indices, got dtype {labels.dtype} instead")
    if labels.shape != (n,):
        raise DataError(f"{what} must have shape ({n},) to match the images, got {tuple(labels.shape)} instead")
    labels = labels.to(device="cpu", dtype=torch.int64).contiguous()
    if n and (int(labels.min()) < 0 or int(labels.max()) >= k):
        raise DataError(f"{what} must lie in [0, {k}) for {k} classes, got values in "
                        f"[{int(labels.min())}, {int(labels.max())}] instead")
    return labels


def _check_stat(values, c: int, what: str, name: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise DataError(f"{name}: {what} must be {c} numbers (one per channel), got {values!r} instead") from None
    if len(out) != c or not all(math.isfinite(v) for v in out):
        raise DataError(f"{name}: {what} must be {c} finite numbers (one per channel), got {values!r} instead")
    return out


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 images on the [0, 1] scale.

    Exact: computed in float64 from a 256-bin histogram per channel (fast, no float copy).
    """
    n, c, h, w = images.shape
    if n * h * w == 0:
        return (0.5,) * c, (0.25,) * c
    values = torch.arange(256, dtype=torch.float64)
    means, stds = [], []
    for ch in range(c):
        counts = torch.bincount(images[:, ch].reshape(-1), minlength=256).to(torch.float64)
        total = counts.sum()
        mean = (counts * values).sum() / total
        var = (counts * (values - mean).square()).sum() / total
        means.append(float(mean) / 255.0)
        stds.append(float(var.sqrt()) / 255.0)
    return tuple(means), tuple(stds)
