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

Archives are read in place (streamed member by member, never extracted), after checking that
every member is a plain relative path: absolute names, ``..`` components, links pointing
outside the archive and device files make the whole archive be rejected, as
``tarfile``'s ``filter="data"`` would on extraction.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import math
import os
import posixpath
import tarfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError, DataError, RegistryError
from .registry import Registry

logger = logging.getLogger(__name__)

__all__ = [
    "ImageDataset",
    "DATASETS",
    "DeviceData",
    "default_data_dir",
    "device_split",
    "load_dataset",
    "load_image_folder",
    "IMAGE_EXTENSIONS",
    "channel_stats",
]

DATASETS: Registry[Callable[[Path, bool], "ImageDataset"]] = Registry("dataset", "activecrl.datasets")

#: File name suffixes read as images (lower case); other files in an image folder are ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp", ".gif")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")

_CACHE_FORMAT = 1  # bump when the cached layout or a loader's output changes
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
#: Images smaller than this (on their short side) are not cropped/flipped by default: on 8x8
#: digits a 4-pixel shift or a mirror changes what the image shows.
MIN_AUGMENT_SIZE = 16


# ---------------------------------------------------------------------------------------------
# ImageDataset
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# loading and caching
# ---------------------------------------------------------------------------------------------
def default_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir`` if given, else ``$ACTIVECRL_DATA``, else ``~/.cache/activecrl``."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get("ACTIVECRL_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "activecrl"


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
            loader = DATASETS.get(name)
        except RegistryError as exc:
            raise RegistryError(f"{exc}; or pass a path to an ImageFolder directory (with train/ and test/ "
                                f"subfolders) or a .tar/.tar.gz/.tgz archive of one") from None
        cache_file = root / "cache" / f"{_safe(name)}-v{_CACHE_FORMAT}.pt"

        def decode() -> ImageDataset:
            return loader(root, download)
    else:
        key = _fingerprint(path)
        name = _dataset_name_from_path(path)
        cache_file = root / "cache" / f"{_safe(name)}-{key}.pt"

        def decode() -> ImageDataset:
            return _load_image_folder_dataset(path, name)

    dataset = _read_dataset_cache(cache_file) if cache else None
    if dataset is None:
        start = time.perf_counter()
        logger.info("decoding dataset %s (first use; cached afterwards in %s)", name_or_path, cache_file)
        dataset = decode()
        if not isinstance(dataset, ImageDataset):
            raise DataError(f"dataset loader for {name_or_path!r} must return an ImageDataset, "
                            f"got {type(dataset).__name__} instead")
        logger.info("decoded %s in %.1f s: %r", name_or_path, time.perf_counter() - start, dataset)
        if cache:
            _write_cache(cache_file, _dataset_to_dict(dataset))
    if augment is not None:
        dataset = dataclasses.replace(dataset, augment=bool(augment))
    return dataset


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


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:64] or "dataset"


def _is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _dataset_name_from_path(path: Path) -> str:
    name = path.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or "dataset"
    return name or "dataset"


def _walk_files(root: Path) -> Iterator[str]:
    """Relative POSIX paths of all files below ``root``, following directory links once each."""
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a link cycle or a second link to the same folder
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        for fname in sorted(filenames):
            yield Path(os.path.relpath(os.path.join(dirpath, fname), root)).as_posix()


