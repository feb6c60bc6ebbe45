"""Comparison methods (MC dropout, Aleatoric+MC, AES, ensembles) and temperature scaling, on tiny data."""

import json
import math

import numpy as np
import pytest
import torch

from activecrl.data import device_split
from activecrl.core.errors import ConfigError, RegistryError
from activecrl.methods.run import TrainRunConfig, load_trained, save_train_run, train_and_evaluate
from activecrl.methods import (AleatoricTrainer, SnapshotCollector, add_variance_head, apply_temperature,
                               fit_temperature, mc_dropout_probs, negative_entropy, sampled_softmax_loss,
                               snapshot_epochs)
from activecrl.evaluation.metrics import METRIC_NAMES
from activecrl.models import build_model
from activecrl.training.trainers import TRAINERS, TrainConfig, build_trainer


def _cfg(**kw):
    train = TrainConfig(epochs=kw.pop("epochs", 2), batch_size=32, lr=0.05, seed=kw.pop("seed", 0))
    return TrainRunConfig(dataset="blobs", device="cpu", train=train, **kw)


def _model(ds, dropout=0.3, seed=0):
    torch.manual_seed(seed)
    return build_model("small_cnn", num_classes=ds.num_classes, in_channels=ds.in_channels,
                       image_size=ds.image_size, dropout=dropout)


def _check_result(result, n_test, k):
    assert result.probs.shape == (n_test, k) and result.confidence.shape == (n_test,)
    assert np.allclose(result.probs.sum(1), 1, atol=1e-5)
    assert set(result.metrics) == set(METRIC_NAMES)


# ------------------------------------------------------------------------------ MC dropout


def test_mc_head_sampling_equals_full_passes(blobs):
    model = _model(blobs)
    assert model.head_only_dropout
    data = device_split(blobs, "test", "cpu")
    head = mc_dropout_probs(model, data, n_samples=7, seed=3, batch_size=16, head_only=True)
    full = mc_dropout_probs(model, data, n_samples=7, seed=3, batch_size=16, head_only=False)
    assert head.shape == (blobs.n_test, 3) and np.allclose(head.sum(1), 1)
    np.testing.assert_allclose(head, full, rtol=1e-5, atol=1e-6)
    # stochastic: differs from a single deterministic pass, and BatchNorm stays in eval mode
    other = mc_dropout_probs(model, data, n_samples=7, seed=4, batch_size=16)
    assert not np.allclose(head, other)
    assert model.training  # mode restored


def test_mc_dropout_needs_dropout(blobs):
    with pytest.raises(ConfigError, match="dropout"):
        mc_dropout_probs(_model(blobs, dropout=0.0), device_split(blobs, "test", "cpu"), n_samples=2)


def test_negative_entropy():
    p = np.array([[1.0, 0.0], [0.5, 0.5]])
    np.testing.assert_allclose(negative_entropy(p), [0.0, -math.log(2)])


def test_mc_dropout_run_defaults_to_dropout_03(blobs, caplog):
    caplog.set_level("INFO")
    result = train_and_evaluate(_cfg(method="mc_dropout", mc_samples=5), dataset=blobs)
    _check_result(result, blobs.n_test, 3)
    assert result.config.dropout == 0.3 and "dropout 0.3" in caplog.text
    np.testing.assert_allclose(result.confidence, negative_entropy(result.probs.astype(np.float64)), rtol=1e-5)
    assert result.method_info["mc_samples"] == 5 and result.method_info["head_only"]


# ------------------------------------------------------------------------------ aleatoric


def test_sampled_softmax_loss_hand_computed():
    logits = torch.tensor([[1.0, 0.0]])
    log_var = torch.tensor([[math.log(4.0)]])  # sigma = 2
    noise = torch.tensor([[[0.5, 0.0]], [[-0.5, 0.0]]])  # two samples: logits (2, 0) and (0, 0)
    p1 = math.exp(2) / (math.exp(2) + 1)
    expected = -math.log((p1 + 0.5) / 2)
    got = sampled_softmax_loss(logits, log_var, torch.tensor([0]), noise=noise)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # zero variance: plain cross-entropy
    ce = torch.nn.functional.cross_entropy(logits, torch.tensor([1]))
    assert sampled_softmax_loss(logits, torch.full((1, 2), -60.0), torch.tensor([1]), 4).item() == pytest.approx(ce.item(), rel=1e-5)


