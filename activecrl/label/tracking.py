"""Experiment tracking of a labeling project's rounds (``activecrl label next --track``).

One tracked run per project and tracker, continued by every round, through
:class:`activecrl.tracking.Tracked`: MLflow (without ``--tracking-uri``: the SQLite store
``PROJECT/mlflow.db``, artifacts in ``PROJECT/mlartifacts/``) and/or TensorBoard (event files in
``PROJECT/tensorboard/``). The runs' ids are kept in the project's ``meta`` table (key
``tracking``), so the next round continues them; a ``--tracking-uri`` other than the saved one
starts a new MLflow run there.

A round logs, at step = the human (training) labels its model was trained on (0 for a cold start):

- params: the round's settings under ``round<r>.`` (``round3.strategy``, ``round3.budget``, ...;
  a round picked again with ``--new`` under ``round<r>-repick<k>.``, since an MLflow param never
  changes its value);
- metrics: ``round``, ``n_images``, ``n_labeled``, ``n_audit_labeled``, ``round_seconds``,
  ``train_seconds``, ``query_seconds``, ``audit_accuracy`` (the round's model on the audit labels:
  the number ``label status`` shows), ``auto_label_share_risk0.05`` and ``auto_label_share_risk0.1``
  (the share of the unlabeled images ``export --auto-label --delta 0.1`` would label at that risk,
  as ``label status`` previews it; left out while the audit labels are too few) and the per-epoch
  ``train_loss`` at step = the epochs of the
  project's model rounds so far (round stage x epochs + epoch - 1, as ``activecrl run`` counts a
  trial's epochs);
- the batch file (MLflow artifact ``batches/<name>``).

A cold start logs what it has (no training, no accuracy); a re-issued batch logs nothing (no
round ran). The checks run before any round work (:meth:`RoundTracking.start`); the logging runs
after the round has written its batch and committed it, and a failure there is a warning only.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Iterable

from activecrl.core.validate import check_track
from activecrl.label.db import get_meta, set_meta, transaction
from activecrl.tracking import Tracked, check_tracking, config_params, epoch_step

logger = logging.getLogger(__name__)

__all__ = ["META_KEY", "RoundTracking", "project_tracking_uri", "ui_commands"]

META_KEY = "tracking"  # the meta table's row with the tracked runs' ids (Tracked.state())


def project_tracking_uri(path) -> str:
    """MLflow's store of a project without ``--tracking-uri``: ``sqlite:///PROJECT/mlflow.db``."""
    return f"sqlite:///{(Path(path).resolve() / 'mlflow.db').as_posix()}"


class RoundTracking:
    """The tracking of one round: checked by ``start`` before the round, logged by ``log`` after it."""

    def __init__(self, track: tuple[str, ...], tracking_uri: str, saved: dict):
        self.track, self.tracking_uri, self.saved = track, tracking_uri, saved

    @classmethod
    def start(cls, project, track: Iterable[str] | str = (), tracking_uri: str | None = None) -> "RoundTracking":
        """Check the trackers of ``track`` (names, packages, the MLflow store) before any round work.

        Without ``tracking_uri``, MLflow continues in the store of the project's saved run, else in
        ``project_tracking_uri``."""
        track = check_track(track)
        saved = get_meta(project.con, META_KEY) or {}
        uri = tracking_uri or saved.get("mlflow", {}).get("tracking_uri") or project_tracking_uri(project.path)
        if track:
            check_tracking(track, uri, project.path)
        return cls(track, uri, saved)

    def log(self, project, result, **options) -> None:
        """Log the round ``result`` (a ``RoundResult``) and ``options`` (budget, audit, seed, ...) as params;
        never raises: the round is already saved."""
        if not self.track or result.reissued:
            return
        try:
            self._log(project, result, options)
        except Exception as exc:  # noqa: BLE001 - a tracker must never lose a round that is saved
            logger.warning("tracking round %d failed (%s: %s); the round is saved in the project and only its "
                           "tracking is missing", result.batch.round, type(exc).__name__, exc)

    def _log(self, project, result, options: dict) -> None:
        tracked = Tracked.open(self.track, self.tracking_uri, project.path, name=Path(project.path).resolve().name,
                               saved=self.saved, tags={"activecrl.kind": "label"})
        self._save(project, tracked.state())
        with tracked:  # the run ends FINISHED; the next round continues it
            step = result.n_labeled
            tracked.log_params(_round_params(project, result, options), step=step)
            tracked.log_metrics(_round_metrics(project, result), step)
            if result.epoch_losses:
                tracked.log_series("train_loss", result.epoch_losses,
                                   epoch_step(result.stage, len(result.epoch_losses)))
            tracked.log_artifacts([result.path], folder="batches")

    def _save(self, project, state: dict) -> None:
        """Keep the runs' ids in the project (a tracker not used this round keeps its saved run)."""
        merged = {**self.saved, **state}
        if merged != self.saved:
            with transaction(project.con):
                set_meta(project.con, META_KEY, merged)
            self.saved = merged


def _round_prefix(project, round_: int) -> str:
    """``round<r>``, or ``round<r>-repick<k>`` for the k-th batch picked again (``--new``) in round r."""
    picks = project.con.execute("SELECT COUNT(*) FROM batches WHERE round = ?", (round_,)).fetchone()[0]
    return f"round{round_}" if picks <= 1 else f"round{round_}-repick{picks - 1}"


def _round_params(project, result, options: dict) -> dict[str, str]:
    values = {**dataclasses.asdict(result.settings), **options, "picked_by": result.strategy,
              "cold_start": result.cold_start, "inputs": result.inputs}
    prefix = _round_prefix(project, result.batch.round)
    return {f"{prefix}.{key}": value for key, value in config_params(values).items()}


def _round_metrics(project, result) -> dict[str, float | None]:
    status = project.status()  # after the round (and the oracle's answers): what `label status` shows
    metrics = {"round": result.batch.round, "n_images": status.n_images, "n_labeled": result.n_labeled,
               "n_audit_labeled": status.n_audit_labels, "round_seconds": result.seconds,
               "train_seconds": result.train_seconds, "query_seconds": result.query_seconds,
               "audit_accuracy": None if result.cold_start else status.audit_accuracy}
    for a in status.auto_label:  # what export --auto-label would label now; left out while audit labels lack
        metrics[f"auto_label_share_risk{a.risk:g}"] = a.share
    return metrics


def ui_commands(project, track: Iterable[str]) -> list[str]:
    """How to look at the project's tracked run in each tracker of ``track`` that holds one."""
    saved = get_meta(project.con, META_KEY) or {}
    commands = []
    if "mlflow" in track and "mlflow" in saved:
        uri = saved["mlflow"]["tracking_uri"]
        commands.append(f"mlflow ui --backend-store-uri {uri}" if uri.startswith("sqlite:") else f"open {uri}")
    if "tensorboard" in track and "tensorboard" in saved:
        commands.append(f"tensorboard --logdir {Path(project.path) / saved['tensorboard']['logdir']}")
    return commands
