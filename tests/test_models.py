"""Tests for activecrl.models: the registry, the ConfidenceModel contract, and the built-ins.

Inputs are tiny (batch 2, 16x16 or smaller) so the whole file runs in seconds on 2 CPU cores.
"""

import math

import pytest
import torch
import torch.nn as nn

from activecrl.core.errors import ConfigError, DataError, RegistryError
from activecrl.models import MODELS, ConfidenceModel, build_model, register_model

BUILTINS = ["densenet_bc", "preact_resnet110", "resnet18", "small_cnn", "small_cnn4", "vgg16"]


def _input(name, channels=3, size=None, batch=2, seed=0):
    size = size or 16
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, size, size, generator=g)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)




# the feature-mode models (linear, mlp) take embeddings, not images: tests/test_backbones.py
IMAGE_MODELS = [n for n in MODELS.names() if not getattr(MODELS.get(n), "feature_input", False)]


def test_builtins_registered():
    assert set(BUILTINS) <= set(MODELS.names())


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_forward_contract(name):
    model = build_model(name, num_classes=7, dropout=0.0).eval()
    assert isinstance(model, ConfidenceModel)
    assert model.num_classes == 7 and model.supports_dropout
    x = _input(name)
    with torch.no_grad():
        logits, feats = model(x, return_features=True)
        assert logits.shape == (2, 7)
        assert feats.shape == (2, model.feature_dim)
        torch.testing.assert_close(model.classifier(feats), logits)
        torch.testing.assert_close(model(x), logits)
        torch.testing.assert_close(model.features(x), feats)
        maps = model.feature_maps(x)
    assert isinstance(maps, list) and len(maps) >= 3
    assert all(m.dim() == 4 and m.shape[0] == 2 for m in maps)
    assert maps[-1].shape[1] == model.feature_dim
    assert model.head_only_dropout
    assert model.build_config == dict(name=name, num_classes=7, in_channels=3, image_size=32, dropout=0.0)


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_dropout_train_vs_eval(name):
    model = build_model(name, num_classes=5, dropout=0.5)
    assert model.dropout_rate == 0.5
    x = _input(name)
    with torch.no_grad():
        model.train()
        assert not torch.allclose(model(x), model(x))  # fresh dropout masks per pass
        model.eval()
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["resnet18", "small_cnn", "vgg16", "densenet_bc"])
def test_adapts_to_grayscale_8x8(name):
    model = build_model(name, num_classes=10, in_channels=1, image_size=8).eval()
    x = _input(name, channels=1, size=8)
    with torch.no_grad():
        logits, feats = model(x, return_features=True)
        maps = model.feature_maps(x)
    assert logits.shape == (2, 10) and feats.shape == (2, model.feature_dim)
    assert torch.isfinite(logits).all()
    assert all(m.shape[-1] >= 1 for m in maps)


def test_vgg_pools_stop_at_1x1():
    # 32x32 CIFAR halves five times; on 8x8 digits the last two pools leave the 1x1 map as is.
    model = build_model("vgg16", num_classes=10, in_channels=1, image_size=8).eval()
    with torch.no_grad():
        sizes = [m.shape[-1] for m in model.feature_maps(torch.randn(2, 1, 8, 8))]
        assert sizes == [4, 2, 1, 1, 1]
        x = torch.randn(2, 1, 32, 32)
        assert [m.shape[-1] for m in model.feature_maps(x)] == [16, 8, 4, 2, 1]


@pytest.mark.parametrize("name", ["small_cnn", "vgg16", "densenet_bc"])
@pytest.mark.parametrize("size", [5, 28])
def test_odd_and_mismatched_input_sizes(name, size):
    # Built for 32x32, fed something else: adaptive pooling and ceil-mode pools cope.
    model = build_model(name, num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size)).shape == (1, 3)


