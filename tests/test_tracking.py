"""Experiment tracking (``--track``): what MLflow and TensorBoard hold equals the run folder's records,
a resumed run continues its tracked run, and a tracker failing mid-run never loses the folder's records.

The trackers are optional packages (``pip install -e ".[tracking]"``): each test needing one skips
cleanly without it.
"""

from __future__ import annotations

import importlib.util
import json
import logging

import pytest

from activecrl.al.loop import ALConfig, LoopCallbacks, read_records, run_active_learning
from activecrl.al.sweep import expand_grid
from activecrl.core.config import flatten
from activecrl.core.errors import ActiveCRLError, ConfigError
from activecrl.tracking import check_tracking, stage_metrics
from activecrl.training.config import TrainConfig
from tests.conftest import make_blobs_dataset
from tests.test_sweep import SWEEP_TOML, ray_instance  # noqa: F401 (a fixture: one local Ray instance)

# the optional trackers: a test needing one is skipped without it, before any fixture starts (Ray)
needs_mlflow = pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason='pip install -e ".[tracking]"')
needs_tensorboard = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None,
                                       reason='pip install -e ".[tracking]"')

TINY = dict(dataset="blobs", initial=20, budget=15, stages=3, trials=2, seed=3, device="cpu",
            train=TrainConfig(epochs=2, batch_size=16, milestones=(0.6, 0.8)))


def _config(**changes):
    return ALConfig(**{**TINY, **changes})


def _dataset():
    return make_blobs_dataset(n_train=120, n_test=40)


def _mlflow_client(out):
    from mlflow.tracking import MlflowClient

    saved = json.loads((out / "config.json").read_text())["tracking"]["mlflow"]
    return MlflowClient(saved["tracking_uri"]), saved["run_id"]


def _trial_runs(client, run_id):
    run = client.get_run(run_id)
    children = client.search_runs([run.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'")
    return {c.data.tags["activecrl.key"]: c for c in children}


def _mlflow_stage_values(client, child, name):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(child.info.run_id, name), key=lambda m: m.step)]


