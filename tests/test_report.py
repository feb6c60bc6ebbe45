"""Paper-style report tables from saved `activecrl train` / `activecrl ood` runs."""

import json

import pytest
from typer.testing import CliRunner

from activecrl.cli.app import app
from activecrl.core.errors import ConfigError
from activecrl.evaluation.report import build_report, method_label

runner = CliRunner()


def _ok(result):
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def _fake_train_run(path, seed, acc, trainer="baseline", method="plain", **extra):
    path.mkdir(parents=True)
    config = {"dataset": "/data/cifar10.tar.gz", "model": "small_cnn", "trainer": trainer, "method": method,
              "device": "cpu", "data_dir": f"/tmp/{seed}", "members": 5, "snapshots": 10,
              "train": {"epochs": 30, "seed": seed, "crl_weight": 1.0, "rank_target": "softmax", **extra}}
    metrics = {"accuracy": acc, "aurc": 0.01, "eaurc": 0.005, "aupr_err": 0.4, "fpr95": 0.4, "ece": 0.02,
               "nll": 0.3, "brier": 0.1}
    (path / "metrics.json").write_text(json.dumps({"config": config, "metrics": metrics}))


def test_groups_seeds_and_scales(tmp_path):
    _fake_train_run(tmp_path / "b0", 0, 0.90)
    _fake_train_run(tmp_path / "b1", 1, 0.92)
    _fake_train_run(tmp_path / "c0", 0, 0.93, trainer="crl")
    _fake_train_run(tmp_path / "lr", 0, 0.80, lr=0.01)  # differs in more than the seed: its own row
    (tmp_path / "notes.md").write_text("not a run")
    report = build_report(sorted(tmp_path.iterdir()))
    table = report.tables[0]
    rows = {tuple(r[:3]): r for r in table.rows}
    assert len(table.rows) == 3
    base = [r for r in table.rows if r[2].startswith("Baseline [")]
    assert len(base) == 2  # the lr=0.01 group and the two-seed group are told apart
    two = next(r for r in base if r[3] == "2")
    assert two[0] == "cifar10" and two[5] == "91.00±1.41"  # ACC in %, sample std
    assert two[6] == "10.00±0.00" and two[12] == "3.00±0.00"  # AURC x 10^3, NLL x 10
    assert two[8] == "–"  # AUGRC: these runs predate it
    assert ("cifar10", "small_cnn", "CRL-softmax") in rows
    md = report.to_markdown()
    assert "| Dataset | Model | Method |" in md and "---:" in md


def test_method_labels():
    cfg = {"trainer": "crl", "method": "ensemble", "members": 5, "train": {"crl_weight": 0.5, "rank_target": "softmax"}}
    assert method_label(cfg) == "Ensemble×5 CRL-softmax (λ=0.5)"
    assert method_label({"trainer": "baseline", "method": "aes", "snapshots": 30}) == "AES(k=30)"
    assert method_label({"trainer": "aleatoric", "method": "aleatoric"}) == "Aleatoric+MC"
    assert method_label({"trainer": "baseline", "method": "plain", "temperature_scaling": True}) == "Baseline +TS"


