"""Experiment tracking: a run's records also logged to MLflow and/or TensorBoard (``--track``).

The run folder stays the record (``config.json``, ``results.jsonl``, ``curves.png``); a tracker
gets a copy of it, never instead of it. What is logged, under the names and units of the run
folder's files:

- params: the run's whole config, flattened with ``activecrl.core.config.flatten`` (``train.epochs``,
  ``strategy_params.weight``: the TOML keys), JSON-encoded where not a string;
- per trial (an MLflow child run, a TensorBoard subfolder ``trial<t>``): every stage's
  ``results.jsonl`` numbers (``accuracy``, ``aurc``, ..., ``train_seconds``, ``query_seconds``,
  ``final_train_loss`` and the peak memory ``*_peak_*_mib``) at step = labeled-set size, a NaN
  (null) one left out, and the per-epoch training loss ``train_loss`` (the record's ``epoch_losses``,
  logged as its stage ends) at step = the trial's epoch count so far (stage x epochs + epoch - 1);
- artifacts (MLflow): ``config.json``, ``results.jsonl`` and ``curves.png``; TensorBoard's event
  files lie in the run folder beside them (``tensorboard/``), the config as a text summary.

The default needs no server: MLflow on the SQLite store ``mlflow.db`` beside the run folder (its
artifacts in ``mlartifacts/`` beside it), TensorBoard event files in the run folder. The tracked
runs' ids are kept in ``config.json`` (key ``tracking``), so ``--resume`` continues them; a tracked
run that starts on a folder with records (tracking added on resume) logs those first.

A missing package or an unreachable server is an error before any training starts
(``check_tracking``); a tracker that fails mid-run is logged as a warning and dropped for the
rest of the run, which goes on writing its folder as always. Each tracker is imported only when
asked for. The loop uses ``LoopTracking`` (loop callbacks), ``activecrl sweep``'s driver
``SweepTracking`` (its progress callbacks: one parent run, one child run per grid point, logged
from the points' records as the driver reads them, per-epoch loss included, so no task contacts
a tracker), and any other command one call,
``with open_tracking(config, folder, kind) as tracked: tracked.log_metrics(...)`` (``activecrl train``:
its test metrics at step 0, ``train_loss`` per epoch, ``metrics.json``). ``activecrl label next``
keeps one tracked run per labeling project, continued by every round (``activecrl.label.tracking``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import socket
import time
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlparse

from activecrl.al.records import RESULTS_FILE, StageRecord, read_records
from activecrl.core.config import flatten
from activecrl.core.errors import ActiveCRLError, ConfigError
from activecrl.core.io import atomic_write_json, to_jsonable
from activecrl.core.validate import TRACKERS

logger = logging.getLogger(__name__)

__all__ = ["TRACKERS", "TRACKING_KEY", "INSTALL_HINT", "LoopTracking", "SweepTracking", "Tracked", "check_tracking",
           "config_params", "default_tracking_uri", "epoch_step", "log_artifacts", "log_record", "open_tracking",
           "stage_metrics"]

TRACKING_KEY = "tracking"  # config.json: what the trackers need to continue a run's tracked runs
INSTALL_HINT = 'pip install -e ".[tracking]" (or pip install mlflow tensorboard)'
EXPERIMENT = "activecrl"  # the MLflow experiment (MLFLOW_EXPERIMENT_NAME overrides it)
TENSORBOARD_DIR = "tensorboard"
ARTIFACTS = ("config.json", RESULTS_FILE, "curves.png")
_PACKAGES = {"mlflow": "mlflow", "tensorboard": "tensorboard"}
_PROBE_SECONDS = 5


# ============================================================================ checks, before any work

def default_tracking_uri(folder: str | os.PathLike) -> str:
    """MLflow's store when no ``--tracking-uri`` is given: ``sqlite:///<folder's parent>/mlflow.db``."""
    return f"sqlite:///{(Path(folder).resolve().parent / 'mlflow.db').as_posix()}"


def check_tracking(track: Iterable[str], tracking_uri: str | None, folder: str | os.PathLike) -> None:
    """Fail now, before any training, on a tracker whose package is missing or whose store cannot be reached."""
    for name in track:
        try:
            __import__(_PACKAGES[name])
        except ImportError:
            raise ActiveCRLError(f"--track {name} needs the {_PACKAGES[name]} package, which is not installed; "
                                 f"install it with {INSTALL_HINT}, or drop --track {name}") from None
    if "mlflow" in track:
        _check_mlflow_store(tracking_uri or default_tracking_uri(folder))


def _check_mlflow_store(uri: str) -> None:
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        _check_writable(_sqlite_path(uri).parent, uri)
        return
    if parsed.scheme in ("http", "https"):
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            socket.create_connection((parsed.hostname, port), timeout=_PROBE_SECONDS).close()
        except OSError as exc:
            raise ConfigError(f"cannot reach the MLflow tracking server at --tracking-uri {uri} "
                              f"({exc.strerror or exc}); start it (mlflow server --port {port}), fix the address, or "
                              f"drop --tracking-uri to log to a SQLite file beside the runs") from None
    try:
        _mlflow_client(uri).search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001 - MLflow raises MlflowException, requests' errors, ...
        raise ConfigError(f"--tracking-uri {uri} is not a usable MLflow tracking store ({_first_line(exc)}); "
                          f"fix it, or drop --tracking-uri to log to a SQLite file beside the runs") from None


def _sqlite_path(uri: str) -> Path:
    """The database file of ``sqlite:///relative.db`` or ``sqlite:////absolute.db``."""
    path = urlparse(uri).path
    return Path(path[1:] if path.startswith("//") else path)


