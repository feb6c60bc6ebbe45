"""Image sets on disk: ImageFolder directories and tar archives, scanned and decoded.

A labeled dataset is ``train/<class>/*`` and ``test/<class>/*`` (at the top or under one
top-level folder); an unlabeled one (``load_image_folder``, for out-of-distribution data) is any
tree of images. Both may be a directory or a ``.tar`` / ``.tar.gz`` / ``.tgz`` archive of one.

Archives are read in place (streamed member by member, never extracted), after checking that
every member is a plain relative path: absolute names, ``..`` components, links pointing
outside the archive and device files make the whole archive be rejected, as
``tarfile``'s ``filter="data"`` would on extraction.
"""

from __future__ import annotations

import io
import logging
import os
import posixpath
import tarfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from activecrl.core.errors import ConfigError, DataError
from activecrl.data.cache import _CACHE_FORMAT, _fingerprint, _read_cache, _safe, _walk_files, _write_cache, default_data_dir
from activecrl.data.dataset import MIN_AUGMENT_SIZE, ImageDataset

logger = logging.getLogger(__name__)

#: File name suffixes read as images (lower case); other files in an image folder are ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp", ".gif")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")

_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def _is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _dataset_name_from_path(path: Path) -> str:
    name = path.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or "dataset"
    return name or "dataset"



# ---------------------------------------------------------------------------------------------
# image sources: a directory or a tar archive read in place
# ---------------------------------------------------------------------------------------------
def _skip_name(rel: str) -> bool:
    """Hidden files/folders (``.DS_Store``, macOS ``._x.jpg``) and ``__MACOSX`` are not data."""
    return any(part.startswith(".") or part == "__MACOSX" for part in rel.split("/"))


def _is_image_name(rel: str) -> bool:
    return rel.lower().endswith(IMAGE_EXTENSIONS)


class _Source:
    """Image files under a directory or inside an archive, by relative POSIX path."""

    def __init__(self, path: Path):
        self.path = path
        self.archive = _is_archive(path)
        self._blobs: dict[str, bytes] = {}
        if self.archive:
            self.files = self._scan_archive()
        elif path.is_dir():
            self.files = self._scan_dir()
        else:
            raise DataError(f"{path} is neither a directory nor a .tar/.tar.gz/.tgz archive; pass an "
                            f"ImageFolder directory or an archive of one")

    def _scan_dir(self) -> list[str]:
        return sorted(rel for rel in _walk_files(self.path) if not _skip_name(rel) and _is_image_name(rel))

    def _scan_archive(self) -> list[str]:
        try:
            tf = tarfile.open(self.path, "r:*")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataError(f"cannot open archive {self.path}: {exc}; it must be a .tar/.tar.gz/.tgz file") from exc
        try:
            with tf:
                for member in tf:  # streamed in one pass: only image bytes are kept
                    rel = _safe_member_name(member, self.path)
                    if rel is None or not member.isfile() or _skip_name(rel) or not _is_image_name(rel):
                        continue
                    handle = tf.extractfile(member)
                    self._blobs[rel] = handle.read() if handle is not None else b""
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise DataError(f"archive {self.path} is corrupt or truncated ({exc}); download or copy it again") from exc
        return sorted(self._blobs)

    def describe(self, rel: str) -> str:
        return f"{self.path}:{rel}" if self.archive else str(self.path / rel)

    def open(self, rel: str):
        if self.archive:
            return io.BytesIO(self._blobs[rel])
        return open(self.path / rel, "rb")

    def release(self) -> None:
        self._blobs.clear()


