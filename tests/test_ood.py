"""OOD detectors (MSP, ODIN, Mahalanobis, energy), the tuning protocol and `activecrl ood`, on tiny data."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import activecrl.ood as ood_mod
from activecrl.cli.app import app
from activecrl.data import device_split
from activecrl.core.errors import ConfigError, RegistryError
from activecrl.methods.run import TrainRunConfig, save_train_run, train_and_evaluate
from activecrl.evaluation.metrics import ood_metrics
from activecrl.models import build_model
from activecrl.ood import (OODConfig, class_gaussian, energy_score, mahalanobis_sq, msp_score, odin_score_grid,
                           run_ood, save_ood, select_best, synthetic_images, _whitener)
from activecrl.training.trainers import TrainConfig

runner = CliRunner()


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """small_cnn trained 1 epoch on digits, saved like `activecrl train` does."""
    data_dir = tmp_path_factory.getbasetemp() / "data"  # the dir conftest points ACTIVECRL_DATA at
    cfg = TrainRunConfig(dataset="digits", device="cpu", data_dir=str(data_dir),
                         train=TrainConfig(epochs=1, batch_size=64, lr=0.05))
    return save_train_run(train_and_evaluate(cfg), tmp_path_factory.mktemp("runs") / "digits")


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """37 random 12x12 RGB PNGs in nested folders (the OOD set: resized to 8x8 and turned gray)."""
    root = tmp_path_factory.mktemp("oodimgs") / "pics"
    rng = np.random.default_rng(0)
    for i in range(37):
        d = root / ("a" if i % 2 else "b")
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(d / f"{i:03d}.png")
    return root


def _tiny_model(blobs):
    torch.manual_seed(0)
    return build_model("small_cnn", num_classes=3, in_channels=1, image_size=8).eval()


# ------------------------------------------------------------------------------ scores


def test_odin_t1_eps0_equals_msp(blobs):
    model = _tiny_model(blobs)
    data = device_split(blobs, "test", "cpu")
    with torch.no_grad():
        logits = model(next(data.eval_batches(None, 1000))[0])
    scores = odin_score_grid(model, data, None, [(1.0, 0.0), (1000.0, 0.0), (1.0, 0.01)], batch_size=16)
    np.testing.assert_allclose(scores[0], msp_score(logits).numpy(), rtol=1e-6)
    np.testing.assert_allclose(scores[1], torch.softmax(logits / 1000, 1).max(1).values.numpy(), rtol=1e-5)
    # the perturbation raises the (temperature-scaled) max softmax of most samples
    assert np.mean(scores[2] >= scores[0] - 1e-7) > 0.9


def test_energy_formula():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    expected = np.log(np.exp([1, 2, 3]).sum())
    assert energy_score(logits)[0].item() == pytest.approx(expected, rel=1e-6)
    t = 10.0
    assert energy_score(logits, t)[1].item() == pytest.approx(t * np.log(3.0), rel=1e-6)


def test_mahalanobis_matches_direct_computation_and_separates_shift():
    rng = np.random.default_rng(0)
    d, k = 6, 3
    centers = rng.normal(0, 3, (k, d))
    a = rng.normal(size=(d, d))
    cov_true = a @ a.T / d + 0.5 * np.eye(d)
    y = np.repeat(np.arange(k), 300)
    f = centers[y] + rng.multivariate_normal(np.zeros(d), cov_true, size=y.size)
    means, precision = class_gaussian(f, y, k)
    centered = f - np.stack([f[y == c].mean(0) for c in range(k)])[y]
    np.testing.assert_allclose(precision, np.linalg.inv(centered.T @ centered / y.size), rtol=1e-8)
    test = rng.normal(0, 3, (20, d))
    direct = np.array([[(x - m) @ precision @ (x - m) for m in means] for x in test])
    got = mahalanobis_sq(torch.tensor(test), torch.tensor(means), torch.tensor(_whitener(precision))).numpy()
    np.testing.assert_allclose(got, direct, rtol=1e-8)
    # in-distribution samples score higher (= closer) than a shifted cluster
    inside = centers[np.arange(200) % k] + rng.multivariate_normal(np.zeros(d), cov_true, size=200)
    shifted = inside + 8.0
    w = torch.tensor(_whitener(precision))
    score = lambda x: -mahalanobis_sq(torch.tensor(x), torch.tensor(means), w).min(1).values.numpy()  # noqa: E731
    assert ood_metrics(score(inside), score(shifted))["auroc"] > 0.99


def test_select_best_ties_go_to_first():
    m = lambda fpr, de, auc: {"metrics": {"fpr95": fpr, "detection_error": de, "auroc": auc}}  # noqa: E731
    assert select_best([m(0.5, 0.2, 0.9), m(0.1, 0.3, 0.8), m(0.1, 0.2, 0.7), m(0.1, 0.2, 0.9)]) == 3
    assert select_best([m(0.0, 0.0, 1.0), m(0.0, 0.0, 1.0)]) == 0


def test_synthetic_images():
    x = synthetic_images("noise", 30, 3, 8, seed=1)
    assert x.shape == (30, 3, 8, 8) and x.dtype == torch.uint8
    assert torch.equal(x, synthetic_images("noise", 30, 3, 8, seed=1))
    with pytest.raises(ConfigError, match="synthetic set must be"):
        synthetic_images("pink", 3, 1, 8)


# ------------------------------------------------------------------------------ run_ood


@pytest.mark.parametrize("detector", ["msp", "odin", "mahalanobis", "energy"])
def test_run_ood_each_detector(digits_run, image_folder, tmp_path, detector):
    cfg = OODConfig(run=str(digits_run), ood=str(image_folder), detector=detector, device="cpu", n_tune=60,
                    temperatures=(1, 100), epsilons=(0.0, 0.002), feature_ensemble=detector == "mahalanobis")
    result = run_ood(cfg)
    assert result.score_in.shape == (450 - 60,) and result.score_out.shape == (37,)
    assert np.all(np.isfinite(result.score_in)) and np.all(np.isfinite(result.score_out))
    assert set(result.metrics) == {"fpr95", "detection_error", "auroc", "aupr_in", "aupr_out"}
    if detector == "odin":
        assert set(result.params) == {"temperature", "epsilon"} and len(result.tuning) == 4
    if detector == "mahalanobis":
        assert result.params["n_layers"] == 3 and len(result.params["combiner_weights"]) == 3
    out = save_ood(result, tmp_path / detector)
    blob = json.loads((out / "ood.json").read_text())
    assert blob["detector"] == detector and blob["protocol"]["tuned_on_test_ood"] is False
    assert all(blob[m] == result.metrics[m] for m in ("fpr95", "detection_error", "auroc", "aupr_in", "aupr_out"))
    assert blob["ood_set"] == "pics" and blob["run"]["trainer"] == "baseline"
    # the RGB 12x12 set was converted to the digits model's 1x8x8 input, and ood.json says so
    assert blob["ood_conversion"] == ("37 images converted from 3×12×12 (RGB) to the model's input 1×8×8 (gray): "
                                      "RGB to gray (ITU-R 601 luma), resized 12×12 → 8×8 (bilinear, antialiased)")
    assert blob["run"]["ood_val_conversion"] is None  # synthetic noise is made in the model's shape
    scores = np.load(out / "scores.npz")
    np.testing.assert_allclose(scores["score_in"], result.score_in)
    assert ood_metrics(scores["score_in"], scores["score_out"]) == blob["metrics"]


def test_tuning_never_sees_test_ood_unless_asked(digits_run, image_folder, monkeypatch):
    calls = []
    real = ood_mod.odin_score_grid

    def spy(model, data, indices, settings, **kw):
        calls.append((data.n, None if indices is None else indices.clone()))
        return real(model, data, indices, settings, **kw)

    monkeypatch.setattr(ood_mod.detectors, "odin_score_grid", spy)  # where ODINDetector looks it up
    base = dict(run=str(digits_run), ood=str(image_folder), detector="odin", device="cpu", n_tune=30,
                temperatures=(1,), epsilons=(0.0,))
    result = run_ood(OODConfig(**base))
    # tuning: in-dist test subset, then 30 synthetic noise images; evaluation: test, then the 37 OOD images
    assert [c[0] for c in calls] == [450, 30, 450, 37]
    assert not set(calls[0][1].tolist()) & set(result.index_in.tolist())
    calls.clear()
    result = run_ood(OODConfig(**base, tune_on_test_ood=True))
    assert [c[0] for c in calls] == [450, 37, 450, 37]
    tuned, evaluated = set(calls[1][1].tolist()), set(calls[3][1].tolist())
    assert len(tuned) == 18 and not tuned & evaluated and len(evaluated) == 19
    assert result.protocol["tuned_on_test_ood"] is True and "paper protocol" in result.protocol["name"]
    with pytest.raises(ConfigError, match="--tune-on-test-ood"):
        run_ood(OODConfig(**base, ood_val=str(image_folder)))


def test_fgsm_validation_and_max_samples(digits_run, image_folder):
    result = run_ood(OODConfig(run=str(digits_run), ood=str(image_folder), detector="mahalanobis", device="cpu",
                               n_tune=50, epsilons=(0.0, 0.001), ood_val="fgsm", max_samples=25))
    assert result.score_in.size == 25 and result.score_out.size == 25
    assert "FGSM" in result.protocol["ood_tuning"] and result.to_json()["max_samples"] == 25


def test_bad_config_messages(digits_run, tmp_path):
    with pytest.raises(RegistryError, match="unknown detector 'knn'"):
        OODConfig(run="x", ood="noise", detector="knn")
    with pytest.raises(ConfigError, match="temperatures must be positive"):
        OODConfig(run="x", ood="noise", temperatures=(0,))
    with pytest.raises(ConfigError, match="threads must be an integer >= 1"):
        OODConfig(run="x", ood="noise", threads=0)
    from activecrl.core.errors import DataError

    with pytest.raises(DataError, match="OOD set must be"):
        run_ood(OODConfig(run=str(digits_run), ood=str(tmp_path / "missing"), device="cpu"))


# ------------------------------------------------------------------------------ CLI


def test_cli_train_then_ood(tmp_path, image_folder):
    run = tmp_path / "run"
    r = runner.invoke(app, ["train", "--dataset", "digits", "--epochs", "1", "--device", "cpu", "--out", str(run)])
    assert r.exit_code == 0, (r.output, r.exception)
    out = tmp_path / "odin"
    r = runner.invoke(app, ["ood", "--run", str(run), "--ood", str(image_folder), "--detector", "odin",
                            "--out", str(out), "--n-tune", "40", "--temperatures", "1,1000", "--epsilons", "0,0.002",
                            "--device", "cpu", "--tune-on-test-ood"])
    assert r.exit_code == 0, (r.output, r.exception)
    assert "paper protocol" in r.output and "auroc" in r.output
    assert "OOD set converted: 37 images converted from 3×12×12 (RGB) to the model's input 1×8×8" in r.output
    blob = json.loads((out / "ood.json").read_text())
    assert blob["protocol"]["tuned_on_test_ood"] and (out / "scores.npz").is_file()
    assert blob["threads_used"] == 1  # the automatic count of train and run: small_cnn gets one thread
    # the global flag, as for train and run; in a process of its own: a 2-thread OpenMP pool left in this
    # one would hang the tests that fork it
    proc = subprocess.run([sys.executable, "-m", "activecrl", "--threads", "2", "ood", "--run", str(run), "--ood",
                           "noise", "--detector", "energy", "--out", str(tmp_path / "energy"), "--device", "cpu",
                           "--n-tune", "40"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    blob = json.loads((tmp_path / "energy" / "ood.json").read_text())
    assert blob["threads_used"] == 2 and blob["config"]["threads"] == 2
    r = runner.invoke(app, ["ood", "--run", str(run), "--ood", "noise", "--detector", "msp", "--out",
                            str(tmp_path / "x"), "--epsilons", "a,b"])
    assert r.exit_code != 0 and "comma-separated numbers" in str(r.exception)


def test_ood_set_conversion_is_described(tmp_path):
    from activecrl.ood import convert_to_model_input, load_ood_set

    same = torch.zeros(4, 1, 8, 8, dtype=torch.uint8)
    images, note = convert_to_model_input(same, 1, 8)
    assert images is same and note is None  # nothing to convert, nothing to say
    images, note = convert_to_model_input(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), 3, 8)
    assert images.shape == (4, 3, 8, 8) and note.endswith("gray copied to RGB")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    rng = np.random.default_rng(0)
    for i, side in enumerate((10, 12, 16)):
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(mixed / f"{i}.png")
    images, note = load_ood_set(str(mixed), channels=1, size=8, data_dir=tmp_path / "d")
    assert images.shape == (3, 1, 8, 8) and "mixed sizes, each resized to 8×8" in note
