"""Which options a model name takes, checked without importing torch (the configs of ``run`` and
``train`` validate them when they are built, and the CLI builds them before loading any model).

``timm:NAME`` models (:mod:`activecrl.backbones`) take the backbone options: ``pretrained``,
``weights`` (a local state dict), ``freeze_backbone`` and ``input_size``; other models take none.
"""

from __future__ import annotations

from pathlib import Path

from activecrl.core.config import dashed
from activecrl.core.errors import ConfigError

TIMM_PREFIX = "timm:"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def is_timm_name(name: object) -> bool:
    return isinstance(name, str) and name.startswith(TIMM_PREFIX)


BACKBONE_FIELDS = ("pretrained", "weights", "freeze_backbone", "input_size")

#: The help of the model fields of the ``run`` and ``train`` configs (one text for both commands).
MODEL_HELP = {
    "model": "registered model name (see `activecrl list`) or timm:NAME (any timm model; pip install -e '.[timm]')",
    "pretrained": "timm:NAME models: start from timm's pretrained weights (downloaded once into timm's cache)",
    "weights": "timm:NAME models: start from this local state dict (.safetensors or .pth/.pt), e.g. a timm checkpoint",
    "freeze_backbone": "timm:NAME models: train the classifier head only (linear probing of a frozen backbone)",
    "input_size": ("timm:NAME models: image side the backbone sees (images are resized on the device; default: its "
                   "pretrained config's, e.g. 224)"),
}


def backbone_options(config) -> dict:
    """``build_model`` keyword arguments from a config's backbone fields (those that are set)."""
    out = {}
    for name in BACKBONE_FIELDS:
        value = getattr(config, name, None)
        if value not in (None, False):
            out[name] = value
    return out


def check_backbone_options(model: str, options: dict) -> None:
    """ConfigError for backbone options on a model that is not ``timm:NAME``, or bad values."""
    unknown = sorted(set(options) - set(BACKBONE_FIELDS))
    if unknown:
        raise ConfigError(f"build_model got unknown option(s) {unknown}; valid backbone options are "
                          f"{', '.join(BACKBONE_FIELDS)}")
    if options and not is_timm_name(model):
        flags = ", ".join(dashed(k) for k in options)
        raise ConfigError(f"{flags} apply to timm:NAME models only, got model {model!r} instead; choose e.g. "
                          f"--model timm:resnet18 or drop {flags}")
    if options.get("pretrained") and options.get("weights") is not None:
        raise ConfigError("--pretrained and --weights both set the backbone's weights, got both instead; "
                          "pass one of them")
    size = options.get("input_size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ConfigError(f"--input-size must be a positive integer (pixels), got {size!r} instead")
    weights = options.get("weights")
    if weights is not None:
        p = Path(weights).expanduser()
        if not p.is_file():
            raise ConfigError(f"--weights must be an existing .safetensors or .pth/.pt file, got {p} instead "
                              f"(it does not exist)")
        if not p.name.lower().endswith(WEIGHT_SUFFIXES):
            raise ConfigError(f"--weights must be a .safetensors or .pth/.pt file, got {p.name} instead")