def _check_writable(directory: Path, uri: str) -> None:
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # the store's folder is created with the run's
    if not os.access(existing, os.W_OK):
        raise ConfigError(f"--tracking-uri {uri} must be a SQLite file in a folder you can write, got one in "
                          f"{directory} instead; pass another --tracking-uri or --out")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


# ============================================================================ what is logged

def config_params(config: dict) -> dict[str, str]:
    """A config dict as tracker params: flattened to the TOML keys, non-strings JSON-encoded."""
    return {key: value if isinstance(value, str) else json.dumps(value)
            for key, value in flatten(config).items()}


def stage_metrics(record: StageRecord) -> dict[str, float]:
    """The numbers of a ``results.jsonl`` line under its names, NaN (null) ones left out."""
    values = {**record.metrics, "train_seconds": record.train_seconds, "query_seconds": record.query_seconds,
              "final_train_loss": record.final_train_loss, **record.memory()}
    return {k: float(v) for k, v in values.items() if v is not None and not math.isnan(v)}


def epoch_step(stage: int, epochs: int) -> int:
    """The ``train_loss`` step of a stage's first epoch: the epochs trained before it (epochs per stage x stage)."""
    return stage * epochs


def log_record(tracked: "Tracked", record: StageRecord, epochs: int, only_new: bool = False) -> None:
    """A ``results.jsonl`` line in its trial's tracked run: its numbers at step = labels, and its
    ``epoch_losses`` as ``train_loss`` at step = the trial's epochs so far (``epoch_step``)."""
    tracked.log_metrics(stage_metrics(record), record.n_labeled, only_new=only_new)
    if record.epoch_losses:
        tracked.log_series("train_loss", record.epoch_losses, epoch_step(record.stage, epochs), only_new=only_new)


def open_tracking(config, folder: str | os.PathLike, kind: str) -> Tracked:
    """The one call that tracks a command's run: ``config`` (a config dataclass with ``track`` and
    ``tracking_uri``) checked and logged as params, the run named after ``folder`` and tagged ``kind``
    (``train``). No tracker asked for: a ``Tracked`` that does nothing. Use it as a context manager:
    the tracked run ends FINISHED, or FAILED / KILLED when the block raises."""
    check_tracking(config.track, config.tracking_uri, folder)
    return Tracked.open(config.track, config.tracking_uri, folder, name=Path(folder).name,
                        params=config_params(to_jsonable(dataclasses.asdict(config))), tags={"activecrl.kind": kind})


# ============================================================================ the trackers

def _mlflow_client(uri: str):
    # a server that goes away mid-run must cost seconds, not MLflow's minutes of retries (the user's settings win)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    from mlflow.tracking import MlflowClient

    for chatty in ("mlflow.store.db.utils", "alembic"):  # "Creating initial MLflow database tables..."
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLogger(chatty).level))
    return MlflowClient(tracking_uri=uri)