def test_aleatoric_trainer_registered_and_needs_head(blobs):
    assert "aleatoric" in TRAINERS.names() and TRAINERS.get("aleatoric") is AleatoricTrainer
    with pytest.raises(ConfigError, match="log-variance head"):
        build_trainer("aleatoric", TrainConfig(epochs=1)).fit(_model(blobs), device_split(blobs, "train", "cpu"))


def test_aleatoric_run_saves_and_reloads(blobs, tmp_path):
    result = train_and_evaluate(_cfg(method="aleatoric", mc_samples=4, aleatoric_samples=5, variance="class"),
                                dataset=blobs)
    _check_result(result, blobs.n_test, 3)
    assert result.config.trainer == "aleatoric" and result.model.log_var_head.out_features == 3
    assert result.method_info["test_logit_samples"] == 1 and result.method_info["mc_samples"] == 4
    np.testing.assert_allclose(result.confidence, negative_entropy(result.probs.astype(np.float64)), rtol=1e-5)
    # the stored probabilities are the logit-sampled ones, not plain MC dropout's
    test = device_split(blobs, "test", "cpu")
    sampled = mc_dropout_probs(result.model, test, n_samples=4, seed=0, logit_noise=True)
    np.testing.assert_allclose(result.probs, sampled, atol=1e-6)
    assert not np.allclose(result.probs, mc_dropout_probs(result.model, test, n_samples=4, seed=0), atol=1e-6)
    save_train_run(result, tmp_path / "run")
    model, info, config = load_trained(tmp_path / "run")
    assert info["variance_head"] == "class" and hasattr(model, "log_var_head")
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["method"]["test_logit_samples"] == 1
    assert config["method"] == "aleatoric"
    with pytest.raises(ConfigError, match="trainer must be baseline or aleatoric"):
        train_and_evaluate(_cfg(method="aleatoric", trainer="crl"), dataset=blobs)


def _aleatoric_model(blobs, log_var: float, per_class: bool = False):
    """An untrained small CNN made confident (peaked classifier bias) with a constant log sigma^2."""
    model = add_variance_head(_model(blobs), per_class=per_class)
    with torch.no_grad():
        model.classifier[1].bias.copy_(torch.tensor([4.0, 0.0, -4.0]))
        model.log_var_head.weight.zero_()
        model.log_var_head.bias.fill_(log_var)
    return model


def _entropy(p):
    return -negative_entropy(p)


def test_aleatoric_test_time_logit_sampling(blobs):
    data = device_split(blobs, "test", "cpu")
    kw = dict(n_samples=50, seed=3, batch_size=16)
    # sigma = 5: the averaged softmax of sampled logits is flatter than plain MC dropout (same masks)
    model = _aleatoric_model(blobs, log_var=math.log(25.0))
    plain = mc_dropout_probs(model, data, **kw)
    rng_state = torch.get_rng_state()
    noisy = mc_dropout_probs(model, data, **kw, logit_noise=True)
    assert torch.equal(torch.get_rng_state(), rng_state)  # global RNG untouched
    assert noisy.shape == (blobs.n_test, 3) and np.allclose(noisy.sum(1), 1)
    assert (_entropy(noisy) > _entropy(plain) + 0.1).all()
    # reproducible from the seed, different with another seed; the head-only path equals full passes
    np.testing.assert_array_equal(noisy, mc_dropout_probs(model, data, **kw, logit_noise=True))
    assert not np.allclose(noisy, mc_dropout_probs(model, data, **{**kw, "seed": 4}, logit_noise=True))
    full = mc_dropout_probs(model, data, **kw, logit_noise=True, head_only=False)
    np.testing.assert_allclose(noisy, full, rtol=1e-5, atol=1e-6)
    # the noise is keyed by row, not by batch
    np.testing.assert_allclose(noisy, mc_dropout_probs(model, data, **{**kw, "batch_size": 7}, logit_noise=True),
                               rtol=1e-10, atol=1e-12)
    # sigma -> 0 (per class too): exactly plain MC dropout, i.e. the same dropout masks
    for per_class in (False, True):
        tiny = _aleatoric_model(blobs, log_var=-60.0, per_class=per_class)
        np.testing.assert_allclose(mc_dropout_probs(tiny, data, **kw, logit_noise=True),
                                   mc_dropout_probs(tiny, data, **kw), rtol=1e-10, atol=1e-12)
    with pytest.raises(ConfigError, match="log_var_head"):
        mc_dropout_probs(_model(blobs), data, n_samples=2, logit_noise=True)


