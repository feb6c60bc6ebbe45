"""Named image classifiers for confidence-aware active learning.

``MODELS`` maps a name to a factory ``fn(*, num_classes, in_channels, image_size, dropout)``
returning a :class:`ConfidenceModel`; add your own with ``@register_model("name")`` (timm style),
through the ``activecrl.models`` entry-point group, or give it as ``"package.module:factory"``
wherever a model name is accepted. Use :func:`build_model` to construct one:
it validates the arguments and raises :class:`~activecrl.core.errors.ConfigError` for bad ones.

Every model splits into a *body* (``forward_features``: image -> pooled penultimate features)
and a *head* (``classifier``: ``Dropout`` then ``Linear``). Keeping dropout in the head only lets
MC-dropout sample many heads on features computed once (``head_only_dropout``), and lets core-set
and Mahalanobis strategies reuse the same features (``features``, ``feature_maps``).

The built-ins follow the paper (Moon et al., 2020: VGG-16, PreAct-ResNet110, DenseNet-BC
k=12 d=100) and the CIFAR ResNet-18 used in the active-learning experiments, plus ``small_cnn``
for quick CPU runs, and ``small_cnn4``, the four-block network of the plain CPU reference script
(about 2.5x less compute than small_cnn and more accurate on CIFAR-10 subsets). All
adapt to the dataset's channels, image size and class count: they end in
adaptive average pooling, so 8x8 digits and 32x32 CIFAR both work. Forward passes have no
data-dependent Python control flow (ceil-mode pooling handles tiny maps instead of size branches),
so they run under ``torch.compile``, ``channels_last`` and bfloat16 autocast.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from activecrl.core.errors import ConfigError, DataError
from activecrl.core.registry import Registry
from activecrl.core.validate import check_int
from activecrl.model_options import check_backbone_options, is_timm_name
from activecrl.training.config import COS_TEMP, HEADS, check_head, check_variance_head

__all__ = [
    "MODELS", "register_model", "build_model", "model_factory", "ConfidenceModel",
    "ResNet18", "PreActResNet", "VGG", "DenseNetBC", "SmallCNN", "SmallCNN4", "CosineClassifier", "HEADS",
]

ModelFactory = Callable[..., "ConfidenceModel"]
MODELS: Registry[ModelFactory] = Registry("model", "activecrl.models")

#: Smallest image side build_model accepts. The built-ins run on any size (padded stride-2 convs
#: and ceil-mode pools map 1x1 to 1x1), so this only catches mistakes; a third-party factory may
#: set a ``min_image_size`` attribute to ask for more.
MIN_IMAGE_SIZE = 4


def register_model(name: str):
    """Decorator: ``@register_model("name")`` on a factory ``fn(*, num_classes, in_channels,
    image_size, dropout) -> ConfidenceModel``. Registering a taken name raises RegistryError."""
    return MODELS.register(name)


# --------------------------------------------------------------------------------------------
# Validation helpers: every bad value becomes a ConfigError saying what was expected.


def _check_dropout(p) -> float:
    ok = isinstance(p, numbers.Real) and not isinstance(p, bool) and math.isfinite(p) and 0 <= p < 1
    if not ok:
        raise ConfigError(
            f"dropout must be a number in [0, 1), got {p!r} instead; use 0 for no dropout"
        )
    return float(p)


def active_dropouts(model: nn.Module) -> list[nn.Module]:
    """The dropout modules of ``model`` (Dropout, Dropout2d, AlphaDropout, ...) with a rate above 0."""
    return [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]


def dropout_only_in_head(model: nn.Module) -> bool:
    """Whether every *active* dropout module lives inside ``model.classifier``.

    A ``Dropout(p=0)`` in the body does not count: it is the identity in train mode too, so the
    body stays deterministic and sampling only the head on cached features is still exact. (Its
    rate is read now, so a later ``set_dropout``-style change is seen.)
    """
    classifier = getattr(model, "classifier", None)
    inside = {id(m) for m in classifier.modules()} if isinstance(classifier, nn.Module) else set()
    return all(id(m) in inside for m in active_dropouts(model))



def add_variance_head(model: nn.Module, per_class: bool = False) -> nn.Module:
    """Attach ``model.log_var_head``: a Linear on the penultimate features giving log sigma^2.

    One value per sample (``per_class=False``) or one per class (Kendall & Gal 2017; the
    ``aleatoric`` trainer and method). ``model.forward`` is unchanged (it still returns the mean
    logits), so ``predict``, MC dropout and checkpoints work as usual. ``build_model(...,
    variance_head="sample" | "class")`` calls this. Returns ``model``.
    """
    feature_dim = getattr(model, "feature_dim", None)
    num_classes = getattr(model, "num_classes", None)
    if not isinstance(feature_dim, int) or not isinstance(num_classes, int):
        raise ConfigError(f"add_variance_head needs a ConfidenceModel (with feature_dim and num_classes), "
                          f"got {type(model).__name__} instead")
    device = next(model.parameters()).device
    model.log_var_head = nn.Linear(feature_dim, num_classes if per_class else 1).to(device)
    nn.init.zeros_(model.log_var_head.bias)
    return model


# --------------------------------------------------------------------------------------------
# Base class


class ConfidenceModel(nn.Module):
    """A classifier split into a body (``forward_features``) and a dropout+linear head.

    Subclasses build their layers, then call ``self._init_head(feature_dim, num_classes,
    dropout)`` last. A subclass that keeps its blocks in ``self.stages`` (an ``nn.ModuleList``
    whose last output has ``feature_dim`` channels) gets ``feature_maps`` and
    ``forward_features`` for free; others override both.
    """

    supports_dropout = True
    # Conv weights: He et al.'s fan-out normal (torchvision's ResNets) or, with False, PyTorch's
    # default (kaiming-uniform, a=sqrt(5): ~1.7x smaller). With BatchNorm the scale of the weights
    # sets the effective learning rate until weight decay shrinks them, which matters for short
    # CPU runs of a few hundred steps (small_cnn4 keeps the plain script's default).
    he_init = True

    def __init__(self, in_channels: int):
        super().__init__()
        self.in_channels = in_channels
        self.pool = nn.AdaptiveAvgPool2d(1)  # any input size -> (B, C, 1, 1)

    def _init_head(self, feature_dim: int, num_classes: int, dropout: float) -> None:
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        # The Dropout module exists even at p=0 so set_dropout() can switch it on later.
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and self.he_init:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)  # weight: PyTorch's default uniform init

    # -- body ---------------------------------------------------------------------------------
    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of the main blocks/stages (4-D tensors), e.g. for Mahalanobis ensembles."""
        stages = getattr(self, "stages", None)
        if stages is None:
            raise NotImplementedError(f"{type(self).__name__} must implement feature_maps()")
        self._check_input(x)
        maps = []
        for stage in stages:
            x = stage(x)
            maps.append(x)
        return maps

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features after global pooling, shape (B, feature_dim)."""
        if getattr(self, "stages", None) is None:
            raise NotImplementedError(f"{type(self).__name__} must implement forward_features()")
        return torch.flatten(self.pool(self.feature_maps(x)[-1]), 1)

    def _check_input(self, x: torch.Tensor) -> None:
        # Shape checks only (no data-dependent branching): torch.compile turns them into guards.
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise DataError(
                f"input must be a (batch, {self.in_channels}, height, width) tensor for this "
                f"model, got shape {tuple(x.shape)} instead; build the model with in_channels "
                f"matching the dataset"
            )

    # -- public API -----------------------------------------------------------------------------
    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        feats = self.forward_features(x)
        logits = self.classifier(feats)
        return (logits, feats) if return_features else logits

    @property
    def dropout_rate(self) -> float:
        return float(self.classifier[0].p)

    def set_dropout(self, p: float) -> None:
        """Change the head's dropout probability (e.g. to enable MC dropout after training)."""
        self.classifier[0].p = _check_dropout(p)

    @property
    def head_only_dropout(self) -> bool:
        """True iff every active dropout module lives in ``classifier`` (see
        :func:`dropout_only_in_head`), so MC dropout can sample the head on cached features
        instead of re-running the body."""
        return dropout_only_in_head(self)


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