class _MLflowRun:
    """One MLflow run, reached through ``MlflowClient`` (no global active run)."""

    name = "mlflow"

    def __init__(self, client, experiment_id: str, run_id: str, new: bool, uri: str):
        self.client, self.experiment_id, self.run_id, self.new, self.uri = client, experiment_id, run_id, new, uri

    @classmethod
    def open(cls, uri: str, saved: dict | None, name: str, tags: dict) -> "_MLflowRun":
        if uri.startswith("sqlite:"):
            _sqlite_path(uri).parent.mkdir(parents=True, exist_ok=True)  # SQLite creates the file, not its folder
        client = _mlflow_client(uri)
        if saved and saved.get("tracking_uri") == uri and saved.get("run_id"):
            try:
                run = client.get_run(saved["run_id"])
                client.update_run(run.info.run_id, status="RUNNING")
                return cls(client, run.info.experiment_id, run.info.run_id, False, uri)
            except Exception as exc:  # noqa: BLE001 - deleted run, another store: start a new one
                logger.warning("could not continue MLflow run %s (%s); starting a new one", saved["run_id"],
                               _first_line(exc))
        experiment_id = _experiment(client, uri)
        run = client.create_run(experiment_id, run_name=name, tags=tags)
        return cls(client, experiment_id, run.info.run_id, True, uri)

    def state(self) -> dict:
        return {"tracking_uri": self.uri, "experiment_id": self.experiment_id, "run_id": self.run_id}

    def child(self, name: str, key: str) -> "_MLflowRun":
        found = self.client.search_runs([self.experiment_id], max_results=1, filter_string=(
            f"tags.`mlflow.parentRunId` = '{self.run_id}' and tags.`activecrl.key` = '{key}'"))
        if found:
            self.client.update_run(found[0].info.run_id, status="RUNNING")
            return _MLflowRun(self.client, self.experiment_id, found[0].info.run_id, False, self.uri)
        run = self.client.create_run(self.experiment_id, run_name=name,
                                     tags={"mlflow.parentRunId": self.run_id, "activecrl.key": key})
        return _MLflowRun(self.client, self.experiment_id, run.info.run_id, True, self.uri)

    def log_params(self, params: dict[str, str], step: int | None = None) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[start:start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def log_series(self, name: str, points: list[tuple[int, float]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(name, value, now, step) for step, value in points]
        for start in range(0, len(items), 1000):  # MLflow takes at most 1000 metrics per batch
            self.client.log_batch(self.run_id, metrics=items[start:start + 1000])

    def log_artifacts(self, paths: list[Path], folder: str | None = None) -> None:
        for path in paths:
            self.client.log_artifact(self.run_id, str(path), artifact_path=folder)

    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)


def _experiment(client, uri: str) -> str:
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if uri.startswith("sqlite:"):  # artifacts beside the database, not in the working directory's ./mlruns
        location = (_sqlite_path(uri).parent / "mlartifacts").resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # noqa: BLE001 - another process created it first
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


class _TensorBoardRun:
    """One TensorBoard run: an event-file folder (a child run is a subfolder)."""

    name = "tensorboard"

    def __init__(self, logdir: Path, new: bool):
        from torch.utils.tensorboard import SummaryWriter

        self.logdir, self.new = logdir, new
        self.writer = SummaryWriter(log_dir=str(logdir))

    @classmethod
    def open(cls, folder: Path, saved: dict | None) -> "_TensorBoardRun":
        logdir = folder / (saved or {}).get("logdir", TENSORBOARD_DIR)
        return cls(logdir, new=not saved)

    def state(self) -> dict:
        return {"logdir": self.logdir.name}

    def child(self, name: str, key: str) -> "_TensorBoardRun":
        return _TensorBoardRun(self.logdir / key, new=not (self.logdir / key).is_dir())

    def log_params(self, params: dict[str, str], step: int | None = None) -> None:
        rows = "\n".join(f"| {k} | {v} |" for k, v in params.items())
        self.writer.add_text("config", f"| option | value |\n| --- | --- |\n{rows}", global_step=step)
        self.writer.flush()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=step)

    def log_series(self, name: str, points: list[tuple[int, float]]) -> None:
        for step, value in points:
            self.writer.add_scalar(name, value, global_step=step)

    def log_artifacts(self, paths: list[Path], folder: str | None = None) -> None:
        self.writer.flush()  # the files already lie in the run folder, beside the event files

    def end(self, status: str) -> None:
        self.writer.close()


