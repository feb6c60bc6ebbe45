import dataclasses

import pytest
import torch

from activecrl.data import device_split
from activecrl.core.errors import ConfigError, RegistryError, TrainingDiverged
from activecrl.models import build_model
from activecrl.training.trainers import TRAINERS, BaselineTrainer, CRLTrainer, TrainConfig, build_trainer, register_trainer


def _model(ds, seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return build_model("small_cnn", num_classes=ds.num_classes, in_channels=ds.in_channels,
                       image_size=ds.image_size, dropout=dropout)


def _acc(model, data):
    from activecrl.inference.predict import predict

    out = predict(model, data, features=False)
    return (out.logits.argmax(1) == data.labels.cpu()[out.indices]).float().mean().item()


def test_paper_defaults_and_milestones():
    c = TrainConfig()
    assert (c.epochs, c.batch_size, c.lr, c.momentum, c.weight_decay, c.crl_weight) == (300, 128, 0.1, 0.9, 1e-4, 1.0)
    assert c.milestone_epochs() == [150, 250]
    assert TrainConfig(epochs=200, milestones=(0.6, 0.8)).milestone_epochs() == [120, 160]


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(batch_size=1), dict(lr=-1.0), dict(rank_target="x"),
                                 dict(milestones=(1.5,)), dict(momentum=1.0)])
def test_config_validation(bad):
    with pytest.raises(ConfigError, match="got"):
        TrainConfig(**bad)
    with pytest.raises(ConfigError, match="unknown training option"):
        TrainConfig().updated(epoch=3)


@pytest.mark.parametrize("name", ["baseline", "crl"])
def test_short_training_learns(blobs, name):
    train, test = device_split(blobs, "train", "cpu"), device_split(blobs, "test", "cpu")
    model = _model(blobs)
    result = build_trainer(name, TrainConfig(epochs=6, batch_size=32, lr=0.05, seed=1)).fit(model, train)
    assert len(result.epoch_losses) == 6 and result.train_seconds > 0
    assert result.epoch_losses[-1] < result.epoch_losses[0]
    assert _acc(model, test) > 0.8  # chance is 1/3


def test_crl_history_counts_every_seen_sample(blobs):
    train = device_split(blobs, "train", "cpu")
    subset = torch.arange(0, 100, 2)  # 50 training indices
    trainer = CRLTrainer(TrainConfig(epochs=3, batch_size=16, seed=0))
    trainer.fit(_model(blobs), train, subset)
    seen = trainer.history_.seen
    # 50 = 3*16 + 2: no single-sample last batch, so every index is seen once per epoch
    assert seen[subset].tolist() == [3.0] * 50
    mask = torch.ones(train.n, dtype=torch.bool)
    mask[subset] = False
    assert seen[mask].sum().item() == 0  # never a sample outside the labeled set
    assert (trainer.history_.correct <= seen).all()


def test_crl_loss_adds_ranking_term():
    trainer = CRLTrainer(TrainConfig(epochs=1, crl_weight=2.0))
    trainer.history_ = __import__("activecrl.training.crl", fromlist=["x"]).CorrectnessHistory(4)
    trainer.history_.update(torch.tensor([0, 1]), torch.tensor([True, False]))
    logits = torch.tensor([[0.0, 0.0], [3.0, 0.0]])  # kappa 0.5 (c=1) and ~0.95 (c=0)
    labels = torch.tensor([0, 0])
    idx = torch.tensor([0, 1])
    base = BaselineTrainer().loss(logits, labels, idx)
    kappa = torch.softmax(logits, 1).max(1).values
    pair = torch.clamp(-(kappa[0] - kappa[1]) + 1, min=0)  # both pairs cost the same here
    assert trainer.loss(logits, labels, idx).item() == pytest.approx((base + 2.0 * pair).item(), rel=1e-5)


def test_fit_is_deterministic_on_cpu(blobs):
    train = device_split(blobs, "train", "cpu")
    weights = []
    for _ in range(2):
        model = _model(blobs, seed=3, dropout=0.2)
        CRLTrainer(TrainConfig(epochs=2, batch_size=32, seed=5)).fit(model, train)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])


