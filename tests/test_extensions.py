"""One extension mechanism: every kind (strategy, trainer, recipe, model, method, detector, dataset)
is a registry entry added by a decorator, an entry point or a ``module:Name`` path, and runs through
the public entry; `list` shows exactly what each command accepts, every listed name passes that
command's validation, and the aleatoric trainer works wherever a trainer is accepted."""

from __future__ import annotations

import json
import re
import textwrap

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from activecrl.cli.app import accepted_names, app
from activecrl.data import DATASETS, device_split
from activecrl.core.errors import ConfigError, RegistryError
from activecrl.methods.run import TrainRunConfig, load_trained, save_train_run, train_and_evaluate
from activecrl.al.loop import ALConfig, check_run_config, run_active_learning
from activecrl.inference.mc_dropout import dropout_only_in_head, mc_dropout_stats
from activecrl.methods import METHODS, PlainMethod, build_method, register_method
from activecrl.models import MODELS, build_model
from activecrl.ood import (DETECTORS, Detector, DetectorInputs, DetectorScores, DetectorSplit, OODConfig,
                           register_detector, run_ood)
from activecrl.strategies import STRATEGIES, Strategy, register_strategy
from activecrl.training.trainers import TRAINERS, TrainConfig, build_trainer, register_recipe
from activecrl.core.validate import check_int
from tests.conftest import make_blobs_dataset


def _cfg(**kw):
    return TrainRunConfig(dataset="blobs", device="cpu", train=TrainConfig(epochs=2, batch_size=32, lr=0.05), **kw)


def _al(**kw):
    return ALConfig(**{**dict(dataset="blobs", trainer="baseline", strategy="entropy", initial=20, budget=10, stages=2,
                              trials=1, device="cpu", train=TrainConfig(epochs=1, batch_size=16)), **kw})


def _module(tmp_path, monkeypatch, name: str, code: str) -> None:
    """A user's plugin module ``name.py``, importable as ``name``."""
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(code))
    monkeypatch.syspath_prepend(str(tmp_path))


def _entry_point(tmp_path, monkeypatch, registry, name: str, value: str) -> None:
    """An installed distribution (a dist-info folder on sys.path) exposing ``name = value`` in the
    registry's entry-point group; the registry looks for entry points again, as a new process would."""
    dist = tmp_path / "activecrl_test_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: activecrl-test-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{registry.entry_point_group}]\n{name} = {value}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_entry_points_loaded", False)


# ------------------------------------------------------------------------------ registries


def test_method_and_detector_registries_have_entry_point_groups():
    assert METHODS.names() == ["aes", "aleatoric", "ensemble", "mc_dropout", "plain"]
    assert DETECTORS.names() == ["energy", "mahalanobis", "msp", "odin"]
    assert (METHODS.entry_point_group, DETECTORS.entry_point_group) == ("activecrl.methods", "activecrl.detectors")
    assert [n for n in DETECTORS.names() if DETECTORS.get(n).tuned] == ["mahalanobis", "odin"]
    with pytest.raises(RegistryError, match="already registered"):
        register_method("plain", type("Other", (PlainMethod,), {}))


def test_plain_method_alone(blobs):
    method = build_method(_cfg())
    assert isinstance(method, PlainMethod) and method.members == 1
    train, test = device_split(blobs, "train", "cpu"), device_split(blobs, "test", "cpu")
    assert method.fit(blobs, train) > 0 and len(method.models_) == 1
    probs, logits = method.predictive(test, torch.arange(5))
    assert probs.shape == (5, 3) and np.allclose(probs.sum(1), 1)
    np.testing.assert_allclose(probs, torch.softmax(torch.tensor(logits), 1).numpy())
    np.testing.assert_array_equal(method.confidence(probs), probs.max(1))


