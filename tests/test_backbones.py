"""timm backbones as ConfidenceModels (``build_model("timm:NAME")``) and the feature-mode models."""

import numpy as np
import pytest
import torch

from activecrl.core.errors import ConfigError
from activecrl.data import FeatureData, device_splits, feature_stats
from activecrl.inference.mc_dropout import mc_dropout_stats
from activecrl.inference.outputs import PoolOutputs
from activecrl.inference.predict import predict
from activecrl.models import ConfidenceModel, build_model, model_factory
from activecrl.training.trainers import TRAINERS, TrainConfig
from tests.conftest import make_blobs_dataset

timm = pytest.importorskip("timm")


def _timm_body(arch, **kwargs):
    torch.manual_seed(1)
    return timm.create_model(arch, **kwargs).eval()


def _save(state, path):
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_weights_file_gives_timms_own_features(tmp_path, suffix):
    # a full timm model (with its 1000-class head) saved to a file: its classifier is dropped
    source = _timm_body("resnet18", num_classes=1000)
    path = tmp_path / f"w{suffix}"
    _save(source.state_dict(), path)
    model = build_model("timm:resnet18", num_classes=4, image_size=32, input_size=32, weights=str(path)).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = source.forward_head(source.forward_features(x), pre_logits=True)
        torch.testing.assert_close(model.features(x), expected)
        logits, feats = model(x, return_features=True)
    assert logits.shape == (3, 4) and feats.shape == (3, model.feature_dim)
    assert model.build_config["weights"] == str(path) and model.build_config["input_size"] == 32


def test_vit_weights_at_another_input_size(tmp_path):
    # timm's checkpoint filter resamples the position embedding to the chosen input size
    source = _timm_body("vit_tiny_patch16_224", num_classes=0, img_size=32)
    path = tmp_path / "vit.pt"
    torch.save(source.state_dict(), path)
    model = build_model("timm:vit_tiny_patch16_224", num_classes=3, image_size=32, input_size=32,
                        weights=str(path)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.features(x), source.forward_head(source.forward_features(x), pre_logits=True))


def test_wrong_weights_files_name_the_file_and_keys(tmp_path):
    other = tmp_path / "other.pth"  # another architecture
    torch.save(_timm_body("resnet34", num_classes=0).state_dict(), other)
    with pytest.raises(ConfigError, match=r"other\.pth does not match timm model 'resnet18'.*unexpected keys: .*"
                                          r"and \d+ more\) \[\d+ in all\]"):
        build_model("timm:resnet18", num_classes=3, weights=str(other))
    partial = tmp_path / "partial.safetensors"
    state = _timm_body("resnet18", num_classes=0).state_dict()
    _save({k: v for k, v in state.items() if not k.startswith("layer4")}, partial)
    with pytest.raises(ConfigError, match=r"partial\.safetensors .*missing keys: layer4\."):
        build_model("timm:resnet18", num_classes=3, weights=str(partial))
    not_a_dict = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], not_a_dict)
    with pytest.raises(ConfigError, match=r"list\.pt must hold a state dict"):
        build_model("timm:resnet18", num_classes=3, weights=str(not_a_dict))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"garbage\.pt could not be read"):
        build_model("timm:resnet18", num_classes=3, weights=str(garbage))
    with pytest.raises(ConfigError, match="does not exist"):
        build_model("timm:resnet18", num_classes=3, weights=str(tmp_path / "missing.pt"))


def test_bad_names_and_options():
    with pytest.raises(ConfigError, match="timm architecture"):
        model_factory("timm:not_a_model")
    with pytest.raises(ConfigError, match="timm:NAME models only"):
        build_model("small_cnn", num_classes=3, freeze_backbone=True)
    with pytest.raises(ConfigError, match="both"):
        build_model("timm:resnet18", num_classes=3, pretrained=True, weights="x.pt")


def test_pretrained_config_sets_input_size_and_normalisation():
    model = build_model("timm:resnet18", num_classes=3, image_size=32)
    assert model.input_size == 224 and model.input_mean == pytest.approx((0.485, 0.456, 0.406))
    x = torch.randn(2, 3, 32, 32)  # resized on the way in: 32 px data, 224 px body
    with torch.no_grad():
        feats = model.eval().features(x)
        body = model.body
        upsampled = torch.nn.functional.interpolate(x, size=(224, 224), mode="bicubic", align_corners=False)
        torch.testing.assert_close(feats, body.forward_head(body.forward_features(upsampled), pre_logits=True))


def test_crl_step_and_mc_dropout_on_timm_models():
    ds = make_blobs_dataset(n_train=16, n_test=8, size=32, channels=3)
    train, test = device_splits(ds, "cpu")
    for name, options in (("timm:resnet18", {}), ("timm:vit_tiny_patch16_224", {"freeze_backbone": True})):
        model = build_model(name, num_classes=ds.num_classes, image_size=32, input_size=32, dropout=0.3, **options)
        assert isinstance(model, ConfidenceModel) and model.head_only_dropout and model.dropout_rate == 0.3
        before = {k: v.clone() for k, v in model.state_dict().items()}
        trainer = TRAINERS.get("crl")(TrainConfig(epochs=1, batch_size=16, lr=0.01))
        trainer.fit(model, train)
        changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
        assert any(k.startswith("classifier") for k in changed)
        if options.get("freeze_backbone"):
            assert not any(k.startswith("body") for k in changed)  # head only
        else:
            assert any(k.startswith("body") for k in changed)
        stats = mc_dropout_stats(model, test, n_samples=3, seed=0)
        assert stats.head_only and stats.mean_probs.shape == (8, ds.num_classes)
        assert torch.allclose(stats.mean_probs.sum(1), torch.ones(8, dtype=torch.float64), atol=1e-5)


