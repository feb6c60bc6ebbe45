"""Embeddings as training data: :class:`FeatureData`, the feature-mode twin of ``DeviceData``.

A split of precomputed embeddings (N, d) (``activecrl.embeddings.embed``, ``pretrain``, or any
float array) lives on the device as float32, standardised per dimension, and is batched there
with the same interface as ``DeviceData`` (``n``, ``device``, ``train_batches``,
``eval_batches`` yielding ``(x, y, idx)``), so ``Trainer.fit``, ``predict`` and the MC-dropout
sampler run on it unchanged with the ``linear`` and ``mlp`` models. Embeddings are not augmented.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from activecrl.core.errors import ConfigError, DataError
from activecrl.core.validate import check_int
from activecrl.data.device import check_generator, check_indices, train_steps

_STD_EPS = 1e-6  # a constant dimension is centred, not blown up
_STATS_ROWS = 4096  # rows per float64 chunk in feature_stats


def feature_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std (float64) of (N, d) ``features``: pass the training split's to
    every split, so train and test are standardised alike.

    Computed in chunks of rows, never holding a float64 copy of the whole array (twice the bytes
    of float32 embeddings), with the same bits as ``x.astype(float64).mean(0)`` and ``.std(0)``:
    numpy sums a C-ordered array with several columns over its rows one row after the other, and
    each chunk's sum starts from the previous total. Other layouts (one column: numpy sums it
    pairwise) take numpy's own path.
    """
    x = np.asarray(features)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] < 2 or not x.flags.c_contiguous:
        x = np.asarray(x, dtype=np.float64)
        return x.mean(axis=0), x.std(axis=0)
    mean = _row_sum(x, lambda rows: rows) / len(x)
    variance = _row_sum(x, lambda rows: _squared(rows - mean)) / len(x)
    return mean, np.sqrt(variance)


def _squared(deviation: np.ndarray) -> np.ndarray:
    return np.multiply(deviation, deviation, out=deviation)  # as numpy's var squares


def _all_finite(x: torch.Tensor) -> bool:
    if x.device.type == "cpu":  # numpy's isfinite is one pass; torch's also builds abs(x), 10-20x slower
        return bool(np.isfinite(x.detach().numpy()).all())
    return bool(torch.isfinite(x).all())


def _row_sum(x: np.ndarray, term) -> np.ndarray:
    """``term(x as float64)`` summed over the rows in row order, ``_STATS_ROWS`` rows at a time."""
    total = np.zeros(x.shape[1])
    for start in range(0, len(x), _STATS_ROWS):
        rows = x[start:start + _STATS_ROWS].astype(np.float64)
        total = np.add.reduce(np.concatenate([total[None], term(rows)]), axis=0)
    return total


class FeatureData:
    """One split of embeddings on ``device``, batched there like :class:`DeviceData`.

    ``features`` (N, d) float (NumPy or torch, e.g. float16 from ``embeddings.npy``) become
    float32 ``(x - mean) / std`` with ``stats = (mean, std)`` (default: this split's own; pass the
    training split's ``feature_stats`` to the test split). ``labels=None`` (an unlabeled set)
    gives labels of -1. Batches are ``(x, y, idx)``: x float32 (B, d), y int64, idx int64
    indices into this split.
    """

    augment_enabled = False

    def __init__(self, features, labels=None, *, device: str | torch.device = "cpu", stats=None):
        x = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor) else features)
        if x.ndim != 2 or x.shape[1] < 1 or not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64)):
            raise DataError(f"FeatureData features must be a real (N, d) array of embeddings, got dtype {x.dtype} "
                            f"and shape {tuple(x.shape)} instead")
        x = x.to(torch.float32)
        if not _all_finite(x):
            raise DataError("FeatureData features must be finite, got NaN or inf instead; recompute the embeddings")
        n = x.shape[0]
        mean, std = feature_stats(x.numpy() if x.device.type == "cpu" else x.cpu().numpy()) if stats is None else stats
        mean = torch.as_tensor(np.asarray(mean, dtype=np.float64)).float()
        std = torch.as_tensor(np.asarray(std, dtype=np.float64)).float()
        if mean.shape != (x.shape[1],) or std.shape != (x.shape[1],):
            raise DataError(f"FeatureData stats must be two arrays of {x.shape[1]} values (mean, std), got shapes "
                            f"{tuple(mean.shape)} and {tuple(std.shape)} instead")
        x = (x - mean).div_(std + _STD_EPS)  # in place: one copy of the embeddings, not two
        if labels is None:
            labels = torch.full((n,), -1, dtype=torch.int64)
        labels = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
        if labels.dtype == torch.bool or labels.is_floating_point() or labels.shape != (n,):
            raise DataError(f"FeatureData labels must be {n} integers (one per row), got dtype {labels.dtype} and "
                            f"shape {tuple(labels.shape)} instead")
        try:
            self.device = torch.device(device)
            self.features = x.to(self.device)
            self.labels = labels.to(device=self.device, dtype=torch.int64)
        except (RuntimeError, AssertionError, TypeError) as exc:
            raise ConfigError(f"cannot put the embeddings on device {device!r} ({exc}); use 'cpu' or an available "
                              f"accelerator") from exc
        self.mean, self.std = mean, std

    @property
    def n(self) -> int:
        return int(self.features.shape[0])

    def __len__(self) -> int:
        return self.n

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def __repr__(self) -> str:
        return f"FeatureData(n={self.n}, dim={self.dim}, device={self.device})"

    def train_batches(self, indices, batch_size: int, generator: torch.Generator | None = None
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """One epoch over ``indices`` in a random order drawn from ``generator`` (on ``device``);
        a last batch of one sample is dropped (BatchNorm cannot train on it), as ``DeviceData``'s."""
        batch_size = check_int("batch_size", batch_size, 2)
        idx = self._check_indices(indices)
        if idx.numel() < 2:
            raise ConfigError(f"train_batches needs at least 2 indices (BatchNorm cannot train on one sample), got "
                              f"{idx.numel()} instead")
        check_generator(generator, self.device)
        return self._train_iter(idx, batch_size, generator)

    def _train_iter(self, idx, batch_size, generator):
        order = idx[torch.randperm(idx.numel(), generator=generator, device=self.device)]
        for start in range(0, train_steps(order.numel(), batch_size) * batch_size, batch_size):
            batch = order[start:start + batch_size]
            yield self.features[batch], self.labels[batch], batch

    def eval_batches(self, indices=None, batch_size: int = 1024
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``indices`` (default: all) in the given order."""
        batch_size = check_int("batch_size", batch_size, 1)
        idx = torch.arange(self.n, device=self.device) if indices is None else self._check_indices(indices)
        return ((self.features[idx[s:s + batch_size]], self.labels[idx[s:s + batch_size]], idx[s:s + batch_size])
                for s in range(0, idx.numel(), batch_size))

    def _check_indices(self, indices) -> torch.Tensor:
        return check_indices(indices, self.n, self.device)