# --------------------------------------------------------------------------------------------
# ResNet-18, CIFAR variant (Yoo & Kweon 2019 / Sener & Savarese 2018 code, after kuangliu's
# pytorch-cifar): a 3x3 stride-1 stem and no max-pool, since 32x32 inputs are already small.


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()  # identity unless the shape changes
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18(ConfidenceModel):
    def __init__(self, *, num_classes: int, in_channels: int = 3, dropout: float = 0.0,
                 blocks=(2, 2, 2, 2), widths=(64, 128, 256, 512)):
        super().__init__(in_channels)
        stages = [nn.Sequential(*_conv_bn_relu(in_channels, widths[0]))]
        c_in = widths[0]
        for i, (n, width) in enumerate(zip(blocks, widths)):
            layers = []
            for j in range(n):
                layers.append(BasicBlock(c_in, width, stride=2 if (i > 0 and j == 0) else 1))
                c_in = width
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)  # stem, layer1..layer4 -> 5 feature maps
        self._init_head(c_in, num_classes, dropout)


# --------------------------------------------------------------------------------------------
# Pre-activation ResNet for CIFAR (He et al., 2016, "Identity mappings"): depth 6n+2 with n basic
# blocks per stage at widths 16-32-64; BN-ReLU come before each conv, so the network needs a
# final BN-ReLU before pooling.


class PreActBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        # A projection shortcut shares the pre-activation (He et al. 2016, appendix).
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(ConfidenceModel):
    def __init__(self, *, num_classes: int, in_channels: int = 3, dropout: float = 0.0,
                 depth: int = 110, widths=(16, 32, 64)):
        super().__init__(in_channels)
        if depth < 8 or (depth - 2) % 6:
            raise ConfigError(f"PreActResNet depth must be 6n+2 (e.g. 20, 56, 110), got {depth} instead")
        n = (depth - 2) // 6
        stages = [nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)]
        c_in = widths[0]
        for i, width in enumerate(widths):
            layers = []
            for j in range(n):
                layers.append(PreActBlock(c_in, width, stride=2 if (i > 0 and j == 0) else 1))
                c_in = width
            stages.append(nn.Sequential(*layers))
        # The final BN-ReLU belongs to the last stage so its feature map is post-activation.
        stages[-1].append(nn.BatchNorm2d(c_in))
        stages[-1].append(nn.ReLU(inplace=True))
        self.stages = nn.ModuleList(stages)  # stem, stage1..stage3 -> 4 feature maps
        self._init_head(c_in, num_classes, dropout)


# --------------------------------------------------------------------------------------------
# VGG-16 with batch norm, CIFAR style: conv features then a single linear layer on 512 features
# (no 4096-wide FC layers). Dropout is only in the head so MC dropout can reuse body features.

VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(ConfidenceModel):
    def __init__(self, *, num_classes: int, in_channels: int = 3, dropout: float = 0.0,
                 cfg=VGG16_CFG):
        super().__init__(in_channels)
        stages, layers, c_in = [], [], in_channels
        for v in cfg:
            if v == "M":
                # ceil_mode: a pool on a 1x1 map returns it unchanged instead of failing, so the
                # pools that would shrink small inputs below 1x1 (the last two on 8x8 digits)
                # are skipped without any size branch in forward. On even sizes it equals the
                # usual floor pooling.
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
                stages.append(nn.Sequential(*layers))
                layers = []
            else:
                layers += _conv_bn_relu(c_in, v)
                c_in = v
        if layers:
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)  # one feature map per pooling block (5 for VGG-16)
        self._init_head(c_in, num_classes, dropout)


# --------------------------------------------------------------------------------------------
# DenseNet-BC (Huang et al., 2017): three dense blocks of (depth-4)/6 bottleneck layers
# (BN-ReLU-1x1 conv to 4k, BN-ReLU-3x3 conv to k), transitions compress channels by 0.5 and
# halve the resolution. k=12, depth 100 gives 342 output channels.


class DenseLayer(nn.Module):
    def __init__(self, c_in: int, growth: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x):
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([x, out], 1)


