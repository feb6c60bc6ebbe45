"""Label-free embeddings for the strategies and the seed set (``activecrl pretrain``).

Two methods, chosen by ``PretrainConfig.method``:

* ``patches`` (the default): k-means features of whitened image patches, Coates, Lee and Ng
  (AISTATS 2011), in ``activecrl.embeddings.patches``. No gradient steps: one pass of k-means and one
  convolutional feature pass, minutes on one CPU core for CIFAR-10.
* ``simclr``: SimCLR (Chen et al., ICML 2020), below. It trains a registered model's body plus
  a two-layer projection head on *all* training images, labels unused, with the NT-Xent loss:
  two augmented views of each image must pick each other out of the 2B - 1 other views of the
  batch. The augmentations are SimCLR's CIFAR set as TypiClust's pretext config uses it (random
  resized crop of scale [0.2, 1], horizontal flip, colour jitter 0.4/0.4/0.4/0.1 applied with
  p 0.8, grayscale with p 0.2; temperature 0.1, SGD lr 0.4 momentum 0.9, weight decay 1e-4,
  cosine schedule, batch 512) and run on the device in batches, on the same uint8 ``DeviceData``
  the trainers use: no per-image Python, no workers. It needs an accelerator: on a CPU core one
  CIFAR-10 epoch takes tens of minutes and buys next to nothing (README).

Both write ``embeddings.npy`` (float32, one L2-normalised row per training-split image, in
training-split order; TypiClust and ProbCover compare embeddings by Euclidean distance on the
unit sphere), ``test_embeddings.npy`` (the same for the test split), ``encoder.pt``
(``torch.load(..., weights_only=True)``: what embeds new images; for SimCLR the model name,
build arguments, body and head weights, for patches ``PatchEncoder.state()``) and
``config.json`` (the config plus a k-nearest-neighbour accuracy check on the test split, next
to a baseline a label-free embedding must beat to be worth its cost: the same encoder at
initialisation for SimCLR, the raw pixels for patches). A run costs minutes, so it is simply
rerun rather than resumed.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from activecrl import __version__
from activecrl.core.errors import TrainingDiverged
from activecrl.core.io import _atomic, atomic_torch_save, atomic_write_json, prepare_out_dir
from activecrl.embeddings.config import PretrainConfig
from activecrl.embeddings.patches import PatchEncoder, fit_patch_encoder
from activecrl.core.runtime import resolve_device, seed_everything
from activecrl.training.trainers import EpochInfo

logger = logging.getLogger(__name__)

EMBEDDINGS_FILE = "embeddings.npy"
TEST_EMBEDDINGS_FILE = "test_embeddings.npy"
ENCODER_FILE = "encoder.pt"
CONFIG_FILE = "config.json"


# ------------------------------------------------------------------------------------- loss


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent (Chen et al. 2020, Eq. 1) averaged over the 2B views.

    ``z1[i]`` and ``z2[i]`` are the projections of two views of image i. Each of the 2B
    L2-normalised views is classified, with logits cos-sim / temperature, among the other 2B - 1
    views; its positive is the other view of the same image.
    """
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = z @ z.t() / temperature
    sim.fill_diagonal_(float("-inf"))  # a view is never its own candidate
    target = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(sim, target)