def break_mlflow_metrics(monkeypatch) -> None:
    """MLflow's server goes away after taking the params: every later metric write raises."""
    from mlflow.tracking import MlflowClient

    log_batch = MlflowClient.log_batch

    def broken(self, run_id, metrics=(), **kwargs):
        if metrics:
            raise ConnectionError("the tracking server went away")
        return log_batch(self, run_id, metrics=metrics, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", broken)


def _same(logged, expected, rel=1e-12):
    """(step, value) pairs: the same steps, values equal (to float32 precision for TensorBoard's ``rel``).

    Compared in step order: a resumed run's steps lie in two event files (one per writer), which
    TensorBoard's reader returns in file-name order, a name that holds the writer's start second only."""
    logged = sorted(logged, key=lambda pair: pair[0])
    return [step for step, _ in logged] == [step for step, _ in expected] and \
        [value for _, value in logged] == pytest.approx([value for _, value in expected], rel=rel)


def _expected(records, trial, name):
    return [(r.n_labeled, stage_metrics(r)[name]) for r in records if r.trial == trial and name in stage_metrics(r)]


def _expected_losses(records, trial, epochs):
    """The records' epoch losses at step = the trial's epochs so far (stage x epochs + epoch - 1)."""
    return [(r.stage * epochs + i, loss) for r in records if r.trial == trial for i, loss in enumerate(r.epoch_losses)]


@needs_mlflow
def test_mlflow_holds_the_config_records_epochs_and_files(tmp_path):
    out = tmp_path / "runs" / "demo"
    config = _config(track=("mlflow",))
    records = run_active_learning(config, out, dataset=_dataset())
    assert (tmp_path / "runs" / "mlflow.db").is_file()  # the default store: SQLite beside the run folder
    client, run_id = _mlflow_client(out)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "demo"
    params = flatten(config.to_dict())
    assert run.data.params["train.epochs"] == "2" and run.data.params["strategy"] == params["strategy"]
    assert set(run.data.params) == set(params)
    trials = _trial_runs(client, run_id)
    assert sorted(trials) == ["trial0", "trial1"]
    for trial in (0, 1):
        child = trials[f"trial{trial}"]
        for name in ("accuracy", "aurc", "train_seconds", "query_seconds", "final_train_loss", "train_peak_rss_mib"):
            assert _same(_mlflow_stage_values(client, child, name), _expected(records, trial, name))
        losses = _mlflow_stage_values(client, child, "train_loss")
        assert [step for step, _ in losses] == list(range(3 * 2))  # stage x epochs + epoch - 1
        assert _same(losses, _expected_losses(records, trial, epochs=2))
        assert [losses[1][1], losses[3][1], losses[5][1]] == pytest.approx(
            [r.final_train_loss for r in records if r.trial == trial])
    artifacts = {f.path for f in client.list_artifacts(run_id)}
    assert {"config.json", "results.jsonl"} <= artifacts
    assert not (tmp_path / "mlruns").exists()  # artifacts beside the database, not in the working directory


@needs_tensorboard
def test_tensorboard_event_files_hold_the_records(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    records = run_active_learning(_config(track=("tensorboard",)), out, dataset=_dataset())
    for trial in (0, 1):
        events = EventAccumulator(str(out / "tensorboard" / f"trial{trial}")).Reload()
        for name in ("accuracy", "aurc", "ece", "train_seconds", "query_peak_rss_mib"):
            logged = [(e.step, e.value) for e in events.Scalars(name)]
            assert _same(logged, _expected(records, trial, name), rel=1e-6)  # float32 in the event file
        assert _same([(e.step, e.value) for e in events.Scalars("train_loss")], _expected_losses(records, trial, 2),
                     rel=1e-6)
    config_text = EventAccumulator(str(out / "tensorboard")).Reload().Tensors("config/text_summary")
    assert "train.epochs" in config_text[0].tensor_proto.string_val[0].decode()


class _Crash(LoopCallbacks):
    def __init__(self, after):
        self.after, self.seen = after, 0

    def stage_end(self, record):
        self.seen += 1
        if self.seen == self.after:
            raise KeyboardInterrupt


@needs_mlflow
@needs_tensorboard
def test_resume_continues_the_same_tracked_run(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, ds = tmp_path / "run", _dataset()
    with pytest.raises(KeyboardInterrupt):
        run_active_learning(_config(track=("mlflow", "tensorboard")), out, dataset=ds, callbacks=_Crash(after=4))
    client, run_id = _mlflow_client(out)
    assert client.get_run(run_id).info.status == "KILLED"
    # the natural retry keeps the saved tracking (the CLI's resume_config does the same)
    records = run_active_learning(_config(track=("mlflow", "tensorboard")), out, dataset=ds, resume=True)
    client, resumed_id = _mlflow_client(out)
    assert resumed_id == run_id and client.get_run(run_id).info.status == "FINISHED"
    trials = _trial_runs(client, run_id)
    assert sorted(trials) == ["trial0", "trial1"]  # the same trial runs, found again
    for trial in (0, 1):
        assert _same(_mlflow_stage_values(client, trials[f"trial{trial}"], "accuracy"),
                     _expected(records, trial, "accuracy"))
        events = EventAccumulator(str(out / "tensorboard" / f"trial{trial}")).Reload()
        assert _same([(e.step, e.value) for e in events.Scalars("accuracy")], _expected(records, trial, "accuracy"),
                     rel=1e-6)


@needs_mlflow
def test_tracking_added_on_resume_logs_the_stages_before_it(tmp_path):
    out, ds = tmp_path / "run", _dataset()
    with pytest.raises(KeyboardInterrupt):
        run_active_learning(_config(), out, dataset=ds, callbacks=_Crash(after=2))
    records = run_active_learning(_config(track=("mlflow",)), out, dataset=ds, resume=True)
    client, run_id = _mlflow_client(out)
    trials = _trial_runs(client, run_id)
    for trial in (0, 1):
        assert _same(_mlflow_stage_values(client, trials[f"trial{trial}"], "aurc"), _expected(records, trial, "aurc"))


@needs_mlflow
def test_a_tracker_failing_mid_run_is_a_warning_and_the_records_are_complete(tmp_path, monkeypatch, caplog):
    break_mlflow_metrics(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="activecrl.tracking"):
        records = run_active_learning(_config(track=("mlflow",)), tmp_path / "run", dataset=_dataset())
    assert len(records) == 6 and len(read_records(tmp_path / "run")) == 6
    warnings = [r for r in caplog.records if "mlflow tracking failed" in r.getMessage()]
    assert len(warnings) == 1 and "the run goes on" in warnings[0].getMessage()  # once: then it is off


@needs_mlflow
def test_an_unreachable_server_fails_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match="cannot reach the MLflow tracking server at --tracking-uri http://127.0.0.1:9"):
        run_active_learning(_config(track=("mlflow",), tracking_uri="http://127.0.0.1:9"), tmp_path / "run",
                            dataset=_dataset())
    assert not (tmp_path / "run").exists()


def test_a_missing_tracker_package_is_named_with_the_install_command(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def without_mlflow(name, *args, **kwargs):
        if name == "mlflow":
            raise ImportError("No module named 'mlflow'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_mlflow)
    with pytest.raises(ActiveCRLError, match=r'--track mlflow needs the mlflow package.*pip install -e "\.\[tracking\]"'):
        check_tracking(("mlflow",), None, tmp_path / "run")


def test_track_names_are_checked():
    with pytest.raises(ConfigError, match="track must name trackers among mlflow, tensorboard, got 'wandb' instead"):
        _config(track=("wandb",))
    assert _config(track="mlflow").track == ("mlflow",)  # a TOML string works as a one-element list


@needs_mlflow
@needs_tensorboard
def test_a_sweep_logs_one_parent_run_and_a_child_run_per_grid_point(ray_instance, tmp_path):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from typer.testing import CliRunner

    from activecrl.cli.app import app

    (tmp_path / "sweep.toml").write_text(SWEEP_TOML)
    out = tmp_path / "sweeps" / "s"
    result = CliRunner().invoke(app, ["sweep", "--config", str(tmp_path / "sweep.toml"), "--out", str(out),
                                      "--track", "mlflow,tensorboard"])
    assert result.exit_code == 0, (result.output, result.exception)
    saved = json.loads((out / "sweep.json").read_text())["tracking"]["mlflow"]
    client = MlflowClient(saved["tracking_uri"])
    assert saved["tracking_uri"] == f"sqlite:///{(tmp_path / 'sweeps' / 'mlflow.db').as_posix()}"
    assert client.get_run(saved["run_id"]).data.params["grid.strategy"] == '["random", "least_conf"]'
    points = _trial_runs(client, saved["run_id"])
    assert sorted(points) == sorted(p.name for p in out.iterdir() if (p / "config.json").is_file())
    for name, point in points.items():
        records = read_records(out / name)
        assert point.info.status == "FINISHED" and point.data.params["strategy"] in name
        trials = _trial_runs(client, point.info.run_id)
        for trial in (0, 1):
            assert _same(_mlflow_stage_values(client, trials[f"trial{trial}"], "accuracy"),
                         _expected(records, trial, "accuracy"))
            # the per-epoch loss too, from the records the tasks wrote (no task contacts a tracker)
            losses = _expected_losses(records, trial, epochs=2)
            assert len(losses) == 2 * 2 and _same(_mlflow_stage_values(client, trials[f"trial{trial}"], "train_loss"),
                                                  losses)
            events = EventAccumulator(str(out / "tensorboard" / name / f"trial{trial}")).Reload()
            assert _same([(e.step, e.value) for e in events.Scalars("aurc")], _expected(records, trial, "aurc"),
                         rel=1e-6)
            assert _same([(e.step, e.value) for e in events.Scalars("train_loss")], losses, rel=1e-6)
    # a rerun continues the same parent run and logs nothing twice
    result = CliRunner().invoke(app, ["sweep", "--config", str(tmp_path / "sweep.toml"), "--out", str(out),
                                      "--track", "mlflow"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert json.loads((out / "sweep.json").read_text())["tracking"]["mlflow"]["run_id"] == saved["run_id"]
    for name, point in _trial_runs(client, saved["run_id"]).items():
        trial0 = _trial_runs(client, point.info.run_id)["trial0"]
        assert len(client.get_metric_history(trial0.info.run_id, "accuracy")) == 2  # 2 stages, once each
        assert len(client.get_metric_history(trial0.info.run_id, "train_loss")) == 2 * 2


def test_track_is_the_sweeps_not_a_grid_points(tmp_path):
    with pytest.raises(ConfigError, match="grid key 'track' applies to the whole sweep"):
        expand_grid({"dataset": "digits"}, {"track": [["mlflow"], ["tensorboard"]]})


@needs_mlflow
def test_the_run_and_train_commands_track_with_a_flag(tmp_path):
    from typer.testing import CliRunner

    from activecrl.cli.app import app

    out = tmp_path / "runs" / "demo"
    result = CliRunner().invoke(app, ["run", "--out", str(out), "--initial", "20", "--budget", "10", "--stages", "2",
                                      "--trials", "1", "--epochs", "2", "--device", "cpu", "--track", "mlflow"])
    assert result.exit_code == 0, (result.output, result.exception)
    client, run_id = _mlflow_client(out)
    assert {f.path for f in client.list_artifacts(run_id)} == {"config.json", "results.jsonl", "curves.png"}
    trained = tmp_path / "runs" / "trained"
    result = CliRunner().invoke(app, ["train", "--out", str(trained), "--epochs", "2", "--device", "cpu",
                                      "--track", "mlflow", "--tracking-uri", client.tracking_uri])
    assert result.exit_code == 0, (result.output, result.exception)
    metrics = json.loads((trained / "metrics.json").read_text())["metrics"]
    run = client.search_runs([client.get_run(run_id).info.experiment_id],
                             filter_string="tags.`activecrl.kind` = 'train'")[0]
    assert run.data.metrics["accuracy"] == metrics["accuracy"] and run.data.params["train.epochs"] == "2"
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 2
    assert [f.path for f in client.list_artifacts(run.info.run_id)] == ["metrics.json"]
