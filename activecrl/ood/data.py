"""OOD images: synthetic noise sets, FGSM validation images, and loading / converting an OOD set
(a synthetic set name, a registered dataset, or an image folder / archive) to the model's input shape."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from activecrl.data import DATASETS, load_dataset, load_image_folder
from activecrl.core.errors import ConfigError, DataError

SYNTHETIC_SETS = ("noise", "gaussian", "uniform", "smooth")


def synthetic_images(kind: str, n: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    """Synthetic OOD images, (n, C, H, W) uint8: ``gaussian`` N(0.5, 0.25^2) per pixel, ``uniform``
    U[0, 1], ``smooth`` uniform noise at a quarter of the resolution upsampled bilinearly, ``noise``
    a third of each (clipped to [0, 1], then to 0..255)."""
    if kind not in SYNTHETIC_SETS:
        raise ConfigError(f"synthetic set must be one of {', '.join(SYNTHETIC_SETS)}, got {kind!r} instead")
    g = torch.Generator().manual_seed(seed)
    shape = (n, channels, size, size)
    if kind == "noise":
        parts = [synthetic_images(k, m, channels, size, seed + i)
                 for i, (k, m) in enumerate(zip(("gaussian", "uniform", "smooth"), (n - 2 * (n // 3), n // 3, n // 3)))]
        return torch.cat(parts)[torch.randperm(n, generator=g)]
    if kind == "gaussian":
        x = 0.5 + 0.25 * torch.randn(shape, generator=g)
    elif kind == "uniform":
        x = torch.rand(shape, generator=g)
    else:
        small = max(1, size // 4)
        x = F.interpolate(torch.rand((n, channels, small, small), generator=g), size=(size, size), mode="bilinear",
                          align_corners=False)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def fgsm_images(model: nn.Module, data, indices, epsilon: float, *, batch_size: int = 256) -> torch.Tensor:
    """FGSM adversarial versions (pixel step ``epsilon`` on [0, 1], true labels) of ``indices`` of ``data``,
    as uint8 images (Lee et al. 2018's validation-on-adversarial-samples protocol)."""
    model.eval()
    mean = torch.tensor(data.mean, device=data.device).view(1, -1, 1, 1)
    std = torch.tensor(data.std, device=data.device).view(1, -1, 1, 1)
    out = []
    for x, y, _ in data.eval_batches(indices, batch_size):
        x_in = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(F.cross_entropy(model(x_in).float(), y, reduction="sum"), x_in)
        pixels = (x * std + mean + epsilon * torch.sign(grad)).clamp(0, 1)
        out.append((pixels * 255).round().to(torch.uint8).cpu())
    return torch.cat(out)


def _convert(images: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """uint8 (N, C, H, W) -> the model's channels and size (bilinear, antialiased)."""
    if images.shape[1] != channels:
        if images.shape[1] == 1 and channels == 3:
            images = images.expand(-1, 3, -1, -1)
        elif images.shape[1] == 3 and channels == 1:
            w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            images = (images.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
        else:
            raise DataError(f"cannot convert {images.shape[1]}-channel images to the model's {channels} channels")
    if tuple(images.shape[2:]) != (size, size):
        out = []
        for start in range(0, images.shape[0], 1024):
            chunk = images[start:start + 1024].float()
            chunk = F.interpolate(chunk, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            out.append(chunk.round().clamp(0, 255).to(torch.uint8))
        images = torch.cat(out)
    return images.contiguous()


def _ood_name(spec: str) -> str:
    name = Path(str(spec)).name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _shape(images: torch.Tensor) -> str:
    c, h, w = images.shape[1:]
    return f"{c}×{h}×{w}" + {1: " (gray)", 3: " (RGB)"}.get(int(c), "")


def convert_to_model_input(images: torch.Tensor, channels: int, size: int) -> tuple[torch.Tensor, str | None]:
    """``images`` in the model's channels and size, and a sentence saying what was converted (None: nothing)."""
    if tuple(images.shape[1:]) == (channels, size, size):
        return images, None
    converted = _convert(images, channels, size)
    steps = []
    if images.shape[1] != channels:
        steps.append("gray copied to RGB" if channels == 3 else "RGB to gray (ITU-R 601 luma)")
    if tuple(images.shape[2:]) != (size, size):
        steps.append(f"resized {images.shape[2]}×{images.shape[3]} → {size}×{size} (bilinear, antialiased)")
    note = (f"{images.shape[0]} images converted from {_shape(images)} to the model's input {_shape(converted)}: "
            + ", ".join(steps))
    return converted, note


def load_ood_set(spec: str, *, channels: int, size: int, data_dir=None, n_synthetic: int = 10000,
                 seed: int = 0) -> tuple[torch.Tensor, str | None]:
    """OOD images for a model: a synthetic set name, a registered dataset name (its test split), or an
    image folder / archive (``load_image_folder``), converted to ``channels`` x ``size`` x ``size``; and
    what was converted (None when the images already had the model's shape), for the output and ood.json.

    Folders whose images share one size are decoded as they are and converted here, so the note can
    say what they were; folders of mixed sizes are resized image by image while decoding."""
    spec = str(spec)
    if spec in SYNTHETIC_SETS:
        return synthetic_images(spec, n_synthetic, channels, size, seed), None  # made in the model's shape
    path = Path(spec).expanduser()
    if not path.exists() and "/" not in spec and (spec in DATASETS or ":" in spec):  # a name or module:loader
        return convert_to_model_input(load_dataset(spec, data_dir=data_dir).test_images, channels, size)
    if not path.exists():
        raise DataError(f"OOD set must be an image folder or archive, a dataset name ({', '.join(DATASETS.names())}) "
                        f"or a synthetic set ({', '.join(SYNTHETIC_SETS)}), got {spec!r} instead (no such path)")
    try:
        images = load_image_folder(path, data_dir)
    except DataError as exc:
        if "must have the same size" not in str(exc):
            raise
        images = load_image_folder(path, data_dir, size=size, channels=channels)
        if images.shape[0] == 0:
            raise DataError(f"{spec} holds no images") from None
        return images, (f"{images.shape[0]} images of mixed sizes, each resized to {size}×{size} (PIL bilinear) "
                        f"and converted to {channels} channel(s): the model's input {_shape(images)}")
    if images.shape[0] == 0:
        raise DataError(f"{spec} holds no images")
    return convert_to_model_input(images, channels, size)


def load_ood_images(spec: str, *, channels: int, size: int, data_dir=None, n_synthetic: int = 10000,
                    seed: int = 0) -> torch.Tensor:
    """The images of ``load_ood_set`` without the conversion note."""
    return load_ood_set(spec, channels=channels, size=size, data_dir=data_dir, n_synthetic=n_synthetic,
                        seed=seed)[0]
