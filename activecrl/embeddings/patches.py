"""Label-free embeddings from k-means on whitened image patches (``activecrl pretrain --method patches``).

Coates, Lee and Ng, "An Analysis of Single-Layer Networks in Unsupervised Feature Learning"
(AISTATS 2011), with the settings of the paper and of its code (``kmeans_demo.m``,
``extract_features.m``):

1. ``kmeans_patches`` random ``patch_size`` x ``patch_size`` windows (all channels, flattened
   channel-major) of random training images (paper: 400,000 windows of 6 x 6);
2. each normalised for brightness and contrast: ``(p - mean(p)) / sqrt(var(p) + 10)`` with
   pixels on the 0-255 scale and the unbiased variance;
3. ZCA whitening ``z = P (p - M)``, ``P = V (D + 0.1)^-1/2 V^T`` from the eigendecomposition
   ``V D V^T`` of their covariance;
4. k-means of the whitened windows into ``centroids`` clusters (paper: 1600, its best; here
   faiss (``activecrl.core.kmeans``), Lloyd iterations from a seeded random choice of windows);
5. for every window of an image at stride ``patch_stride`` (paper: 1), the "triangle"
   activation ``f_k = max(0, mean_j(d_j) - d_k)``, ``d_k`` the Euclidean distance of the
   whitened window to centroid k: about half the centroids fire, the nearer the stronger;
6. the activations summed over the four quadrants of the map (the first half has
   ``ceil(n / 2)`` rows/columns, MATLAB's ``round(n / 2)``): 4 K features per image.

The paper trains a linear SVM on these features, standardised per feature by
``(f - mean) / sqrt(var + 0.01)``; with K = 1600 at stride 1 that reaches 79.6% on CIFAR-10.
There are no labels here and the embedding is compared by nearest neighbours, so after pooling:

7. the square root of every feature (power normalisation, Perronnin, Sanchez and Mensink,
   ECCV 2010: sum-pooled activations are bursty, a few large sums dominate distances);
8. the paper's standardisation;
9. PCA to ``pca_dim`` dimensions (randomised, Halko et al. 2011), whitened with
   regularised eigenvalues ``x_i / sqrt(lambda_i + 0.01 lambda_1)`` (Jegou and Chum, ECCV 2012:
   whitening evens out the dominating directions of a kNN metric; the regulariser keeps the
   weakest, noisiest directions from being blown up to the same weight);
10. L2 normalisation, as TypiClust and ProbCover compare embeddings by Euclidean distance on
    the unit sphere.

Steps 7 and 9 and K = 100 are not the paper's: they were chosen by 20-NN accuracy on 5,000
CIFAR-10 *training* images against 20,000 others (test split untouched): K = 100 beat 50, 200,
400 (and 800, 1600 at stride 2) for kNN, the paper's 1600 being its best for an SVM; steps 7
and 9 took the same K = 100 features from 55.1% to 64.2% (README).

Step 5 is a convolution: the window statistics are ``avg_pool2d`` maps, the whitened window is
one ``conv2d`` with the rows of ``P`` as filters (``P (p - mu 1) / s - P M``), and the distances
come from ``|z|^2 - 2 z.c + |c|^2`` with ``z.c`` one matrix product over all windows of a block
of images; the (windows x K) block is kept near cache size on a CPU. All of it runs on the
configured device, nothing per window or per image in Python.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from activecrl.core.errors import ConfigError
from activecrl.core.kmeans import kmeans

logger = logging.getLogger(__name__)

CONTRAST_EPS = 10.0  # added to each window's pixel variance (0-255 scale) before dividing: Coates et al.'s code
ZCA_EPS = 0.1  # added to the covariance eigenvalues: flat directions are not blown up into noise
FEATURE_EPS = 0.01  # added to each feature's variance when standardising (the code's SVM input)
PCA_WHITEN_EPS = 0.01  # times the largest eigenvalue, added to each before whitening (step 9)
_CPU_BLOCK = 1 << 20  # windows x centroids per distance block on a CPU: ~4 MB, stays in cache
_GPU_BLOCK = 1 << 26  # on an accelerator, fewer and larger launches win


def sample_patches(images: torch.Tensor, count: int, size: int, generator: torch.Generator,
                   chunk: int = 8192) -> torch.Tensor:
    """``count`` random ``size`` x ``size`` windows of random images of ``images`` (N, C, H, W)
    as float32 rows (count, C * size * size), flattened channel-major like ``F.unfold``."""
    n, c, h, w = images.shape
    img = torch.randint(n, (count,), generator=generator)
    top = torch.randint(h - size + 1, (count,), generator=generator)
    left = torch.randint(w - size + 1, (count,), generator=generator)
    offsets = torch.arange(size)
    out = torch.empty(count, c * size * size)
    for start in range(0, count, chunk):  # never `count` whole images in memory at once
        sl = slice(start, start + chunk)
        rows = (top[sl, None] + offsets)[:, :, None]  # (m, size, 1)
        cols = (left[sl, None] + offsets)[:, None, :]  # (m, 1, size)
        win = images[img[sl, None, None], :, rows, cols]  # advanced indices first: (m, size, size, C)
        out[sl] = win.permute(0, 3, 1, 2).reshape(len(win), -1).float()
    return out


def normalize_patches(patches: torch.Tensor, eps: float = CONTRAST_EPS) -> torch.Tensor:
    """Brightness and contrast normalisation of each row: ``(p - mean) / sqrt(var + eps)``."""
    mean = patches.mean(dim=1, keepdim=True)
    return (patches - mean) / (patches.var(dim=1, keepdim=True) + eps).sqrt()


def zca_whitening(patches: torch.Tensor, eps: float = ZCA_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, P) of ZCA whitening ``z = (x - M) P``: ``P = V (D + eps)^-1/2 V^T`` for the covariance
    ``V D V^T`` of the rows of ``patches`` (float64 inside; P is symmetric)."""
    x = patches.double()
    mean = x.mean(dim=0)
    cov = torch.cov(x.t())
    values, vectors = torch.linalg.eigh(cov)
    p = vectors @ torch.diag((values.clamp_min(0) + eps).rsqrt()) @ vectors.t()
    return mean.float(), ((p + p.t()) / 2).float()