@pytest.mark.parametrize("name, options, members, confidence", [
    ("mc_dropout", dict(mc_samples=3), 1, "negative entropy"),
    ("aleatoric", dict(mc_samples=3, aleatoric_samples=4), 1, "negative entropy"),
    ("aes", dict(snapshots=1), 1, "max"),
    ("ensemble", dict(members=2), 2, "max"),
])
def test_each_method_class_alone(blobs, name, options, members, confidence):
    method = build_method(_cfg(method=name, **options))
    assert type(method) is METHODS.get(name) and method.members == members
    train, test = device_split(blobs, "train", "cpu"), device_split(blobs, "test", "cpu")
    seen = []
    method.fit(blobs, train, progress=lambda info: seen.append((info.epoch, info.epochs)))
    assert len(method.models_) == members and seen[-1] == (2 * members, 2 * members)
    probs, logits = method.predictive(test, torch.arange(7))
    assert probs.shape == (7, 3) and np.allclose(probs.sum(1), 1) and logits is None
    conf = method.confidence(probs)
    if confidence == "max":
        np.testing.assert_array_equal(conf, probs.max(1))
    else:  # sum p log p: ranks like the negative entropy, <= 0
        assert np.all(conf <= 0) and np.allclose(conf, (probs * np.log(probs)).sum(1))
    info = method.describe()
    assert json.dumps(info) and (name != "ensemble" or info["member_seeds"] == [0, 1])
    if name in ("mc_dropout", "aleatoric"):
        assert method.config.dropout == 0.3 and info["mc_samples"] == 3
        assert hasattr(method.models_[0], "log_var_head") == (name == "aleatoric")


def test_a_registered_method_runs_through_train_and_evaluate(blobs):
    @register_method("uniform_conf")
    class UniformConfidence(PlainMethod):
        """The plain model's predictions with a constant confidence (every ranking ties)."""

        name = "uniform_conf"
        confidence_label = "constant"

        def confidence(self, probs):
            return np.ones(len(probs))

        def describe(self):
            return {"note": "constant"}

    try:
        result = train_and_evaluate(_cfg(method="uniform_conf"), dataset=blobs)
        assert result.method_info["name"] == "uniform_conf" and result.method_info["note"] == "constant"
        assert np.all(result.confidence == 1) and result.model_info["method"] == "uniform_conf"
    finally:
        METHODS.unregister("uniform_conf")


def test_a_registered_detector_runs_through_run_ood(tmp_path):
    config = TrainRunConfig(dataset="digits", device="cpu", train=TrainConfig(epochs=1, batch_size=64))
    run = save_train_run(train_and_evaluate(config), tmp_path / "run")

    @register_detector("max_logit")
    class MaxLogit(Detector):
        name = "max_logit"

        def score(self, inputs: DetectorInputs, split: DetectorSplit, say) -> DetectorScores:
            def score(data, idx):
                with torch.no_grad():
                    return torch.cat([inputs.model(x).max(1).values for x, _, _ in data.eval_batches(
                        torch.from_numpy(idx))]).double().numpy()
            return DetectorScores(score(inputs.test, split.eval_in), score(inputs.ood, split.eval_out), {})

    try:
        result = run_ood(OODConfig(run=str(run), ood="gaussian", detector="max_logit", n_tune=10, device="cpu"))
        assert result.config.detector == "max_logit" and result.metrics["auroc"] > 0.5
        assert result.score_in.shape == (450 - 10,) and "no tuned hyper-parameters" in result.protocol["note"]
    finally:
        DETECTORS.unregister("max_logit")


REGISTRIES = [STRATEGIES, TRAINERS, MODELS, METHODS, DETECTORS, DATASETS]