def test_variance_head_keeps_forward(blobs):
    model = add_variance_head(_model(blobs), per_class=False).eval()
    x = torch.randn(4, 1, 8, 8)
    assert model(x).shape == (4, 3) and model.log_var_head(model.features(x)).shape == (4, 1)


# ------------------------------------------------------------------------------ AES


def test_snapshot_epochs():
    assert snapshot_epochs(300, 10) == list(range(165, 301, 15))
    assert snapshot_epochs(300, 30) == list(range(155, 301, 5))
    assert snapshot_epochs(4, 2) == [3, 4]
    with pytest.raises(ConfigError, match="snapshots must be at most 2"):
        snapshot_epochs(4, 3)


def test_snapshot_collector_counts(blobs):
    model = _model(blobs, dropout=0.0)
    seen = []
    collector = SnapshotCollector(model, [2, 4], then=lambda info: seen.append(info.epoch))
    build_trainer("baseline", TrainConfig(epochs=4, batch_size=32)).fit(model, device_split(blobs, "train", "cpu"),
                                                                      progress=collector)
    assert collector.taken == [2, 4] and len(collector.states) == 2 and seen == [1, 2, 3, 4]
    assert all(v.device.type == "cpu" for v in collector.states[0].values())
    final = model.state_dict()
    assert all(torch.equal(collector.states[1][k], final[k]) for k in final)
    assert not all(torch.equal(collector.states[0][k], final[k]) for k in final)


def test_aes_run(blobs):
    result = train_and_evaluate(_cfg(method="aes", snapshots=2, epochs=4), dataset=blobs)
    _check_result(result, blobs.n_test, 3)
    assert result.method_info["snapshot_epochs"] == [3, 4]
    np.testing.assert_allclose(result.confidence, result.probs.max(1), rtol=1e-6)
    assert json.dumps(result.to_json())  # JSON-safe


# ------------------------------------------------------------------------------ ensemble


def test_ensemble_members_differ_and_average(blobs, tmp_path):
    result = train_and_evaluate(_cfg(method="ensemble", members=2, trainer="crl", epochs=1), dataset=blobs)
    _check_result(result, blobs.n_test, 3)
    assert result.method_info["member_seeds"] == [0, 1]
    a, b = result.member_states
    assert not torch.equal(a["classifier.1.weight"], b["classifier.1.weight"])
    # the stored probabilities are the mean of the members' softmax outputs
    from activecrl.inference.predict import predict

    test = device_split(blobs, "test", "cpu")
    probs = []
    for state in result.member_states:
        m = _model(blobs, dropout=0.0)
        m.load_state_dict(state)
        probs.append(torch.softmax(predict(m, test, features=False).logits.double(), 1).numpy())
    np.testing.assert_allclose(result.probs, (probs[0] + probs[1]) / 2, atol=1e-6)
    assert not np.allclose(probs[0], probs[1])
    out = save_train_run(result, tmp_path / "ens")
    assert len(torch.load(out / "members.pt", weights_only=True)["member_states"]) == 2
    with pytest.raises(ConfigError, match="at least 2 members"):
        train_and_evaluate(_cfg(method="ensemble", members=1), dataset=blobs)


# ------------------------------------------------------------------------------ temperature scaling