@pytest.mark.parametrize(
    "name, lo, hi",
    [
        ("resnet18", 11.1e6, 11.3e6),
        ("preact_resnet110", 1.65e6, 1.8e6),
        ("densenet_bc", 0.76e6, 0.80e6),
        ("vgg16", 14.5e6, 15.1e6),
        ("small_cnn", 50e3, 200e3),
        ("small_cnn4", 90e3, 110e3),
    ],
)
def test_parameter_counts(name, lo, hi):
    n = sum(p.numel() for p in build_model(name, num_classes=10).parameters())
    assert lo <= n <= hi, n


def test_feature_dims():
    dims = {name: build_model(name, num_classes=10).feature_dim for name in BUILTINS}
    assert dims == {"resnet18": 512, "preact_resnet110": 64, "vgg16": 512, "densenet_bc": 342, "small_cnn": 128,
                    "small_cnn4": 128}


def test_head_only_dropout_detects_body_dropout():
    model = build_model("small_cnn", num_classes=10)
    assert model.head_only_dropout
    model.stages[1].append(nn.Dropout(0.1))
    assert not model.head_only_dropout
    other = build_model("resnet18", num_classes=10)
    other.stages[0].append(nn.Dropout2d(0.1))
    assert not other.head_only_dropout


def test_set_dropout():
    model = build_model("small_cnn", num_classes=3)
    assert model.dropout_rate == 0.0 and isinstance(model.classifier[0], nn.Dropout)
    model.set_dropout(0.3)
    assert model.dropout_rate == pytest.approx(0.3)
    with pytest.raises(ConfigError, match="must be .* got 1.0 instead"):
        model.set_dropout(1.0)
    assert model.dropout_rate == pytest.approx(0.3)


def test_duplicate_registration_raises():
    with pytest.raises(RegistryError, match="already registered"):
        @register_model("small_cnn")
        def other(**kwargs):  # pragma: no cover - never called
            raise AssertionError


def test_unknown_name_lists_valid_names():
    with pytest.raises(RegistryError) as info:
        build_model("resnet1800", num_classes=10)
    for name in BUILTINS:
        assert name in str(info.value)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(num_classes=1), "num_classes must be an integer >= 2, got 1 instead"),
        (dict(num_classes=2.5), "num_classes must be"),
        (dict(num_classes=True), "num_classes must be"),
        (dict(in_channels=0), "in_channels must be an integer >= 1, got 0 instead"),
        (dict(image_size=2), "image_size must be an integer >= 4, got 2 instead"),
        (dict(dropout=1.0), "dropout must be a number in \\[0, 1\\), got 1.0 instead"),
        (dict(dropout=-0.1), "dropout must be"),
        (dict(dropout=math.nan), "dropout must be"),
        (dict(dropout="0.1"), "dropout must be"),
    ],
)
def test_bad_arguments_raise_config_error(kwargs, fragment):
    args = dict(num_classes=10) | kwargs
    with pytest.raises(ConfigError, match=fragment):
        build_model("small_cnn", **args)


def test_wrong_input_channels_raise_data_error():
    model = build_model("small_cnn", num_classes=10, in_channels=1)
    with pytest.raises(DataError, match="in_channels"):
        model(torch.zeros(2, 3, 8, 8))


class _TinyModel(ConfidenceModel):
    """A third-party model that implements the two body methods itself."""

    def __init__(self, num_classes, in_channels, dropout):
        super().__init__(in_channels)
        self.conv = nn.Conv2d(in_channels, 4, 3, padding=1)
        self._init_head(4, num_classes, dropout)

    def feature_maps(self, x):
        return [torch.relu(self.conv(x))]

    def forward_features(self, x):
        return torch.flatten(self.pool(self.feature_maps(x)[-1]), 1)


def test_custom_model_registration_and_min_image_size():
    def tiny(*, num_classes, in_channels, image_size, dropout):
        return _TinyModel(num_classes, in_channels, dropout)

    tiny.min_image_size = 16
    register_model("_test_tiny")(tiny)
    try:
        model = build_model("_test_tiny", num_classes=3, image_size=16, dropout=0.2)
        assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 3)
        assert model.dropout_rate == pytest.approx(0.2) and model.head_only_dropout
        with pytest.raises(ConfigError, match="image_size must be an integer >= 16, got 8 instead"):
            build_model("_test_tiny", num_classes=3, image_size=8)
    finally:
        MODELS.unregister("_test_tiny")


