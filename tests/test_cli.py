import json
import os
import subprocess
import sys

import numpy as np
import torch
from typer.testing import CliRunner

from activecrl.cli.app import app

runner = CliRunner()


def _ok(result):
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def test_list_shows_every_registry():
    out = _ok(runner.invoke(app, ["list"]))
    for name in ("digits", "cifar10", "resnet18", "small_cnn", "densenet_bc", "baseline", "crl", "least_conf",
                 "coreset", "mc_dropout"):
        assert name in out


def test_train_writes_metrics_predictions_and_model(tmp_path):
    out = tmp_path / "run"
    text = _ok(runner.invoke(app, ["train", "--dataset", "digits", "--trainer", "crl", "--epochs", "2",
                                   "--bootstrap", "50", "--device", "cpu", "--out", str(out)]))
    assert "ACC" in text and "95% CI" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["metrics"]) == {"accuracy", "aurc", "eaurc", "augrc", "aupr_err", "fpr95", "ece", "nll",
                                       "brier"}
    assert set(metrics["ci95"]) == set(metrics["metrics"]) and metrics["bootstrap"]["n_resamples"] == 50
    low, high = metrics["ci95"]["accuracy"]
    assert low <= metrics["metrics"]["accuracy"] <= high and low < high
    assert metrics["train_seconds"] > 0 and metrics["config"]["trainer"] == "crl"
    preds = np.load(out / "predictions.npz")
    n = preds["labels"].shape[0]
    assert preds["probs"].shape == (n, 10) and preds["logits"].shape == (n, 10) and preds["confidence"].shape == (n,)
    assert np.allclose(preds["probs"].sum(1), 1, atol=1e-5)
    assert metrics["metrics"]["accuracy"] == np.mean(preds["probs"].argmax(1) == preds["labels"])
    blob = torch.load(out / "model.pt", weights_only=True)
    assert blob["model_info"]["model"] == "small_cnn"
    from activecrl.methods.run import load_trained

    model, info, _ = load_trained(out)
    assert info["num_classes"] == 10
    # refuses to overwrite a finished run
    again = runner.invoke(app, ["train", "--epochs", "1", "--device", "cpu", "--out", str(out)])
    assert again.exit_code != 0 and "already holds a run" in str(again.exception)


def test_run_plot_summary(tmp_path):
    out = tmp_path / "al"
    text = _ok(runner.invoke(app, ["run", "--dataset", "digits", "--initial", "40", "--budget", "40", "--stages", "2",
                                   "--epochs", "1", "--trials", "1", "--device", "cpu", "--out", str(out)]))
    assert "least_conf (crl)" in text and (out / "curves.png").exists()
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2 and len(json.loads(lines[0])["queried"]) == 40
    _ok(runner.invoke(app, ["plot", str(out), str(out), "-o", str(tmp_path / "c.png")]))
    assert (tmp_path / "c.png").stat().st_size > 1000
    assert "area under the budget curve" in _ok(runner.invoke(app, ["summary", str(out), str(out)]))


