"""Training ingredients: SAM, SWA/EMA + BatchNorm recomputation, RegMixup, the cosine
head, lr schedules, recipes, and the bad-input refusals. Each test checks what the ingredient
computes against a hand computation or torch's own reference implementation."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from activecrl.training.weight_averaging import WeightAverager, recompute_batchnorm
from activecrl.data import device_split
from activecrl.core.errors import ConfigError, RegistryError, TrainingDiverged
from activecrl.models import MODELS, CosineClassifier, build_model, register_model
from activecrl.training.regmixup import mix, mixup_cross_entropy, regmixup_term
from activecrl.training.schedules import lr_at
from activecrl.training.trainers import (TRAINERS, BaselineTrainer, CRLTrainer, Recipe, TrainConfig, build_trainer,
                                register_recipe, resolved_config, trainer_description)


def _model(ds, seed=0, **kw):
    torch.manual_seed(seed)
    return build_model("small_cnn", num_classes=ds.num_classes, in_channels=ds.in_channels,
                       image_size=ds.image_size, **kw)


def _flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


# ----------------------------------------------------------------------------------------- SAM


def _linear_ce_grad(W, b, x, y):
    """Hand gradient of mean CE for logits = x W^T + b: ((softmax - onehot)^T x / B, mean)."""
    p = torch.softmax(x @ W.T + b, dim=1)
    d = (p - F.one_hot(y, W.shape[0]).to(p.dtype)) / x.shape[0]
    return d.T @ x, d.sum(0)


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_step_equals_hand_computed_two_step_update(adaptive):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 1, 0, 1])
    W0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
    rho, lr, wd = 0.3, 0.5, 0.01
    trainer = BaselineTrainer(TrainConfig(optimizer="sam", sam_rho=rho, sam_adaptive=adaptive, lr=lr,
                                          momentum=0.9, weight_decay=wd, channels_last=False))
    opt = trainer.make_optimizer(model)
    trainer.train_step(model, opt, x, y, torch.arange(5))

    gW, gb = _linear_ce_grad(W0, b0, x, y)  # 1st pass at w
    if adaptive:  # ASAM: e = rho * w^2 g / ||w g||
        norm = torch.sqrt(((W0.abs() * gW) ** 2).sum() + ((b0.abs() * gb) ** 2).sum())
        eW, eb = rho * W0 ** 2 * gW / norm, rho * b0 ** 2 * gb / norm
    else:  # e = rho g / ||g||
        norm = torch.sqrt((gW ** 2).sum() + (gb ** 2).sum())
        eW, eb = rho * gW / norm, rho * gb / norm
    gW2, gb2 = _linear_ce_grad(W0 + eW, b0 + eb, x, y)  # 2nd pass at w + e
    # SGD's first step (empty momentum buffer): w - lr * (g(w + e) + wd * w), decay at the restored w
    assert torch.allclose(model.weight, W0 - lr * (gW2 + wd * W0), atol=1e-6)
    assert torch.allclose(model.bias, b0 - lr * (gb2 + wd * b0), atol=1e-6)
    # and it is not the plain SGD step
    assert not torch.allclose(model.weight, W0 - lr * (gW + wd * W0), atol=1e-4)


def test_sam_diverging_raises_training_diverged(blobs):
    train = device_split(blobs, "train", "cpu")
    with pytest.raises(TrainingDiverged, match="lower --lr"):
        build_trainer("sam", TrainConfig(epochs=3, batch_size=32, lr=1e12)).fit(_model(blobs), train)


# ----------------------------------------------------------------------------------- averaging


def test_swa_average_is_the_mean_of_the_snapshots():
    model = nn.Linear(2, 2)
    avg = WeightAverager(model, "swa")
    snaps = []
    for k in range(4):
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn_like(p))
        snaps.append(_flat(model))
        avg.update()
    avg.copy_to()
    assert avg.n_averaged_ == 4
    assert torch.allclose(_flat(model), torch.stack(snaps).mean(0), atol=1e-6)


def test_ema_uses_warmed_up_decay():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    avg = WeightAverager(model, "ema", decay=0.9)
    expected = 0.0
    for n, value in enumerate([1.0, 2.0, 3.0, 4.0]):
        with torch.no_grad():
            model.weight.fill_(value)
        avg.update()
        d = min(0.9, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * value
    assert avg.average_[0].item() == pytest.approx(expected, rel=1e-6)


def test_swa_fit_ends_with_the_mean_of_the_averaged_epochs(blobs):
    train = device_split(blobs, "train", "cpu")
    model = _model(blobs)
    snaps = []
    config = TrainConfig(epochs=5, batch_size=32, lr=0.05, averaging="swa", swa_start=0.6, seed=1)
    trainer = build_trainer("baseline", config)
    trainer.fit(model, train, progress=lambda info: snaps.append((info.epoch, _flat(model))))
    averaged = [w for epoch, w in snaps if epoch > 3]  # round(0.6 * 5) = 3: epochs 4 and 5
    assert trainer.averaged_updates_ == 2
    assert torch.allclose(_flat(model), torch.stack(averaged).mean(0), atol=1e-6)


def test_batchnorm_recomputed_on_the_given_indices_only(blobs):
    train = device_split(blobs, "train", "cpu")
    bn = nn.BatchNorm2d(1)
    bn.running_mean.fill_(5.0)
    subset = torch.arange(0, 40)
    batches = recompute_batchnorm(bn, train, subset, batch_size=40)  # one batch: exact statistics
    x = torch.cat([xb for xb, _, _ in train.eval_batches(subset)])
    assert batches == 1
    assert bn.running_mean.item() == pytest.approx(x.mean().item(), rel=1e-5)
    assert bn.running_var.item() == pytest.approx(x.var(unbiased=True).item(), rel=1e-4)
    assert bn.momentum == 0.1 and bn.training  # restored
    # several batches: the equal-weight mean of the batch means (update_bn's momentum=None)
    recompute_batchnorm(bn, train, subset, batch_size=20, generator=torch.Generator().manual_seed(0))
    order = subset[torch.randperm(40, generator=torch.Generator().manual_seed(0))]
    means = [train.eval_batches(order[i:i + 20]).__next__()[0].mean() for i in (0, 20)]
    assert bn.running_mean.item() == pytest.approx(torch.stack(means).mean().item(), rel=1e-5)


def test_averaging_recomputes_batchnorm_after_fit(blobs):
    train = device_split(blobs, "train", "cpu")
    subset = torch.arange(0, 60)
    model = _model(blobs)
    build_trainer("baseline", TrainConfig(epochs=2, batch_size=30, averaging="ema")).fit(model, train, subset)
    stats = [m.running_mean.clone() for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    recompute_batchnorm(model, train, subset, 30, torch.Generator().manual_seed(1))  # the same pass again
    again = [m.running_mean for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(stats, again))


# ------------------------------------------------------------------------------------ RegMixup


def test_regmixup_loss_on_a_hand_made_batch():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 0])
    perm = torch.tensor([2, 0, 1])
    lam = 0.7

    rows = logits.tolist()

    def ce(row, k):
        return -math.log(math.exp(rows[row][k]) / sum(math.exp(v) for v in rows[row]))

    y, p = labels.tolist(), perm.tolist()
    by_hand = np.mean([lam * ce(i, y[i]) + (1 - lam) * ce(i, y[p[i]]) for i in range(3)])
    assert mixup_cross_entropy(logits, labels, lam, perm).item() == pytest.approx(by_hand, rel=1e-6)

    x = torch.tensor([1.0, 2.0, 4.0]).view(3, 1, 1, 1)
    assert mix(x, lam, perm).flatten().tolist() == pytest.approx([0.7 + 0.3 * 4, 1.4 + 0.3 * 1, 2.8 + 0.3 * 2])
    # the term runs the mixed batch through the model: with an identity "model" it is the CE above
    xs = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]).view(3, 2, 1, 1)
    term = regmixup_term(lambda t: t.flatten(1), xs, labels, 1.0, perm)  # lam = 1: clean images
    assert term.item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)


def test_objective_adds_weighted_mixup_term():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, y = torch.randn(6, 1, 2, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    trainer = BaselineTrainer(TrainConfig(mixup_weight=0.5))
    perm = torch.tensor([5, 4, 3, 2, 1, 0])
    loss, logits = trainer.objective(model, x, y, torch.arange(6), (0.6, perm))
    expected = F.cross_entropy(model(x), y) + 0.5 * mixup_cross_entropy(model(mix(x, 0.6, perm)), y, 0.6, perm)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


# ---------------------------------------------------------------------------------- cosine head


def test_cosine_head_output_is_scaled_cosine(blobs):
    model = _model(blobs, head="cosine", cos_temp=8.0).eval()
    head = model.classifier[-1]
    assert isinstance(head, CosineClassifier) and model.build_config["head"] == "cosine"
    x = torch.randn(4, 1, 8, 8)
    logits, feats = model(x, return_features=True)
    w = head.weight
    cos = (feats @ w.T) / (feats.norm(dim=1, keepdim=True) * w.norm(dim=1)[None, :])
    assert torch.allclose(logits, 8.0 * cos, atol=1e-5)
    assert logits.abs().max() <= 8.0 + 1e-5


def test_cosine_head_refused_on_a_model_without_linear_classifier(blobs, tmp_path):
    from activecrl.al.loop import ALConfig, run_active_learning

    @register_model("no_linear_head_test")
    def factory(*, num_classes, in_channels, image_size, dropout):
        model = build_model("small_cnn", num_classes=num_classes, in_channels=in_channels, image_size=image_size)
        model.classifier = nn.Sequential(nn.Dropout(0.0), nn.Identity())
        return model

    try:
        with pytest.raises(ConfigError, match="head 'cosine'.*Identity.*--head linear"):
            build_model("no_linear_head_test", num_classes=3, in_channels=1, image_size=8, head="cosine")
        out = tmp_path / "run"
        config = ALConfig(model="no_linear_head_test", trainer="sure", initial=20, budget=10, stages=2, trials=1,
                          train=TrainConfig(epochs=2, batch_size=10))
        with pytest.raises(ConfigError, match="head 'cosine'"):
            run_active_learning(config, out, dataset=blobs)
        assert not out.exists()  # refused before anything was written
    finally:
        MODELS.unregister("no_linear_head_test")
    with pytest.raises(ConfigError, match="head must be one of linear, cosine"):
        build_model("small_cnn", num_classes=3, head="cos")


# ------------------------------------------------------------------------------------ schedules


def _torch_lrs(make_scheduler, epochs, steps, per="epoch"):
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1, momentum=0.9)
    sched = make_scheduler(opt)
    lrs = []
    for _ in range(epochs):
        for _ in range(steps):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            if per == "step":
                sched.step()
        if per == "epoch":
            sched.step()
    return lrs


def _ours(config, steps):
    return [lr_at(config, e, s, steps) for e in range(config.epochs) for s in range(steps)]


def test_step_schedule_matches_multisteplr():
    c = TrainConfig(epochs=10, lr=0.1, milestones=(0.6, 0.8))
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.MultiStepLR(o, c.milestone_epochs(), 0.1), 10, 3)
    assert _ours(c, 3) == pytest.approx(ref, rel=1e-12)
    assert [lr_at(c, e, 0, 3) for e in range(10)] == pytest.approx([0.1] * 6 + [0.01] * 2 + [0.001] * 2)


def test_cosine_schedule_matches_cosineannealing_at_epoch_starts():
    c = TrainConfig(epochs=8, lr=0.1, schedule="cosine")
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=8), 8, 1)
    assert [lr_at(c, e, 0, 4) for e in range(8)] == pytest.approx(ref, rel=1e-9)


def test_onecycle_schedule_matches_torch_onecycle_per_step():
    c = TrainConfig(epochs=5, lr=0.1, schedule="onecycle")
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=5 * 7), 5, 7, "step")
    assert _ours(c, 7) == pytest.approx(ref, rel=1e-9)
    c = TrainConfig(epochs=4, lr=0.2, schedule="onecycle", warmup=0.5)
    ref = _torch_lrs(lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.2, total_steps=4 * 3, pct_start=0.5),
                     4, 3, "step")
    assert _ours(c, 3) == pytest.approx(ref, rel=1e-9)


def test_linear_warmup_then_schedule():
    c = TrainConfig(epochs=4, lr=0.1, schedule="cosine", warmup=0.25)  # 4 of 16 steps
    lrs = _ours(c, 4)
    assert lrs[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])
    assert lrs[4] == pytest.approx(0.1) and lrs[-1] < 0.01
    step = TrainConfig(epochs=4, lr=0.1, warmup=0.5, milestones=(0.75,))
    assert [lr_at(step, e, 0, 2) for e in range(4)] == pytest.approx([0.025, 0.075, 0.1, 0.01])


def test_swa_phase_follows_swalr_as_the_papers_run_it():
    """SURE/FMFP: CosineAnnealingLR(T_max=E) per epoch, then from epoch S on SWALR(swa_lr) steps."""
    E, S = 20, 12
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=0.1)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=E)
    swalr = torch.optim.swa_utils.SWALR(opt, swa_lr=0.05, anneal_epochs=2)
    ref = []
    for epoch in range(1, E + 1):
        ref.append(opt.param_groups[0]["lr"])
        opt.step()
        (swalr if epoch > S else cos).step()
    c = TrainConfig(epochs=E, lr=0.1, schedule="cosine", averaging="swa", swa_start=0.6, swa_anneal=0.1)
    assert [lr_at(c, e, 0, 5) for e in range(E)] == pytest.approx(ref, rel=1e-9)


# -------------------------------------------------------------------------------------- recipes


def test_recipes_are_registered_with_published_settings():
    assert {"sam", "swa", "fmfp", "sure"} <= set(TRAINERS.names())
    sure = resolved_config("sure")
    assert (sure.optimizer, sure.sam_rho, sure.averaging, sure.swa_start, sure.head, sure.cos_temp,
            sure.crl_weight, sure.mixup_weight, sure.mixup_beta) == ("sam", 0.05, "swa", 0.6, "cosine", 8.0,
                                                                    0.5, 0.5, 10.0)
    assert isinstance(build_trainer("sure"), CRLTrainer) and build_trainer("sure").name == "sure"
    fmfp = build_trainer("fmfp").config
    assert (fmfp.optimizer, fmfp.averaging, fmfp.mixup_weight, fmfp.head) == ("sam", "swa", 0.0, "linear")
    assert "optimizer=sam" in trainer_description("fmfp") and trainer_description("sure").startswith("crl + ")


def test_user_settings_win_over_the_recipe():
    c = build_trainer("sam", TrainConfig(sam_rho=0.1, epochs=7)).config
    assert (c.optimizer, c.sam_rho, c.epochs) == ("sam", 0.1, 7)
    assert build_trainer("sam", None, sam_rho=0.2).config.sam_rho == 0.2


def test_a_user_recipe_in_a_few_lines(blobs):
    recipe = register_recipe("crl_ema_test", "crl", "CRL with an EMA of the weights", averaging="ema",
                             schedule="cosine")
    try:
        assert isinstance(recipe, Recipe) and "crl_ema_test" in TRAINERS.names()
        train = device_split(blobs, "train", "cpu")
        trainer = build_trainer("crl_ema_test", TrainConfig(epochs=2, batch_size=32))
        trainer.fit(_model(blobs), train)
        assert trainer.averaged_updates_ == 2 * 4 and hasattr(trainer, "history_")
        with pytest.raises(RegistryError, match="already registered"):
            register_recipe("crl_ema_test", "crl", averaging="swa")
    finally:
        TRAINERS.unregister("crl_ema_test")
    with pytest.raises(ConfigError, match="unknown training option"):
        Recipe("bad", BaselineTrainer, optimiser="sam")


# ------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("bad, match", [
    (dict(optimizer="adam"), "optimizer must be one of sgd, sam, got 'adam'"),
    (dict(averaging="polyak"), "averaging must be one of none, swa, ema"),
    (dict(schedule="linear"), "schedule must be one of step, cosine, onecycle"),
    (dict(head="mlp"), "head must be one of linear, cosine"),
    (dict(sam_rho=0.0), "sam_rho must be a number > 0"),
    (dict(sam_rho=-0.05), "sam_rho must be a number > 0"),
    (dict(averaging="swa", swa_start=0.95, epochs=10), "swa_start must leave at least one epoch"),
    (dict(averaging="swa", epochs=1), "swa_start must leave at least one epoch"),
    (dict(swa_start=1.0), "swa_start must be a fraction"),
    (dict(mixup_weight=-1.0), "mixup_weight must be"),
    (dict(mixup_beta=0.0), "mixup_beta must be"),
    (dict(warmup=1.0), "warmup must be"),
    (dict(ema_decay=1.0), "ema_decay must be"),
    (dict(cos_temp=0.0), "cos_temp must be"),
])
def test_bad_ingredients_are_refused(bad, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**bad)


def test_recipe_refuses_impossible_swa_before_training(blobs, tmp_path):
    from activecrl.al.loop import ALConfig, run_active_learning

    with pytest.raises(ConfigError, match="swa_start must leave at least one epoch"):
        build_trainer("fmfp", TrainConfig(epochs=1))
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="swa_start"):
        run_active_learning(ALConfig(trainer="swa", initial=20, budget=10, stages=2, trials=1,
                                     train=TrainConfig(epochs=1, batch_size=10)), out, dataset=blobs)
    assert not out.exists()
    with pytest.raises(RegistryError, match="valid trainers are: .*fmfp.*sam.*sure.*swa"):
        build_trainer("sure2")


# ---------------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("name", ["sam", "swa", "fmfp", "sure"])
def test_recipes_learn(blobs, name):
    train, test = device_split(blobs, "train", "cpu"), device_split(blobs, "test", "cpu")
    model = _model(blobs, head=resolved_config(name).head)
    build_trainer(name, TrainConfig(epochs=6, batch_size=32, lr=0.05, seed=1)).fit(model, train)
    from activecrl.inference.predict import predict

    out = predict(model, test, features=False)
    assert (out.logits.argmax(1) == test.labels[out.indices]).float().mean().item() > 0.8  # chance 1/3


def test_sure_train_run_saves_and_reloads_the_cosine_head(blobs, tmp_path):
    from activecrl.methods.run import TrainRunConfig, load_trained, save_train_run, train_and_evaluate

    config = TrainRunConfig(trainer="sure", device="cpu", train=TrainConfig(epochs=3, batch_size=32))
    result = train_and_evaluate(config, dataset=blobs)
    assert isinstance(result.model.classifier[-1], CosineClassifier)
    assert result.model_info["head"] == "cosine" and result.model_info["cos_temp"] == 8.0
    save_train_run(result, tmp_path / "run")
    model, info, _ = load_trained(tmp_path / "run")
    assert isinstance(model.classifier[-1], CosineClassifier)
    x = device_split(blobs, "test", "cpu").eval_batches().__next__()[0]
    with torch.no_grad():
        assert torch.allclose(model(x), result.model.eval()(x), atol=1e-5)


def test_active_learning_with_the_sure_recipe(blobs, tmp_path):
    from activecrl.al.loop import ALConfig, run_active_learning

    config = ALConfig(trainer="sure", initial=30, budget=20, stages=2, trials=1,
                      train=TrainConfig(epochs=3, batch_size=16))
    records = run_active_learning(config, tmp_path / "al", dataset=blobs)
    assert [r.n_labeled for r in records] == [30, 50]
    assert all(np.isfinite(r.metrics["accuracy"]) for r in records)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("compile_", [False, True])
def test_cuda_sure_fit_bf16_channels_last(blobs, compile_):
    """SAM + SWA + RegMixup + CRL + cosine head on the GPU path: bf16 autocast, channels_last, compile."""
    from activecrl.inference.predict import predict

    train, test = device_split(blobs, "train", "cuda", channels_last=True), device_split(blobs, "test", "cuda")
    config = TrainConfig(epochs=6, batch_size=32, lr=0.05, seed=1, compile=compile_)
    trainer = build_trainer("sure", config)
    model = _model(blobs, head="cosine")
    trainer.fit(model, train)
    assert trainer.averaged_updates_ == 2 and trainer.history_.counts.device.type == "cuda"
    out = predict(model, test, features=False)
    assert (out.logits.argmax(1) == blobs.test_labels).float().mean().item() > 0.8
