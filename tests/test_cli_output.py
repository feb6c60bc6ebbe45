"""What a CLI user reads: tables in logs, one-trial summaries, plot legends, messages in CLI words."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from activecrl.cli import app as cli
from activecrl.cli.app import app
from activecrl.core.errors import DataError, RegistryError
from activecrl.al.runs import RunSummary, distinct_labels

runner = CliRunner()


def test_tables_keep_every_digit_when_output_is_not_a_terminal(monkeypatch):
    """Logs, tee and CI are not terminals: rich would squeeze tables to 80 columns and cut numbers."""
    buffer = io.StringIO()
    captured = Console(file=buffer, width=80)  # what rich picks when stdout is a pipe
    assert not captured.is_terminal
    monkeypatch.setattr(cli, "console", captured)
    metrics = {m: 0.123456789 * (i + 1) for i, m in enumerate(
        ("accuracy", "aurc", "eaurc", "aupr_err", "fpr95", "ece", "nll", "brier"))}
    rows = [(f"a long run label number {k}", metrics) for k in range(2)]
    cli._print_table(cli.metrics_table("title", rows, paper_scale=False))
    text = buffer.getvalue()
    for value in metrics.values():
        assert f"{value:.4f}" in text  # every number whole, on one line
    assert "…" not in text and "a long run label number 1" in text
    assert captured.width == 80  # restored for whatever is printed next


def _summary(path, label, n_trials, values):
    stages = len(values)
    mean = {m: np.array(values, dtype=float) for m in ("accuracy", "aurc", "eaurc", "augrc", "ece", "train_seconds",
                                                         "query_seconds")}
    std = {m: np.zeros(stages) for m in mean}
    records = [{"trial": 0, "stage": s, "n_labeled": 10 * (s + 1), "accuracy": values[s], "aurc": values[s]}
               for s in range(stages)]
    return RunSummary(Path(path), label, {"dataset": "digits"}, np.arange(1, stages + 1) * 10,
                      np.full(stages, n_trials), mean, std, records)


def test_one_trial_summary_says_there_is_no_spread(monkeypatch):
    buffer = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=buffer, width=80))
    cli._print_table(cli._summary_table(_summary("runs/a", "entropy (crl)", 1, [0.5, 0.75])))
    text = buffer.getvalue()
    assert "no spread" in text and "±" not in text and "50.00" in text and "75.00" in text


def test_plot_labels_tell_runs_of_one_strategy_apart():
    runs = [_summary("runs/a", "entropy (crl)", 1, [0.5]), _summary("runs/b", "entropy (crl)", 1, [0.6]),
            _summary("runs/c", "random (crl)", 1, [0.4]), _summary("other/a", "entropy (crl)", 1, [0.7])]
    labels = distinct_labels(runs)
    assert len(set(labels)) == 4
    assert labels[1] == "entropy (crl) · b" and labels[2] == "random (crl)"  # unique labels stay short
    assert labels[0] == "entropy (crl) · runs/a" and labels[3] == "entropy (crl) · other/a"  # names collide too


def test_plot_and_summary_of_two_runs_of_one_strategy(tmp_path):
    base = ["run", "--initial", "40", "--budget", "40", "--stages", "2", "--epochs", "1", "--trials", "1",
            "--device", "cpu"]
    for name in ("first", "second"):
        r = runner.invoke(app, base + ["--out", str(tmp_path / name)])
        assert r.exit_code == 0, (r.output, r.exception)
    r = runner.invoke(app, ["summary", str(tmp_path / "first"), str(tmp_path / "second")])
    assert r.exit_code == 0 and "no spread" in r.output and "±0.0" not in r.output and "± 0.0" not in r.output
    r = runner.invoke(app, ["plot", str(tmp_path / "first"), str(tmp_path / "second"), "-o", str(tmp_path / "c.png")])
    assert r.exit_code == 0 and (tmp_path / "c.png").stat().st_size > 1000


def test_messages_are_in_cli_words(tmp_path):
    from activecrl.data import load_dataset
    from activecrl.strategies import get_strategy

    with pytest.raises(RegistryError, match="valid strategies are"):  # not "strategys"
        get_strategy("no_such_strategy")
    with pytest.raises(DataError) as info:  # no download, nothing on disk
        load_dataset("cifar10", data_dir=tmp_path, download=False)
    message = str(info.value)
    assert "--dataset cifar10 --data-dir DIR" in message and "--dataset /path/to/cifar10.tar.gz" in message
    # run has --resume, not --overwrite: its refusal says how to continue
    out = tmp_path / "r"
    base = ["run", "--initial", "40", "--budget", "40", "--stages", "1", "--epochs", "1", "--trials", "1",
            "--device", "cpu", "--out", str(out)]
    assert runner.invoke(app, base).exit_code == 0
    again = runner.invoke(app, base)
    assert again.exit_code != 0 and "--overwrite" not in str(again.exception)
    assert f"activecrl run --resume --out {out}" in str(again.exception)


def test_budget_larger_than_the_pool_is_refused_by_the_cli(tmp_path):
    r = runner.invoke(app, ["run", "--initial", "100", "--budget", "1000", "--stages", "3", "--device", "cpu",
                            "--out", str(tmp_path / "r")])
    assert r.exit_code != 0 and "lower --budget" in str(r.exception)
    assert not (tmp_path / "r").exists()


def test_train_defaults_are_quick_and_the_paper_schedule_is_a_preset():
    import tomllib

    from activecrl.core.config import find_config
    from activecrl.core.config import from_dict
    from activecrl.methods.config import TrainRunConfig
    from activecrl.training.trainers import TrainConfig

    quick = TrainRunConfig()
    assert quick.dataset == "digits" and quick.train.epochs == 20
    # the short-run recipe on top of the paper's optimiser; the paper preset pins the paper's schedule
    assert quick.train == TrainConfig(epochs=20, schedule="onecycle", nesterov=True, weight_decay=5e-4)
    paper = from_dict(TrainRunConfig, tomllib.loads(find_config("cifar10_train_paper").read_text()))
    assert paper.train == TrainConfig() and paper.train.milestone_epochs() == [150, 250]
    assert (paper.dataset, paper.model) == ("cifar10", "resnet18")


def test_train_records_its_thread_count(tmp_path, monkeypatch):
    import activecrl.methods.run as experiment

    class Recording(experiment.torch_threads):  # no real 2-thread run: a later fork must not inherit a pool
        def __enter__(self):
            return self.n

        def __exit__(self, *exc):
            pass

    monkeypatch.setattr(experiment, "torch_threads", Recording)
    out = tmp_path / "t"
    r = runner.invoke(app, ["train", "--threads", "2", "--epochs", "1", "--device", "cpu", "--out", str(out)])
    assert r.exit_code == 0, (r.output, r.exception)
    blob = json.loads((out / "metrics.json").read_text())
    assert blob["threads_used"] == 2 and blob["config"]["threads"] == 2
    r = runner.invoke(app, ["train", "--epochs", "1", "--device", "cpu", "--out", str(tmp_path / "auto")])
    assert json.loads((tmp_path / "auto" / "metrics.json").read_text())["threads_used"] == 1  # small_cnn
