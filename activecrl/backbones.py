"""Any timm model as a :class:`~activecrl.models.ConfidenceModel`: ``build_model("timm:NAME", ...)``.

``timm:NAME`` wraps ``timm.create_model(NAME, num_classes=0)`` (the body: image -> pooled
pre-logits features, timm's ``forward_features`` then ``forward_head(pre_logits=True)``) with
activecrl's head (``classifier``: ``Dropout`` then ``Linear``), so the confidence head, MC dropout,
BALD, CRL and the recipes work on it unchanged. Its weights come from

* ``pretrained=True``: timm's own download and cache (needs the internet once), or
* ``weights=FILE``: a local state dict, ``.safetensors`` or ``.pth``/``.pt`` (read with
  ``weights_only=True``), e.g. a timm checkpoint downloaded elsewhere. timm's checkpoint filter
  for the architecture runs first, as it does for timm's own downloads: a ViT's position
  embedding is resampled to the chosen input size and original-format checkpoints (DINOv2, CLIP)
  are converted. The classifier of the source model, if the file has one, is dropped.

``freeze_backbone=True`` trains the head only (linear probing): the body's parameters stop
requiring gradients, its BatchNorm layers become frozen affine maps (so training mode, SWA's
BatchNorm pass and MC dropout never touch their statistics) and the body stays in eval mode.

Input size and normalisation come from the model's pretrained config
(``timm.data.resolve_data_config``: e.g. 224 px, ImageNet mean/std) unless ``input_size``
overrides the size. Images of another size are resized on the device inside ``forward``
(bicubic or bilinear, as the config says), so a pool stays in memory at its own small size; a
model with a fixed input size (ViTs) is built for ``input_size``. ``input_mean``/``input_std``
are what the batches must be normalised with: :func:`with_backbone_stats` gives a dataset whose
``DeviceData`` does so.

timm is an optional dependency (``pip install "activecrl[timm]"``), imported only here and only
when a ``timm:`` model is built.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from activecrl.core.errors import ConfigError, DataError
from activecrl.model_options import (BACKBONE_FIELDS, TIMM_PREFIX, WEIGHT_SUFFIXES, backbone_options,  # noqa: F401
                                     check_backbone_options, is_timm_name)
from activecrl.models import ConfidenceModel

logger = logging.getLogger(__name__)

_SHOWN_KEYS = 10  # mismatched keys named in an error; the rest are counted


def import_timm():
    try:
        import timm
    except ImportError:
        raise ConfigError("timm: models need the timm package, which is not installed; "
                          "run `pip install \"activecrl[timm]\"` (or `pip install timm`)") from None
    return timm


def timm_arch(name: str) -> str:
    """``"timm:resnet18"`` -> ``"resnet18"``, checked against timm's model list."""
    arch = name[len(TIMM_PREFIX):]
    timm = import_timm()
    if not arch or not timm.is_model(arch):
        close = timm.list_models(f"*{arch}*")[:10] if arch else []
        hint = f"; similar names: {', '.join(close)}" if close else "; see timm.list_models()"
        raise ConfigError(f"model must be timm:NAME with NAME a timm architecture, got {name!r} instead{hint}")
    return arch


# --------------------------------------------------------------------------------------------
# Weight files


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file (``weights_only=True``).

    A torch file may wrap it as ``{"state_dict": ...}`` or ``{"model": ...}`` (common checkpoint
    layouts). Raises ConfigError naming the file when it is missing, unreadable or not a state dict.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"--weights must be an existing .safetensors or .pth/.pt file, got {p} instead "
                          f"(it does not exist)")
    try:
        if p.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(p), device="cpu")
        else:
            state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors, pickle and zip errors have no common base
        raise ConfigError(f"--weights file {p} could not be read as a state dict ({type(exc).__name__}: {exc}); "
                          f"save the weights with safetensors.torch.save_file or torch.save(model.state_dict())"
                          ) from None
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ConfigError(f"--weights file {p} must hold a state dict (parameter names -> tensors), got "
                          f"{type(state).__name__} instead; save it with torch.save(model.state_dict())")
    return state


def _key_list(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN_KEYS])
    more = len(keys) - _SHOWN_KEYS
    return f"{shown}{f' (and {more} more)' if more > 0 else ''} [{len(keys)} in all]"


