"""What the model part of a labeling project trains and scores on: the project's images as a
tensor (image models) or as embeddings (feature-mode models), computed once and cached in
``PROJECT/cache/`` under a fingerprint of the images (their content hashes, from the project
database) and of how they were turned into inputs; a changed fingerprint (images added, another
backbone or size) recomputes them.

Images are decoded and resized by :class:`~activecrl.data.stream.FileSource` in streamed
batches: the pool is held only at the model's input size (``image_size``, e.g. 32x32), never at
full resolution. Embeddings come from a timm backbone (``timm:NAME`` with ``pretrained`` or
``weights``, through :func:`activecrl.embeddings.embed.embed` at the backbone's own resolution) or
else from the label-free k-means patch features of Coates et al. (2011,
``activecrl.embeddings.patches``) fitted on the project's own images.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from activecrl.core.errors import ConfigError
from activecrl.core.io import _atomic, atomic_write_json
from activecrl.data.stream import FileSource

logger = logging.getLogger(__name__)

__all__ = ["PoolInputs", "FEATURE_MODELS", "DEFAULT_IMAGE_SIZE", "is_feature_mode", "pool_images", "pool_embeddings"]

CACHE_DIR = "cache"
CACHE_FORMAT = 1  # bump when what is cached, or how, changes
DEFAULT_IMAGE_SIZE = 32
FEATURE_MODELS = ("linear", "mlp")  # heads on embeddings; a timm:NAME model is embedded, then gets a linear head
DECODE_BATCH = 256


@dataclass(frozen=True)
class PoolInputs:
    """One cached array over every project image (``paths`` order) and what produced it."""

    paths: list[str]
    array: np.ndarray | torch.Tensor  # (N, d) float32 embeddings or (N, C, H, W) uint8 images
    source: str  # e.g. "k-means patch features", "timm:resnet18 (pretrained)", "images 32x32"


def is_feature_mode(model: str) -> bool:
    """Whether ``model`` trains on embeddings: a feature head or a (frozen, embedded) timm backbone."""
    return model in FEATURE_MODELS or model.startswith("timm:")


def _fingerprint(hashes: list[str], recipe: dict) -> str:
    h = hashlib.sha256(json.dumps({"format": CACHE_FORMAT, **recipe}, sort_keys=True).encode())
    for digest in hashes:
        h.update(digest.encode())
    return h.hexdigest()[:16]


def _cached(project_dir: Path, kind: str, key: str) -> Path:
    return Path(project_dir) / CACHE_DIR / f"{kind}-{key}.npy"


def _load(path: Path):
    if path.is_file():
        try:
            return np.load(path)
        except (OSError, ValueError) as exc:  # a torn write: compute again
            logger.warning("ignoring unreadable cache file %s (%s)", path, exc)
    return None


def _store(path: Path, array: np.ndarray, recipe: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # a project folder holds one cache per kind: the previous fingerprint's is stale
    for old in path.parent.glob(f"{path.name.split('-')[0]}-*"):
        old.unlink(missing_ok=True)
    atomic_write_json(path.with_suffix(".json"), {"fingerprint": path.stem.split("-", 1)[1], **recipe})
    _atomic(path, lambda h: np.save(h, array))


def _decode_all(files: list[Path], size: int | None, channels: int) -> torch.Tensor:
    """Every image at ``size`` as one uint8 (N, C, H, W) tensor, decoded batch by batch."""
    source = FileSource(files, size=size, channels=channels, interpolation="bilinear")
    out = None
    done = 0
    for batch in source.batches(DECODE_BATCH):
        if out is None:
            out = torch.empty((len(files), *batch.shape[1:]), dtype=torch.uint8)
        out[done:done + len(batch)] = batch
        done += len(batch)
    return out


def _is_gray(images: torch.Tensor) -> bool:
    return bool((images[:, 0] == images[:, 1]).all() and (images[:, 1] == images[:, 2]).all())


def pool_images(project_dir: Path, root: Path, paths: list[str], hashes: list[str], image_size: int) -> PoolInputs:
    """Every image at ``image_size`` (uint8; one channel when every image is gray), cached."""
    recipe = {"kind": "images", "image_size": image_size}
    path = _cached(project_dir, "images", _fingerprint(hashes, recipe))
    array = _load(path)
    if array is None:
        logger.info("decoding %d images at %dx%d (once; cached in %s)", len(paths), image_size, image_size, path.parent)
        images = _decode_all([root / p for p in paths], image_size, channels=3)
        if _is_gray(images):  # gray photos (or digits) train a one-channel model, as their dataset would
            images = images[:, :1].contiguous()
        array = images.numpy()
        _store(path, array, recipe)
    return PoolInputs(paths, torch.from_numpy(np.ascontiguousarray(array)), f"images {image_size}x{image_size}")


def _patch_embeddings(images: torch.Tensor, seed: int) -> np.ndarray:
    from activecrl.embeddings.config import PretrainConfig
    from activecrl.embeddings.patches import fit_patch_encoder

    side = min(images.shape[2:])
    config = PretrainConfig(method="patches", patch_size=min(6, side), seed=seed, knn_k=0,
                            kmeans_patches=min(100_000, max(1_000, 50 * len(images))))
    if len(images) < 2:
        raise ConfigError(f"the patch features need at least 2 images, got {len(images)}; add images with "
                          "`activecrl label add`")
    _, embeddings, _ = fit_patch_encoder(config, images, torch.device("cpu"))
    return embeddings.numpy().astype(np.float32)


def _timm_embeddings(files: list[Path], model: str, pretrained: bool, weights, device) -> np.ndarray:
    from activecrl.embeddings.embed import embed, timm_encoder

    encoder = timm_encoder(model, pretrained=pretrained, weights=weights)
    source = FileSource(files, size=encoder.input_size, channels=3, interpolation=encoder.interpolation)
    return embed(encoder, source, device=device, dtype="float32")


def pool_embeddings(project_dir: Path, root: Path, paths: list[str], hashes: list[str], *, model: str,
                    image_size: int, pretrained: bool = False, weights=None, device="cpu",
                    seed: int = 0) -> PoolInputs:
    """(N, d) float32 embeddings of every image: the ``timm:NAME`` backbone's (``model``), or else the
    k-means patch features fitted on the images at ``image_size``; cached."""
    if model.startswith("timm:"):
        weights_id = None if weights is None else hashlib.sha256(Path(weights).read_bytes()).hexdigest()
        recipe = {"kind": "timm", "model": model, "pretrained": bool(pretrained), "weights_sha256": weights_id}
        source = f"{model} ({'pretrained' if pretrained else 'weights ' + str(weights) if weights else 'random init'})"
    else:
        recipe = {"kind": "patches", "image_size": image_size, "seed": seed}
        source = f"k-means patch features at {image_size}x{image_size}"
    path = _cached(project_dir, "embeddings", _fingerprint(hashes, recipe))
    array = _load(path)
    if array is None:
        logger.info("computing the embeddings of %d images: %s (once; cached in %s)", len(paths), source, path.parent)
        if model.startswith("timm:"):
            array = _timm_embeddings([root / p for p in paths], model, pretrained, weights, device)
        else:
            array = _patch_embeddings(pool_images(project_dir, root, paths, hashes, image_size).array, seed)
        _store(path, array, recipe)
    return PoolInputs(paths, np.asarray(array, dtype=np.float32), source)