class Transition(nn.Sequential):
    def __init__(self, c_in: int, c_out: int):
        super().__init__(
            nn.BatchNorm2d(c_in), nn.ReLU(inplace=True), nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.AvgPool2d(2, ceil_mode=True),  # ceil: a 1x1 map passes through (tiny inputs)
        )


class DenseNetBC(ConfidenceModel):
    def __init__(self, *, num_classes: int, in_channels: int = 3, dropout: float = 0.0,
                 depth: int = 100, growth: int = 12, compression: float = 0.5):
        super().__init__(in_channels)
        if depth < 10 or (depth - 4) % 6:
            raise ConfigError(f"DenseNet-BC depth must be 6n+4 (e.g. 40, 100, 190), got {depth} instead")
        check_int("growth", growth, 1)
        if not 0 < compression <= 1:
            raise ConfigError(f"compression must be in (0, 1], got {compression!r} instead")
        n = (depth - 4) // 6  # bottleneck layers per block (each layer = 2 convs)
        c = 2 * growth
        stages = [nn.Conv2d(in_channels, c, 3, 1, 1, bias=False)]
        for block in range(3):
            layers = []
            for _ in range(n):
                layers.append(DenseLayer(c, growth))
                c += growth
            if block < 2:
                c_out = int(math.floor(c * compression))
                layers.append(Transition(c, c_out))
                c = c_out
            else:
                layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True)]  # final BN-ReLU
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)  # stem, block1..block3 -> 4 feature maps
        self._init_head(c, num_classes, dropout)


# --------------------------------------------------------------------------------------------
# Small CNN for CPU runs: three conv-BN-ReLU layers with early pooling. The pool right after the
# first conv keeps the expensive 32->64 and 64->128 convs at 16x16 and 8x8, which is what makes
# it fast on a few CPU cores (full-resolution convs cost ~5x more).


class SmallCNN(ConfidenceModel):
    def __init__(self, *, num_classes: int, in_channels: int = 3, dropout: float = 0.0,
                 widths=(32, 64, 128)):
        super().__init__(in_channels)
        a, b, c = widths
        self.stages = nn.ModuleList([
            nn.Sequential(*_conv_bn_relu(in_channels, a), nn.MaxPool2d(2, ceil_mode=True)),
            nn.Sequential(*_conv_bn_relu(a, b), nn.MaxPool2d(2, ceil_mode=True)),
            nn.Sequential(*_conv_bn_relu(b, c)),
        ])
        self._init_head(c, num_classes, dropout)


