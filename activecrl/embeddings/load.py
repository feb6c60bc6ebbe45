"""User-given embeddings of the training split: ``activecrl run --embeddings PATH``.

``PATH`` is an ``activecrl pretrain`` folder (its ``embeddings.npy``) or any ``.npy`` of shape
(n_train, d), e.g. features a user computed with a foundation model, one row per training-split
image in training-split order. They are loaded once per run and checked before anything is
written; strategies that select by typicality or coverage read them instead of the current
model's features, and ``--initial-strategy`` picks the seed set from them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from activecrl.core.errors import ConfigError

EMBEDDINGS_FILE = "embeddings.npy"
TEST_EMBEDDINGS_FILE = "test_embeddings.npy"


def embeddings_file(path: str | Path) -> Path:
    """The ``.npy`` file behind ``--embeddings``: the path itself or ``<folder>/embeddings.npy``."""
    p = Path(path).expanduser()
    if p.is_dir():
        if not (p / EMBEDDINGS_FILE).is_file():
            raise ConfigError(f"--embeddings must be a .npy file or an `activecrl pretrain` folder holding "
                              f"{EMBEDDINGS_FILE}, got the folder {p} without it instead; run `activecrl pretrain "
                              f"--out {p}` (a finished run writes {EMBEDDINGS_FILE} last) or pass the .npy file")
        return p / EMBEDDINGS_FILE
    if not p.is_file():
        raise ConfigError(f"--embeddings must be an existing .npy file or `activecrl pretrain` folder, got {p} "
                          f"instead (it does not exist)")
    return p


def load_embeddings(path: str | Path, n_train: int) -> tuple[np.ndarray, dict]:
    """Load and check ``--embeddings``; returns float32 (n_train, d) rows and a fingerprint.

    The fingerprint (file, shape, sha256 of the file) goes into the run's ``config.json`` so a
    resumed run can tell whether the embeddings changed underneath it.
    """
    return _load_rows(embeddings_file(path), n_train, "training")


def load_test_embeddings(path: str | Path, n_test: int, width: int) -> tuple[np.ndarray, dict]:
    """The test split's rows of an embeddings folder (``test_embeddings.npy`` beside
    ``embeddings.npy``), for feature-mode models, which are evaluated on the test split."""
    file = embeddings_file(path).parent / TEST_EMBEDDINGS_FILE
    if not file.is_file():
        raise ConfigError(f"--model linear/mlp evaluates on the test split's embeddings, got no {TEST_EMBEDDINGS_FILE} "
                          f"beside {embeddings_file(path)} instead; pass a folder written by `activecrl embed` or "
                          f"`activecrl pretrain`, which hold both splits")
    array, info = _load_rows(file, n_test, "test")
    if array.shape[1] != width:
        raise ConfigError(f"{file} must have the width of the training embeddings ({width}), got "
                          f"{array.shape[1]} columns instead; embed both splits with the same backbone")
    return array, info


def _load_rows(file: Path, n_rows: int, split: str) -> tuple[np.ndarray, dict]:
    try:
        array = np.load(file, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ConfigError(f"--embeddings must be a .npy array of shape (n_train, d), but {file} could not be "
                          f"read as one ({exc}); save it with numpy.save") from None
    if not isinstance(array, np.ndarray):  # np.load of an .npz gives an NpzFile
        raise ConfigError(f"--embeddings must be a single .npy array, got an archive ({file}) instead; "
                          f"save one array with numpy.save")
    if array.ndim != 2:
        raise ConfigError(f"--embeddings must be 2-D (one row per {split} image), got shape {array.shape} "
                          f"from {file} instead")
    if array.shape[0] != n_rows:
        raise ConfigError(f"--embeddings must have one row per {split}-split image ({n_rows} rows), got "
                          f"{array.shape[0]} rows from {file} instead; embed this dataset's {split} split, in order")
    if array.shape[1] < 1:
        raise ConfigError(f"--embeddings must have at least one column, got shape {array.shape} from {file} instead")
    if array.dtype.kind not in "fiu":
        raise ConfigError(f"--embeddings must hold real numbers, got dtype {array.dtype} from {file} instead")
    array = np.ascontiguousarray(array, dtype=np.float32)
    bad = ~np.isfinite(array).all(axis=1)
    if bad.any():
        raise ConfigError(f"--embeddings must be finite, got NaN or inf in {int(bad.sum())} rows of {file} "
                          f"(e.g. row {int(np.flatnonzero(bad)[0])}) instead")
    return array, {"path": str(file), "shape": list(array.shape), "sha256": file_sha256(file)}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
