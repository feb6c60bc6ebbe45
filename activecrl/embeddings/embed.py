"""Embeddings of every train and test image from a backbone, streamed: ``embed_dataset``.

The backbone is a timm model (``timm:NAME``, with ``pretrained=True`` or ``weights=FILE``; a
frozen foundation model such as DINOv2 or CLIP with a linear head is the strongest low-budget
setting in Gupte et al. 2024, "Revisiting active learning in the era of vision foundation
models") or an encoder of ``activecrl pretrain`` (its folder or ``encoder.pt``). The output folder
has the layout ``pretrain`` writes, so ``--embeddings`` and ``load_embeddings`` take either:
``embeddings.npy`` (training split, written last: its presence marks a finished run),
``test_embeddings.npy``, plus ``labels.npy`` / ``test_labels.npy`` and ``config.json``. Rows are
L2-normalised (as ``pretrain``'s; TypiClust and ProbCover compare them on the unit sphere) and
stored as float16 by default.

Streaming: images are decoded and resized batch by batch (an image folder of any sizes through
``FileSource``, resized with PIL; a named dataset from its in-memory uint8 split, resized on the
device), so the pool is never held at the backbone's resolution and memory beyond the output
array does not grow with the pool. On CUDA the forward runs under bf16 autocast in
channels-last layout. ``progress`` receives :class:`EmbedProgress` (images done, images/s).

``config.json`` holds a fingerprint (backbone, sha256 of its weights file, dataset fingerprint,
preprocessing, output dtype); a second call with the same fingerprint reuses the folder without
a forward pass, a changed weights file or dataset recomputes it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from activecrl import __version__
from activecrl.core.errors import ConfigError
from activecrl.core.io import _atomic, atomic_write_json
from activecrl.core.runtime import resolve_device, resolve_threads, torch_threads
from activecrl.data.stream import FileSource, TensorSource, labeled_folder
from activecrl.embeddings.load import file_sha256

logger = logging.getLogger(__name__)

EMBED_FORMAT = 1  # bump when the preprocessing or the output of embed changes
EMBEDDINGS_FILE = "embeddings.npy"
TEST_EMBEDDINGS_FILE = "test_embeddings.npy"
LABELS_FILE = "labels.npy"
TEST_LABELS_FILE = "test_labels.npy"
CONFIG_FILE = "config.json"
ENCODER_FILE = "encoder.pt"
DTYPES = {"float16": np.float16, "float32": np.float32}


@dataclass
class Encoder:
    """What maps images to embeddings.

    ``forward`` takes float batches (B, C, input_size, input_size): normalised with
    ``(x / 255 - mean) / std``, or the raw 0-255 values when ``mean`` is None (patch features).
    ``input_size`` None keeps the images' own size. ``identity`` (name, weights hash, ...) goes
    into the fingerprint.
    """

    forward: Callable[[torch.Tensor], torch.Tensor]
    input_size: int | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    interpolation: str
    identity: dict
    channels: int = 3
    module: torch.nn.Module | None = None  # moved to the device and put in eval mode by embed


@dataclass
class EmbedProgress:
    split: str
    done: int
    total: int
    images_per_s: float


@dataclass
class EmbedResult:
    out_dir: Path
    reused: bool
    n_train: int
    n_test: int
    dim: int
    seconds: float
    images_per_s: float | None = None
    fingerprint: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Encoders


def timm_encoder(name: str, *, pretrained: bool = False, weights=None, input_size: int | None = None,
                 channels: int = 3) -> Encoder:
    """A ``timm:NAME`` backbone's pre-logits features (``activecrl.backbones``)."""
    from activecrl.models import build_model

    options = {k: v for k, v in dict(pretrained=pretrained, weights=weights, input_size=input_size).items()
               if v not in (None, False)}
    model = build_model(name, num_classes=2, in_channels=channels, image_size=input_size or 224, **options)
    identity = {"kind": "timm", "model": name, "pretrained": bool(pretrained)}
    if pretrained:
        cfg = model.body.pretrained_cfg
        identity["pretrained_tag"] = f"{cfg.get('hf_hub_id') or cfg.get('url') or ''}:{cfg.get('tag') or ''}"
    if weights is not None:
        identity["weights"] = str(Path(weights).expanduser().resolve())
        identity["weights_sha256"] = file_sha256(Path(weights).expanduser())
    body = model.body
    return Encoder(lambda x: body.forward_head(body.forward_features(x), pre_logits=True), model.input_size,
                   model.input_mean, model.input_std, model.interpolation, identity, channels, module=body)


