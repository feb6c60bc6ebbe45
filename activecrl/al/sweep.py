"""``activecrl sweep``: every combination of a grid of run options, scheduled on Ray.

A sweep adds no experiment logic of its own. Each grid point is one run folder under the sweep's
``--out``, exactly what ``activecrl run`` writes for that configuration (its ``config.json`` also
holds a ``sweep`` key naming the point), and each (grid point, trial) is one Ray task that runs
that single trial with ``run_active_learning(..., resume=True, trials=[t])``. The records of
the run folders stay the unit of progress: a task retried by Ray (a killed worker) or a rerun
of the same sweep command skips the stages already recorded and reruns the rest.

Nothing large travels through Ray: a task receives a folder and a trial number and loads the
dataset from its machine's cache (``load_dataset``: decoded at most once per machine). The run
folders must therefore be visible to every machine at the same path (one machine, or a shared
filesystem such as NFS); see ``loop.py`` for how parallel trials write one folder safely.

With ``track`` (``--track``), the driver logs the sweep to the trackers (``activecrl.tracking.SweepTracking``):
one parent run, one child run per grid point, each point's stages as its tasks record them; the tasks
themselves log nothing, so no task needs to reach the tracking server.

Ray is an optional dependency (``pip install "activecrl[distributed]"``), imported only here.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from activecrl.al.config import ALConfig
from activecrl.core.config import flatten, load_toml, merge
from activecrl.core.errors import ActiveCRLError, ConfigError
from activecrl.core.io import atomic_write_json, to_jsonable
from activecrl.al.loop import (CONFIG_FILE, CheckedRun, LoopCallbacks, check_run, load_saved_config, run_active_learning,
                                run_threads, with_absolute_paths, write_run_config)
from activecrl.al.records import merge_records, read_records
from activecrl.tracking import SweepTracking, check_tracking
from activecrl.training.config import TrainConfig

logger = logging.getLogger(__name__)

SWEEP_FILE = "sweep.json"
INSTALL_HINT = 'pip install "activecrl[distributed]" (or pip install "ray[default]")'
MAX_RETRIES = 3  # Ray reruns a task whose worker process died (killed, out of memory) this often
# tests only: a task that can delete this file kills its own worker after its first recorded stage
KILL_ONCE_ENV = "ACTIVECRL_SWEEP_TEST_KILL_ONCE"
SWEEP_WIDE = ("track", "tracking_uri")  # run options that are the sweep's, never a grid point's
_NESTED = {"train": {f.name for f in dataclasses.fields(TrainConfig)}, "strategy_params": None}  # None: any key


@dataclass
class SweepPoint:
    index: int
    values: dict[str, Any]  # grid key -> this point's value ("train.lr" for a [train] option)
    name: str  # its run folder under the sweep's --out
    config: ALConfig

    @property
    def label(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in self.values.items())


@dataclass
class SweepSpec:
    base: dict[str, Any]  # the options every point shares (a run TOML's content)
    grid: dict[str, list]  # flattened grid keys -> their values
    points: list[SweepPoint]


@dataclass
class PointStatus:
    name: str
    label: str
    stages_total: int
    state: str = "queued"  # queued | running | finished | failed
    stages_done: int = 0
    started: float | None = None  # time.time() when a trial of it was first seen running
    ended: float | None = None
    error: str | None = None

    @property
    def elapsed(self) -> float | None:
        return None if self.started is None else (self.ended or time.time()) - self.started


class SweepCallbacks:
    """Progress hook; the CLI renders it with rich. ``statuses``: one per grid point, in order."""

    def update(self, statuses: list[PointStatus]) -> None: ...


# ----------------------------------------------------------------------------------------------
# the grid
# ----------------------------------------------------------------------------------------------
def load_sweep(path: str | os.PathLike, options: dict[str, Any] | None = None) -> SweepSpec:
    """A sweep TOML: what a run's TOML holds, plus a ``[grid]`` table of lists; ``options`` (e.g. the
    command line's ``track``) override its run options."""
    values = load_toml(path)
    grid = values.pop("grid", None)
    return expand_grid(merge(values, options or {}), grid, source=str(path))