@pytest.mark.parametrize("registry", REGISTRIES, ids=lambda r: r.kind)
def test_every_registry_works_the_same_way(registry, tmp_path, monkeypatch):
    assert registry.entry_point_group == "activecrl." + {"strategy": "strategies"}.get(registry.kind, registry.kind + "s")
    name = registry.names()[0]
    with pytest.raises(RegistryError, match=rf"unknown {registry.kind} '{name}x' \(did you mean '{name}'\?\); "
                                            rf"valid .* are: {name}, .*'package.module:Name'"):
        registry.get(name + "x")
    with pytest.raises(RegistryError, match="already registered"):
        registry.register(name, object())
    _module(tmp_path, monkeypatch, "plugin_any_kind", """
        def make(*, size):
            return ["made", size]
    """)
    assert registry.get("plugin_any_kind:make") is registry.get(" plugin_any_kind:make")
    assert registry.create("plugin_any_kind:make", size=3) == ["made", 3]
    with pytest.raises(ConfigError, match=r"accepts parameters \['size'\], got \['width'\] instead"):
        registry.create("plugin_any_kind:make", width=3)
    with pytest.raises(ConfigError, match="has no attribute 'nope'.* there: (make|none)$"):
        registry.get("plugin_any_kind:nope")


def test_a_registered_strategy_runs_through_run_active_learning(tmp_path):
    @register_strategy("lowest_index")
    class LowestIndex(Strategy):
        """Label the pool in index order."""

        def select(self, context, budget, rng):
            return np.sort(np.asarray(context.pool.indices))[:budget]

    try:
        records = run_active_learning(_al(strategy="lowest_index"), tmp_path / "run",
                                      dataset=make_blobs_dataset(n_train=90, n_test=30))
        initial = set(records[0].initial)
        assert records[0].queried == [i for i in range(90) if i not in initial][:10]
    finally:
        STRATEGIES.unregister("lowest_index")


def test_a_trainer_from_an_entry_point_runs_through_train_and_evaluate(blobs, tmp_path, monkeypatch):
    _module(tmp_path, monkeypatch, "plugin_trainers", """
        import torch.nn.functional as F
        from activecrl.training.trainers import Trainer

        class LabelSmoothing(Trainer):
            steps = 0

            def __init__(self, config=None, *, smoothing=0.1, **overrides):
                super().__init__(config, **overrides)
                self.smoothing = smoothing

            def loss(self, logits, labels, indices):
                type(self).steps += 1
                return F.cross_entropy(logits, labels, label_smoothing=self.smoothing)
    """)
    _entry_point(tmp_path, monkeypatch, TRAINERS, "smooth", "plugin_trainers:LabelSmoothing")
    try:
        result = train_and_evaluate(_cfg(trainer="smooth"), dataset=blobs)
        plugin = TRAINERS.get("smooth")
        assert plugin.steps == 2 * 4 and result.config.trainer == "smooth"  # 2 epochs of 4 batches of 32
        assert build_trainer("smooth", smoothing=0.2).smoothing == 0.2
    finally:
        TRAINERS.unregister("smooth")


def test_a_registered_recipe_runs_through_train_and_evaluate(blobs):
    recipe = register_recipe("crl_cosine_test", "crl", "CRL with a cosine head", head="cosine", cos_temp=4.0)
    try:
        assert "crl_cosine_test" in TRAINERS and recipe.describe() == "crl + head=cosine, cos_temp=4.0"
        result = train_and_evaluate(_cfg(trainer="crl_cosine_test"), dataset=blobs)
        assert (result.model_info["head"], result.model_info["cos_temp"]) == ("cosine", 4.0)
        assert np.isfinite(result.metrics["accuracy"])
    finally:
        TRAINERS.unregister("crl_cosine_test")