def pretrain_encoder(path, *, mean=None, std=None) -> Encoder:
    """The encoder of an ``activecrl pretrain`` run (its folder or ``encoder.pt``).

    A SimCLR encoder expects images normalised with the mean/std of the dataset it was trained
    on: pass them (``embed_dataset`` does, from the dataset). Patch features take raw pixels.
    """
    from activecrl.embeddings.patches import PatchEncoder
    from activecrl.models import build_model

    p = Path(path).expanduser()
    file = p / ENCODER_FILE if p.is_dir() else p
    if not file.is_file():
        raise ConfigError(f"--backbone must be timm:NAME or an `activecrl pretrain` folder / encoder.pt, got {p} "
                          f"instead (no {ENCODER_FILE} there)")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
        method = state["method"]
    except Exception as exc:
        raise ConfigError(f"{file} is not an encoder.pt written by `activecrl pretrain` ({type(exc).__name__}: "
                          f"{exc}); run `activecrl pretrain` again") from None
    identity = {"kind": f"pretrain-{method}", "encoder": str(file.resolve()), "encoder_sha256": file_sha256(file)}
    if method == "patches":
        encoder = PatchEncoder.from_state(state)
        c, h, _ = state["image_shape"]
        return Encoder(lambda x: encoder.project(encoder.features(x)), int(h), None, None, "bilinear", identity, int(c))
    build = dict(state["build_config"])
    model = build_model(build.pop("name"), **build)
    model.load_state_dict(state["encoder"])
    if mean is None or std is None:
        raise ConfigError("a SimCLR encoder needs the mean and std of its training images; embed a dataset "
                          "(embed_dataset passes its statistics)")
    return Encoder(model.forward_features, int(build["image_size"]), tuple(mean), tuple(std), "bilinear", identity,
                   int(build["in_channels"]), module=model)


# --------------------------------------------------------------------------------------------
# The streamed pass


def _preprocess(batch: torch.Tensor, encoder: Encoder, device: torch.device, scale, shift) -> torch.Tensor:
    x = batch.to(device, non_blocking=True).float()
    size = encoder.input_size
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode=encoder.interpolation, align_corners=False,
                          antialias=x.shape[-1] > size).clamp_(0, 255)
    if scale is not None:
        x = x.mul_(scale).sub_(shift)  # (x / 255 - mean) / std
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" else x


@torch.no_grad()
def embed(encoder: Encoder, source, *, batch_size: int = 256, device="cpu", dtype: str = "float16",
          l2_normalize: bool = True, split: str = "train",
          progress: Callable[[EmbedProgress], None] | None = None) -> np.ndarray:
    """(N, d) embeddings of every image of ``source`` (``TensorSource`` / ``FileSource``), in order.

    Only the output array grows with the pool: batches are decoded, resized, embedded and
    copied out one at a time.
    """
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r} instead")
    device = resolve_device(device) if isinstance(device, str) else torch.device(device)
    if encoder.module is not None:
        encoder.module.to(device).eval()
        if device.type == "cuda":
            encoder.module.to(memory_format=torch.channels_last)
    scale = shift = None
    if encoder.mean is not None:
        mean64 = torch.tensor(encoder.mean, dtype=torch.float64)
        std64 = torch.tensor(encoder.std, dtype=torch.float64)
        scale = (1.0 / (255.0 * std64)).float().view(1, -1, 1, 1).to(device)
        shift = (mean64 / std64).float().view(1, -1, 1, 1).to(device)
    n = len(source)
    out: np.ndarray | None = None
    done, start = 0, time.perf_counter()
    for batch in source.batches(batch_size):
        if device.type == "cuda":
            batch = batch.pin_memory()
        x = _preprocess(batch, encoder, device, scale, shift)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            feats = encoder.forward(x)
        feats = feats.float()
        if l2_normalize:
            feats = F.normalize(feats, dim=1)
        if out is None:
            out = np.empty((n, feats.shape[1]), dtype=DTYPES[dtype])
        out[done:done + len(feats)] = feats.cpu().numpy()
        done += len(feats)
        if progress is not None:
            progress(EmbedProgress(split, done, n, done / max(time.perf_counter() - start, 1e-9)))
    return out


# --------------------------------------------------------------------------------------------
# A dataset's two splits into a folder, reused while nothing changed