# ============================================================================ a tracked run, in every tracker asked for

class Tracked:
    """A run in each tracker asked for. Every call goes to each of them; a tracker that fails is
    logged as a warning and dropped (for this run and its children), and the run goes on."""

    def __init__(self, runs: list, failed: set[str] | None = None):
        self.runs = runs
        self.failed = set() if failed is None else failed  # shared with the children

    @classmethod
    def open(cls, track: Iterable[str], tracking_uri: str | None, folder: str | os.PathLike, *, name: str,
             params: dict[str, str] | None = None, saved: dict | None = None, tags: dict | None = None) -> "Tracked":
        """Start (or, with ``saved``: a ``state()``, continue) the tracked run of ``folder``, named ``name``.

        ``params`` are logged when a tracker's run is new. Errors here are raised, not dropped: the
        run has not started yet.
        """
        folder, saved = Path(folder), saved or {}
        runs = []
        for tracker in track:
            if tracker == "mlflow":
                uri = tracking_uri or saved.get("mlflow", {}).get("tracking_uri") or default_tracking_uri(folder)
                runs.append(_MLflowRun.open(uri, saved.get("mlflow"), name,
                                            {"activecrl.folder": str(folder.resolve()), **(tags or {})}))
            else:
                runs.append(_TensorBoardRun.open(folder, saved.get("tensorboard")))
        tracked = cls(runs)
        if params:
            for run in runs:
                if run.new:
                    run.log_params(params)
        return tracked

    def __enter__(self) -> "Tracked":
        return self

    def __exit__(self, kind, exc, tb) -> None:
        self.end("FINISHED" if kind is None else "KILLED" if issubclass(kind, KeyboardInterrupt) else "FAILED")

    def state(self) -> dict:
        """What continues these runs later (``Tracked.open(saved=...)``): config.json's ``tracking``."""
        return {run.name: run.state() for run in self.runs}

    @property
    def new(self) -> bool:
        """Whether some tracker's run is new (it has none of what a continued run logged before)."""
        return any(run.new for run in self._live())

    def child(self, name: str, key: str) -> "Tracked":
        """A nested run (MLflow: a child run tagged ``activecrl.key``; TensorBoard: the subfolder ``key``),
        found again when it exists."""
        return Tracked([c for c in (self._call(run, "child", name, key) for run in self._live()) if c is not None],
                       self.failed)

    def log_params(self, params: dict[str, str], only_new: bool = False, step: int | None = None) -> None:
        """``params`` (MLflow: a param may not change its value in a run; TensorBoard: a text summary at ``step``)."""
        self._each("log_params", params, step, only_new=only_new)

    def log_metrics(self, metrics: dict[str, float], step: int, only_new: bool = False) -> None:
        """``metrics`` at ``step``, NaN and None ones left out; ``only_new``: in the trackers whose run is
        new only (catching up)."""
        finite = {k: float(v) for k, v in metrics.items() if v is not None and not math.isnan(v)}
        if finite:
            self._each("log_metrics", finite, int(step), only_new=only_new)

    def log_series(self, name: str, values: Iterable[float], first_step: int, only_new: bool = False) -> None:
        """``values`` as metric ``name`` at steps ``first_step``, ``first_step + 1``, ... (NaN ones left out)."""
        points = [(int(first_step) + i, float(v)) for i, v in enumerate(values) if not math.isnan(v)]
        if points:
            self._each("log_series", name, points, only_new=only_new)

    def epoch_logger(self, inner=None):
        """A trainer's ``progress`` callback that logs each epoch's loss as ``train_loss`` (step: the epochs
        so far, counted over all the models trained, from 0) and passes the epoch on to ``inner``."""
        steps = iter(range(10**12))

        def on_epoch(info) -> None:
            self.log_metrics({"train_loss": info.loss}, next(steps))
            if inner is not None:
                inner(info)
        return on_epoch

    def log_artifacts(self, paths: Iterable[str | os.PathLike], folder: str | None = None) -> None:
        """The files of ``paths`` that exist (MLflow artifacts, in the artifact folder ``folder``)."""
        existing = [Path(p) for p in paths if Path(p).is_file()]
        if existing:
            self._each("log_artifacts", existing, folder)

    def end(self, status: str = "FINISHED") -> None:
        """``status``: FINISHED | FAILED | KILLED."""
        self._each("end", status)

    def _live(self) -> list:
        return [run for run in self.runs if run.name not in self.failed]

    def _each(self, method: str, *args, only_new: bool = False) -> None:
        for run in self._live():
            if run.new or not only_new:
                self._call(run, method, *args)

    def _call(self, run, method: str, *args):
        try:
            return getattr(run, method)(*args)
        except Exception as exc:  # noqa: BLE001 - a tracker must never stop the run or lose its records
            self.failed.add(run.name)
            logger.warning("%s tracking failed (%s: %s) and is off for the rest of this run; the run goes on and "
                           "its folder keeps every record", run.name, type(exc).__name__, _first_line(exc))
            return None