def test_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build_report([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="found no runs"):
        build_report([tmp_path / "empty"])


def test_cli_report_end_to_end(tmp_path):
    runs = []
    for seed in (0, 1):
        out = tmp_path / "train" / f"s{seed}"
        _ok(runner.invoke(app, ["train", "--dataset", "digits", "--epochs", "1", "--seed", str(seed),
                                "--device", "cpu", "--out", str(out)]))
        runs.append(out)
    for seed, run in enumerate(runs):
        _ok(runner.invoke(app, ["ood", "--run", str(run), "--ood", "uniform", "--detector", "odin", "--n-tune", "40",
                                "--temperatures", "1,1000", "--epsilons", "0,0.002", "--device", "cpu",
                                "--out", str(tmp_path / "ood" / f"s{seed}")]))
    report_md = tmp_path / "report.md"
    text = _ok(runner.invoke(app, ["report", *map(str, runs), str(tmp_path / "ood"), "-o", str(report_md)]))
    assert "Table 1 layout" in text and "Table 3 layout" in text
    md = report_md.read_text()
    assert "2 training run(s), 2 OOD run(s)" in md
    train_rows = [line for line in md.splitlines() if line.startswith("| digits | small_cnn | Baseline |")]
    assert len(train_rows) == 1 and "±" in train_rows[0] and "| 2 |" in train_rows[0]
    ood_rows = [line for line in md.splitlines() if "| uniform | ODIN |" in line]
    assert len(ood_rows) == 1 and "validation (noise)" in ood_rows[0]


def test_runs_saved_before_new_options_group_with_newer_seeds(tmp_path):
    from activecrl.methods.run import TrainRunConfig

    defaults = {k: v for k, v in __import__("dataclasses").asdict(TrainRunConfig()).items() if k != "train"}
    old = tmp_path / "old"
    _fake_train_run(old, 0, 0.90)
    new = tmp_path / "new"
    _fake_train_run(new, 1, 0.92)
    blob = json.loads((new / "metrics.json").read_text())
    blob["config"] = {**defaults, **blob["config"]}  # a newer run records every option
    (new / "metrics.json").write_text(json.dumps(blob))
    rows = build_report([old, new]).tables[0].rows
    assert len(rows) == 1 and rows[0][3] == "2"


def test_augrc_partly_recorded_and_bootstrap_intervals(tmp_path):
    _fake_train_run(tmp_path / "b0", 0, 0.90)
    _fake_train_run(tmp_path / "b1", 1, 0.92)
    blob = json.loads((tmp_path / "b1" / "metrics.json").read_text())
    blob["metrics"]["augrc"] = 0.004
    blob["ci95"] = {"accuracy": [0.91, 0.93], "augrc": [0.003, 0.005]}
    blob["bootstrap"] = {"n_resamples": 1000, "seed": 1}
    (tmp_path / "b1" / "metrics.json").write_text(json.dumps(blob))
    report = build_report([tmp_path])
    assert report.tables[0].rows[0][8] == "4.00 (n=1)"  # AUGRC x 10^3, one of the two seeds has it
    intervals = report.tables[1]
    assert "Bootstrap 95% intervals" in intervals.title and len(intervals.rows) == 1
    row = dict(zip(intervals.columns, intervals.rows[0]))
    assert row["ACC"] == "92.00 [91.00, 93.00]" and row["AUGRC"] == "4.00 [3.00, 5.00]" and row["ECE"] == "2.00"
    assert "1000 resamples" in intervals.caption


def _fake_ood_run(path, detector, params, seed=0, **config):
    path.mkdir(parents=True)
    metrics = {"fpr95": 0.5, "detection_error": 0.2, "auroc": 0.9, "aupr_in": 0.8, "aupr_out": 0.7}
    blob = {"detector": detector, "metrics": metrics, "params": params, "protocol": {"name": "validation (noise)"},
            "in_distribution": "digits", "ood_set": "noise", "n_in": 10, "n_out": 10,
            "run": {"model": "small_cnn", "config": {"trainer": "baseline"}},
            "config": {"detector": detector, "seed": seed, "threads": seed + 1, **config}}
    (path / "ood.json").write_text(json.dumps(blob))


def test_ood_table_shows_detectors_as_their_classes_say(tmp_path):
    from activecrl.ood.detectors import DETECTORS, Detector

    class KNNDetector(Detector):
        name, tuned, report_order = "knn_test", True, 1

        @classmethod
        def report_label(cls, name, config):
            return "k-NN"

        @classmethod
        def report_params(cls, params):
            return {"k": params["k"]}

    for seed in (0, 1):  # seeds and thread counts differ: one group
        _fake_ood_run(tmp_path / f"m{seed}", "mahalanobis", {"epsilon": 0.001, "layers": "all feature maps",
                                                              "n_layers": 3, "combiner_weights": [1, 2, 3]},
                      seed=seed, feature_ensemble=True)
    _fake_ood_run(tmp_path / "msp", "msp", {})
    _fake_ood_run(tmp_path / "knn", "knn_test", {"k": 5, "distance": "cosine"})
    _fake_ood_run(tmp_path / "gone", "uninstalled", {"k": 5, "distance": "cosine"})
    DETECTORS.register("knn_test", KNNDetector)
    try:
        md = build_report([tmp_path]).to_markdown()
    finally:
        DETECTORS.unregister("knn_test")
    rows = [line.split(" | ")[3:8] for line in md.splitlines() if line.startswith("| digits")]
    assert rows == [["MSP", "Baseline", "-", "-", "1"],  # report_order, then the class's label and params
                    ["k-NN", "Baseline", "validation (noise)", "k=5", "1"],
                    ["Mahalanobis (feature ensemble)", "Baseline", "validation (noise)", "ε=0.001", "2"],
                    ["uninstalled", "Baseline", "validation (noise)", "k=5, distance=cosine", "1"]]