def _sources(dataset, data_dir, encoder: Encoder | None, download: bool):
    """(train source, test source, train labels, test labels, classes, dataset fingerprint, ImageDataset or None)."""
    from activecrl.data import ImageDataset, load_dataset

    if isinstance(dataset, (str, Path)) and Path(dataset).expanduser().is_dir():
        listing = labeled_folder(dataset)
        kw = dict(size=encoder.input_size if encoder else None, channels=encoder.channels if encoder else 3,
                  interpolation=encoder.interpolation if encoder else "bicubic")
        train, test = FileSource(listing["train_files"], **kw), FileSource(listing["test_files"], **kw)
        return train, test, listing["train_labels"], listing["test_labels"], listing["classes"], None
    ds = dataset if isinstance(dataset, ImageDataset) else load_dataset(str(dataset), data_dir=data_dir,
                                                                         download=download)
    return (TensorSource(ds.train_images), TensorSource(ds.test_images), ds.train_labels.numpy(),
            ds.test_labels.numpy(), list(ds.classes), ds)


def _labels_hash(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


def _make_encoder(backbone: str, *, pretrained, weights, input_size, channels, dataset_stats) -> Encoder:
    if isinstance(backbone, str) and backbone.startswith("timm:"):
        return timm_encoder(backbone, pretrained=pretrained, weights=weights, input_size=input_size,
                            channels=channels)
    if pretrained or weights is not None or input_size is not None:
        raise ConfigError("--pretrained, --weights and --input-size apply to timm:NAME backbones only, got the "
                          f"pretrain encoder {backbone} instead; drop them")
    mean, std = dataset_stats if dataset_stats else (None, None)
    return pretrain_encoder(backbone, mean=mean, std=std)


def _check_out(out: Path) -> None:
    """Refuse a folder that holds something other than embed's output (e.g. a run)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out must be a directory, got the existing file {out} instead")
    try:
        saved = json.loads((out / CONFIG_FILE).read_text())
    except FileNotFoundError:
        return
    except (OSError, ValueError):
        saved = None
    if not isinstance(saved, dict) or saved.get("method") != "embed":
        raise ConfigError(f"--out {out} already holds a {CONFIG_FILE} not written by embed; choose another --out "
                          f"(embed rewrites its own folders when the backbone or data change)")


def read_fingerprint(out: Path) -> dict | None:
    """The fingerprint of a finished embed folder, or None (no folder, unfinished, not ours)."""
    try:
        saved = json.loads((out / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not (out / EMBEDDINGS_FILE).is_file() or not (out / TEST_EMBEDDINGS_FILE).is_file():
        return None
    return saved.get("fingerprint") if isinstance(saved, dict) else None


SplitEmbedder = Callable[..., np.ndarray]  # embed's signature: (encoder, source, *, batch_size, device, dtype, split, progress)


def embed_dataset(backbone: str, dataset, out_dir, *, pretrained: bool = False, weights=None,
                  input_size: int | None = None, batch_size: int = 256, device: str = "auto",
                  dtype: str = "float16", data_dir=None, download: bool = True, threads: int | None = None,
                  progress: Callable[[EmbedProgress], None] | None = None,
                  embed_split: SplitEmbedder | None = None) -> EmbedResult:
    """Embed every train and test image of ``dataset`` with ``backbone`` into ``out_dir``.

    ``backbone``: ``timm:NAME`` (with ``pretrained`` or ``weights``; ``input_size`` overrides
    its pretrained config's) or an ``activecrl pretrain`` folder / ``encoder.pt``. ``dataset``:
    an ImageFolder directory (streamed from its files, any image sizes), a dataset name or
    archive (``load_dataset``), or an ``ImageDataset``. Reuses ``out_dir`` when its fingerprint
    matches; otherwise (re)writes it, ``embeddings.npy`` last. ``threads``: torch's CPU threads
    (default: ``resolve_threads`` for the backbone's size). ``embed_split`` computes one split's
    rows (None: :func:`embed`; ``activecrl.embeddings.distributed`` shards it over Ray).
    """
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r} instead")
    out = Path(out_dir).expanduser()
    _check_out(out)
    resolved = resolve_device(device)
    folder = isinstance(dataset, (str, Path)) and Path(dataset).expanduser().is_dir()
    ds = None
    if not folder:  # the dataset first: a SimCLR encoder needs its statistics
        train_src, test_src, y_train, y_test, classes, ds = _sources(dataset, data_dir, None, download)
    channels = ds.in_channels if ds is not None else 3
    encoder = _make_encoder(backbone, pretrained=pretrained, weights=weights, input_size=input_size,
                            channels=channels, dataset_stats=(ds.mean, ds.std) if ds is not None else None)
    if folder:
        train_src, test_src, y_train, y_test, classes, _ = _sources(dataset, data_dir, encoder, download)
    fingerprint = {
        "format": EMBED_FORMAT, "backbone": encoder.identity,
        "dataset": {"train": train_src.fingerprint(), "test": test_src.fingerprint(),
                    "labels": _labels_hash(y_train, y_test)},
        "preprocessing": {"source": type(train_src).__name__, "input_size": encoder.input_size,
                          "interpolation": encoder.interpolation, "channels": encoder.channels,
                          "mean": list(encoder.mean) if encoder.mean else None,
                          "std": list(encoder.std) if encoder.std else None, "l2_normalised": True},
        "dtype": dtype,
    }
    fingerprint = json.loads(json.dumps(fingerprint))  # tuples -> lists, as read back from config.json
    if read_fingerprint(out) == fingerprint:
        emb = np.load(out / EMBEDDINGS_FILE, mmap_mode="r")
        logger.info("reusing the embeddings in %s (same backbone, weights, data and preprocessing)", out)
        return EmbedResult(out, True, int(emb.shape[0]), len(test_src), int(emb.shape[1]), 0.0, None, fingerprint)
    start = time.perf_counter()
    logger.info("embedding %d train + %d test images with %s on %s", len(train_src), len(test_src), backbone, resolved)
    embed_split = embed_split or embed
    with torch_threads(resolve_threads(threads, encoder.module)):
        test_emb = embed_split(encoder, test_src, batch_size=batch_size, device=resolved, dtype=dtype,
                               split="test", progress=progress) if len(test_src) else None
        train_emb = embed_split(encoder, train_src, batch_size=batch_size, device=resolved, dtype=dtype,
                                split="train", progress=progress)
    seconds = time.perf_counter() - start
    if test_emb is None:
        test_emb = np.empty((0, train_emb.shape[1]), dtype=train_emb.dtype)
    rate = (len(train_src) + len(test_src)) / max(seconds, 1e-9)
    out.mkdir(parents=True, exist_ok=True)
    (out / EMBEDDINGS_FILE).unlink(missing_ok=True)  # a run cut short below leaves no stale marker
    _atomic(out / TEST_EMBEDDINGS_FILE, lambda h: np.save(h, test_emb))
    _atomic(out / LABELS_FILE, lambda h: np.save(h, np.asarray(y_train, dtype=np.int64)))
    _atomic(out / TEST_LABELS_FILE, lambda h: np.save(h, np.asarray(y_test, dtype=np.int64)))
    atomic_write_json(out / CONFIG_FILE, {
        "activecrl_version": __version__, "method": "embed", "backbone": str(backbone),
        "dataset": str(dataset) if not hasattr(dataset, "name") else dataset.name, "classes": classes,
        "n_train": int(train_emb.shape[0]), "n_test": int(test_emb.shape[0]), "embedding_dim": int(train_emb.shape[1]),
        "l2_normalised": True, "dtype": dtype, "seconds": seconds, "images_per_s": rate, "fingerprint": fingerprint,
    })
    _atomic(out / EMBEDDINGS_FILE, lambda h: np.save(h, train_emb))  # last: marks a finished run
    logger.info("embedded %d images in %.1f s (%.0f images/s) into %s", len(train_src) + len(test_src), seconds,
                rate, out)
    return EmbedResult(out, False, int(train_emb.shape[0]), int(test_emb.shape[0]), int(train_emb.shape[1]),
                       seconds, rate, fingerprint)


def embed_from_config(config, out_dir, *, progress: Callable[[EmbedProgress], None] | None = None,
                      embed_split: SplitEmbedder | None = None) -> EmbedResult:
    """:func:`embed_dataset` with the options of an ``EmbedConfig`` (``activecrl embed``)."""
    return embed_dataset(config.backbone, config.dataset, out_dir, pretrained=config.pretrained,
                         weights=config.weights, input_size=config.input_size, batch_size=config.batch_size,
                         device=config.device, dtype=config.dtype, data_dir=config.data_dir,
                         download=config.download, threads=config.threads, progress=progress,
                         embed_split=embed_split)
