"""Process memory readings shared by the benchmarks (Linux /proc; NaN / False elsewhere)."""

from __future__ import annotations


def status_mb(key: str) -> float:
    """A ``/proc/self/status`` field in MiB (``VmRSS``: resident now, ``VmHWM``: peak)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def reset_peak_rss() -> bool:
    """Reset VmHWM (peak RSS) so it measures the algorithm, not making the data (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
