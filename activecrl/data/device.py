"""Device-resident batching: :class:`DeviceData` and ``device_split``.

A whole split lives on the training device as uint8 and each mini-batch is built there with
tensor ops (gather by index, random crop with zero padding, horizontal flip, normalisation), in
the style of airbench: no per-image Python, no worker processes, no host-to-device copies in the
training loop. ``bench/bench_datapath.py`` measures it against a torchvision ``DataLoader``
(results in bench/README.md).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from activecrl.core.errors import ConfigError, DataError
from activecrl.core.validate import check_int
from activecrl.data.dataset import ImageDataset, _check_images, _check_stat


def train_steps(n: int, batch_size: int) -> int:
    """Batches in one epoch of ``DeviceData.train_batches`` over ``n`` indices: a final batch of a
    single sample is dropped (BatchNorm cannot normalise a batch of one), any other is kept."""
    full, rest = divmod(int(n), int(batch_size))
    return full + (rest > 1)


class DeviceData:
    """One split held on ``device`` as uint8, batched there with tensor ops.

    ``train_batches`` shuffles, gathers, augments (when ``augment``) and normalises each batch
    on the device; ``eval_batches`` does the same in order without augmentation. Batches are
    ``(x, y, idx)``: ``x`` float32 (B, C, H, W) normalised with ``(x / 255 - mean) / std``
    (channels-last memory format when ``channels_last``), ``y`` int64 labels, ``idx`` int64
    indices into this split. ``labels=None`` (an unlabeled set) gives labels of -1. The
    constructor's ``augment`` flag is kept as ``augment_enabled`` (``augment`` is the method).

    Augmentation matches torchvision's ``RandomCrop(H, padding=pad)`` followed by
    ``RandomHorizontalFlip()``: zero-pad by ``pad``, take an HxW window at offsets drawn
    uniformly from [0, 2 * pad], and mirror half the samples.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None, mean: Sequence[float],
                 std: Sequence[float], *, augment: bool, device: str | torch.device,
                 channels_last: bool = False, pad: int = 4):
        images = _check_images(images, "DeviceData images", allow_empty=True, require_cpu=False)
        n, c, h, w = images.shape
        if labels is None:
            labels = torch.full((n,), -1, dtype=torch.int64)
        else:
            labels = torch.as_tensor(labels)
            if labels.dtype == torch.bool or labels.is_floating_point() or labels.shape != (n,):
                raise DataError(f"DeviceData labels must be {n} integers (one per image), got dtype "
                                f"{labels.dtype} and shape {tuple(labels.shape)} instead")
        pad = check_int("pad", pad, 0)
        mean_t = _check_stat(mean, c, "mean", "DeviceData")
        std_t = _check_stat(std, c, "std", "DeviceData")
        if any(s <= 0 for s in std_t):
            raise ConfigError(f"std must be positive in every channel, got {std_t} instead")
        try:
            dev = torch.device(device)
            self.images = images.to(dev)
            self.labels = labels.to(device=dev, dtype=torch.int64)
        except (RuntimeError, AssertionError, TypeError) as exc:
            raise ConfigError(f"cannot put the data on device {device!r} ({exc}); use 'cpu' or an available "
                              f"accelerator") from exc
        self.device: torch.device = self.images.device
        self.mean = mean_t
        self.std = std_t
        self.augment_enabled = bool(augment)
        self.channels_last = bool(channels_last)
        self.pad = pad
        # (x / 255 - mean) / std  ==  x * scale - shift, two fused in-place ops per batch
        std64 = torch.tensor(std_t, dtype=torch.float64)
        mean64 = torch.tensor(mean_t, dtype=torch.float64)
        self._scale = (1.0 / (255.0 * std64)).float().view(1, c, 1, 1).to(self.device)
        self._shift = (mean64 / std64).float().view(1, c, 1, 1).to(self.device)
        self._rows = torch.arange(h, device=self.device)
        self._cols = torch.arange(w, device=self.device)
        self._cols_flipped = torch.arange(w - 1, -1, -1, device=self.device)

    @property
    def n(self) -> int:
        return int(self.images.shape[0])

    def __len__(self) -> int:
        return self.n

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.images.shape[1:])  # type: ignore[return-value]

    def __repr__(self) -> str:
        c, h, w = self.image_shape
        return (f"DeviceData(n={self.n}, images={c}x{h}x{w}, device={self.device}, "
                f"augment={self.augment_enabled}, channels_last={self.channels_last})")

    # -- public pieces ---------------------------------------------------------------------
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) on the device -> float32 ``(x / 255 - mean) / std``."""
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != self.images.shape[1]:
            raise ConfigError(f"normalize expects uint8 (B, {self.images.shape[1]}, H, W), got dtype "
                              f"{x.dtype} and shape {tuple(x.shape)} instead")
        out = x.to(device=self.device, dtype=torch.float32)
        return out.mul_(self._scale).sub_(self._shift)

    def augment(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Random zero-padded crop and horizontal flip of a uint8 batch, in one gather.

        Draws, in order, the row offsets, the column offsets and the flip mask from
        ``generator``. Crop and flip are folded into one index: output pixel (i, j) of sample b
        is padded[b, :, dy + i, dx + j] (or dx + W - 1 - j when mirrored).
        """
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise ConfigError(f"augment expects a uint8 (B, C, H, W) batch, got dtype {x.dtype} "
                              f"and shape {tuple(x.shape)} instead")
        self._check_generator(generator)
        x = x.to(self.device)
        b, c, h, w = x.shape
        if (h, w) != self.images.shape[2:]:
            raise ConfigError(f"augment expects {self.images.shape[2]}x{self.images.shape[3]} images, "
                              f"got {h}x{w} instead")
        p = self.pad
        hp, wp = h + 2 * p, w + 2 * p
        dy = torch.randint(0, 2 * p + 1, (b,), generator=generator, device=self.device)
        dx = torch.randint(0, 2 * p + 1, (b,), generator=generator, device=self.device)
        flip = torch.randint(0, 2, (b,), generator=generator, device=self.device).bool()
        padded = F.pad(x, (p, p, p, p)) if p else x
        rows = dy[:, None] + self._rows  # (B, H)
        cols = dx[:, None] + torch.where(flip[:, None], self._cols_flipped, self._cols)  # (B, W)
        lin = (rows[:, :, None] * wp + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
        return padded.reshape(b, c, hp * wp).gather(2, lin).view(b, c, h, w)

    # -- iterators -------------------------------------------------------------------------
    def train_batches(self, indices, batch_size: int, generator: torch.Generator | None = None
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """One epoch over ``indices`` in a random order, augmented when ``augment``.

        The permutation and augmentation are drawn from ``generator`` (which must live on
        ``self.device``), so the same seed gives the same batches. A final batch of a single
        sample is dropped, because BatchNorm cannot normalise a batch of one; every other
        sample appears exactly once per epoch.
        """
        batch_size = check_int("batch_size", batch_size, 2)
        idx = self._check_indices(indices)
        if idx.numel() < 2:
            raise ConfigError(f"train_batches needs at least 2 indices (BatchNorm cannot train on one "
                              f"sample), got {idx.numel()} instead")
        self._check_generator(generator)
        return self._train_iter(idx, batch_size, generator)  # arguments checked now, not at first next()

    def _train_iter(self, idx: torch.Tensor, batch_size: int, generator):
        order = idx[torch.randperm(idx.numel(), generator=generator, device=self.device)]
        for start in range(0, train_steps(order.numel(), batch_size) * batch_size, batch_size):
            batch = order[start:start + batch_size]
            x = self.images[batch]
            if self.augment_enabled:
                x = self.augment(x, generator)
            yield self._finish(x), self.labels[batch], batch

    def eval_batches(self, indices=None, batch_size: int = 1024
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``indices`` (default: all, ``0..n-1``) in the given order, unaugmented."""
        batch_size = check_int("batch_size", batch_size, 1)
        idx = None if indices is None else self._check_indices(indices)
        return self._eval_iter(idx, batch_size)

    def _eval_iter(self, idx: torch.Tensor | None, batch_size: int):
        if idx is None:
            for start in range(0, self.n, batch_size):
                stop = min(start + batch_size, self.n)
                idx = torch.arange(start, stop, device=self.device)
                yield self._finish(self.images[start:stop]), self.labels[start:stop], idx
            return
        for start in range(0, idx.numel(), batch_size):
            batch = idx[start:start + batch_size]
            yield self._finish(self.images[batch]), self.labels[batch], batch

    # -- helpers ---------------------------------------------------------------------------
    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        out = self.normalize(x)
        if self.channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def _check_indices(self, indices) -> torch.Tensor:
        return check_indices(indices, self.n, self.device)

    def _check_generator(self, generator) -> None:
        check_generator(generator, self.device)


def check_indices(indices, n: int, device: torch.device) -> torch.Tensor:
    """``indices`` into a split of ``n`` rows as an int64 tensor on ``device``; ConfigError if not."""
    if isinstance(indices, torch.Tensor):
        t = indices
    else:
        arr = np.asarray(indices)
        if arr.size == 0:
            arr = arr.astype(np.int64)
        if arr.dtype.kind not in "iu":
            raise ConfigError(f"indices must be integers (training-split indices), got an array of "
                              f"dtype {arr.dtype} instead" + (" (a boolean mask? pass mask.nonzero()[0])"
                                                               if arr.dtype.kind == "b" else ""))
        t = torch.from_numpy(arr.astype(np.int64, copy=False))
    if t.dtype == torch.bool:
        raise ConfigError("indices must be integers, got a boolean mask instead; pass mask.nonzero().flatten()")
    if t.is_floating_point() or t.is_complex():
        raise ConfigError(f"indices must be integers, got dtype {t.dtype} instead")
    if t.ndim != 1:
        raise ConfigError(f"indices must be 1-D, got shape {tuple(t.shape)} instead")
    t = t.to(device=device, dtype=torch.int64)
    if t.numel():
        lo, hi = (int(v) for v in torch.aminmax(t))
        if lo < 0 or hi >= n:
            raise ConfigError(f"indices must lie in [0, {n}) for this split of {n} images, got "
                              f"values in [{lo}, {hi}] instead")
    return t


def check_generator(generator, device: torch.device) -> None:
    """ConfigError unless ``generator`` is None or a torch.Generator on ``device``."""
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise ConfigError(f"generator must be a torch.Generator, got {type(generator).__name__} instead")
    g, d = generator.device, device
    if g.type != d.type or (d.type != "cpu" and (g.index or 0) != (d.index or 0)):
        raise ConfigError(f"generator lives on {g} but the data is on {d}; create it with "
                          f"torch.Generator(device=data.device).manual_seed(seed)")


def device_split(dataset: ImageDataset, split: str, device: str | torch.device,
                 channels_last: bool = False, pad: int = 4) -> DeviceData:
    """``DeviceData`` for the ``"train"`` split (augmented if ``dataset.augment``) or ``"test"``."""
    if split == "train":
        images, labels, augment = dataset.train_images, dataset.train_labels, dataset.augment
    elif split == "test":
        images, labels, augment = dataset.test_images, dataset.test_labels, False
    else:
        raise ConfigError(f"split must be 'train' or 'test', got {split!r} instead")
    return DeviceData(images, labels, dataset.mean, dataset.std, augment=augment, device=device,
                      channels_last=channels_last, pad=pad)


def device_splits(dataset: ImageDataset, device: str | torch.device,
                  channels_last: bool = False) -> tuple[DeviceData, DeviceData]:
    """``(train, test)`` ``DeviceData`` of ``dataset``: the pair every training run needs."""
    return (device_split(dataset, "train", device, channels_last=channels_last),
            device_split(dataset, "test", device, channels_last=channels_last))