# ---------------------------------------------------------------------------- augmentation
class SimCLRAugment:
    """SimCLR's view generator on float [0, 1] batches (B, C, H, W), all tensor ops on the device.

    Random resized crop + flip are one affine ``grid_sample`` per batch (bilinear, like
    torchvision's ``RandomResizedCrop``); colour jitter applies brightness, contrast, saturation
    and hue in that fixed order (torchvision shuffles the order per call) with hue rotated in
    YIQ space, a linear approximation of torchvision's HSV shift. One-channel images get crop,
    flip, brightness and contrast only.
    """

    _RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])

    def __init__(self, crop_scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, grayscale_p=0.2):
        self.crop_scale = crop_scale
        self.jitter = jitter
        self.jitter_p = jitter_p
        self.grayscale_p = grayscale_p

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = self.resized_crop_flip(x, generator)
        x = self.color(x, generator)
        return x.clamp_(0, 1)

    @staticmethod
    def _uniform(n, low, high, generator, device):
        return low + (high - low) * torch.rand(n, generator=generator, device=device)

    def resized_crop_flip(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, _, h, w = x.shape
        dev = x.device
        area = self._uniform(b, *self.crop_scale, generator, dev)
        log_ratio = self._uniform(b, math.log(3 / 4), math.log(4 / 3), generator, dev)
        ratio = log_ratio.exp()
        # crop width/height as fractions of the image (clipped: torchvision retries, then falls back)
        cw = (area * ratio).sqrt().clamp(max=1.0)
        ch = (area / ratio).sqrt().clamp(max=1.0)
        cx = self._uniform(b, 0, 1, generator, dev) * (1 - cw) * 2 - (1 - cw)  # centre in [-1+cw, 1-cw]
        cy = self._uniform(b, 0, 1, generator, dev) * (1 - ch) * 2 - (1 - ch)
        flip = torch.where(torch.rand(b, generator=generator, device=dev) < 0.5, -1.0, 1.0)
        theta = torch.zeros(b, 2, 3, device=dev)
        theta[:, 0, 0] = cw * flip
        theta[:, 0, 2] = cx
        theta[:, 1, 1] = ch
        theta[:, 1, 2] = cy
        grid = F.affine_grid(theta, (b, x.shape[1], h, w), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def color(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, c = x.shape[:2]
        dev = x.device
        bright, contrast, sat, hue = self.jitter
        apply = (torch.rand(b, generator=generator, device=dev) < self.jitter_p).float().view(b, 1, 1, 1)

        def factor(strength):  # 1 where jitter is not applied
            f = self._uniform(b, 1 - strength, 1 + strength, generator, dev).view(b, 1, 1, 1)
            return apply * f + (1 - apply)

        x = x * factor(bright)
        gray = self._gray(x)
        x = (x - gray.mean(dim=(1, 2, 3), keepdim=True)) * factor(contrast) + gray.mean(dim=(1, 2, 3), keepdim=True)
        if c == 3:
            x = x.clamp(0, 1)
            gray = self._gray(x)
            x = gray + (x - gray) * factor(sat)
            angle = self._uniform(b, -hue, hue, generator, dev) * 2 * math.pi * apply.view(b)
            x = self._rotate_hue(x.clamp(0, 1), angle)
            to_gray = (torch.rand(b, generator=generator, device=dev) < self.grayscale_p).float().view(b, 1, 1, 1)
            x = to_gray * self._gray(x).expand_as(x) + (1 - to_gray) * x
        return x

    @staticmethod
    def _gray(x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != 3:
            return x.mean(dim=1, keepdim=True)
        w = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
        return (x * w).sum(dim=1, keepdim=True)

    def _rotate_hue(self, x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
        m = self._RGB2YIQ.to(x.device)
        yiq = torch.einsum("ij,bjhw->bihw", m, x)
        cos, sin = angle.cos().view(-1, 1, 1), angle.sin().view(-1, 1, 1)
        i, q = yiq[:, 1], yiq[:, 2]
        yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], dim=1)
        return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(m), yiq)


# ---------------------------------------------------------------------------------- model
class SimCLRModel(nn.Module):
    """A registered model's body (``forward_features``) plus SimCLR's MLP projection head."""

    def __init__(self, encoder: nn.Module, projection_dim: int):
        super().__init__()
        self.encoder = encoder
        d = encoder.feature_dim
        self.head = nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, projection_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.forward_features(x))


@dataclass
class PretrainResult:
    embeddings: np.ndarray  # (n_train, d) float32, L2-normalised, training-split order
    test_embeddings: np.ndarray
    epoch_losses: list[float]
    train_seconds: float
    knn_accuracy: float | None = None  # trained encoder, test split
    knn_accuracy_init: float | None = None  # the baseline: the same encoder before training, or raw pixels
    knn_baseline: str = "same encoder untrained"
    details: dict = field(default_factory=dict)  # method-specific facts for config.json (e.g. seconds per step)


@torch.no_grad()
def embed(encoder: nn.Module, data, batch_size: int = 1024) -> np.ndarray:
    """L2-normalised penultimate features of every image of ``data`` (a ``DeviceData``), in order."""
    was_training = encoder.training
    encoder.eval()
    try:
        parts = [F.normalize(encoder.forward_features(x).float(), dim=1) for x, _, _ in data.eval_batches(None, batch_size)]
    finally:
        encoder.train(was_training)
    if not parts:  # an empty split (an unlabeled folder has no test images)
        return np.empty((0, encoder.feature_dim), dtype=np.float32)
    return torch.cat(parts).cpu().numpy().astype(np.float32)


def pixel_embeddings(images: torch.Tensor, mean, std, chunk: int = 4096) -> np.ndarray:
    """The raw-pixel baseline: each uint8 image (N, C, H, W) normalised per channel as the
    trainers see it, flattened and L2-normalised; float32 (N, C * H * W)."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    parts = [F.normalize(((images[i:i + chunk].float() / 255 - m) / s).flatten(1), dim=1)
             for i in range(0, len(images), chunk)]
    return torch.cat(parts).numpy()


def knn_accuracy(train_emb: np.ndarray, train_labels: np.ndarray, test_emb: np.ndarray, test_labels: np.ndarray,
                 k: int = 20, chunk: int = 1024) -> float:
    """Test accuracy of a majority vote among the ``k`` nearest training embeddings (cosine)."""
    train = torch.from_numpy(np.ascontiguousarray(train_emb, dtype=np.float32))
    labels = torch.from_numpy(np.asarray(train_labels, dtype=np.int64))
    n_classes = int(labels.max()) + 1
    k = min(k, len(train))
    correct = 0
    for start in range(0, len(test_emb), chunk):  # never a full n_test x n_train matrix
        q = torch.from_numpy(np.ascontiguousarray(test_emb[start:start + chunk], dtype=np.float32))
        nn_idx = (q @ train.t()).topk(k, dim=1).indices
        votes = F.one_hot(labels[nn_idx], n_classes).sum(1)
        correct += int((votes.argmax(1).numpy() == test_labels[start:start + chunk]).sum())
    return correct / len(test_emb)


def _knn_check(config: PretrainConfig, dataset) -> bool:
    """The kNN accuracy check needs labeled test images: an unlabeled folder has none."""
    return bool(config.knn_k) and dataset.n_test > 0


def simclr_fit(config: PretrainConfig, dataset, *, progress: Callable[[EpochInfo], None] | None = None
               ) -> tuple[SimCLRModel, PretrainResult]:
    """Train the encoder on ``dataset`` (an ``ImageDataset``) and embed both splits."""
    from activecrl.data import device_splits
    from activecrl.models import build_model

    device = resolve_device(config.device)
    seed_everything(config.seed)
    # the classifier is never used; an unlabeled folder has one class, a model needs two
    encoder = build_model(config.model, num_classes=max(2, dataset.num_classes), in_channels=dataset.in_channels,
                          image_size=dataset.image_size)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = SimCLRModel(encoder, config.projection_dim).to(device, memory_format=memory_format)
    train, test = device_splits(dataset, device, channels_last=config.channels_last)
    train_labels, test_labels = dataset.train_labels.numpy(), dataset.test_labels.numpy()
    knn_init = None
    if _knn_check(config, dataset):
        knn_init = knn_accuracy(embed(encoder, train, config.eval_batch_size), train_labels,
                                embed(encoder, test, config.eval_batch_size), test_labels, config.knn_k)
    augment = SimCLRAugment(config.crop_scale, config.jitter, config.jitter_p, config.grayscale_p)
    g = torch.Generator(device=device).manual_seed(config.seed)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay)
    n = train.n
    batch = min(config.batch_size, n)
    steps_per_epoch = max(1, n // batch)  # the last partial batch is dropped: fewer negatives, noisier loss
    total = steps_per_epoch * config.epochs
    # normalise [0, 1] views as DeviceData normalises uint8 batches: x * (1 / (255 std)) * 255 - mean / std
    std64, mean64 = torch.tensor(dataset.std, dtype=torch.float64), torch.tensor(dataset.mean, dtype=torch.float64)
    scale = ((1.0 / (255.0 * std64)).float() * 255.0).view(1, -1, 1, 1).to(device)
    shift = (mean64 / std64).float().view(1, -1, 1, 1).to(device)
    losses, start, step = [], time.perf_counter(), 0
    model.train()
    for epoch in range(1, config.epochs + 1):
        order = torch.randperm(n, generator=g, device=device)
        epoch_loss = torch.zeros((), device=device)
        for s in range(steps_per_epoch):
            lr = 0.5 * config.lr * (1 + math.cos(math.pi * step / total))
            for group in opt.param_groups:
                group["lr"] = lr
            x = train.images[order[s * batch:(s + 1) * batch]].float().div_(255)
            views = torch.cat([augment(x, g), augment(x, g)]).mul_(scale).sub_(shift)
            views = views.contiguous(memory_format=memory_format)
            z = model(views)
            loss = nt_xent(z[:len(x)], z[len(x):], config.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            epoch_loss += loss.detach()
            step += 1
        mean_loss = float(epoch_loss) / steps_per_epoch  # one host sync per epoch
        if not math.isfinite(mean_loss):
            raise TrainingDiverged(f"the SimCLR loss became {mean_loss} in epoch {epoch}; lower --lr")
        losses.append(mean_loss)
        if progress is not None:
            progress(EpochInfo(epoch=epoch, epochs=config.epochs, loss=mean_loss, lr=lr,
                               seconds=time.perf_counter() - start))
        logger.info("simclr epoch %d/%d: loss %.4f", epoch, config.epochs, mean_loss)
    seconds = time.perf_counter() - start
    emb = embed(encoder, train, config.eval_batch_size)
    test_emb = embed(encoder, test, config.eval_batch_size)
    knn = knn_accuracy(emb, train_labels, test_emb, test_labels, config.knn_k) if _knn_check(config, dataset) else None
    return model, PretrainResult(emb, test_emb, losses, seconds, knn, knn_init)


def patches_fit(config: PretrainConfig, dataset) -> tuple[PatchEncoder, PretrainResult]:
    """Coates et al.'s patch features of ``dataset`` (an ``ImageDataset``), labels unused but for
    the kNN check, embedded on both splits; the kNN baseline is the raw pixels."""
    device = resolve_device(config.device)
    seed_everything(config.seed)
    start = time.perf_counter()
    encoder, emb, seconds = fit_patch_encoder(config, dataset.train_images, device)
    emb = emb.numpy().astype(np.float32)
    test_emb = encoder.embed(dataset.test_images, device, config.eval_batch_size)
    total = time.perf_counter() - start
    knn = knn_pixels = None
    if _knn_check(config, dataset):
        train_labels, test_labels = dataset.train_labels.numpy(), dataset.test_labels.numpy()
        knn = knn_accuracy(emb, train_labels, test_emb, test_labels, config.knn_k)
        knn_pixels = knn_accuracy(pixel_embeddings(dataset.train_images, dataset.mean, dataset.std), train_labels,
                                  pixel_embeddings(dataset.test_images, dataset.mean, dataset.std), test_labels,
                                  config.knn_k)
    details = {"step_seconds": seconds, "features_per_image": int(4 * config.centroids)}
    return encoder, PretrainResult(emb, test_emb, [], total, knn, knn_pixels, "raw pixels", details)


def pretrain(config: PretrainConfig, out_dir: Path | str, *, dataset=None, overwrite: bool = False,
             progress: Callable[[EpochInfo], None] | None = None) -> PretrainResult:
    """Embed the training images with ``config.method`` and write embeddings.npy,
    test_embeddings.npy, encoder.pt and config.json (``progress``: SimCLR's per-epoch callback)."""
    from activecrl.data import load_dataset
    from activecrl.models import MODELS

    out = Path(out_dir)
    if config.method == "simclr":
        MODELS.get(config.model)  # bad names and folders fail before any work
    resolve_device(config.device)
    prepare_out_dir(out, marker=EMBEDDINGS_FILE, overwrite=overwrite, create=False)
    if dataset is None:
        dataset = load_dataset(config.dataset, data_dir=config.data_dir, download=config.download)
    if config.method == "patches":
        encoder, result = patches_fit(config, dataset)
        state = {**encoder.state(), "image_shape": list(dataset.train_images.shape[1:])}
    else:
        model, result = simclr_fit(config, dataset, progress=progress)
        encoder = model.encoder
        state = {"method": "simclr", "model": config.model, "build_config": dict(encoder.build_config),
                 "encoder": {k: v.detach().cpu() for k, v in encoder.state_dict().items()},
                 "head": {k: v.detach().cpu() for k, v in model.head.state_dict().items()}}
    prepare_out_dir(out, marker=EMBEDDINGS_FILE, overwrite=True)
    atomic_torch_save(out / ENCODER_FILE, state)
    _atomic(out / TEST_EMBEDDINGS_FILE, lambda h: np.save(h, result.test_embeddings))
    atomic_write_json(out / CONFIG_FILE, {
        "activecrl_version": __version__, **config.to_dict(),
        "n_train": int(result.embeddings.shape[0]), "embedding_dim": int(result.embeddings.shape[1]),
        "l2_normalised": True, "train_seconds": result.train_seconds, "epoch_losses": result.epoch_losses,
        "knn_accuracy": result.knn_accuracy, "knn_accuracy_init": result.knn_accuracy_init,
        "knn_baseline": result.knn_baseline, **result.details,
    })
    _atomic(out / EMBEDDINGS_FILE, lambda h: np.save(h, result.embeddings))  # last: its presence marks a finished run
    return result
