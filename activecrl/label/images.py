"""The image pool on disk: find the images under a folder, hash them, read their size from the header.

Hashing reads each file once (blake2b, 16-byte digest) in a thread pool: ``hashlib`` releases the
GIL on large buffers and the file reads release it too, so threads overlap the I/O. The width and
height come from the PNG header (bytes 16-24 of the IHDR chunk, read from the bytes already in
memory) and, for other formats, from PIL's lazy ``Image.open``, which parses only the header.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from activecrl.core.errors import DataError

__all__ = ["IMAGE_SUFFIXES", "ImageInfo", "find_images", "scan_images", "hash_file", "first_of"]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_THREADS = min(8, (os.cpu_count() or 1) * 2)


@dataclass(frozen=True)
class ImageInfo:
    path: str  # relative to the images folder, "/"-separated
    bytes: int
    hash: str
    width: int | None
    height: int | None


def first_of(items, n: int = 10) -> str:
    """``a, b, c (and 7 more)``: the first ``n`` of a list for a message."""
    items = list(items)
    head = ", ".join(str(x) for x in items[:n])
    return head + (f" (and {len(items) - n} more)" if len(items) > n else "")


def find_images(root: Path) -> list[str]:
    """Image files under ``root`` (recursively), as sorted paths relative to it."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"--images must be a folder of images, got {str(root)!r}, which "
                        f"{'is a file' if root.exists() else 'does not exist'}; pass the folder that holds them")
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # skip .git, .ipynb_checkpoints, ...
        rel = os.path.relpath(folder, root)
        for name in files:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                found.append(name if rel == "." else f"{rel}/{name}".replace(os.sep, "/"))
    found.sort()
    return found


def hash_file(path: Path) -> tuple[bytes, str]:
    data = Path(path).read_bytes()
    return data, hashlib.blake2b(data, digest_size=16).hexdigest()


def _size(data: bytes) -> tuple[int, int]:
    if data[:8] == _PNG_MAGIC and data[12:16] == b"IHDR":
        return struct.unpack(">II", data[16:24])
    with Image.open(io.BytesIO(data)) as im:  # header only: no pixels decoded
        return im.size


def _info(root: Path, rel: str) -> ImageInfo | str:
    """The image's record, or the reason it cannot be read (collected, reported all at once)."""
    try:
        data, digest = hash_file(root / rel)
        width, height = _size(data)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, struct.error) as exc:
        return f"{rel} ({type(exc).__name__})"
    return ImageInfo(rel, len(data), digest, int(width), int(height))


def scan_images(root: Path, paths: list[str] | None = None) -> list[ImageInfo]:
    """Hash and size every image under ``root`` (or the given relative ``paths``); all-or-error."""
    root = Path(root)
    paths = find_images(root) if paths is None else paths
    if not paths:
        raise DataError(f"--images must be a folder with images ({', '.join(sorted(IMAGE_SUFFIXES))}), got "
                        f"{str(root)!r}, which has none; point --images at the folder that holds them")
    with ThreadPoolExecutor(_THREADS) as pool:
        results = list(pool.map(lambda rel: _info(root, rel), paths, chunksize=64))
    bad = [r for r in results if isinstance(r, str)]
    if bad:
        raise DataError(f"every image under --images must be readable, got {len(bad)} that cannot be: "
                        f"{first_of(bad)}; fix or remove them and run again")
    return results