def test_factory_must_return_confidence_model():
    register_model("_test_bad")(lambda **kw: nn.Linear(2, 2))
    try:
        with pytest.raises(ConfigError, match="must return a ConfidenceModel"):
            build_model("_test_bad", num_classes=3)
    finally:
        MODELS.unregister("_test_bad")


def test_base_class_without_stages_says_what_to_implement():
    class Bare(ConfidenceModel):
        def __init__(self):
            super().__init__(3)
            self._init_head(4, 2, 0.0)

    with pytest.raises(NotImplementedError, match="forward_features"):
        Bare()(torch.zeros(1, 3, 8, 8))


@pytest.mark.parametrize("name", ["small_cnn", "resnet18"])
def test_channels_last_and_bf16_autocast(name):
    model = build_model(name, num_classes=10).eval().to(memory_format=torch.channels_last)
    x = _input(name).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, feats = model(x, return_features=True)
    assert logits.shape == (2, 10) and feats.shape == (2, model.feature_dim)
    assert torch.isfinite(logits.float()).all()
    torch.testing.assert_close(logits.float(), ref, rtol=0.1, atol=0.1)


def _compile_full_graph(name):
    torch._dynamo.reset()
    model = build_model(name, num_classes=10, dropout=0.1).to(memory_format=torch.channels_last)
    x = _input(name).contiguous(memory_format=torch.channels_last)
    compiled = torch.compile(model, backend="eager", fullgraph=True)  # fails on any graph break
    logits, feats = compiled(x, return_features=True)
    assert logits.shape == (2, 10) and feats.shape == (2, model.feature_dim)
    torch._dynamo.reset()


def test_torch_compile_full_graph():
    _compile_full_graph("small_cnn")


@pytest.mark.slow
@pytest.mark.parametrize("name", BUILTINS)
def test_torch_compile_full_graph_all(name):
    _compile_full_graph(name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", BUILTINS)
def test_cuda_channels_last_bf16_train_step(name):
    model = build_model(name, num_classes=10, dropout=0.1).cuda().to(memory_format=torch.channels_last)
    x = torch.randn(8, 3, 32, 32, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits, feats = model(x, return_features=True)
        loss = nn.functional.cross_entropy(logits, torch.zeros(8, dtype=torch.long, device="cuda"))
    loss.backward()
    assert torch.isfinite(loss) and feats.shape == (8, model.feature_dim)


def test_small_cnn4_pools_while_the_map_is_larger_than_4x4():
    """32x32 is pooled after the first three blocks, as the plain script does; 8x8 digits only
    after the first, so the last block still sees a 4x4 map instead of 1x1."""
    for size, maps in ((32, [16, 8, 4, 4]), (8, [4, 4, 4, 4])):
        model = build_model("small_cnn4", num_classes=10, in_channels=3, image_size=size).eval()
        with torch.no_grad():
            shapes = [f.shape[-1] for f in model.feature_maps(torch.zeros(2, 3, size, size))]
        assert shapes == maps, (size, shapes)


def test_small_cnn4_keeps_pytorchs_default_conv_init():
    """PyTorch's default conv init (kaiming-uniform, a=sqrt(5)) is bounded by 1/sqrt(fan_in);
    He's fan-out normal init (the other models) is not, and is ~1.7x larger in scale."""
    torch.manual_seed(0)
    cnn4 = build_model("small_cnn4", num_classes=10, in_channels=3, image_size=32)
    convs = [m for m in cnn4.modules() if isinstance(m, torch.nn.Conv2d)]
    for m in convs:
        fan_in = m.weight[0].numel()
        assert m.weight.abs().max() <= fan_in ** -0.5 + 1e-7
    torch.manual_seed(0)
    cnn = build_model("small_cnn", num_classes=10, in_channels=3, image_size=32)
    assert any(m.weight.abs().max() > m.weight[0].numel() ** -0.5
               for m in cnn.modules() if isinstance(m, torch.nn.Conv2d))