def test_frozen_backbone_keeps_batchnorm_statistics():
    model = build_model("timm:resnet18", num_classes=3, image_size=32, input_size=32, freeze_backbone=True)
    model.train()
    before = {k: v.clone() for k, v in model.body.state_dict().items()}
    model(torch.randn(4, 3, 32, 32) * 5)
    assert not model.body.training
    assert all(torch.equal(v, before[k]) for k, v in model.body.state_dict().items())
    assert [p for p in model.parameters() if p.requires_grad] == list(model.classifier.parameters())


def test_feature_maps_of_a_timm_model():
    model = build_model("timm:resnet18", num_classes=3, image_size=32, input_size=32)
    maps = model.feature_maps(torch.randn(2, 3, 32, 32))
    assert len(maps) >= 4 and all(m.dim() == 4 for m in maps) and maps[-1].shape[1] == model.feature_dim


# ---------------------------------------------------------------------------- feature mode


def _blob_embeddings(n, d=24, k=4, seed=0):
    centers = np.random.default_rng(0).normal(0, 1, (k, d)) * 3  # the same classes in every split
    rng = np.random.default_rng(seed + 1)
    y = np.arange(n) % k
    return (centers[y] + rng.normal(0, 1, (n, d))).astype(np.float16), y


@pytest.mark.parametrize("name", ["linear", "mlp"])
def test_crl_fit_on_feature_data(name):
    x, y = _blob_embeddings(400)
    xt, yt = _blob_embeddings(200, seed=1)
    train = FeatureData(x, y)
    test = FeatureData(xt, yt, stats=feature_stats(x))
    model = build_model(name, num_classes=4, in_channels=24, dropout=0.1)
    assert model.feature_input
    TRAINERS.get("crl")(TrainConfig(epochs=5, batch_size=32, lr=0.05)).fit(model, train)
    out = predict(model, test)
    assert isinstance(out, PoolOutputs) and out.features.shape[0] == 200
    assert (out.logits.argmax(1).numpy() == yt).mean() > 0.95
    stats = mc_dropout_stats(model, test, n_samples=4, seed=0)
    assert stats.mean_probs.shape == (200, 4)


def test_feature_data_checks_its_input():
    with pytest.raises(Exception, match=r"\(N, d\)"):
        FeatureData(np.zeros((3, 4, 5)))
    with pytest.raises(Exception, match="finite"):
        FeatureData(np.array([[np.nan, 1.0], [0.0, 1.0]]))
    data = FeatureData(np.eye(4), [0, 1, 0, 1])
    with pytest.raises(ConfigError, match=r"indices must lie in \[0, 4\)"):
        list(data.eval_batches([0, 7]))
    idx = torch.cat([i for _, _, i in data.train_batches([0, 1, 2], 2, torch.Generator().manual_seed(0))])
    assert len(idx) == 2 and set(idx.tolist()) < {0, 1, 2}  # the lone last sample is dropped, as DeviceData's
    model = build_model("linear", num_classes=2, in_channels=4)
    with pytest.raises(Exception, match=r"\(batch, 4\)"):
        model(torch.zeros(2, 5))


# ---------------------------------------------------------------------------- config fields


def test_backbone_fields_are_checked_where_the_model_is_chosen(tmp_path):
    from activecrl.al.loop import ALConfig
    from activecrl.methods.run import TrainRunConfig

    for cls in (ALConfig, TrainRunConfig):
        with pytest.raises(ConfigError, match="--freeze-backbone apply to timm:NAME models only"):
            cls(model="small_cnn", freeze_backbone=True)
        with pytest.raises(ConfigError, match="--weights must be an existing"):
            cls(model="timm:resnet18", weights=str(tmp_path / "missing.pt"))
        assert cls(model="timm:resnet18", input_size=32, freeze_backbone=True).input_size == 32


def test_train_run_uses_the_backbone_options_and_reloads(tmp_path):
    from activecrl.methods.run import TrainRunConfig, load_trained, save_train_run, train_and_evaluate

    ds = make_blobs_dataset(n_train=16, n_test=8, size=32, channels=3)
    config = TrainRunConfig(model="timm:resnet18", input_size=32, freeze_backbone=True,
                            train=TrainConfig(epochs=1, batch_size=8, lr=0.01), device="cpu")
    result = train_and_evaluate(config, dataset=ds)
    info = result.model_info
    assert info["input_size"] == 32 and info["freeze_backbone"]
    assert info["mean"] == pytest.approx([0.485, 0.456, 0.406])  # the backbone's normalisation, not the data's
    save_train_run(result, tmp_path / "run")
    model, _, _ = load_trained(tmp_path / "run")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), result.model.eval()(x))