def test_fit_temperature_recovers_known_t():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, size=(20000, 5))
    t0 = 2.5
    p = apply_temperature(z, t0)
    y = (p.cumsum(1) > rng.random((20000, 1))).argmax(1)  # y ~ softmax(z / T0)
    assert fit_temperature(z, y) == pytest.approx(t0, rel=0.05)
    np.testing.assert_allclose(apply_temperature(z, 1.0).sum(1), 1)


def test_temperature_scaling_run(blobs):
    result = train_and_evaluate(_cfg(temperature_scaling=True, holdout_fraction=0.25), dataset=blobs)
    _check_result(result, blobs.n_test, 3)
    t = result.method_info["temperature"]
    assert t > 0 and result.method_info["n_holdout"] == 30 and result.method_info["n_train_used"] == 90
    np.testing.assert_allclose(result.probs, torch.softmax(torch.tensor(result.logits).double(), 1).numpy(), atol=1e-5)
    assert result.to_json()["method"]["temperature"] == t


def test_train_subset_trains_on_a_seeded_subset(blobs, monkeypatch):
    import activecrl.methods.run as experiment
    from activecrl.methods.run import train_subset

    seen = []
    real = experiment.build_method

    def spy(config):  # record the indices the method is asked to fit on
        method = real(config)
        fit = method.fit
        method.fit = lambda ds, data, idx, progress: (seen.append(idx), fit(ds, data, idx, progress))[1]
        return method

    monkeypatch.setattr(experiment, "build_method", spy)
    result = train_and_evaluate(_cfg(train_subset=40), dataset=blobs)
    assert result.method_info["n_train_used"] == 40
    idx = seen[0].numpy()
    assert idx.size == 40 and np.unique(idx).size == 40 and np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(idx, train_subset(40, blobs.n_train, 0))  # reproducible from the seed
    assert not np.array_equal(train_subset(40, blobs.n_train, 1), idx)
    # with temperature scaling the subset comes from the training part only, never the held-out rows
    result = train_and_evaluate(_cfg(train_subset=40, temperature_scaling=True, holdout_fraction=0.25), dataset=blobs)
    hold = set(range(blobs.n_train)) - set(seen[1].numpy().tolist())
    assert result.method_info["n_holdout"] == 30 and result.method_info["n_train_used"] == 40
    assert len(hold) == blobs.n_train - 40


def test_train_subset_larger_than_the_split_is_refused(blobs):
    with pytest.raises(ConfigError, match=r"--train-subset\) must be between 2 and the 120 training images.*got 500"):
        train_and_evaluate(_cfg(train_subset=500), dataset=blobs)
    with pytest.raises(ConfigError, match=r"--train-subset\) must be an integer >= 0, got -1"):
        _cfg(train_subset=-1)


def test_bad_method_is_a_config_error(blobs):
    with pytest.raises(RegistryError, match="unknown method 'nope'"):
        train_and_evaluate(_cfg(method="nope"), dataset=blobs)


# ------------------------------------------------------------------------------ CLI


def test_cli_train_methods(tmp_path):
    from typer.testing import CliRunner

    from activecrl.cli.app import app

    runner = CliRunner()
    out = tmp_path / "aes"
    r = runner.invoke(app, ["train", "--dataset", "digits", "--epochs", "4", "--method", "aes", "--snapshots", "2",
                            "--temperature-scaling", "--device", "cpu", "--out", str(out)])
    assert r.exit_code == 0, (r.output, r.exception)
    assert "temperature scaling: T =" in r.output
    blob = json.loads((out / "metrics.json").read_text())
    assert blob["config"]["method"] == "aes" and blob["config"]["temperature_scaling"] is True
    assert blob["method"]["snapshot_epochs"] == [3, 4] and blob["method"]["temperature"] > 0
    preds = np.load(out / "predictions.npz")
    assert np.allclose(preds["probs"].sum(1), 1, atol=1e-5)
    r = runner.invoke(app, ["train", "--method", "aes", "--snapshots", "5", "--epochs", "2", "--device", "cpu",
                            "--out", str(tmp_path / "bad")])
    assert r.exit_code != 0 and "snapshots must be at most" in str(r.exception)
    assert not (tmp_path / "bad").exists()  # validated before any work