def expand_grid(base: dict[str, Any], grid: Any, source: str = "the sweep") -> SweepSpec:
    """Every combination of the grid's values over ``base``, each checked by ``ALConfig``."""
    if not isinstance(grid, dict) or not grid:
        raise ConfigError(f"{source} must have a [grid] table of run options with lists of values, e.g. "
                          f"strategy = [\"random\", \"least_conf\"], got {grid!r} instead; "
                          f"for a single configuration use `activecrl run --config`")
    flat = flatten(grid, depth=1)  # [grid.train] or train.lr = [...]; deeper tables are values
    for key, values in flat.items():
        _check_grid_key(key)
        if key in SWEEP_WIDE:
            raise ConfigError(f"grid key {key!r} applies to the whole sweep (one tracked sweep run); set it "
                              f"outside [grid] or with --{key.replace('_', '-')}")
        if not isinstance(values, list):
            raise ConfigError(f"grid key {key!r} must be a list of values, got {values!r} instead; "
                              f"write {key} = [{_toml(values)}]")
        if not values:
            raise ConfigError(f"grid key {key!r} has no values, so the grid is empty; give it at least one")
    points = []
    combos = list(itertools.product(*flat.values()))
    width = len(str(len(combos) - 1))
    for index, combo in enumerate(combos):
        values = dict(zip(flat, combo))
        label = ", ".join(f"{k}={v!r}" for k, v in values.items())
        try:
            # a relative --dataset / --embeddings is the working folder's, made absolute as `run` saves it,
            # so the Ray tasks (another working folder) and a later `activecrl run --resume` find it
            config = with_absolute_paths(ALConfig.from_dict(merge(base, _nest(values))))
        except ActiveCRLError as exc:
            raise type(exc)(f"grid point {index} ({label}) of {source}: {exc}") from None
        name = _folder_name(index, values, width)
        points.append(SweepPoint(index, values, name, config))
    return SweepSpec(base, flat, points)