def test_lr_schedule_is_applied(blobs):
    train = device_split(blobs, "train", "cpu")
    seen = []
    BaselineTrainer(TrainConfig(epochs=4, batch_size=64, lr=0.1, milestones=(0.5,), seed=0)).fit(
        _model(blobs), train, progress=lambda info: seen.append(info.lr))
    assert seen == pytest.approx([0.1, 0.1, 0.01, 0.01])  # the lr each epoch trained with


def test_nan_loss_stops_with_clear_message(blobs):
    class Exploding(BaselineTrainer):
        name = "exploding"

        def loss(self, logits, labels, indices):
            return super().loss(logits, labels, indices) * float("nan")

    with pytest.raises(TrainingDiverged, match="became nan in epoch 1"):
        Exploding(TrainConfig(epochs=2, batch_size=32)).fit(_model(blobs), device_split(blobs, "train", "cpu"))


def test_bad_indices_are_rejected(blobs):
    train = device_split(blobs, "train", "cpu")
    with pytest.raises(ConfigError, match=r"must lie in \[0, 120\)"):
        BaselineTrainer(TrainConfig(epochs=1)).fit(_model(blobs), train, torch.tensor([0, 500]))
    with pytest.raises(ConfigError, match="at least 2"):
        BaselineTrainer(TrainConfig(epochs=1)).fit(_model(blobs), train, torch.tensor([3]))


def test_trainer_registry():
    assert {"baseline", "crl"} <= set(TRAINERS.names())
    with pytest.raises(RegistryError, match="valid trainers are: .*baseline.*crl"):
        build_trainer("nope")
    with pytest.raises(RegistryError, match="already registered"):
        register_trainer("crl")(type("Other", (BaselineTrainer,), {}))

    @register_trainer("half_ce_test")
    class HalfCE(BaselineTrainer):
        name = "half_ce_test"

        def loss(self, logits, labels, indices):
            return 0.5 * super().loss(logits, labels, indices)

    try:
        assert isinstance(build_trainer("half_ce_test", epochs=1), HalfCE)
        assert build_trainer("half_ce_test", epochs=1).config.epochs == 1
    finally:
        TRAINERS.unregister("half_ce_test")
    assert dataclasses.is_dataclass(TrainConfig)


def test_weights_blowing_up_on_the_last_step_are_caught(blobs):
    class LastStepNaN(BaselineTrainer):
        name = "last_step_nan"

        def after_step(self, logits, labels, indices):
            self.steps_ = getattr(self, "steps_", 0) + 1
            if self.steps_ == 4:  # the last step of the only epoch: the epoch's mean loss stays finite
                with torch.no_grad():
                    next(self.model_.parameters()).fill_(float("nan"))

        def setup(self, model, data, device):
            self.model_ = model

    with pytest.raises(TrainingDiverged, match="weights became NaN"):
        LastStepNaN(TrainConfig(epochs=1, batch_size=32)).fit(_model(blobs), device_split(blobs, "train", "cpu"))
    with pytest.raises(ConfigError, match="seed must be"):
        TrainConfig(seed=-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("compile_", [False, True])
def test_cuda_fit_bf16_channels_last(blobs, compile_):
    """The GPU path: device-resident data, on-device batches, bf16 autocast, optional compile."""
    from activecrl.inference.predict import predict

    train, test = device_split(blobs, "train", "cuda", channels_last=True), device_split(blobs, "test", "cuda")
    trainer = CRLTrainer(TrainConfig(epochs=6, batch_size=32, lr=0.05, seed=1, compile=compile_))
    model = _model(blobs)
    trainer.fit(model, train)
    assert trainer.history_.counts.device.type == "cuda"
    assert trainer.history_.seen.sum().item() == 6 * 120
    out = predict(model, test, features=True)
    assert out.logits.device.type == "cpu" and out.features.shape == (60, model.feature_dim)
    assert (out.logits.argmax(1) == blobs.test_labels).float().mean().item() > 0.8