def _fingerprint(path: Path, extra: str = "") -> str:
    """Short hash of the resolved path and the size/mtime of the file (or every file below it)."""
    h = hashlib.sha256()
    h.update(f"{_CACHE_FORMAT}\0{path}\0{extra}\0".encode())
    if path.is_dir():
        for rel in _walk_files(path):
            try:
                st = os.stat(path / rel)
            except OSError:
                continue
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    else:
        st = path.stat()
        h.update(f"{st.st_size}\0{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _dataset_to_dict(ds: ImageDataset) -> dict:
    return {
        "format": _CACHE_FORMAT, "kind": "dataset", "name": ds.name,
        "train_images": ds.train_images, "train_labels": ds.train_labels,
        "test_images": ds.test_images, "test_labels": ds.test_labels,
        "classes": list(ds.classes), "mean": list(ds.mean), "std": list(ds.std), "augment": ds.augment,
    }


def _read_cache(cache_file: Path, kind: str) -> dict | None:
    if not cache_file.is_file():
        return None
    start = time.perf_counter()
    try:
        blob = torch.load(cache_file, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or blob.get("format") != _CACHE_FORMAT or blob.get("kind") != kind:
            raise ValueError("unexpected cache layout")
    except Exception as exc:  # a truncated or foreign file: decode again and overwrite it
        logger.warning("ignoring unreadable cache file %s (%s); decoding again", cache_file, exc)
        return None
    logger.info("loaded %s from cache %s in %.2f s", blob.get("name", kind), cache_file, time.perf_counter() - start)
    return blob


def _read_dataset_cache(cache_file: Path) -> ImageDataset | None:
    blob = _read_cache(cache_file, "dataset")
    if blob is None:
        return None
    try:
        return ImageDataset(
            name=blob["name"], train_images=blob["train_images"], train_labels=blob["train_labels"],
            test_images=blob["test_images"], test_labels=blob["test_labels"], classes=list(blob["classes"]),
            mean=tuple(blob["mean"]), std=tuple(blob["std"]), augment=blob["augment"],
        )
    except (KeyError, DataError) as exc:
        logger.warning("ignoring invalid cache file %s (%s); decoding again", cache_file, exc)
        return None


def _write_cache(cache_file: Path, blob: dict) -> None:
    from .io import atomic_torch_save

    try:
        atomic_torch_save(cache_file, blob)
    except OSError as exc:  # read-only or full disk: still usable, just slower next time
        logger.warning("could not write the dataset cache %s (%s); the next load will decode again", cache_file, exc)
        return
    logger.info("wrote dataset cache %s (%.0f MB)", cache_file, cache_file.stat().st_size / 2**20)


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


def _load_image_folder_dataset(path: Path, name: str) -> ImageDataset:
    source = _Source(path)
    try:
        prefix = _find_split_root(source.files, path)
        train = _split_files(source.files, prefix, "train", path)
        test = _split_files(source.files, prefix, "test", path)
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


# ---------------------------------------------------------------------------------------------
# registered datasets
# ---------------------------------------------------------------------------------------------
@DATASETS.register("digits")
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
        f"{name} is not available in {root}: {how} ({type(exc).__name__}: {exc}). To fix: load it once with "
        f"download enabled (the default; load_dataset({name!r}, data_dir=..., download=True)) on a machine "
        f"with internet access and copy that data directory here; or put torchvision's files "
        f"({_TORCHVISION_FILES.get(name, 'as torchvision expects them')}) in {root}; or pass the path of an "
        f"ImageFolder directory or archive instead of the name (e.g. load_dataset('/path/to/{name}.tar.gz'))"
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


@DATASETS.register("cifar10")
def cifar10(data_dir: Path, download: bool) -> ImageDataset:
    """CIFAR-10 via torchvision (``data_dir/cifar10``); pad-4 crop + flip augmentation."""
    return _cifar("cifar10", "CIFAR10", data_dir, download)


@DATASETS.register("cifar100")
def cifar100(data_dir: Path, download: bool) -> ImageDataset:
    """CIFAR-100 via torchvision (``data_dir/cifar100``); pad-4 crop + flip augmentation."""
    return _cifar("cifar100", "CIFAR100", data_dir, download)


@DATASETS.register("svhn")
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


# ---------------------------------------------------------------------------------------------
# DeviceData
# ---------------------------------------------------------------------------------------------
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
        if not isinstance(pad, int) or isinstance(pad, bool) or pad < 0:
            raise ConfigError(f"pad must be a non-negative int, got {pad!r} instead")
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
        batch_size = _check_batch_size(batch_size, minimum=2)
        idx = self._check_indices(indices)
        if idx.numel() < 2:
            raise ConfigError(f"train_batches needs at least 2 indices (BatchNorm cannot train on one "
                              f"sample), got {idx.numel()} instead")
        self._check_generator(generator)
        return self._train_iter(idx, batch_size, generator)  # arguments checked now, not at first next()

    def _train_iter(self, idx: torch.Tensor, batch_size: int, generator):
        order = idx[torch.randperm(idx.numel(), generator=generator, device=self.device)]
        total = order.numel()
        for start in range(0, total, batch_size):
            if total - start == 1:
                break  # a lone last sample: dropped (see docstring)
            batch = order[start:start + batch_size]
            x = self.images[batch]
            if self.augment_enabled:
                x = self.augment(x, generator)
            yield self._finish(x), self.labels[batch], batch

    def eval_batches(self, indices=None, batch_size: int = 1024
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """``indices`` (default: all, ``0..n-1``) in the given order, unaugmented."""
        batch_size = _check_batch_size(batch_size, minimum=1)
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
        t = t.to(device=self.device, dtype=torch.int64)
        if t.numel():
            lo, hi = (int(v) for v in torch.aminmax(t))
            if lo < 0 or hi >= self.n:
                raise ConfigError(f"indices must lie in [0, {self.n}) for this split of {self.n} images, got "
                                  f"values in [{lo}, {hi}] instead")
        return t

    def _check_generator(self, generator) -> None:
        if generator is None:
            return
        if not isinstance(generator, torch.Generator):
            raise ConfigError(f"generator must be a torch.Generator, got {type(generator).__name__} instead")
        g, d = generator.device, self.device
        if g.type != d.type or (d.type != "cpu" and (g.index or 0) != (d.index or 0)):
            raise ConfigError(f"generator lives on {g} but the data is on {d}; create it with "
                              f"torch.Generator(device=data.device).manual_seed(seed)")


def _check_batch_size(batch_size, minimum: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < minimum:
        raise ConfigError(f"batch_size must be an int >= {minimum}, got {batch_size!r} instead")
    return int(batch_size)


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