def _nest(values: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in values.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            nested[head] = value
    return nested


def _check_grid_key(key: str) -> None:
    options = sorted(f.name for f in dataclasses.fields(ALConfig))
    head, _, rest = key.partition(".")
    plain = head in options and not rest
    nested = head in _NESTED and rest and (_NESTED[head] is None or rest in _NESTED[head])
    if not (plain or nested):
        raise ConfigError(f"grid key {key!r} is not a run option; grid keys are run options ({', '.join(options)}), "
                          f"train.<option> ({', '.join(sorted(_NESTED['train']))}) or strategy_params.<name>")


def _toml(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)


def _folder_name(index: int, values: dict[str, Any], width: int) -> str:
    def short(value):
        text = str(value)
        return Path(text).name if "/" in text else text  # a dataset path: its file name

    raw = "-".join(f"{key}={short(value)}" for key, value in values.items())
    safe = "".join(ch if ch.isalnum() or ch in "._=,+-" else "_" for ch in raw)[:80]
    return f"{index:0{width}d}-{safe}"  # the index keeps names unique after shortening


# ----------------------------------------------------------------------------------------------
# running it
# ----------------------------------------------------------------------------------------------
def import_ray(what: str = "activecrl sweep runs"):
    try:
        import ray
    except ImportError:
        raise ActiveCRLError(f"{what} on Ray, which is not installed; install it with {INSTALL_HINT}") from None
    return ray


def run_sweep(spec: SweepSpec, out: str | os.PathLike, *, address: str | None = None, cpus_per_trial: float = 1.0,
              gpus_per_trial: float = 0.0, callbacks: SweepCallbacks | None = None,
              poll_seconds: float = 1.0) -> list[PointStatus]:
    """Run (or continue) every (grid point, trial) of ``spec`` as a Ray task; one status per point.

    Everything is checked before anything is written or any task starts: every point as
    ``activecrl run`` would check it, the resources asked for against the cluster, and that
    ``out`` holds this sweep or nothing. Without ``address`` a local Ray instance sized to this
    machine runs the tasks (an already initialised Ray, e.g. in a notebook, is used as it is).
    A failed point is reported in its status and does not stop the others.
    """
    ray = import_ray()
    out = Path(out)
    _check_resource_options(cpus_per_trial, gpus_per_trial)
    _check_devices(spec, gpus_per_trial)
    first = spec.points[0].config  # track and tracking_uri are the same for every point (SWEEP_WIDE)
    check_tracking(first.track, first.tracking_uri, out)
    checked = _check_points(spec, _task_cpus(cpus_per_trial))
    _check_out(spec, out)
    started_ray = connect_ray(ray, address)
    try:
        _check_cluster(ray, cpus_per_trial, gpus_per_trial)
        _write_folders(spec, out, checked)
        callbacks = callbacks or SweepCallbacks()
        if not first.track:
            return _schedule(ray, spec, out, cpus_per_trial, gpus_per_trial, callbacks, poll_seconds)
        tracking = SweepTracking(spec, out, inner=callbacks)  # the driver logs the points' records as they come
        status = "FAILED"
        try:
            statuses = _schedule(ray, spec, out, cpus_per_trial, gpus_per_trial, tracking, poll_seconds)
            status = "FINISHED" if all(s.state == "finished" for s in statuses) else "FAILED"
            return statuses
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            tracking.finish(status)
    finally:
        if started_ray:
            ray.shutdown()


def _check_resource_options(cpus: float, gpus: float) -> None:
    if not cpus > 0:
        raise ConfigError(f"--cpus-per-trial must be a positive number, got {cpus!r} instead")
    if not gpus >= 0 or (gpus > 1 and gpus != int(gpus)):
        raise ConfigError(f"--gpus-per-trial must be a fraction in [0, 1] (trials sharing one GPU) or a whole "
                          f"number of GPUs, got {gpus!r} instead")


def _check_devices(spec: SweepSpec, gpus: float) -> None:
    for point in spec.points:
        device = point.config.device.strip().lower()
        try:
            kind = "auto" if device == "auto" else torch.device(device).type
        except RuntimeError:
            raise ConfigError(f"grid point {point.index} ({point.label}): device must be auto, cpu, cuda or "
                              f"cuda:N, got {device!r} instead") from None
        if kind == "cuda" and gpus == 0:
            raise ConfigError(f"grid point {point.index} ({point.label}) asks for device {device!r}, but "
                              f"--gpus-per-trial is 0; pass --gpus-per-trial 1 (or 0.25 to share a GPU "
                              f"among 4 trials)")


def _task_cpus(cpus_per_trial: float) -> int:
    """The CPUs a task's torch threads may use: its share (Ray caps a task's OpenMP threads there too)."""
    return max(1, int(cpus_per_trial))


def _check_points(spec: SweepSpec, task_cpus: int) -> dict[int, tuple[CheckedRun, int]]:
    """``check_run`` for every point, each dataset loaded once, and the thread count its tasks will run
    with on ``task_cpus`` CPUs: what its config.json records."""
    datasets: dict[tuple, Any] = {}
    checked_points = {}
    for point in spec.points:
        config = point.config
        key = (config.dataset, config.data_dir, config.download)
        try:
            checked = check_run(config, dataset=datasets.get(key))
        except ActiveCRLError as exc:
            raise type(exc)(f"grid point {point.index} ({point.label}): {exc}") from None
        datasets[key] = checked.dataset
        threads = run_threads(config, checked, cpus=task_cpus)
        # config.json needs the embeddings' fingerprint, not the arrays: one point's are freed before the next loads
        checked_points[point.index] = (dataclasses.replace(checked, embeddings=None), threads)
    return checked_points


def _comparable(config: ALConfig) -> ALConfig:
    # where a run executes or is tracked may change between reruns, as with `activecrl run --resume`
    # (a folder written before paths were saved absolute compares equal to its absolute spelling)
    return dataclasses.replace(with_absolute_paths(config), device="auto", data_dir=None, track=(), tracking_uri=None)


def _check_out(spec: SweepSpec, out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out must be a directory, got the existing file {out} instead")
    marker = out / SWEEP_FILE
    if marker.is_file():
        saved = json.loads(marker.read_text())
        if saved.get("points") != [p.name for p in spec.points] or saved.get("grid") != to_jsonable(spec.grid):
            raise ConfigError(f"{out} holds another sweep (its {SWEEP_FILE} has a different grid); rerun that "
                              f"sweep's own TOML to continue it, or choose another --out")
    elif out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"--out {out} exists and is not a sweep folder (no {SWEEP_FILE}); choose a new or empty folder")
    for point in spec.points:
        folder = out / point.name
        if (folder / CONFIG_FILE).is_file() and _comparable(load_saved_config(folder)) != _comparable(point.config):
            raise ConfigError(f"{folder} holds a run with other options than grid point {point.index} "
                              f"({point.label}); the sweep TOML changed since it ran: restore it, or choose "
                              f"another --out")


def _write_folders(spec: SweepSpec, out: Path, checked: dict[int, tuple[CheckedRun, int]]) -> None:
    """``sweep.json`` and each point's ``config.json``, written as ``activecrl run`` writes it."""
    out.mkdir(parents=True, exist_ok=True)
    if not (out / SWEEP_FILE).is_file():
        atomic_write_json(out / SWEEP_FILE, {"base": spec.base, "grid": spec.grid,
                                             "points": [p.name for p in spec.points]})
    for point in spec.points:
        folder = out / point.name
        if not (folder / CONFIG_FILE).is_file():
            folder.mkdir(exist_ok=True)
            extra = {"sweep": {"point": point.index, "of": len(spec.points), "values": point.values}}
            write_run_config(folder, point.config, *checked[point.index], extra=extra)


def connect_ray(ray, address: str | None) -> bool:
    """Connect to Ray; True when this call started a local instance (and so must shut it down)."""
    if address is not None:
        _probe(address)
    if ray.is_initialized():
        logger.info("using the Ray instance this process already initialised")
        return False
    if address is None:
        # loopback only: Ray otherwise binds a local instance to the machine's network address
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        ray.init(address="local", num_cpus=cpus, include_dashboard=False,
                 log_to_driver=False, logging_level=logging.ERROR, object_store_memory=200 * 2**20)
        return True
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ... on a bad cluster
        raise ConfigError(f"could not connect to the Ray cluster at --address {address}: {exc}") from None
    return False


def _probe(address: str) -> None:
    """Fail within seconds on an unreachable address (Ray itself retries for about a minute)."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address must be HOST:PORT of a Ray head (what `ray start --head --port PORT` "
                          f"printed), got {address!r} instead")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at --address {address} ({exc.strerror or exc}); start "
                          f"it with `ray start --head --port {port}` on {host}, or omit --address to run on "
                          f"this machine") from None


def _check_cluster(ray, cpus: float, gpus: float) -> None:
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    most_cpus = max((n.get("CPU", 0) for n in nodes), default=0)
    most_gpus = max((n.get("GPU", 0) for n in nodes), default=0)
    if gpus > most_gpus:
        raise ConfigError(f"--gpus-per-trial {gpus:g} asks for more GPUs than any machine of the Ray cluster has "
                          f"({most_gpus:g}); lower it (0 runs on CPUs), or add a machine with GPUs")
    if cpus > most_cpus:
        raise ConfigError(f"--cpus-per-trial {cpus:g} asks for more CPUs than any machine of the Ray cluster has "
                          f"({most_cpus:g}); lower it")


class _Board:
    """A Ray actor the tasks tell when they start, so the driver can show which points run."""

    def __init__(self):
        self._started: set[tuple[int, int]] = set()

    def start(self, point: int, trial: int) -> None:
        self._started.add((point, trial))

    def started(self) -> list[tuple[int, int]]:
        return sorted(self._started)


def _schedule(ray, spec: SweepSpec, out: Path, cpus: float, gpus: float, callbacks: SweepCallbacks,
              poll_seconds: float) -> list[PointStatus]:
    board = ray.remote(_Board).options(num_cpus=0).remote()
    task = ray.remote(_run_trial_task)
    threads = _task_cpus(cpus)
    statuses, pending, left = [], {}, {}
    for point in spec.points:
        folder = out / point.name
        records = read_records(folder)
        status = PointStatus(point.name, point.label, stages_total=point.config.trials * point.config.stages,
                             stages_done=len(records))
        statuses.append(status)
        todo = [t for t in range(point.config.trials) if sum(r.trial == t for r in records) < point.config.stages]
        left[point.index] = len(todo)
        if not todo:
            merge_records(folder)  # a driver killed before its final merge may have left it behind
            status.state = "finished"
            continue
        for trial in todo:
            ref = task.options(num_cpus=cpus, num_gpus=gpus, max_retries=MAX_RETRIES,
                               name=f"{point.name}/trial{trial}").remote(
                str(folder.resolve()), trial, threads, gpus > 0, board, point.index)
            pending[ref] = (point.index, trial)
    callbacks.update(statuses)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=poll_seconds)
        for ref in ready:
            index, trial = pending.pop(ref)
            status = statuses[index]
            try:
                ray.get(ref)
            except ray.exceptions.RayError as exc:
                message = f"trial {trial + 1}: {_describe(exc)}"  # counted from 1, as on screen
                logger.error("grid point %s failed: %s", status.name, message)
                status.error = message if status.error is None else status.error
            left[index] -= 1
            if left[index] == 0:  # the point's last task: settle its results.jsonl and its state
                status.stages_done = len(merge_records(out / status.name))
                status.ended = time.time()
                status.started = status.started or status.ended
                if status.error is None and status.stages_done < status.stages_total:
                    status.error = f"only {status.stages_done} of {status.stages_total} stages were recorded"
                status.state = "failed" if status.error else "finished"
        try:
            started = ray.get(board.started.remote(), timeout=30)
        except ray.exceptions.RayError:  # only the display suffers if the board is gone
            started = []
        for index, trial in started:
            status = statuses[index]
            if status.state == "queued":
                status.state, status.started = "running", time.time()
        for status in statuses:
            if status.state == "running":
                status.stages_done = len(read_records(out / status.name))
        callbacks.update(statuses)
    return statuses


def _describe(exc) -> str:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, ActiveCRLError):
        return str(cause)
    if cause is not None:
        return f"{type(cause).__name__}: {cause}"
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


class _TaskCallbacks(LoopCallbacks):
    def stage_end(self, record) -> None:
        arm = os.environ.get(KILL_ONCE_ENV)
        if arm:
            try:
                os.unlink(arm)  # only one task, once, can remove it
            except FileNotFoundError:
                return
            os.kill(os.getpid(), signal.SIGKILL)  # a worker dying mid-task, after one recorded stage


def _run_trial_task(folder: str, trial: int, threads: int, use_gpu: bool, board, point: int) -> int:
    """One Ray task: trial ``trial`` of the run folder ``folder``; returns its recorded stages."""
    torch.set_num_threads(threads)
    if not (Path(folder) / CONFIG_FILE).is_file():
        raise ConfigError(f"{folder} is not visible on {socket.gethostname()}: a sweep's --out must be on storage "
                          f"every machine of the cluster mounts at the same path (e.g. NFS)")
    try:
        board.start.remote(point, trial)
    except Exception:  # noqa: BLE001 - the progress board is for display only
        logger.warning("could not report the start of trial %d of %s", trial + 1, folder)
    saved = load_saved_config(folder)
    # a task without a GPU share must not take one that Ray gave to another task
    device = saved.device if use_gpu or saved.device != "auto" else "cpu"
    records = run_active_learning_trial(folder, trial, device)
    return sum(r.trial == trial for r in records)


def run_active_learning_trial(folder: str | os.PathLike, trial: int, device: str = "auto") -> list[dict]:
    """Run (or finish) one trial of an existing run folder with its saved options and thread count."""
    threads = json.loads((Path(folder) / CONFIG_FILE).read_text()).get("threads_used")  # None: an older sweep
    return run_active_learning(ALConfig(device=device, threads=threads), folder, resume=True, trials=[trial],
                               callbacks=_TaskCallbacks())


__all__ = ["PointStatus", "SweepCallbacks", "SweepPoint", "SweepSpec", "connect_ray", "expand_grid", "import_ray",
           "load_sweep", "run_sweep", "INSTALL_HINT"]