# ============================================================================ a run folder's tracking

def _folder_state(folder: Path) -> dict:
    path = folder / "config.json"
    return json.loads(path.read_text()).get(TRACKING_KEY) or {} if path.is_file() else {}


def _save_folder_state(folder: Path, state: dict) -> None:
    """Keep the tracked runs' ids in ``config.json`` (rewritten atomically, every other key as it was)."""
    path = folder / "config.json"
    saved = json.loads(path.read_text())
    if saved.get(TRACKING_KEY) != state:
        atomic_write_json(path, {**saved, TRACKING_KEY: {**(saved.get(TRACKING_KEY) or {}), **state}})


def open_folder(track, tracking_uri: str | None, folder: Path, config: dict, parent: Tracked | None = None,
                kind: str = "run") -> Tracked:
    """The tracked run of a run folder with a ``config.json``: continued from its saved ids, else new (a
    child of ``parent``: a sweep's, which finds it again by name), with its ids saved back."""
    if parent is not None:
        tracked = parent.child(folder.name, folder.name)
        tracked.log_params(config_params(config), only_new=True)
        return tracked
    tracked = Tracked.open(track, tracking_uri, folder, name=folder.name, params=config_params(config),
                           saved=_folder_state(folder), tags={"activecrl.kind": kind})
    _save_folder_state(folder, tracked.state())
    return tracked


class _Trials:
    """The per-trial child runs of a run folder's tracked run (``epochs``: per stage); with ``catch_up``, a
    new one first logs the records the folder already holds (tracking added on resume)."""

    def __init__(self, tracked: Tracked, folder: Path, epochs: int, catch_up: bool = True):
        self.tracked, self.folder, self.epochs, self.catch_up = tracked, folder, epochs, catch_up
        self.children: dict[int, Tracked] = {}

    def get(self, trial: int) -> Tracked:
        if trial not in self.children:
            child = self.children[trial] = self.tracked.child(f"trial {trial}", f"trial{trial}")
            if child.new and self.catch_up:
                for record in read_records(self.folder):
                    if record.trial == trial:
                        log_record(child, record, self.epochs, only_new=True)
        return self.children[trial]

    def log(self, record: StageRecord) -> None:
        log_record(self.get(record.trial), record, self.epochs)

    def end(self, status: str) -> None:
        for child in self.children.values():
            child.end(status)


class LoopTracking:
    """Loop callbacks (``activecrl.al.loop.LoopCallbacks``) that log a run folder's records (each stage's
    numbers and epoch losses, as it ends) to its tracked run, and pass every call on to ``inner`` (e.g.
    the CLI's progress bars)."""

    def __init__(self, tracked: Tracked, folder: Path, epochs: int, inner=None):
        self.tracked, self.folder, self.inner = tracked, Path(folder), inner
        self.trials = _Trials(tracked, self.folder, epochs)

    @classmethod
    def start(cls, config, folder: str | os.PathLike, inner=None) -> "LoopTracking":
        """The tracking of an ``ALConfig`` run whose ``config.json`` is written (continued on resume)."""
        folder = Path(folder)
        tracked = open_folder(config.track, config.tracking_uri, folder, config.to_dict())
        return cls(tracked, folder, config.train.epochs, inner)

    def trial_start(self, trial: int, n_trials: int) -> None:
        self._pass("trial_start", trial, n_trials)
        self.trials.get(trial)

    def stage_start(self, trial: int, stage: int, n_labeled: int) -> None:
        self._pass("stage_start", trial, stage, n_labeled)

    def epoch(self, info) -> None:
        self._pass("epoch", info)

    def query_start(self, trial: int, stage: int, n_pool: int) -> None:
        self._pass("query_start", trial, stage, n_pool)

    def stage_end(self, record: StageRecord) -> None:
        self.trials.log(record)
        self._pass("stage_end", record)

    def finish(self, status: str = "FINISHED") -> None:
        """Log the folder's files as artifacts and end the tracked runs with ``status``."""
        self.tracked.log_artifacts(self.folder / name for name in ARTIFACTS)
        self.trials.end(status)
        self.tracked.end(status)

    def _pass(self, method: str, *args) -> None:
        if self.inner is not None:
            getattr(self.inner, method)(*args)