def test_config_preset_and_override(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text('dataset = "digits"\nstrategy = "entropy"\ninitial = 30\nbudget = 10\nstages = 2\n'
                      'trials = 1\n[train]\nepochs = 1\nbatch_size = 16\n')
    out = tmp_path / "al"
    _ok(runner.invoke(app, ["run", "--config", str(preset), "--budget", "20", "--device", "cpu", "--out", str(out)]))
    config = json.loads((out / "config.json").read_text())
    assert config["strategy"] == "entropy" and config["budget"] == 20 and config["train"]["batch_size"] == 16


def test_user_errors_are_one_clear_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "activecrl", "run", "--strategy", "nope", "--out", str(tmp_path / "x")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown strategy 'nope'" in proc.stdout and "least_conf" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_version_and_help():
    from activecrl import __version__

    assert __version__ in _ok(runner.invoke(app, ["--version"]))
    for command in ("train", "run", "plot", "summary", "ood", "report", "list"):
        assert command in runner.invoke(app, []).output


def test_resume_refuses_changed_options_and_continues(tmp_path, monkeypatch):
    from activecrl.cli import app as cli

    out = tmp_path / "al"
    base = ["run", "--dataset", "digits", "--initial", "40", "--budget", "40", "--stages", "2", "--epochs", "1",
            "--trials", "1", "--device", "cpu", "--out", str(out)]

    def interrupt(self, record):  # Ctrl-C right after the first stage was saved
        raise KeyboardInterrupt

    monkeypatch.setattr(cli._RichLoop, "stage_end", interrupt)
    stopped = runner.invoke(app, base)
    assert stopped.exit_code == 130, stopped.output
    assert "1 of 2 stages are saved" in stopped.output
    assert f"activecrl run --resume --out {out}\n" in stopped.output  # the exact command, on one line
    monkeypatch.undo()

    refused = runner.invoke(app, ["run", "--resume", "--out", str(out), "--stages", "3", "--strategy", "entropy",
                                  "--epochs", "1"])
    message = str(refused.exception)
    assert refused.exit_code != 0 and "--stages 3 (saved: 2)" in message
    assert "--strategy 'entropy' (saved: 'least_conf')" in message and "--epochs" not in message  # equal: fine
    assert len((out / "results.jsonl").read_text().splitlines()) == 1
    # the natural retry: the same command line with --resume added
    assert "trials" in _ok(runner.invoke(app, base + ["--resume"]))
    assert len((out / "results.jsonl").read_text().splitlines()) == 2
    assert "trials" in _ok(runner.invoke(app, ["run", "--resume", "--out", str(out), "--device", "cpu"]))
    assert len((out / "results.jsonl").read_text().splitlines()) == 2  # nothing left to do, nothing redone


def test_error_messages_keep_brackets(tmp_path, capsys):
    from activecrl.cli import app as cli

    def boom():
        raise cli.ActiveCRLError("probs must be finite, got [nan, nan] in row 0")

    original = cli.app
    cli.app = boom
    try:
        with __import__("pytest").raises(SystemExit):
            cli.main()
    finally:
        cli.app = original
    assert "[nan, nan]" in capsys.readouterr().out


def test_threads_option_sets_torch_threads():
    before = torch.get_num_threads()
    assert before == 1  # conftest's setting: the flag below must change it to show it works
    try:
        _ok(runner.invoke(app, ["--threads", "2", "list"]))
        assert torch.get_num_threads() == 2
        refused = runner.invoke(app, ["--threads", "0", "list"])
        assert refused.exit_code == 2 and "--threads" in refused.output and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_pretrain_then_run_with_embeddings_and_a_cold_start(tmp_path):
    pre = tmp_path / "pre"
    text = _ok(runner.invoke(app, ["pretrain", "--dataset", "digits", "--method", "simclr", "--epochs", "1",
                                   "--batch-size", "128", "--device", "cpu", "--out", str(tmp_path / "simclr")]))
    assert "1347 x 128 embeddings" in text and "20-NN test accuracy" in text and "same encoder untrained" in text
    assert np.load(tmp_path / "simclr" / "embeddings.npy").shape == (1347, 128)
    text = _ok(runner.invoke(app, ["pretrain", "--dataset", "digits", "--method", "patches", "--centroids", "100",
                                   "--patch-size", "4", "--kmeans-patches", "20000", "--pca-dim", "64",
                                   "--device", "cpu", "--out", str(pre)]))
    assert "1347 x 64 embeddings" in text and "raw pixels" in text
    assert np.load(pre / "embeddings.npy").shape == (1347, 64)
    assert json.loads((pre / "config.json").read_text())["method"] == "patches"
    out = tmp_path / "al"
    _ok(runner.invoke(app, ["run", "--dataset", "digits", "--strategy", "typiclust", "--embeddings", str(pre),
                            "--initial-strategy", "probcover", "--initial", "20", "--budget", "20", "--stages", "2",
                            "--epochs", "1", "--trials", "1", "--device", "cpu", "--out", str(out)]))
    config = json.loads((out / "config.json").read_text())
    assert config["initial_strategy"] == "probcover" and config["embeddings"] == str(pre)
    assert config["embeddings_fingerprint"]["shape"] == [1347, 64]
    # bad input: a clear error in flag words, nothing written
    for args, message in ((["--embeddings", str(tmp_path)], "without it"),
                          (["--initial-strategy", "kmeans"], "initial_strategy must be one of"),
                          (["--initial-strategy", "typiclust"], "needs|got no --embeddings")):
        bad = runner.invoke(app, ["run", "--dataset", "digits", "--device", "cpu", "--out", str(tmp_path / "bad"),
                                  *args])
        assert bad.exit_code != 0 and any(m in str(bad.exception) for m in message.split("|")), bad.exception
        assert not (tmp_path / "bad").exists()
    again = runner.invoke(app, ["pretrain", "--dataset", "digits", "--epochs", "1", "--device", "cpu", "--out", str(pre)])
    assert again.exit_code != 0 and "already holds a run" in str(again.exception)
    bad = runner.invoke(app, ["pretrain", "--dataset", "digits", "--method", "patches", "--patch-size", "9",
                              "--device", "cpu", "--out", str(tmp_path / "bad")])
    assert bad.exit_code != 0 and "--patch-size must be at most" in str(bad.exception), bad.exception
    assert not (tmp_path / "bad").exists()


def test_recipes_and_ingredient_flags(tmp_path):
    out = _ok(runner.invoke(app, ["list"]))
    assert "sure" in out and "fmfp" in out and "optimizer=sam" in out
    run = tmp_path / "sure"
    _ok(runner.invoke(app, ["train", "--dataset", "digits", "--trainer", "sure", "--schedule", "cosine",
                            "--epochs", "2", "--device", "cpu", "--out", str(run)]))
    blob = torch.load(run / "model.pt", weights_only=True)
    assert blob["model_info"]["head"] == "cosine" and blob["config"]["trainer"] == "sure"
    bad = tmp_path / "bad"
    for args, message in ((["--optimizer", "adam"], "sgd, sam"), (["--trainer", "fmfp", "--epochs", "1"], "swa_start"),
                          (["--trainer", "nope"], "sure")):
        result = runner.invoke(app, ["train", "--dataset", "digits", "--device", "cpu", "--out", str(bad), *args])
        assert result.exit_code != 0 and message in str(result.exception), (args, result.exception)
        assert not bad.exists()


def test_cli_imports_no_torch_until_a_command_runs():
    """`activecrl --help` stays fast: the app and the config dataclasses its flags come from load no torch."""
    code = ("import sys; from activecrl.cli.app import app; "
            "from activecrl.al.config import ALConfig; from activecrl.methods.config import TrainRunConfig; "
            "from activecrl.ood.config import OODConfig; from activecrl.embeddings.config import EmbedConfig, PretrainConfig; "
            "ALConfig(); TrainRunConfig(); PretrainConfig(); EmbedConfig(model='timm:resnet18'); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_help_of_the_app_and_of_run():
    for args, expected in ((["--help"], "compare"), (["run", "--help"], "--strategy")):
        done = subprocess.run([sys.executable, "-m", "activecrl", *args], capture_output=True, text=True,
                              env={**os.environ, "COLUMNS": "200"})
        assert done.returncode == 0, done.stderr
        assert "Usage" in done.stdout and expected in done.stdout and "<bool>" not in done.stdout


def test_run_help_names_the_mc_dropout_default():
    from activecrl.al.config import MC_DROPOUT_HELP_RATE
    from activecrl.inference.mc_dropout import DEFAULT_MC_DROPOUT

    assert MC_DROPOUT_HELP_RATE == DEFAULT_MC_DROPOUT