def load_weights(body: nn.Module, path: str | os.PathLike, arch: str) -> None:
    """Load a state dict file into a timm body built with ``num_classes=0``; strict but for the
    source model's classifier. A mismatch raises ConfigError naming the file and the keys."""
    state = read_state_dict(path)
    filter_fn = getattr(sys.modules.get(type(body).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:  # what timm applies to its own downloads (resampling, format conversion)
        try:
            state = filter_fn(state, body)
        except Exception as exc:
            raise ConfigError(f"--weights file {path} does not fit timm model {arch!r} ({type(exc).__name__}: "
                              f"{exc}); pass weights saved from timm.create_model({arch!r})") from None
    classifier = body.pretrained_cfg.get("classifier") or ""
    heads = tuple(c + "." for c in ([classifier] if isinstance(classifier, str) else classifier) if c)
    own = body.state_dict()
    unexpected = [k for k in state if k not in own and not k.startswith(heads)]
    missing = [k for k in own if k not in state]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state and state[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"missing keys: {_key_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_key_list(unexpected)}")
    if wrong:
        problems.append(f"keys of another shape (file vs model): {_key_list(wrong)}")
    if problems:
        raise ConfigError(f"--weights file {path} does not match timm model {arch!r}: {'; '.join(problems)}; "
                          f"pass weights saved from timm.create_model({arch!r}) with the same in_chans")
    body.load_state_dict({k: state[k] for k in own})


# --------------------------------------------------------------------------------------------
# The model


class TimmBackbone(ConfidenceModel):
    """A timm body (``num_classes=0``) plus activecrl's ``Dropout`` + ``Linear`` head.

    ``image_size`` is the side of the images the data provides; ``input_size`` the side the body
    sees (None: the pretrained config's). ``data_config`` holds what was used (timm's
    ``resolve_data_config`` keys: ``input_size``, ``interpolation``, ``mean``, ``std``).
    """

    he_init = False  # the body keeps timm's (or the loaded) weights

    def __init__(self, arch: str, *, num_classes: int, in_channels: int = 3, dropout: float = 0.0,
                 image_size: int = 32, input_size: int | None = None, pretrained: bool = False,
                 weights: str | os.PathLike | None = None, freeze_backbone: bool = False):
        super().__init__(in_channels)
        timm = import_timm()
        from timm.data import resolve_data_config
        from timm.layers import freeze_batch_norm_2d

        kwargs = dict(num_classes=0, in_chans=in_channels)
        pretrained_cfg = timm.models.get_pretrained_cfg(arch)
        fixed = bool(pretrained_cfg and pretrained_cfg.fixed_input_size)
        if input_size is not None and fixed:
            kwargs["img_size"] = input_size  # a ViT's patch grid and position embedding
        self.body = timm.create_model(arch, pretrained=pretrained, **kwargs)
        if weights is not None:
            load_weights(self.body, weights, arch)
        config = resolve_data_config({}, model=self.body)
        size = int(input_size) if input_size is not None else int(config["input_size"][-1])
        self.arch = arch
        self.image_size = int(image_size)
        self.input_size = size
        self.interpolation = "bilinear" if config.get("interpolation") == "bilinear" else "bicubic"
        self.input_mean = _per_channel(config["mean"], in_channels)
        self.input_std = _per_channel(config["std"], in_channels)
        self.data_config = {"input_size": [in_channels, size, size], "interpolation": self.interpolation,
                            "mean": list(self.input_mean), "std": list(self.input_std)}
        self.freeze_backbone = bool(freeze_backbone)
        if self.freeze_backbone:
            self.body = freeze_batch_norm_2d(self.body)
            for p in self.body.parameters():
                p.requires_grad_(False)
        self.feature_dim = int(self.body.num_features)
        self.num_classes = num_classes
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.feature_dim, num_classes))
        nn.init.zeros_(self.classifier[1].bias)
        self.body.train(not self.freeze_backbone)
        resize = "no resize" if size == self.image_size else f"{self.interpolation} resize from {image_size}x{image_size}"
        logger.info("timm model %s: %s weights, input %dx%d (%s, %s), mean %s, std %s%s", arch,
                    "pretrained" if pretrained else (f"from {weights}" if weights else "random"), size, size,
                    resize, "input size given" if input_size is not None else "pretrained config",
                    _fmt(self.input_mean), _fmt(self.input_std), ", backbone frozen" if self.freeze_backbone else "")

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_backbone:
            self.body.eval()  # linear probing: the body is a fixed feature extractor
        return self

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        """Batches of another size -> ``input_size`` (on the device, like timm's eval transform)."""
        self._check_input(x)
        if x.shape[-2:] == (self.input_size, self.input_size):
            return x
        return F.interpolate(x, size=(self.input_size, self.input_size), mode=self.interpolation,
                             align_corners=False, antialias=x.shape[-1] > self.input_size)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        body = self.body
        return body.forward_head(body.forward_features(self.resize(x)), pre_logits=True)

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        intermediates = getattr(self.body, "forward_intermediates", None)
        if intermediates is None:
            raise ConfigError(f"timm model {self.arch!r} has no forward_intermediates, so it gives no feature maps; "
                              f"choose a timm model that has it (most CNNs and ViTs do)")
        return list(intermediates(self.resize(x), intermediates_only=True))


def _per_channel(values, channels: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == channels:
        return values
    mean = sum(values) / len(values)  # e.g. a gray dataset on an RGB-pretrained model built with in_chans=1
    return (mean,) * channels


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


def build_timm(name: str, /, *, num_classes: int, in_channels: int, image_size: int, dropout: float,
               input_size: int | None = None, pretrained: bool = False, weights=None,
               freeze_backbone: bool = False) -> TimmBackbone:
    """The ``timm:NAME`` factory of ``build_model`` (arguments already checked there)."""
    return TimmBackbone(timm_arch(name), num_classes=num_classes, in_channels=in_channels, dropout=dropout,
                        image_size=image_size, input_size=input_size, pretrained=pretrained, weights=weights,
                        freeze_backbone=freeze_backbone)


# --------------------------------------------------------------------------------------------
# Config plumbing: the fields ALConfig and TrainRunConfig share


def rebuild_options(build_config: dict) -> dict:
    """The backbone options that shape a saved model (``input_size``, ``freeze_backbone``), from
    its ``build_config``: what rebuilding it for a saved state dict needs (the weights come from
    the state dict, not from ``pretrained`` or ``weights``)."""
    return {k: build_config[k] for k in ("input_size", "freeze_backbone") if build_config.get(k) not in (None, False)}


def with_backbone_stats(dataset, model: nn.Module):
    """``dataset`` normalised as ``model`` expects: its pretrained mean/std for a timm backbone,
    else ``dataset`` itself. Build the ``DeviceData`` (and record ``model_info``) from the result."""
    mean, std = getattr(model, "input_mean", None), getattr(model, "input_std", None)
    if mean is None or std is None or (tuple(dataset.mean), tuple(dataset.std)) == (mean, std):
        return dataset
    if len(mean) != dataset.in_channels:
        raise DataError(f"model expects {len(mean)}-channel images, got a {dataset.in_channels}-channel dataset "
                        f"instead")
    return dataclasses.replace(dataset, mean=mean, std=std)