def test_a_model_by_path_trains_saves_and_reloads(blobs, tmp_path, monkeypatch):
    _module(tmp_path, monkeypatch, "plugin_models", """
        from activecrl.models import SmallCNN

        def narrow_cnn(*, num_classes, in_channels, image_size, dropout):
            return SmallCNN(num_classes=num_classes, in_channels=in_channels, dropout=dropout, widths=(4, 8, 16))
    """)
    result = train_and_evaluate(_cfg(model="plugin_models:narrow_cnn"), dataset=blobs)
    assert result.model.stages[0][0].out_channels == 4
    model, info, _ = load_trained(save_train_run(result, tmp_path / "run"))
    assert info["model"] == "plugin_models:narrow_cnn"
    for (k, a), b in zip(model.state_dict().items(), result.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


def test_a_dataset_from_an_entry_point_runs_through_run_active_learning(tmp_path, monkeypatch):
    _module(tmp_path, monkeypatch, "plugin_datasets", """
        from tests.conftest import make_blobs_dataset

        def tiny_blobs(*, data_dir, download):
            return make_blobs_dataset(n_train=90, n_test=30)
    """)
    _entry_point(tmp_path, monkeypatch, DATASETS, "tiny_blobs", "plugin_datasets:tiny_blobs")
    try:
        records = run_active_learning(_al(dataset="tiny_blobs"), tmp_path / "run")  # loaded by name
        assert [r.n_labeled for r in records] == [20, 30] and "tiny_blobs" in DATASETS.names()
    finally:
        DATASETS.unregister("tiny_blobs")


# ------------------------------------------------------------------------------ `activecrl list`


def test_list_shows_what_each_command_accepts():
    out = CliRunner().invoke(app, ["list"]).output
    text = re.sub(r"[│┃\s]+", " ", out)  # the table's rows, unwrapped
    for option, names in accepted_names().items():
        assert f" {option} {', '.join(names)} " in text, (option, text)


def test_every_listed_name_passes_its_commands_validation():
    names = accepted_names()
    assert set(names) == {"train/run --dataset", "train/run --model", "train --method", "train --trainer",
                          "run --trainer", "run --strategy", "ood --detector"}
    for method in names["train --method"]:
        build_method(TrainRunConfig(method=method))
    for trainer in names["train --trainer"]:
        build_method(TrainRunConfig(trainer=trainer))
    for trainer in names["run --trainer"]:
        check_run_config(ALConfig(trainer=trainer))
    for strategy in names["run --strategy"]:
        check_run_config(ALConfig(strategy=strategy))
    for model in names["train/run --model"]:
        check_run_config(ALConfig(model=model))
        build_model(model, num_classes=10)
    for dataset in names["train/run --dataset"]:
        ALConfig(dataset=dataset)
        DATASETS.get(dataset)
    for detector in names["ood --detector"]:
        OODConfig(run="somewhere", ood="noise", detector=detector)
    # and a name that is not listed is refused, naming the valid ones
    with pytest.raises(RegistryError, match="unknown method 'nope'.*valid methods are: aes, aleatoric"):
        build_method(TrainRunConfig(method="nope"))
    with pytest.raises(RegistryError, match="valid trainers are: aleatoric, baseline, crl"):
        check_run_config(ALConfig(trainer="nope"))
    with pytest.raises(RegistryError, match="unknown detector 'nope'.*valid detectors are: energy, mahalanobis"):
        OODConfig(run="somewhere", ood="noise", detector="nope")


# ------------------------------------------------------------------------------ aleatoric everywhere


def test_run_with_the_aleatoric_trainer(tmp_path):
    ds = make_blobs_dataset(n_train=90, n_test=30)
    config = ALConfig(dataset="blobs", trainer="aleatoric", strategy="entropy", initial=20, budget=10, stages=2,
                      trials=1, device="cpu", warm_start=True,
                      train=TrainConfig(epochs=2, batch_size=16, milestones=(0.6, 0.8)))
    records = run_active_learning(config, tmp_path / "run", dataset=ds)
    assert [r.n_labeled for r in records] == [20, 30]
    assert all(np.isfinite(r.metrics["accuracy"]) and np.isfinite(r.final_train_loss) for r in records)


def test_variance_head_is_a_model_option_recorded_with_the_model(blobs, tmp_path):
    model = build_model("small_cnn", num_classes=3, in_channels=1, image_size=8, variance_head="class")
    assert model.log_var_head.out_features == 3 and model.build_config["variance_head"] == "class"
    assert "variance_head" not in build_model("small_cnn", num_classes=3).build_config
    with pytest.raises(ConfigError, match="variance_head must be None or one of sample, class"):
        build_model("small_cnn", num_classes=3, variance_head="both")
    # `train --trainer aleatoric --method mc_dropout`: the trainer's model option reaches the model
    result = train_and_evaluate(_cfg(trainer="aleatoric", method="mc_dropout", mc_samples=2), dataset=blobs)
    assert result.model_info["variance_head"] == "sample" and result.model_info["method"] == "mc_dropout"
    model, info, _ = load_trained(save_train_run(result, tmp_path / "run"))
    assert model.log_var_head.out_features == 1


# ------------------------------------------------------------------------------ one of each


class _BodyDropoutZero(nn.Module):
    """A body with an inactive Dropout(p=0) (identity in train mode too), dropout 0.5 in the head."""

    num_classes = 3

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, 6), nn.Dropout(0.0), nn.ReLU())
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Linear(6, 3))

    def forward(self, x, return_features=False):
        f = self.body(x)
        return (self.classifier(f), f) if return_features else self.classifier(f)


