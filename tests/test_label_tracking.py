"""``activecrl label next --track``: a labeling project's rounds in one tracked run per project, holding
what each round did; checks before any round work; a tracker failing after the round never loses it.

The trackers are optional packages (``pip install -e ".[tracking]"``): each test needing one skips
cleanly without it.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import activecrl.label.rounds as rounds
from activecrl.al.config import ALConfig
from activecrl.cli.app import app
from activecrl.core.errors import ActiveCRLError
from activecrl.label.db import get_meta
from activecrl.label.project import Project
from activecrl.label.tracking import META_KEY, project_tracking_uri
from tests.test_label_cli import CLASSES, make_images, write_labels
from tests.test_tracking import _same, break_mlflow_metrics

needs_mlflow = pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason='pip install -e ".[tracking]"')
needs_tensorboard = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                                       reason='pip install -e ".[tracking]"')


@pytest.fixture
def project(tmp_path) -> tuple[Path, Path]:
    """(a new project of 24 images, the oracle CSV with every image's label)."""
    truth = make_images(tmp_path / "photos", n=24, size=8)
    Project.init(tmp_path / "proj", images=tmp_path / "photos", classes=",".join(CLASSES)).close()
    return tmp_path / "proj", write_labels(tmp_path / "oracle.csv", truth, sorted(truth))


@pytest.fixture
def rounds_done(monkeypatch) -> list:
    """The ``RoundResult`` of every round the CLI runs, as ``next_round`` returned it."""
    done, next_round = [], rounds.next_round

    def recording(*args, **kwargs):
        done.append(next_round(*args, **kwargs))
        return done[-1]

    monkeypatch.setattr(rounds, "next_round", recording)
    return done


def _next(proj: Path, *args) -> None:
    result = CliRunner().invoke(app, ["label", "next", str(proj), "--device", "cpu", *map(str, args)])
    assert result.exit_code == 0, (result.output, result.exception)


def _saved(proj: Path) -> dict:
    with Project.open(proj) as p:
        return get_meta(p.con, META_KEY)


def _history(client, run_id: str, name: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, name), key=lambda m: m.step)]


def _expected(done: list, status: dict) -> dict[str, list[tuple[int, float]]]:
    """What the rounds did, as (step, value) per metric (step: the labels each round's model trained on)."""
    cold, model = done
    epochs = len(model.epoch_losses)
    return {"n_labeled": [(0, 0), (6, 6)], "round": [(0, 1), (6, 2)],
            "round_seconds": [(0, cold.seconds), (6, model.seconds)],
            "query_seconds": [(0, cold.query_seconds), (6, model.query_seconds)],
            "train_seconds": [(6, model.train_seconds)],
            "n_audit_labeled": [(0, 0), (6, status["n_audit_labels"])],
            "audit_accuracy": [(6, status["audit_accuracy"])],
            "train_loss": [(model.stage * epochs + i, loss) for i, loss in enumerate(model.epoch_losses)]}


