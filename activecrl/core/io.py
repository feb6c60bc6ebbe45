"""Small file helpers: atomic writes, JSON that numpy/torch values survive, run folders."""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from activecrl.core.errors import ConfigError


def to_jsonable(value: Any) -> Any:
    """Plain Python types for JSON (tuples become lists, tensors/arrays become lists, NaN -> None)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    torch = sys.modules.get("torch")  # a tensor exists only once torch is imported: never import it here
    if isinstance(value, np.ndarray) or (torch is not None and isinstance(value, torch.Tensor)):
        return to_jsonable(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600 files; results should read like any other file
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)  # readers see the old file or the new one, never half of one
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    _atomic(path, lambda h: h.write(text.encode("utf-8")))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2) + "\n")


def atomic_torch_save(path: Path, obj: Any) -> None:
    import torch  # only for writing checkpoints: reading configs and records stays torch-free

    _atomic(path, lambda h: torch.save(obj, h))


def atomic_savez(path: Path, **arrays) -> None:
    _atomic(path, lambda h: np.savez_compressed(h, **arrays))


def prepare_out_dir(out: Path, *, marker: str, overwrite: bool = False, create: bool = True,
                    remedy: str = "choose another --out, or pass --overwrite to replace it") -> Path:
    """Create ``out``; refuse to reuse one that already holds ``marker`` unless ``overwrite``.

    ``remedy`` is the fix the refusal suggests, in the words of the command that calls it.

    ``create=False`` only checks, so a command can fail on a finished run before it does any
    work without leaving an empty folder behind when something else goes wrong first.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out must be a directory, got the existing file {out} instead")
    if (out / marker).exists() and not overwrite:
        raise ConfigError(
            f"{out} already holds a run ({marker} exists); {remedy}"
        )
    if create:
        out.mkdir(parents=True, exist_ok=True)
    return out