def test_dropout_p0_in_the_body_still_allows_head_only_sampling():
    """The one "is all dropout in the head" answer: an inactive Dropout(p=0) does not count, because
    head-only sampling stays exact; the model property and the engine agree."""
    torch.manual_seed(0)
    net = _BodyDropoutZero()
    assert dropout_only_in_head(net)
    model = build_model("small_cnn", num_classes=3, in_channels=1, image_size=8, dropout=0.3)
    model.stages[1].append(nn.Dropout(0.0))
    assert model.head_only_dropout and dropout_only_in_head(model)
    model.stages[1][-1].p = 0.1  # an active one in the body: full passes needed
    assert not model.head_only_dropout and not dropout_only_in_head(model)

    class Data:
        n, device = 12, torch.device("cpu")
        x = torch.randn(12, 5)

        def eval_batches(self, indices=None, batch_size=1024):
            idx = torch.arange(self.n) if indices is None else torch.as_tensor(indices)
            for s in range(0, len(idx), batch_size):
                yield self.x[idx[s:s + batch_size]], None, idx[s:s + batch_size]

    net.head_only_dropout = True
    head = mc_dropout_stats(net, Data(), n_samples=5, seed=2, batch_size=4)
    full = mc_dropout_stats(net, Data(), n_samples=5, seed=2, batch_size=4, head_only=False)
    assert head.head_only and not full.head_only
    torch.testing.assert_close(head.mean_probs, full.mean_probs, rtol=0, atol=1e-6)


@pytest.mark.parametrize("value, ok", [(3, True), (np.int64(3), True), (2, True), (1, False), (True, False),
                                       (3.0, False), ("3", False), (None, False)])
def test_check_int(value, ok):
    if ok:
        assert check_int("n", value, 2) == int(value) and type(check_int("n", value, 2)) is int
    else:
        with pytest.raises(ConfigError, match=r"n must be an integer >= 2, got .* instead; hint"):
            check_int("n", value, 2, "; hint")
    assert check_int("n", None, 2, none_ok=True) is None
    with pytest.raises(ConfigError, match=r"seed must be an integer in \[0, 2\*\*63\)"):
        check_int("seed", 2**63, 0, below=2**63)


def test_list_in_a_fresh_process_names_every_builtin():
    # the CLI imports each registry lazily: reading one must register its built-ins too
    import subprocess
    import sys

    code = "from activecrl.cli.app import accepted_names; import json; print(json.dumps(accepted_names()))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    import json

    names = json.loads(proc.stdout)
    assert {"msp", "odin", "mahalanobis", "energy"} <= set(names["ood --detector"])
    assert {"plain", "ensemble"} <= set(names["train --method"]) and "crl" in names["run --trainer"]
    assert {"small_cnn", "linear"} <= set(names["train/run --model"]) and "entropy" in names["run --strategy"]
