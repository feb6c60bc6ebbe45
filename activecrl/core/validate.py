"""The one check for "an integer >= minimum": configs, models, trainers, metrics and strategies.

Every such check raises the same ``ConfigError`` wording, "NAME must be an integer >= MIN, got
VALUE instead" (plus a hint on how to fix it), and rejects ``bool`` (an ``int`` subclass that is
never a count) and floats that happen to be whole.
"""

from __future__ import annotations

import numbers

from activecrl.core.errors import ConfigError

__all__ = ["check_int", "check_threads_option", "check_track", "tracking_help", "SEED_LIMIT", "TRACKERS"]

SEED_LIMIT = 2**63  # numpy SeedSequence / torch seeds: [0, 2**63)


def check_int(name: str, value, minimum: int, hint: str = "", *, below: int | None = None,
              none_ok: bool = False) -> int | None:
    """``value`` as an ``int`` if it is an integer >= ``minimum`` (and < ``below``), else ConfigError.

    ``none_ok``: None passes through (an optional count such as ``max_samples``).
    """
    if value is None and none_ok:
        return None
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum \
        and (below is None or value < below)
    if not ok:
        expected = f"in [{minimum}, {_show(below)})" if below is not None else f">= {minimum}"
        raise ConfigError(f"{name} must be an integer {expected}{' or None' if none_ok else ''}, "
                          f"got {value!r} instead{hint}")
    return int(value)


def _show(bound: int) -> str:
    return "2**63" if bound == SEED_LIMIT else str(bound)


def check_threads_option(value) -> None:
    """For the configs' ``__post_init__``: ``threads`` is None (automatic) or a positive integer."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"threads must be an integer >= 1 or None (automatic), got {value!r} instead")


#: the experiment trackers a run can log to (``activecrl.tracking``)
TRACKERS = ("mlflow", "tensorboard")


def tracking_help(record: str) -> dict[str, str]:
    """The help of the ``track`` and ``tracking_uri`` config fields; ``record``: the folder a command
    writes ("the run folder", "the --out folder"), which the trackers copy and MLflow's store sits beside."""
    return {"track": (f"also log the run to these experiment trackers: {' | '.join(TRACKERS)} (repeat for both; "
                      f"pip install -e '.[tracking]'); {record} stays the record"),
            "tracking_uri": ("--track mlflow: the tracking server or store (e.g. http://host:5000; default: a SQLite "
                             f"file mlflow.db beside {record})")}


def check_track(track) -> tuple[str, ...]:
    """``track`` (a tracker name or a sequence of them) as a tuple of distinct names from ``TRACKERS``."""
    names = (track,) if isinstance(track, str) else tuple(track or ())
    for name in names:
        if name not in TRACKERS:
            raise ConfigError(f"track must name trackers among {', '.join(TRACKERS)}, got {name!r} instead; "
                              f"e.g. --track mlflow --track tensorboard")
    return tuple(dict.fromkeys(names))