def triangle(dist: torch.Tensor) -> torch.Tensor:
    """Coates et al.'s "triangle" k-means activation over the last axis: ``max(0, mean(d) - d_k)``."""
    return (dist.mean(dim=-1, keepdim=True) - dist).clamp_min_(0)


def quadrant_pool(maps: torch.Tensor) -> torch.Tensor:
    """Sums of (B, H, W, K) activation maps over their four quadrants (the first half of each
    axis has ``ceil(n / 2)`` entries): (B, 4 K), quadrant-major in the order top-left,
    top-right, bottom-left, bottom-right."""
    b, h, w, k = maps.shape
    hh, hw = (h + 1) // 2, (w + 1) // 2
    rows = torch.stack([maps[:, :hh].sum(1), maps[:, hh:].sum(1)], dim=1)  # (B, 2, W, K)
    return torch.stack([rows[:, :, :hw].sum(2), rows[:, :, hw:].sum(2)], dim=2).reshape(b, 4 * k)


@dataclass
class PatchEncoder:
    """Everything needed to embed images: the whitening, the centroids and the projection.

    ``state()`` holds only tensors and numbers (``torch.load(..., weights_only=True)``) and
    ``PatchEncoder.from_state`` rebuilds the encoder from it. ``features`` maps uint8 or 0-255
    float images (B, C, H, W) to the pooled triangle features (B, 4 K); ``embed`` standardises,
    projects and L2-normalises them.
    """

    patch_size: int
    stride: int
    whiten_mean: torch.Tensor  # (n,) M, n = C * patch_size^2
    whiten: torch.Tensor  # (n, n) P, symmetric
    centroids: torch.Tensor  # (K, n) in the whitened space
    feature_mean: torch.Tensor | None = None  # (4K,) of the training features
    feature_std: torch.Tensor | None = None  # (4K,) sqrt(var + FEATURE_EPS)
    components: torch.Tensor | None = None  # (4K, d) leading principal directions / sqrt(regularised eigenvalue)

    def state(self) -> dict:
        return {"method": "patches", "patch_size": self.patch_size, "stride": self.stride,
                "contrast_eps": CONTRAST_EPS, "zca_eps": ZCA_EPS, "feature_eps": FEATURE_EPS,
                "pca_whiten_eps": PCA_WHITEN_EPS,
                **{k: getattr(self, k).detach().cpu() for k in ("whiten_mean", "whiten", "centroids", "feature_mean",
                                                                "feature_std", "components")}}

    @classmethod
    def from_state(cls, state: dict) -> "PatchEncoder":
        return cls(*(state[k] for k in ("patch_size", "stride", "whiten_mean", "whiten", "centroids", "feature_mean",
                                        "feature_std", "components")))

    def window_distances(self, x: torch.Tensor) -> torch.Tensor:
        """Distances (B, H', W', K) of every normalised, whitened window of ``x`` to every centroid."""
        p, s = self.patch_size, self.stride
        x = x.float().contiguous(memory_format=torch.channels_last)  # conv output NHWC: one row per window
        b, c = x.shape[:2]
        n = c * p * p
        whiten = self.whiten.to(x.device)
        mean = F.avg_pool2d(x.mean(dim=1, keepdim=True), p, s)  # per-window mean over all n pixels
        sq = F.avg_pool2d((x * x).mean(dim=1, keepdim=True), p, s)
        h, w = mean.shape[-2:]
        var = (sq - mean * mean).clamp_min_(0) * (n / (n - 1))  # unbiased, as MATLAB's var
        scale = (var + CONTRAST_EPS).rsqrt_().reshape(-1, 1)
        u = F.conv2d(x, whiten.view(n, c, p, p), stride=s).permute(0, 2, 3, 1).reshape(-1, n)  # P p per window
        # z = P ((p - mu 1) / s - M) = (P p) / s - (mu / s) P 1 - P M  (P symmetric): a rank-1 product, then one pass
        shift = self.whiten_mean.to(x.device) @ whiten
        z = torch.addmm(shift, mean.reshape(-1, 1) * scale, whiten.sum(dim=1, keepdim=True).t(), beta=-1, alpha=-1)
        z.addcmul_(u, scale)
        cent = self.centroids.to(x.device)
        d2 = torch.addmm((cent * cent).sum(dim=1), z, cent.t(), alpha=-2.0)  # |c|^2 - 2 z.c
        d2.add_(torch.linalg.vector_norm(z, dim=1, keepdim=True).square_())  # + |z|^2
        return d2.clamp_min_(0).sqrt_().view(b, h, w, len(cent))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return quadrant_pool(triangle(self.window_distances(x)))

    def block_size(self, image_shape, device: torch.device, limit: int) -> int:
        """Images per distance block: about ``_CPU_BLOCK`` (``_GPU_BLOCK``) windows x centroids."""
        h, w = image_shape[-2:]
        windows = ((h - self.patch_size) // self.stride + 1) * ((w - self.patch_size) // self.stride + 1)
        target = _CPU_BLOCK if device.type == "cpu" else _GPU_BLOCK
        return max(1, min(limit, target // (windows * len(self.centroids))))

    @torch.no_grad()
    def all_features(self, images: torch.Tensor, device: torch.device, limit: int = 1024) -> torch.Tensor:
        """Pooled features (N, 4K) of uint8 ``images`` (N, C, H, W), in order, on the CPU."""
        step = self.block_size(images.shape, device, limit)
        out = torch.empty(len(images), 4 * len(self.centroids))
        for start in range(0, len(images), step):
            out[start:start + step] = self.features(images[start:start + step].to(device)).cpu()
        return out

    def project(self, feats: torch.Tensor) -> torch.Tensor:
        """Pooled features (N, 4K) -> square-rooted, standardised, whitened-PCA, L2-normalised rows."""
        z = (feats.sqrt() - self.feature_mean.to(feats.device)) / self.feature_std.to(feats.device)
        return F.normalize(z @ self.components.to(feats.device), dim=1)

    @torch.no_grad()
    def embed(self, images: torch.Tensor, device: torch.device | str = "cpu", limit: int = 1024) -> np.ndarray:
        """float32 (N, d) L2-normalised embeddings of uint8 ``images`` (N, C, H, W), in order."""
        return self.project(self.all_features(images, torch.device(device), limit)).numpy().astype(np.float32)


def check_fits(config, image_shape) -> None:
    c, h, w = image_shape
    if config.patch_size > min(h, w):
        raise ConfigError(f"--patch-size must be at most the image's short side ({min(h, w)} pixels), "
                          f"got {config.patch_size} instead")
    if c * config.patch_size ** 2 < 2:
        raise ConfigError(f"--patch-size must give windows of at least 2 pixels, got {config.patch_size} "
                          f"with {c} channel instead")


def learn_codebook(images: torch.Tensor, *, patch_size: int, stride: int, centroids: int, kmeans_patches: int,
                   kmeans_iters: int, seed: int) -> PatchEncoder:
    """Steps 1-4 on uint8 ``images`` (N, C, H, W): the whitening and the centroids, no projection yet."""
    g = torch.Generator().manual_seed(seed)
    patches = normalize_patches(sample_patches(images, kmeans_patches, patch_size, g))
    whiten_mean, whiten = zca_whitening(patches)
    white = ((patches - whiten_mean) @ whiten).numpy()
    del patches
    cents = kmeans(white, centroids, seed, niter=kmeans_iters)  # Lloyd from seeded random rows, every row
    return PatchEncoder(patch_size, stride, whiten_mean, whiten, torch.from_numpy(cents))


def fit_projection(encoder: PatchEncoder, feats: torch.Tensor, pca_dim: int, seed: int) -> torch.Tensor:
    """Steps 7-10 learnt on pooled training features (N, 4K), which are overwritten (N x 4K
    floats held once, not twice); sets the encoder's projection and returns the (N, d)
    embeddings of those rows."""
    feats.sqrt_()
    encoder.feature_mean = feats.mean(dim=0)
    encoder.feature_std = (feats.var(dim=0) + FEATURE_EPS).sqrt()
    feats.sub_(encoder.feature_mean).div_(encoder.feature_std)
    vectors, values = principal_directions(feats, pca_dim, seed)
    encoder.components = vectors / (values + PCA_WHITEN_EPS * values[0]).clamp_min(1e-12).sqrt()
    return F.normalize(feats @ encoder.components, dim=1)


def fit_patch_encoder(config, images: torch.Tensor, device: torch.device) -> tuple[PatchEncoder, torch.Tensor, dict]:
    """Learn the whitening and centroids on windows of ``images`` (uint8 (N, C, H, W), labels
    never seen), then the standardisation and projection on all their features.

    Returns the encoder, the embeddings of ``images`` (N, d) and the seconds of each step."""
    check_fits(config, tuple(images.shape[1:]))
    seconds = {}
    start = time.perf_counter()
    encoder = learn_codebook(images, patch_size=config.patch_size, stride=config.patch_stride,
                             centroids=config.centroids, kmeans_patches=config.kmeans_patches,
                             kmeans_iters=config.kmeans_iters, seed=config.seed)
    seconds["kmeans"] = time.perf_counter() - start
    logger.info("patches: %d centroids of %d whitened %dx%d windows in %.1fs", config.centroids,
                config.kmeans_patches, config.patch_size, config.patch_size, seconds["kmeans"])
    start = time.perf_counter()
    feats = encoder.all_features(images, device, config.eval_batch_size)
    seconds["features"] = time.perf_counter() - start
    logger.info("patches: %d x %d training features in %.1fs", *feats.shape, seconds["features"])
    start = time.perf_counter()
    embeddings = fit_projection(encoder, feats, config.pca_dim, config.seed)
    seconds["pca"] = time.perf_counter() - start
    return encoder, embeddings, seconds


def principal_directions(x: torch.Tensor, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``min(d, N, D)`` leading principal directions (D, d) of the centred rows of ``x``
    (N, D) and their variances (d,), largest first: randomised SVD (``torch.svd_lowrank``, 4
    power iterations), seeded without touching the global RNG."""
    q = min(d, *x.shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        _, singular, v = torch.svd_lowrank(x, q=min(q + 16, *x.shape), niter=4)
    return v[:, :q].contiguous(), singular[:q] ** 2 / max(len(x) - 1, 1)