class SmallCNN4(ConfidenceModel):
    """Four conv-BN-ReLU blocks (16-32-64-128), max-pool after the first three: the network of
    the plain CPU reference script (``bench/plain_cpu_reference.py``). About 4.0M
    multiply-adds per 32x32 image, 0.39x of ``small_cnn``'s 10.3M (its 64- and 128-channel convs
    run at 16x16 and 8x8, here at 8x8 and 4x4). Its convolutions keep PyTorch's default init, as
    the script does (``he_init``)."""

    he_init = False

    def __init__(self, *, num_classes: int, in_channels: int = 3, dropout: float = 0.0,
                 widths=(16, 32, 64, 128), image_size: int = 32):
        super().__init__(in_channels)
        stages, c_in, size = [], in_channels, int(image_size)
        for i, w in enumerate(widths):
            # pool only while the map is larger than 4x4: 32x32 CIFAR is pooled after the first
            # three blocks as in the script (4x4 at the end); 8x8 digits only after the first, since
            # three pools would leave a 1x1 map (demo at 100 labels: 79.3 % instead of 84.2 %)
            pool = i < len(widths) - 1 and size > 4
            stages.append(nn.Sequential(*_conv_bn_relu(c_in, w), *([nn.MaxPool2d(2, ceil_mode=True)] if pool else [])))
            size = -(-size // 2) if pool else size
            c_in = w
        self.stages = nn.ModuleList(stages)
        self._init_head(c_in, num_classes, dropout)


# --------------------------------------------------------------------------------------------
# Registered factories. They all take the same keyword arguments; the built-ins ignore image_size
# (they adapt to any size), which is there for models that need it, e.g. a ViT's patch grid.


@register_model("resnet18")
def resnet18(*, num_classes, in_channels, image_size, dropout) -> ConfidenceModel:
    return ResNet18(num_classes=num_classes, in_channels=in_channels, dropout=dropout)


@register_model("preact_resnet110")
def preact_resnet110(*, num_classes, in_channels, image_size, dropout) -> ConfidenceModel:
    return PreActResNet(num_classes=num_classes, in_channels=in_channels, dropout=dropout, depth=110)


@register_model("vgg16")
def vgg16(*, num_classes, in_channels, image_size, dropout) -> ConfidenceModel:
    return VGG(num_classes=num_classes, in_channels=in_channels, dropout=dropout)


@register_model("densenet_bc")
def densenet_bc(*, num_classes, in_channels, image_size, dropout) -> ConfidenceModel:
    return DenseNetBC(num_classes=num_classes, in_channels=in_channels, dropout=dropout,
                      depth=100, growth=12)


@register_model("small_cnn")
def small_cnn(*, num_classes, in_channels, image_size, dropout) -> ConfidenceModel:
    return SmallCNN(num_classes=num_classes, in_channels=in_channels, dropout=dropout)


# --------------------------------------------------------------------------------------------
# Heads



class CosineClassifier(nn.Module):
    """SURE's cosine classifier (Li et al., CVPR 2024, ``model/classifier.py``): logits
    ``temperature * cos(f, w_k)``, features and class weights L2-normalised, no bias; temperature
    fixed (SURE: 8). The weight is ``(num_classes, feature_dim)`` like ``nn.Linear``'s."""

    def __init__(self, in_features: int, out_features: int, temperature: float = COS_TEMP):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.temperature = float(temperature)
        self.weight = nn.Parameter(nn.Linear(in_features, out_features).weight.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.temperature * F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, temperature={self.temperature:g}"


def set_cosine_head(model: ConfidenceModel, name: str, temperature: float) -> None:
    """Replace the final ``nn.Linear`` of ``model.classifier`` by a :class:`CosineClassifier`."""
    classifier = getattr(model, "classifier", None)
    last = classifier[-1] if isinstance(classifier, nn.Sequential) and len(classifier) else classifier
    if not isinstance(last, nn.Linear):
        raise ConfigError(
            f"head 'cosine' replaces the final Linear layer of the model's classifier, but model {name!r} ends in "
            f"{type(last).__name__} instead; use head 'linear' (--head linear) with this model"
        )
    head = CosineClassifier(last.in_features, last.out_features, temperature).to(last.weight.device)
    if isinstance(classifier, nn.Sequential):
        classifier[-1] = head
    else:
        model.classifier = head


@register_model("small_cnn4")
def small_cnn4(*, num_classes, in_channels, image_size, dropout) -> ConfidenceModel:
    return SmallCNN4(num_classes=num_classes, in_channels=in_channels, dropout=dropout, image_size=image_size)


def model_factory(name: str) -> ModelFactory:
    """The factory behind a model name: a registered one, or timm's for ``timm:NAME``
    (:mod:`activecrl.backbones`). Raises RegistryError for an unknown registered name and
    ConfigError for an unknown timm architecture; check names with this, not ``MODELS.get``."""
    if isinstance(name, str) and name.startswith("timm:"):
        from activecrl.backbones import build_timm, timm_arch  # timm is optional: imported on use

        timm_arch(name)
        return functools.partial(build_timm, name)
    return MODELS.get(name)


def build_model(name: str, *, num_classes: int, in_channels: int = 3, image_size: int = 32,
                dropout: float = 0.0, variance_head: str | None = None, head: str = "linear",
                cos_temp: float = COS_TEMP, **backbone) -> ConfidenceModel:
    """Build the registered model ``name`` for a dataset's class count, channels and size.

    ``variance_head``: None, or ``"sample"`` / ``"class"`` to add a log-variance head
    (:func:`add_variance_head`) for the ``aleatoric`` trainer. ``head="cosine"`` swaps the final
    linear classifier for SURE's cosine classifier with temperature ``cos_temp`` (refused for a
    model whose classifier does not end in a Linear). ``backbone``: the options of a ``timm:NAME``
    model (``pretrained``, ``weights``, ``freeze_backbone``, ``input_size``; see
    :mod:`activecrl.backbones`), refused for other models. Raises RegistryError for an unknown
    name (listing the valid ones) and ConfigError for bad arguments. The returned model carries
    ``build_config`` (the arguments, for checkpoints).
    """
    check_head(head, cos_temp)
    factory = model_factory(name)
    if backbone:
        check_backbone_options(name, backbone)
    num_classes = check_int("num_classes", num_classes, 2, "; a classifier needs at least 2 classes")
    in_channels = check_int("in_channels", in_channels, 1, " (1 for grayscale, 3 for RGB)")
    min_size = max(MIN_IMAGE_SIZE, int(getattr(factory, "min_image_size", MIN_IMAGE_SIZE)))
    image_size = check_int("image_size", image_size, min_size, f" for model {name!r}")
    dropout = _check_dropout(dropout)
    check_variance_head("variance_head", variance_head, none_ok=True)
    size = dict(num_classes=num_classes, in_channels=in_channels, image_size=image_size, dropout=dropout)
    # a registered name goes through the registry's parameter check; timm's factory takes the backbone options
    model = factory(**size, **backbone) if is_timm_name(name) else MODELS.create(name, **size)
    if not isinstance(model, ConfidenceModel):
        raise ConfigError(
            f"model factory {name!r} must return a ConfidenceModel, got {type(model).__name__} "
            f"instead; subclass activecrl.models.ConfidenceModel"
        )
    if head == "cosine":
        set_cosine_head(model, name, float(cos_temp))
    if variance_head is not None:  # after the factory: the body's initialisation draws come first
        add_variance_head(model, per_class=variance_head == "class")
    model.build_config = dict(name=name, num_classes=num_classes, in_channels=in_channels,
                              image_size=image_size, dropout=dropout)
    if variance_head is not None:
        model.build_config["variance_head"] = variance_head
    model.build_config.update({k: str(v) if k == "weights" else v for k, v in backbone.items()})
    if head != "linear":
        model.build_config.update(head=head, cos_temp=float(cos_temp))
    return model


# --------------------------------------------------------------------------------------------
# Feature mode: models on precomputed embeddings (N, d), e.g. frozen foundation-model features
# with a linear head, the strongest low-budget setting in Gupte et al. (2024, "Revisiting active
# learning in the era of vision foundation models"). Their input is a FeatureData batch (B, d);
# ``in_channels`` is the embedding width d and ``image_size`` is unused.


class FeatureModel(ConfidenceModel):
    """A ConfidenceModel on embeddings: ``body`` (identity or a small MLP) then the usual head."""

    feature_input = True  # the loop feeds it FeatureData, not images

    def __init__(self, *, num_classes: int, in_channels: int, dropout: float = 0.0, hidden: int | None = None):
        super().__init__(in_channels)
        if hidden is None:
            self.body = nn.Identity()
            width = in_channels
        else:  # BatchNorm evens out the scales of the embedding's directions for SGD
            self.body = nn.Sequential(nn.Linear(in_channels, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True))
            width = hidden
        self._init_head(width, num_classes, dropout)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.in_channels:
            raise DataError(f"input must be a (batch, {self.in_channels}) tensor of embeddings for this model, got "
                            f"shape {tuple(x.shape)} instead; build it with in_channels = the embedding width")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self.body(x)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        raise ConfigError("a feature-mode model (linear, mlp) has no spatial feature maps; use an image model "
                          "for detectors that need them")


#: Hidden width of the ``mlp`` feature model.
MLP_HIDDEN = 512


@register_model("linear")
def linear(*, num_classes, in_channels, image_size, dropout) -> ConfidenceModel:
    return FeatureModel(num_classes=num_classes, in_channels=in_channels, dropout=dropout)


@register_model("mlp")
def mlp(*, num_classes, in_channels, image_size, dropout) -> ConfidenceModel:
    return FeatureModel(num_classes=num_classes, in_channels=in_channels, dropout=dropout, hidden=MLP_HIDDEN)


linear.feature_input = mlp.feature_input = True