@needs_mlflow
@needs_tensorboard
def test_rounds_are_one_tracked_run_holding_what_each_round_did(project, rounds_done):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    proj, oracle = project
    _next(proj, "--budget", 6, "--oracle", oracle, "--track", "mlflow", "--track", "tensorboard")
    first = _saved(proj)
    assert first["mlflow"]["tracking_uri"] == project_tracking_uri(proj) and (proj / "mlflow.db").is_file()
    _next(proj, "--budget", 4, "--audit", 3, "--oracle", oracle, "--track", "mlflow,tensorboard")
    assert _saved(proj) == first  # the second round continued the same tracked runs
    cold, model = rounds_done
    assert cold.cold_start and cold.train_seconds is None and not cold.epoch_losses
    assert model.stage == 0 and len(model.epoch_losses) == ALConfig().train.epochs and model.train_seconds > 0
    with Project.open(proj) as p:
        status = p.status()
    assert status.n_audit_labels == 3 and status.audit_accuracy is not None
    expected = _expected(rounds_done, {"n_audit_labels": status.n_audit_labels,
                                       "audit_accuracy": status.audit_accuracy})

    client = MlflowClient(first["mlflow"]["tracking_uri"])
    run = client.get_run(first["mlflow"]["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "proj" and run.data.tags["activecrl.kind"] == "label"
    for name, values in expected.items():
        assert _same(_history(client, run.info.run_id, name), values), name
    params = run.data.params
    assert params["round1.picked_by"] == "typiclust" and params["round1.cold_start"] == "true"
    assert params["round2.budget"] == "4" and params["round2.audit"] == "3" and params["round2.strategy"] == "least_conf"
    assert params["round2.model"] == "linear" and params["round2.trainer"] == "crl"
    artifacts = {f.path for f in client.list_artifacts(run.info.run_id, "batches")}
    assert artifacts == {"batches/round-1.csv", "batches/round-2.csv"}
    assert not (proj.parent / "mlruns").exists() and (proj / "mlartifacts").is_dir()  # artifacts in the project

    events = EventAccumulator(str(proj / "tensorboard")).Reload()  # both rounds' event files
    for name, values in expected.items():
        assert _same([(e.step, e.value) for e in events.Scalars(name)], values, rel=1e-6), name  # float32


@needs_mlflow
def test_a_round_picked_again_logs_its_settings_beside_the_first_pick(project):
    from mlflow.tracking import MlflowClient

    proj, _ = project
    _next(proj, "--budget", 4, "--strategy", "random", "--track", "mlflow")
    _next(proj, "--budget", 5, "--strategy", "random", "--new", "--track", "mlflow")  # round 1 again
    _next(proj, "--budget", 5, "--track", "mlflow")  # re-issued: no round ran, nothing logged
    saved = _saved(proj)["mlflow"]
    client = MlflowClient(saved["tracking_uri"])
    params = client.get_run(saved["run_id"]).data.params
    assert params["round1.budget"] == "4" and params["round1-repick1.budget"] == "5"
    assert [v for _, v in _history(client, saved["run_id"], "round")] == [1, 1]


@pytest.mark.parametrize("missing, args, message", [
    ("mlflow", ["--track", "mlflow"], r'--track mlflow needs the mlflow package.*pip install -e "\.\[tracking\]"'),
    ("tensorboard", ["--track", "tensorboard"], "--track tensorboard needs the tensorboard package"),
    (None, ["--track", "mlflow", "--tracking-uri", "http://127.0.0.1:9"],
     "cannot reach the MLflow tracking server at --tracking-uri http://127.0.0.1:9"),
    (None, ["--track", "wandb"], "track must name trackers among mlflow, tensorboard, got 'wandb' instead"),
])
def test_a_tracker_that_cannot_work_fails_before_any_round_work(project, monkeypatch, missing, args, message):
    import builtins

    if missing is None and importlib.util.find_spec("mlflow") is None and "mlflow" in args:
        pytest.skip('pip install -e ".[tracking]"')
    real_import = builtins.__import__

    def without(name, *a, **kw):
        if name == missing:
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *a, **kw)

    def no_round_work(*a, **kw):
        raise AssertionError("the round started before its tracking was checked")

    monkeypatch.setattr(builtins, "__import__", without)
    monkeypatch.setattr(rounds, "_new_round", no_round_work)
    proj, _ = project
    result = CliRunner().invoke(app, ["label", "next", str(proj), "--budget", "4", *args])
    assert isinstance(result.exception, ActiveCRLError), result.output
    assert re.search(message, str(result.exception)), str(result.exception)
    with Project.open(proj) as p:
        assert p.status().rounds == 0 and p.open_batch() is None and get_meta(p.con, META_KEY) is None
    assert not (proj / "cache").exists() and not (proj / "mlflow.db").exists()


@needs_mlflow
def test_a_tracker_failing_after_the_round_is_a_warning_and_the_round_is_saved(project, monkeypatch, caplog):
    break_mlflow_metrics(monkeypatch)
    proj, oracle = project
    with Project.open(proj) as p, caplog.at_level(logging.WARNING):
        result = rounds.next_round(p, 6, strategy="random", oracle=oracle, device="cpu", track=["mlflow"])
        assert result.path.is_file() and len(result.picks) == 6
        assert p.status().n_labeled == 6 and p.status().rounds == 1  # the batch, and the oracle's answers, committed
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("mlflow tracking failed" in w and "the run goes on" in w for w in warnings), warnings


def test_a_tracked_run_that_cannot_open_after_the_round_is_a_warning(project, monkeypatch, caplog):
    import activecrl.label.tracking as label_tracking

    def unreachable(*args, **kwargs):
        raise ConnectionError("the tracking server went away")

    monkeypatch.setattr(label_tracking.Tracked, "open", unreachable)
    proj, _ = project
    with Project.open(proj) as p, caplog.at_level(logging.WARNING):
        result = rounds.next_round(p, 4, strategy="random", device="cpu", track="tensorboard")
        assert result.path.is_file() and p.open_batch() is not None and get_meta(p.con, META_KEY) is None
    assert any("tracking round 1 failed" in r.getMessage() and "the round is saved" in r.getMessage()
               for r in caplog.records)


def test_label_next_help_shows_the_tracking_flags():
    result = CliRunner().invoke(app, ["label", "next", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "--track" in result.output and "--tracking-uri" in result.output
    assert "[tracking]" in result.output and "PROJECT/mlflow.db" in result.output


def test_a_round_logs_the_auto_label_share_status_previews(project, monkeypatch):
    """The share of the pool `export --auto-label` would label now, per previewed risk; none while it
    lacks audit labels (then there is nothing to certify, not a share of 0)."""
    from activecrl.label import tracking
    from activecrl.label.autolabel import AutoLabelPreview

    proj, oracle = project
    with Project.open(proj) as p:
        result = rounds.next_round(p, 6, strategy="random", oracle=oracle, device="cpu")
        status = p.status()
        status.auto_label = [AutoLabelPreview(0.05, 0.1, n_audit=40, needed=83, n_unlabeled=18),
                             AutoLabelPreview(0.1, 0.1, n_audit=40, needed=39, n_auto=9, n_unlabeled=18, bound=0.09)]
        monkeypatch.setattr(Project, "status", lambda self: status)
        metrics = tracking._round_metrics(p, result)
    assert metrics["auto_label_share_risk0.05"] is None and metrics["auto_label_share_risk0.1"] == 0.5
