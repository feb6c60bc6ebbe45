"""Image sources read batch by batch: what ``activecrl.embeddings.embed`` streams through a backbone.

An image source yields its images in a fixed order as uint8 (B, C, H, W) batches and never holds
more than a batch or two of decoded pixels:

* :class:`TensorSource`: images already in memory at their own (small) size, e.g. a loaded
  dataset's split; batches are views.
* :class:`FileSource`: a list of image files of any sizes, decoded (PIL, in a thread pool, the
  next batch while the current one is used) and resized to one size as each batch is needed.
  ``FileSource.from_folder`` takes every image under a directory (an unlabeled pool);
  :func:`labeled_folder` the ``train/<class>/*`` and ``test/<class>/*`` files of an ImageFolder
  directory, in the order ``load_dataset`` gives its rows.

``fingerprint()`` is a short hash of what the source yields (pixels or file paths, sizes and
modification times, and the resize), for caches keyed on the data.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from activecrl.core.errors import ConfigError, DataError
from activecrl.core.validate import check_int
from activecrl.data.folders import IMAGE_EXTENSIONS, _find_split_root, _is_archive, _Source, _split_files

INTERPOLATIONS = ("bicubic", "bilinear")


class TensorSource:
    """uint8 images (N, C, H, W) in memory, yielded in slices."""

    def __init__(self, images: torch.Tensor):
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
            raise DataError(f"TensorSource images must be a uint8 (N, C, H, W) tensor, got "
                            f"{getattr(images, 'dtype', type(images).__name__)} of shape "
                            f"{tuple(getattr(images, 'shape', ()))} instead")
        self.images = images

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def subset(self, start: int, stop: int) -> "TensorSource":
        """Images ``start:stop`` as a source of their own (a copy: a shard sent elsewhere carries
        only its own pixels)."""
        return TensorSource(self.images[start:stop].clone())

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        batch_size = check_int("batch_size", batch_size, 1)
        return (self.images[s:s + batch_size] for s in range(0, len(self), batch_size))

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"tensor {tuple(self.images.shape)}".encode())
        flat = self.images.contiguous().view(-1).numpy()
        for start in range(0, flat.size, 1 << 26):  # 64 MB at a time: no second copy of the pool
            h.update(memoryview(flat[start:start + (1 << 26)]))
        return h.hexdigest()[:16]


class FileSource:
    """Image files decoded and resized batch by batch.

    ``size`` (an int or (H, W)) resizes every image with PIL (``interpolation``: bicubic, as
    timm's eval transforms, or bilinear); ``None`` keeps the images' own size, which must then be
    the same for all. ``channels`` 3 converts to RGB, 1 to gray. ``workers`` threads decode
    (PIL releases the GIL), one batch ahead of the consumer.
    """

    def __init__(self, files: Sequence[str | os.PathLike], *, size: int | tuple[int, int] | None = None,
                 channels: int = 3, interpolation: str = "bicubic", workers: int | None = None):
        self.files = [Path(f) for f in files]
        if not self.files:
            raise DataError(f"an image source needs at least one image file, got none (looked for "
                            f"{', '.join(IMAGE_EXTENSIONS)})")
        if size is not None:
            size = (size, size) if isinstance(size, int) else tuple(size)
            if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
                raise ConfigError(f"size must be a positive int or (height, width), got {size!r} instead")
        if channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {channels!r} instead")
        if interpolation not in INTERPOLATIONS:
            raise ConfigError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {interpolation!r} instead")
        self.size = size
        self.channels = channels
        self.interpolation = interpolation
        self.workers = workers or max(1, min(4, os.cpu_count() or 1))

    @classmethod
    def from_folder(cls, path: str | os.PathLike, **kwargs) -> "FileSource":
        """Every image under the directory ``path`` (nested or flat; hidden files skipped), by
        relative path."""
        root = _image_dir(path)
        return cls([root / rel for rel in _Source(root).files], **kwargs)

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, start: int, stop: int) -> "FileSource":
        """Files ``start:stop`` as a source of their own, decoded and resized the same way."""
        return FileSource(self.files[start:stop], size=self.size, channels=self.channels,
                          interpolation=self.interpolation, workers=self.workers)

    def decode(self, path: Path) -> np.ndarray:
        """One image as uint8 (H, W, C) at ``size``."""
        from PIL import Image

        resample = Image.BICUBIC if self.interpolation == "bicubic" else Image.BILINEAR
        try:
            with Image.open(path) as img:
                img = img.convert("RGB" if self.channels == 3 else "L")
                if self.size is not None and img.size != (self.size[1], self.size[0]):
                    img = img.resize((self.size[1], self.size[0]), resample)
                arr = np.asarray(img)
        except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, ...
            raise DataError(f"cannot decode image {path} ({type(exc).__name__}: {exc}); delete or replace "
                            f"the file") from exc
        return arr[:, :, None] if arr.ndim == 2 else arr

    def _stack(self, arrays: list[np.ndarray], first: int) -> torch.Tensor:
        h, w = arrays[0].shape[:2]
        for i, arr in enumerate(arrays):
            if arr.shape[:2] != (h, w):
                raise DataError(f"all images must have the same size without a resize, but {self.files[first + i]} "
                                f"is {arr.shape[1]}x{arr.shape[0]} while {self.files[first]} is {w}x{h} (width x "
                                f"height); give the source a size")
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        batch_size = check_int("batch_size", batch_size, 1)
        return self._iter(batch_size)

    def _iter(self, batch_size: int):
        starts = range(0, len(self.files), batch_size)
        pool = ThreadPoolExecutor(max_workers=self.workers)
        try:
            def submit(start):
                return start, [pool.submit(self.decode, f) for f in self.files[start:start + batch_size]]

            pending = submit(0)
            for nxt in list(starts[1:]) + [None]:
                ahead = submit(nxt) if nxt is not None else None  # decode the next batch meanwhile
                start, futures = pending
                yield self._stack([f.result() for f in futures], start)
                pending = ahead
        finally:  # an error or an abandoned iterator: don't decode the rest
            pool.shutdown(wait=True, cancel_futures=True)

    def fingerprint(self) -> str:
        h = hashlib.sha256(f"files {self.size} {self.channels} {self.interpolation}\0".encode())
        for f in self.files:
            st = f.stat()
            h.update(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        return h.hexdigest()[:16]


def _image_dir(path: str | os.PathLike) -> Path:
    p = Path(path).expanduser()
    if _is_archive(p):
        raise DataError(f"{p} is an archive; streaming reads image folders only: extract it, or load it with "
                        f"load_dataset / load_image_folder")
    if not p.is_dir():
        raise DataError(f"image folder {p} does not exist or is not a directory; pass a directory of images")
    return p.resolve()


def labeled_folder(path: str | os.PathLike) -> dict:
    """The files of an ImageFolder directory (``train/<class>/*``, ``test/<class>/*``), in
    ``load_dataset``'s row order: ``{"classes", "train_files", "train_labels", "test_files",
    "test_labels"}`` (labels int64 arrays). Only the listing: nothing is decoded."""
    root = _image_dir(path)
    files = _Source(root).files
    prefix = _find_split_root(files, root)
    splits = {s: _split_files(files, prefix, s, root) for s in ("train", "test")}
    classes = sorted(splits["train"])
    if not classes or sorted(splits["test"]) != classes:
        raise DataError(f"{root}: train/ and test/ must hold the same class folders of images, got "
                        f"{classes} and {sorted(splits['test'])} instead")
    out: dict = {"classes": classes}
    for split, by_class in splits.items():
        out[f"{split}_files"] = [root / f for cls in classes for f in by_class[cls]]
        out[f"{split}_labels"] = np.array([k for k, cls in enumerate(classes) for _ in by_class[cls]], dtype=np.int64)
    return out
