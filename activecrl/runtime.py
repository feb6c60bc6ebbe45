"""Device selection and seeding."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from .errors import ConfigError


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; ``cuda``/``cuda:1``/``cpu``/``mps`` as given."""
    if isinstance(spec, torch.device):
        return spec
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps, got {spec!r} instead") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device 'cuda' was asked for, but torch sees no CUDA GPU here; use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device must name one of the {torch.cuda.device_count()} visible GPUs, got {spec!r} instead"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' was asked for, but it is not available; use --device cpu or auto")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def configure_backends(device: torch.device, deterministic: bool = False) -> None:
    """Fast CUDA defaults (TF32, cuDNN autotuning for fixed shapes), or bit-reproducible ones.

    Autotuning may pick a different (non-deterministic) convolution algorithm from run to run, so
    ``deterministic=True`` turns it off and asks torch for deterministic kernels: the same seed
    then gives the same weights and queries on the same GPU, at some cost in speed. CPU runs are
    reproducible either way.
    """
    if device.type != "cuda":
        return
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed for deterministic cuBLAS
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
