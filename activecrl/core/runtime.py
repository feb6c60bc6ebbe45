"""Device selection, seeding and the CPU thread count."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from activecrl.core.errors import ConfigError
from activecrl.core.validate import check_threads_option


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


# ---------------------------------------------------------------------------- CPU threads
# torch's default intra-op thread count is the number of cores of the machine, whatever else runs
# on them. On a CPU shared with other processes that oversubscribes it: every parallel region waits
# for its slowest thread, and a thread that lost its core stalls the others (stage 1 of the demo:
# 42.7 s with the default, 0.5 s with one thread, on a busy 2-core machine). Small models gain
# nothing from more threads anyway, since their per-op work is too small to split. The default here
# therefore depends only on what this process may use and on the model, never on the current load:
# results on the CPU depend on the thread count (reduction order), so the same command must resolve
# to the same count every time.

PARAMETERS_PER_THREAD = 1_000_000  # about one more thread per million parameters


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. under taskset or a container's cpuset)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def default_threads(n_parameters: int, cpus: int | None = None) -> int:
    """The automatic intra-op thread count: 1 per ``PARAMETERS_PER_THREAD`` parameters (at least 1),
    at most the available CPUs and ``$OMP_NUM_THREADS`` when set. ``small_cnn`` (95k) gets 1 thread,
    ResNet-18 (11M) every CPU up to 11."""
    cpus = available_cpus() if cpus is None else cpus
    limit = cpus
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) >= 1:
        limit = min(limit, int(omp))
    return max(1, min(limit, -(-int(n_parameters) // PARAMETERS_PER_THREAD)))


def resolve_threads(requested: int | None, model: torch.nn.Module | None = None, cpus: int | None = None) -> int:
    """``requested`` as given, or the automatic count for ``model`` (None: its size is unknown: 1 thread)
    on ``cpus`` CPUs (default: the available ones; a sweep task: its share, at most those)."""
    check_threads_option(requested)
    if requested is not None:
        return requested
    n_parameters = sum(p.numel() for p in model.parameters()) if model is not None else 0
    return default_threads(n_parameters, None if cpus is None else min(int(cpus), available_cpus()))


class torch_threads:
    """``with torch_threads(n):`` run with ``n`` intra-op threads and restore the previous count after,
    so a library call from a notebook leaves torch as it found it."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self) -> int:
        self.before = torch.get_num_threads()
        torch.set_num_threads(self.n)
        return self.n

    def __exit__(self, *exc) -> None:
        torch.set_num_threads(self.before)



# ============================================================================ peak memory of a step

_STATUS = "/proc/self/status"
_CLEAR_REFS = "/proc/self/clear_refs"


class PeakMemory:
    """The peak memory of one step (a stage's training, its query): ``with PeakMemory(device) as peak:``
    then ``peak.rss_mib`` and ``peak.cuda_mib``.

    ``rss_mib``: the process's resident high-water mark (MiB). On Linux the mark is reset when the
    step starts (``5`` written to ``/proc/self/clear_refs``, then ``VmHWM`` read from
    ``/proc/self/status``), so it is this step's peak; where that is not allowed (another OS, a
    locked-down ``/proc``) it is the process's peak since it started (``ru_maxrss``), which
    ``resettable`` says. ``cuda_mib``: ``torch.cuda.max_memory_allocated`` on ``device`` since the
    step started (MiB), NaN on other devices.
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.rss_mib = float("nan")
        self.cuda_mib = float("nan")
        self.resettable = False

    def __enter__(self) -> "PeakMemory":
        self.resettable = _reset_rss_peak()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc) -> None:
        self.rss_mib = _rss_peak_mib()
        if self.device.type == "cuda":
            self.cuda_mib = torch.cuda.max_memory_allocated(self.device) / 2**20


def _reset_rss_peak() -> bool:
    """Reset the kernel's resident high-water mark of this process; False where it cannot be."""
    try:
        with open(_CLEAR_REFS, "w") as handle:
            handle.write("5")
        return _vm_hwm_kib() is not None
    except OSError:
        return False


def _vm_hwm_kib() -> int | None:
    try:
        with open(_STATUS) as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _rss_peak_mib() -> float:
    kib = _vm_hwm_kib()
    if kib is not None:
        return kib / 1024
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024
