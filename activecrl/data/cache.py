"""The decoded-dataset cache: where it lives, how entries are keyed, read and written.

Decoding a folder of JPEGs (or CIFAR's pickles) takes seconds to minutes; ``torch.load`` of the
decoded uint8 tensors is one read. So every dataset is decoded once into
``<data_dir>/cache/*.pt`` and read from there afterwards. A path's cache key hashes the resolved
path and the size/mtime of every file, so editing the data invalidates it; ``_CACHE_FORMAT`` is in
every key and blob, so changing a loader's output (bump it) invalidates all of them. A cache file
that cannot be read is ignored and rewritten, and writes are atomic, so a crash mid-write never
leaves a file that later loads trust. Processes that miss the cache at the same time (the tasks
of ``activecrl sweep`` on one machine) take turns through ``decode_lock``, so each machine
decodes a dataset once.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Iterator

import torch

from activecrl.core.errors import DataError
from activecrl.core.io import atomic_torch_save
from activecrl.data.dataset import ImageDataset

try:
    import fcntl
except ImportError:  # not on Windows: concurrent first loads there decode more than once (still safe)
    fcntl = None

logger = logging.getLogger(__name__)

_CACHE_FORMAT = 1  # bump when the cached layout or a loader's output changes


def default_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir`` if given, else ``$ACTIVECRL_DATA``, else ``~/.cache/activecrl``."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get("ACTIVECRL_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "activecrl"


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:64] or "dataset"


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
        "skipped": list(ds.skipped),
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
            skipped=list(blob.get("skipped", [])),
        )
    except (KeyError, DataError) as exc:
        logger.warning("ignoring invalid cache file %s (%s); decoding again", cache_file, exc)
        return None


def _write_cache(cache_file: Path, blob: dict) -> None:
    try:
        atomic_torch_save(cache_file, blob)
    except OSError as exc:  # read-only or full disk: still usable, just slower next time
        logger.warning("could not write the dataset cache %s (%s); the next load will decode again", cache_file, exc)
        return
    logger.info("wrote dataset cache %s (%.0f MB)", cache_file, cache_file.stat().st_size / 2**20)


@contextlib.contextmanager
def decode_lock(cache_file: Path):
    """Hold an exclusive lock on ``<cache_file>.lock`` while one process decodes and writes it.

    The caller checks the cache again once it holds the lock: whoever waited finds the file the
    first process wrote. ``flock`` is released by the kernel when its holder dies, so a killed
    decoder leaves no stale lock. Where locking is not possible (a read-only folder, a network
    filesystem without locks) this only logs: the atomic cache write keeps concurrent decodes
    safe, merely repeated.
    """
    lock_path = cache_file.with_name(cache_file.name + ".lock")
    if fcntl is None:
        yield
        return
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        logger.info("no decode lock %s (%s); decoding without it", lock_path, exc)
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            logger.info("cannot lock %s (%s); decoding without it", lock_path, exc)
        yield
    finally:
        os.close(fd)  # closing releases the lock