def log_artifacts(folder: str | os.PathLike, paths: Iterable[str | os.PathLike]) -> None:
    """Add files written after a run ended (``activecrl run``'s ``curves.png``) to its tracked run."""
    folder = Path(folder)
    saved = _folder_state(folder)
    if "mlflow" not in saved:
        return  # TensorBoard's event files already lie beside them
    try:
        tracked = Tracked.open(["mlflow"], None, folder, name=folder.name, saved=saved)
    except Exception as exc:  # noqa: BLE001 - the run is done and its folder complete
        logger.warning("could not add %s to the MLflow run (%s)", ", ".join(map(str, paths)), _first_line(exc))
        return
    tracked.log_artifacts(paths)
    tracked.end("FINISHED")


# ============================================================================ a sweep's tracking

class SweepTracking:
    """Sweep progress callbacks (``activecrl.al.sweep.SweepCallbacks``) that log a sweep: one parent run,
    one child run per grid point (its run folder's tracked run) with its trials below, logged from the
    records the points' tasks write, as the driver sees them; every call passes on to ``inner``."""

    def __init__(self, spec, out: str | os.PathLike, inner=None):
        self.out, self.inner = Path(out), inner
        first = spec.points[0].config
        saved_path = self.out / "sweep.json"
        sweep = json.loads(saved_path.read_text())
        self.root = Tracked.open(first.track, first.tracking_uri, self.out, name=self.out.name,
                                 params=config_params({**spec.base, "grid": spec.grid}),
                                 saved=sweep.get(TRACKING_KEY), tags={"activecrl.kind": "sweep"})
        if sweep.get(TRACKING_KEY) != self.root.state():
            atomic_write_json(saved_path, {**sweep, TRACKING_KEY: self.root.state()})
        self.points: dict[str, tuple[Tracked, _Trials]] = {}
        self.logged: dict[str, set[tuple[int, int]]] = {}
        self.ended: set[str] = set()
        self.configs = {p.name: p.config for p in spec.points}

    def update(self, statuses) -> None:
        for status in statuses:
            if status.name not in self.ended and (status.stages_done or status.state in ("finished", "failed")):
                self._log_point(status)
        if self.inner is not None:
            self.inner.update(statuses)

    def _log_point(self, status) -> None:
        folder = self.out / status.name
        if status.name not in self.points:
            tracked = open_folder((), None, folder, self.configs[status.name].to_dict(), parent=self.root)
            # a point whose tracked run is not new had its records logged by an earlier driver
            self.logged[status.name] = set() if tracked.new else {(r.trial, r.stage) for r in read_records(folder)}
            epochs = self.configs[status.name].train.epochs
            self.points[status.name] = (tracked, _Trials(tracked, folder, epochs, catch_up=False))
        tracked, trials = self.points[status.name]
        for record in read_records(folder):
            if (record.trial, record.stage) not in self.logged[status.name]:
                trials.log(record)
                self.logged[status.name].add((record.trial, record.stage))
        if status.state in ("finished", "failed"):
            state = "FINISHED" if status.state == "finished" else "FAILED"
            tracked.log_artifacts(folder / name for name in ARTIFACTS)
            trials.end(state)
            tracked.end(state)
            self.ended.add(status.name)

    def finish(self, status: str = "FINISHED") -> None:
        for name, (tracked, trials) in self.points.items():
            if name not in self.ended:
                trials.end(status)
                tracked.end(status)
        self.root.end(status)