def _safe_member_name(member: tarfile.TarInfo, archive: Path) -> str | None:
    """Relative POSIX name of a member; ``DataError`` for anything that could escape on extraction.

    Mirrors ``tarfile.data_filter`` (Python 3.12+/3.11.4+): no absolute names, no ``..``, no
    links whose target leaves the archive root, no device files or FIFOs.
    """
    name = member.name.replace("\\", "/")

    def reject(why: str):
        raise DataError(f"archive {archive} has an unsafe member {member.name!r} ({why}); refusing to read "
                        f"it. Rebuild the archive with relative paths inside one folder")

    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        reject("absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        reject("'..' component")
    if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
        reject("device file or FIFO")
    if member.issym() or member.islnk():
        target = member.linkname.replace("\\", "/")
        if target.startswith("/"):
            reject(f"link to the absolute path {member.linkname!r}")
        base = posixpath.dirname("/".join(parts)) if member.issym() else ""
        resolved = posixpath.normpath(posixpath.join(base, target))
        if resolved == ".." or resolved.startswith("../") or resolved.startswith("/"):
            reject(f"link pointing outside the archive ({member.linkname!r})")
    return "/".join(parts) if parts else None


# ---------------------------------------------------------------------------------------------
# decoding
# ---------------------------------------------------------------------------------------------
def _decode_many(source: _Source, files: Sequence[str], *, size: tuple[int, int] | None = None,
                 channels: int | None = None) -> torch.Tensor:
    """Decode ``files`` (in order) into one (N, C, H, W) uint8 tensor.

    All images must share one size unless ``size`` (H, W) resizes them (PIL bilinear).
    ``channels`` None keeps gray images gray only if every image is gray, else gives RGB.
    A thread pool decodes chunks (PIL releases the GIL while decoding); results are written in
    order, so errors name the first bad file in sorted order.
    """
    from PIL import Image

    n = len(files)
    if n == 0:
        raise DataError(f"no images found in {source.path} (looked for {', '.join(IMAGE_EXTENSIONS)})")

    def decode_one(rel: str) -> np.ndarray:
        try:
            with source.open(rel) as handle, Image.open(handle) as img:
                if channels == 1 or (channels is None and img.mode in _GRAY_MODES):
                    img = img.convert("L")
                else:
                    img = img.convert("RGB")  # forces the full decode
                if size is not None and img.size != (size[1], size[0]):
                    img = img.resize((size[1], size[0]), Image.BILINEAR)
                return np.asarray(img)
        except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
            raise DataError(f"cannot decode image {source.describe(rel)} ({type(exc).__name__}: {exc}); "
                            f"delete or replace the file") from exc

    def decode_chunk(chunk: Sequence[str]) -> list[np.ndarray]:
        return [decode_one(rel) for rel in chunk]

    first = decode_one(files[0])
    h, w = first.shape[:2]
    buffer = np.empty((n, h, w, 3), dtype=np.uint8)
    all_gray = True

    def put(i: int, arr: np.ndarray) -> None:
        nonlocal all_gray
        if arr.shape[:2] != (h, w):
            raise DataError(
                f"all images must have the same size, but {source.describe(files[i])} is "
                f"{arr.shape[1]}x{arr.shape[0]} while {source.describe(files[0])} is {w}x{h} (width x height); "
                f"resize them to one size first"
            )
        if arr.ndim == 2:
            buffer[i] = arr[:, :, None]
        else:
            buffer[i] = arr
            all_gray = False

    put(0, first)
    chunk = 512
    chunks = [files[s:s + chunk] for s in range(1, n, chunk)]
    workers = max(1, min(4, os.cpu_count() or 1))
    pos = 1
    if workers == 1 or len(chunks) <= 1:
        results = map(decode_chunk, chunks)
        for arrays in results:
            for arr in arrays:
                put(pos, arr)
                pos += 1
    else:
        pool = ThreadPoolExecutor(max_workers=workers)
        try:
            for arrays in pool.map(decode_chunk, chunks):
                for arr in arrays:
                    put(pos, arr)
                    pos += 1
        finally:  # on an error, don't decode the rest just to throw it away
            pool.shutdown(wait=True, cancel_futures=True)
    out = torch.from_numpy(buffer)
    if channels == 1 or (channels is None and all_gray):
        out = out[..., :1]
    return out.permute(0, 3, 1, 2).contiguous()


def _find_split_root(files: Sequence[str], where: Path) -> str:
    """The prefix ('' or 'top/') under which train/ and test/ live."""
    tops = {f.split("/", 1)[0] for f in files if "/" in f}
    if {"train", "test"} <= tops:
        return ""
    if len(tops) == 1:
        top = next(iter(tops))
        inner = {f.split("/", 2)[1] for f in files if f.startswith(top + "/") and f.count("/") >= 2}
        if {"train", "test"} <= inner:
            return top + "/"
    found = ", ".join(sorted(tops)) or "no folders holding images"
    raise DataError(
        f"{where} must hold train/ and test/ folders (each with one subfolder of images per class), "
        f"at the top or under a single top-level folder (like cifar10/train/airplane/0001.jpg); "
        f"found: {found}"
    )


def _split_files(files: Sequence[str], prefix: str, split: str, where: Path) -> dict[str, list[str]]:
    by_class: dict[str, list[str]] = {}
    stray = []
    head = f"{prefix}{split}/"
    for f in files:
        if not f.startswith(head):
            continue
        rest = f[len(head):]
        if "/" not in rest:
            stray.append(f)
            continue
        by_class.setdefault(rest.split("/", 1)[0], []).append(f)
    if stray:
        logger.warning("ignoring %d image(s) directly in %s%s (not in a class folder), e.g. %s",
                       len(stray), where, "/" + head.rstrip("/"), stray[0])
    return by_class


#: The one class of an unlabeled image folder loaded as a dataset (label-free uses: ``pretrain``).
UNLABELED_CLASS = "unlabeled"


def _is_flat(files: Sequence[str]) -> bool:
    """Images directly in the folder and no subfolders of images: a pool without labels."""
    return bool(files) and all("/" not in f for f in files)


def _unlabeled_dataset(source: _Source, name: str) -> ImageDataset:
    """A flat folder as a dataset whose training split is every image (one class, no test split)."""
    images = _decode_many(source, source.files)
    empty = torch.empty((0, *images.shape[1:]), dtype=torch.uint8)
    return ImageDataset(name=name, train_images=images, train_labels=torch.zeros(len(images), dtype=torch.int64),
                        test_images=empty, test_labels=torch.empty(0, dtype=torch.int64), classes=[UNLABELED_CLASS],
                        augment=min(images.shape[2:]) >= MIN_AUGMENT_SIZE)


def _train_order(files: Sequence[str], path: Path) -> tuple[list[str], list[str], list[int], int]:
    """(classes, files in row order: train then test, their labels, the training split's size)."""
    prefix = _find_split_root(files, path)
    train = _split_files(files, prefix, "train", path)
    test = _split_files(files, prefix, "test", path)
    classes = sorted(train)
    if not classes:
        raise DataError(f"{path}: {prefix}train/ holds no class folders with images")
    if sorted(test) != classes:
        only_train = sorted(set(classes) - set(test))
        only_test = sorted(set(test) - set(classes))
        raise DataError(
            f"{path}: train/ and test/ must have the same class folders; only in train: "
            f"{only_train or 'none'}, only in test: {only_test or 'none'}"
        )
    ordered, labels, n_train = [], [], 0
    for split in (train, test):
        for k, cls in enumerate(classes):
            ordered.extend(split[cls])
            labels.extend([k] * len(split[cls]))
        if split is train:
            n_train = len(ordered)
    return classes, ordered, labels, n_train


def image_folder_train_files(path: str | os.PathLike) -> list[str]:
    """The training images of an ImageFolder directory or archive, as paths relative to it, in the row
    order of ``load_dataset`` (so run records can name the files they queried). Nothing is decoded."""
    path = Path(path).expanduser().resolve()
    source = _Source(path)
    try:
        if _is_flat(source.files):
            return list(source.files)
        _, ordered, _, n_train = _train_order(source.files, path)
    finally:
        source.release()
    return ordered[:n_train]


def _load_image_folder_dataset(path: Path, name: str) -> ImageDataset:
    source = _Source(path)
    try:
        if _is_flat(source.files):
            return _unlabeled_dataset(source, name)
        classes, ordered, labels, n_train = _train_order(source.files, path)
        images = _decode_many(source, ordered)
    finally:
        source.release()
    labels_t = torch.tensor(labels, dtype=torch.int64)
    _, _, h, w = images.shape
    return ImageDataset(
        name=name,
        train_images=images[:n_train].contiguous(), train_labels=labels_t[:n_train].contiguous(),
        test_images=images[n_train:].contiguous(), test_labels=labels_t[n_train:].contiguous(),
        classes=classes, augment=min(h, w) >= MIN_AUGMENT_SIZE,
    )


def load_image_folder(path: str | os.PathLike, data_dir: str | os.PathLike | None = None, *,
                      size: int | tuple[int, int] | None = None, channels: int | None = None,
                      cache: bool = True) -> torch.Tensor:
    """Unlabeled images (a directory, flat or nested, or an archive of one) as (N, C, H, W) uint8.

    Images are ordered by relative path. ``size`` (an int or (H, W)) resizes every image with
    PIL bilinear; without it all images must share one size. ``channels`` (1 or 3) converts to
    gray or RGB to match a model; ``None`` keeps gray only when every image is gray. The result
    is cached under ``<data_dir>/cache/`` like ``load_dataset``'s.
    """
    if size is not None:
        size_hw = (size, size) if isinstance(size, int) else tuple(size)
        if len(size_hw) != 2 or not all(isinstance(s, int) and s > 0 for s in size_hw):
            raise ConfigError(f"size must be a positive int or (height, width), got {size!r} instead")
    else:
        size_hw = None
    if channels not in (None, 1, 3):
        raise ConfigError(f"channels must be 1, 3 or None, got {channels!r} instead")
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"image folder {p} does not exist; pass a directory of images or a .tar/.tar.gz/.tgz archive of one")
    p = p.resolve()
    key = _fingerprint(p, extra=f"images size={size_hw} channels={channels}")
    cache_file = default_data_dir(data_dir) / "cache" / f"{_safe(_dataset_name_from_path(p))}-images-{key}.pt"
    if cache:
        blob = _read_cache(cache_file, "images")
        if blob is not None and isinstance(blob.get("images"), torch.Tensor):
            return blob["images"]
    start = time.perf_counter()
    logger.info("decoding image folder %s (first use; cached afterwards in %s)", p, cache_file)
    source = _Source(p)
    try:
        images = _decode_many(source, source.files, size=size_hw, channels=channels)
    finally:
        source.release()
    logger.info("decoded %d images from %s in %.1f s", images.shape[0], p, time.perf_counter() - start)
    if cache:
        _write_cache(cache_file, {"format": _CACHE_FORMAT, "kind": "images", "name": p.name, "images": images})
    return images
