"""Out-of-distribution detection with a model saved by ``activecrl train`` (the paper's Table 3).

Detectors (every score is "higher = more in-distribution"):

``msp`` (Hendrycks & Gimpel 2017)
    the maximum softmax probability.
``odin`` (Liang et al. 2018)
    ``max_k softmax(f(x~) / T)_k`` with ``x~ = x - eps * sign(-grad_x log S_yhat(x; T))``. The step is
    taken in [0, 1] pixel space: in the normalised input space the gradient sign is divided by the
    dataset's per-channel std, as the original code does. T and eps are tuned.
``mahalanobis`` (Lee et al. 2018)
    class means and one tied covariance of training-set features (penultimate layer; with
    ``feature_ensemble`` every block of ``model.feature_maps`` pooled by channel means);
    ``M(x) = -min_c (f(x) - mu_c)^T Sigma^-1 (f(x) - mu_c)`` after the input perturbation
    ``x~ = x - eps * sign(grad_x min_c d_c(x)) / std``. With several layers a logistic regression on
    the per-layer scores, fitted on the tuning data, combines them. eps is tuned.
``energy`` (Liu et al. 2020)
    ``T * logsumexp(logits / T)`` with ``energy_temperature`` (1, not tuned).

Tuning protocol (ODIN's T and eps, Mahalanobis' eps and combiner). By default it never touches the
test OOD set: the in-distribution tuning samples are ``n_tune`` (1,000) random images of the
in-distribution *test* split (seeded; the model was trained on the whole training split, so held-out
training images do not exist) and the OOD tuning samples come from ``ood_val``: synthetic noise
images (``noise``: a third each of Gaussian, uniform and smooth low-frequency noise), FGSM
adversarial images made from other in-distribution test images (``fgsm``, Lee et al.'s
"validation on adversarial samples"), or a user-given folder / dataset. The paper follows Lee et al.
and tunes on 1,000 samples of the test OOD set itself; that is available only on request
(``tune_on_test_ood``) and is labelled so in ood.json. Tuning samples, in-distribution and (when
drawn from it) OOD, are excluded from the evaluation for every detector, so all detectors of one
protocol are scored on the same images. The setting with the lowest FPR at 95 % TPR on the tuning
data wins (ties: lower detection error, then higher AUROC, then the earlier grid entry).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import __version__
from .errors import ConfigError, DataError
from .io import atomic_savez, atomic_write_json, prepare_out_dir, to_jsonable
from .metrics import ood_metrics

logger = logging.getLogger(__name__)

__all__ = [
    "DETECTORS", "SYNTHETIC_SETS", "OODConfig", "OODResult",
    "msp_score", "energy_score", "odin_score_grid", "class_gaussian", "mahalanobis_sq", "MahalanobisScorer",
    "synthetic_images", "fgsm_images", "select_best", "run_ood", "save_ood", "read_ood",
]

DETECTORS = ("msp", "odin", "mahalanobis", "energy")
SYNTHETIC_SETS = ("noise", "gaussian", "uniform", "smooth")
DEFAULT_TEMPERATURES = (1.0, 10.0, 100.0, 1000.0)
DEFAULT_EPSILONS = (0.0, 0.0005, 0.001, 0.0014, 0.002, 0.005, 0.01)  # Lee et al.'s grid


# ============================================================================ config / result


@dataclass
class OODConfig:
    run: str  # folder of an `activecrl train` run (model.pt)
    ood: str  # test OOD set: image folder/archive, registered dataset name, or a synthetic set
    detector: str = "msp"
    data_dir: str | None = None  # where datasets/caches live (default: the run's, else $ACTIVECRL_DATA)
    ood_val: str = "noise"  # OOD tuning data: noise | gaussian | uniform | smooth | fgsm | a path | a dataset
    tune_on_test_ood: bool = False  # paper protocol (Lee et al.): tune on n_tune samples of the test OOD set
    n_tune: int = 1000
    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES
    epsilons: tuple[float, ...] = DEFAULT_EPSILONS
    energy_temperature: float = 1.0
    feature_ensemble: bool = False  # Mahalanobis over every block of model.feature_maps + logistic regression
    fgsm_epsilon: float = 0.05  # pixel-space step of the FGSM validation images (ood_val = fgsm)
    max_samples: int | None = None  # evaluate on at most this many random in / out samples each
    seed: int = 0
    batch_size: int = 256
    device: str = "auto"

    def __post_init__(self):
        self.temperatures = tuple(float(t) for t in self.temperatures)
        self.epsilons = tuple(float(e) for e in self.epsilons)
        if self.detector not in DETECTORS:
            raise ConfigError(f"detector must be one of {', '.join(DETECTORS)}, got {self.detector!r} instead")
        if not self.temperatures or any(not math.isfinite(t) or t <= 0 for t in self.temperatures):
            raise ConfigError(f"temperatures must be positive numbers, e.g. 1 10 100 1000, got {self.temperatures} "
                              "instead")
        if not self.epsilons or any(not math.isfinite(e) or e < 0 for e in self.epsilons):
            raise ConfigError(f"epsilons must be numbers >= 0, e.g. 0 0.001 0.002, got {self.epsilons} instead")
        if not math.isfinite(self.energy_temperature) or self.energy_temperature <= 0:
            raise ConfigError(f"energy_temperature must be positive, got {self.energy_temperature!r} instead")
        for name, minimum in (("n_tune", 2), ("batch_size", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r} instead")
        if self.max_samples is not None and (isinstance(self.max_samples, bool) or not isinstance(self.max_samples, int)
                                             or self.max_samples < 2):
            raise ConfigError(f"max_samples must be an integer >= 2 or None (all), got {self.max_samples!r} instead")
        if not 0 < self.fgsm_epsilon < 1:
            raise ConfigError(f"fgsm_epsilon must be in (0, 1) (pixel scale), got {self.fgsm_epsilon!r} instead")


@dataclass
class OODResult:
    config: OODConfig
    metrics: dict[str, float]
    score_in: np.ndarray
    score_out: np.ndarray
    index_in: np.ndarray  # test-split indices of the in-distribution evaluation samples
    index_out: np.ndarray  # indices into the OOD set of the evaluated OOD samples
    params: dict  # the detector's (tuned) hyper-parameters
    protocol: dict  # how they were tuned
    tuning: list[dict]  # tuning metrics of every candidate setting
    run_info: dict  # the run: dataset, model, trainer, method, seed
    seconds: float

    def to_json(self) -> dict:
        return {
            "activecrl_version": __version__,
            **self.metrics,  # fpr95, detection_error, auroc, aupr_in, aupr_out (fractions)
            "detector": self.config.detector,
            "metrics": self.metrics,
            "params": self.params,
            "protocol": self.protocol,
            "in_distribution": self.run_info.get("dataset"),
            "ood_set": self.run_info.get("ood_set"),
            "n_in": int(self.score_in.size),
            "n_out": int(self.score_out.size),
            "max_samples": self.config.max_samples,
            "run": self.run_info,
            "tuning": self.tuning,
            "seconds": self.seconds,
            "config": dataclasses.asdict(self.config),
        }


# ============================================================================ scores


def msp_score(logits: torch.Tensor) -> torch.Tensor:
    """Maximum softmax probability per row."""
    return torch.softmax(logits.float(), dim=1).max(dim=1).values


def energy_score(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Negative free energy ``T * logsumexp(logits / T)`` per row (Liu et al. 2020)."""
    return temperature * torch.logsumexp(logits.float() / temperature, dim=1)


def _inv_std(data) -> torch.Tensor:
    return (1.0 / torch.tensor(data.std, dtype=torch.float32, device=data.device)).view(1, -1, 1, 1)


@torch.no_grad()
def _logits(model: nn.Module, data, indices, batch_size: int) -> torch.Tensor:
    parts = [model(x).float().cpu() for x, _, _ in data.eval_batches(indices, batch_size)]
    return torch.cat(parts) if parts else torch.zeros(0, model.num_classes)


def odin_score_grid(model: nn.Module, data, indices, settings: Sequence[tuple[float, float]], *,
                    batch_size: int = 256) -> list[np.ndarray]:
    """ODIN scores for each ``(temperature, epsilon)`` of ``settings`` on ``indices`` of ``data``.

    One backward pass per temperature and batch; one extra forward per non-zero epsilon. With
    T = 1 and eps = 0 the score is exactly the MSP.
    """
    model.eval()
    inv_std = _inv_std(data)
    by_t: dict[float, list[float]] = {}
    for t, e in settings:
        by_t.setdefault(float(t), []).append(float(e))
    out: dict[tuple[float, float], list[torch.Tensor]] = {(float(t), float(e)): [] for t, e in settings}
    for x, _, _ in data.eval_batches(indices, batch_size):
        for t, eps_list in by_t.items():
            x_in = x.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                logits = model(x_in).float()
                # -log S_yhat(x; T) summed over the batch; its gradient is the per-sample one
                loss = F.cross_entropy(logits / t, logits.argmax(dim=1), reduction="sum")
                (grad,) = torch.autograd.grad(loss, x_in)
            step = torch.sign(grad) * inv_std  # a step of 1 in [0, 1] pixel space, per channel
            base = torch.softmax(logits.detach() / t, dim=1).max(dim=1).values
            with torch.no_grad():
                for e in eps_list:
                    if e == 0:
                        out[(t, e)].append(base.cpu())
                    else:
                        pert = model(x - e * step).float()
                        out[(t, e)].append(torch.softmax(pert / t, dim=1).max(dim=1).values.cpu())
    return [torch.cat(out[(float(t), float(e))]).double().numpy() if out[(float(t), float(e))] else np.zeros(0)
            for t, e in settings]


def class_gaussian(features, labels, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Class means (C, d) and the pseudo-inverse of the tied covariance (d, d), float64.

    ``Sigma = (1/N) sum_c sum_{i in c} (f_i - mu_c)(f_i - mu_c)^T`` (Lee et al. 2018).
    """
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if f.ndim != 2 or y.shape != (f.shape[0],):
        raise ConfigError(f"features must be (n, d) and labels (n,), got shapes {f.shape} and {y.shape} instead")
    counts = np.bincount(y, minlength=num_classes)
    if np.any(counts == 0):
        raise DataError(f"every class needs training features for the Mahalanobis detector, got none for classes "
                        f"{np.flatnonzero(counts == 0).tolist()}")
    means = np.stack([f[y == c].mean(axis=0) for c in range(num_classes)])
    centered = f - means[y]
    cov = centered.T @ centered / f.shape[0]
    return means, np.linalg.pinv(cov, hermitian=True)


def _whitener(precision: np.ndarray) -> np.ndarray:
    """W with W W^T = precision, so (f - mu)^T P (f - mu) = ||(f - mu) W||^2."""
    vals, vecs = np.linalg.eigh((precision + precision.T) / 2)
    return vecs * np.sqrt(np.clip(vals, 0, None))


def mahalanobis_sq(features: torch.Tensor, means: torch.Tensor, whitener: torch.Tensor) -> torch.Tensor:
    """Squared Mahalanobis distances (n, C) of ``features`` (n, d) to every class mean (differentiable)."""
    z = features @ whitener
    zm = means @ whitener
    return ((z.unsqueeze(1) - zm.unsqueeze(0)) ** 2).sum(dim=2)


class MahalanobisScorer:
    """Per-layer Mahalanobis confidence ``-min_c d_c^2`` with Lee et al.'s input perturbation.

    ``layers="penultimate"`` uses ``model.features``; ``"all"`` every map of ``model.feature_maps``
    pooled by channel means (the last one equals the penultimate features).
    """

    def __init__(self, model: nn.Module, layers: str = "penultimate"):
        if layers not in ("penultimate", "all"):
            raise ConfigError(f"layers must be 'penultimate' or 'all', got {layers!r} instead")
        self.model = model
        self.layers = layers

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.layers == "penultimate":
            return [self.model.features(x).float()]
        return [m.float().mean(dim=(2, 3)) for m in self.model.feature_maps(x)]

    @torch.no_grad()
    def fit(self, data, indices=None, *, batch_size: int = 512) -> "MahalanobisScorer":
        """Class means and tied precision per layer from labeled ``data`` (the training split)."""
        self.model.eval()
        parts: list[list[torch.Tensor]] = []
        labels = []
        for x, y, _ in data.eval_batches(indices, batch_size):
            feats = self._features(x)
            if not parts:
                parts = [[] for _ in feats]
            for store, f in zip(parts, feats):
                store.append(f.double().cpu())
            labels.append(y.cpu())
        y = torch.cat(labels).numpy()
        k = int(self.model.num_classes)
        self.means_, self.whiteners_, self.precisions_ = [], [], []
        for store in parts:
            means, precision = class_gaussian(torch.cat(store).numpy(), y, k)
            self.precisions_.append(precision)
            self.means_.append(torch.tensor(means, dtype=torch.float32, device=data.device))
            self.whiteners_.append(torch.tensor(_whitener(precision), dtype=torch.float32, device=data.device))
        self.n_layers_ = len(parts)
        return self

    def layer_scores(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L) scores ``-min_c d_c^2`` per layer, without perturbation."""
        feats = self._features(x)
        return torch.stack([-mahalanobis_sq(f, m, w).min(dim=1).values
                            for f, m, w in zip(feats, self.means_, self.whiteners_)], dim=1)

    def score_grid(self, data, indices, epsilons: Sequence[float], *, batch_size: int = 256
                   ) -> dict[float, np.ndarray]:
        """For each epsilon, (n, L) per-layer scores after that layer's own perturbation."""
        self.model.eval()
        inv_std = _inv_std(data)
        out: dict[float, list[torch.Tensor]] = {float(e): [] for e in epsilons}
        for x, _, _ in data.eval_batches(indices, batch_size):
            x_in = x.detach().clone().requires_grad_(True)
            steps = []
            with torch.enable_grad():
                feats = self._features(x_in)
                for i, (f, m, w) in enumerate(zip(feats, self.means_, self.whiteners_)):
                    loss = mahalanobis_sq(f, m, w).min(dim=1).values.sum()
                    (grad,) = torch.autograd.grad(loss, x_in, retain_graph=i < len(feats) - 1)
                    steps.append(torch.sign(grad) * inv_std)
                base = torch.stack([-mahalanobis_sq(f.detach(), m, w).min(dim=1).values
                                    for f, m, w in zip(feats, self.means_, self.whiteners_)], dim=1)
            with torch.no_grad():
                for e in out:
                    if e == 0:
                        out[e].append(base.cpu())
                        continue
                    cols = []
                    for layer, step in enumerate(steps):
                        f = self._features(x - e * step)[layer]
                        cols.append(-mahalanobis_sq(f, self.means_[layer], self.whiteners_[layer]).min(dim=1).values)
                    out[e].append(torch.stack(cols, dim=1).cpu())
        return {e: (torch.cat(v).double().numpy() if v else np.zeros((0, self.n_layers_))) for e, v in out.items()}


# ============================================================================ tuning


def _criterion(metrics: dict) -> tuple:
    return (metrics["fpr95"], metrics["detection_error"], -metrics["auroc"])


def select_best(candidates: list[dict]) -> int:
    """Index of the best candidate by (fpr95, detection_error, -auroc); ties go to the earlier one."""
    if not candidates:
        raise ConfigError("no candidate settings to tune over; give at least one temperature and epsilon")
    return min(range(len(candidates)), key=lambda i: (_criterion(candidates[i]["metrics"]), i))


def _fit_combiner(scores_in: np.ndarray, scores_out: np.ndarray, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate([scores_in, scores_out])
    y = np.concatenate([np.ones(len(scores_in)), np.zeros(len(scores_out))])
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed)).fit(x, y)


# ============================================================================ data


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


def load_ood_images(spec: str, *, channels: int, size: int, data_dir=None, n_synthetic: int = 10000,
                    seed: int = 0) -> torch.Tensor:
    """OOD images for a model: a synthetic set name, a registered dataset name (its test split), or an
    image folder / archive (``load_image_folder``), converted to ``channels`` x ``size`` x ``size``."""
    from .data import DATASETS, load_dataset, load_image_folder

    spec = str(spec)
    if spec in SYNTHETIC_SETS:
        return synthetic_images(spec, n_synthetic, channels, size, seed)
    path = Path(spec).expanduser()
    if not path.exists() and "/" not in spec and spec in DATASETS:
        return _convert(load_dataset(spec, data_dir=data_dir).test_images, channels, size)
    if not path.exists():
        raise DataError(f"OOD set must be an image folder or archive, a dataset name ({', '.join(DATASETS.names())}) "
                        f"or a synthetic set ({', '.join(SYNTHETIC_SETS)}), got {spec!r} instead (no such path)")
    images = load_image_folder(path, data_dir, size=size, channels=channels)
    if images.shape[0] == 0:
        raise DataError(f"{spec} holds no images")
    return images


# ============================================================================ the run


def _subset(rng: np.random.Generator, n: int, k: int | None) -> np.ndarray:
    if k is None or k >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=k, replace=False))


def run_ood(config: OODConfig, *, progress: Callable[[str], None] | None = None) -> OODResult:
    """Score the run's in-distribution test split and the OOD set with ``config.detector``."""
    from .data import DeviceData, load_dataset
    from .experiment import load_trained
    from .runtime import configure_backends, resolve_device

    say = progress or (lambda msg: None)
    start = time.perf_counter()
    device = resolve_device(config.device)
    configure_backends(device)
    model, info, run_cfg = load_trained(config.run, device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)  # only input gradients are needed
    data_dir = config.data_dir or run_cfg.get("data_dir")
    ds_spec = run_cfg.get("dataset") or info.get("dataset")
    say(f"loading in-distribution data {ds_spec}")
    dataset = load_dataset(ds_spec, data_dir=data_dir)
    c, size, k = int(info["in_channels"]), int(info["image_size"]), int(info["num_classes"])
    if dataset.num_classes != k or dataset.in_channels != c or dataset.image_size != size:
        raise DataError(f"dataset {ds_spec!r} must match the model ({k} classes, {c}x{size}x{size}), got "
                        f"{dataset.num_classes} classes, {dataset.in_channels}x{dataset.image_size}x{dataset.image_size} "
                        "instead; pass --data-dir of the run's data")
    mean, std = info["mean"], info["std"]

    def device_data(images, labels=None):
        return DeviceData(images, labels, mean, std, augment=False, device=device)

    test = device_data(dataset.test_images, dataset.test_labels)
    say(f"loading OOD set {config.ood}")
    ood_images = load_ood_images(config.ood, channels=c, size=size, data_dir=data_dir,
                                 n_synthetic=dataset.n_test, seed=config.seed + 1)
    ood = device_data(ood_images)

    rng = np.random.default_rng(config.seed)
    tunable = config.detector in ("odin", "mahalanobis")
    n_tune_in = min(config.n_tune, dataset.n_test // 2)
    if n_tune_in < config.n_tune:
        logger.warning("n_tune %d reduced to %d: half of the %d in-distribution test images", config.n_tune,
                       n_tune_in, dataset.n_test)
    perm = rng.permutation(dataset.n_test)
    tune_in, eval_in = np.sort(perm[:n_tune_in]), np.sort(perm[n_tune_in:])
    rest_in = np.sort(perm[n_tune_in:])
    protocol: dict = {
        "in_distribution_tuning": f"{n_tune_in} random images of the in-distribution test split (seed {config.seed}), "
                                  "excluded from the evaluation",
    }
    if config.tune_on_test_ood:
        n_tune_out = min(config.n_tune, ood.n // 2)
        perm_out = rng.permutation(ood.n)
        tune_out_idx, eval_out = np.sort(perm_out[:n_tune_out]), np.sort(perm_out[n_tune_out:])
        val_out = ood
        protocol.update(name="test OOD (paper protocol, Lee et al. 2018)", tuned_on_test_ood=True,
                        ood_tuning=f"{n_tune_out} random images of the test OOD set {config.ood}, excluded from the "
                                   "evaluation")
    else:
        eval_out = np.arange(ood.n)
        val_spec = config.ood_val
        if val_spec == "fgsm":
            # adversarial images made from in-distribution test images that are neither tuned on nor evaluated
            n_adv = min(config.n_tune, rest_in.size // 2)
            adv_src, eval_in = np.sort(rest_in[:n_adv]), np.sort(rest_in[n_adv:])
            val_images = fgsm_images(model, test, torch.from_numpy(adv_src), config.fgsm_epsilon,
                                     batch_size=config.batch_size)
            ood_tuning = (f"{n_adv} FGSM images (pixel step {config.fgsm_epsilon}) of other in-distribution test "
                          "images, excluded from the evaluation")
        else:
            if val_spec in SYNTHETIC_SETS and config.ood in SYNTHETIC_SETS:
                logger.warning("the OOD tuning set (%s) and the test OOD set (%s) are both synthetic noise: other "
                               "samples, but possibly the same distribution", val_spec, config.ood)
            if val_spec not in SYNTHETIC_SETS:
                same = Path(val_spec).expanduser().resolve() == Path(config.ood).expanduser().resolve()
                if same or val_spec == config.ood:
                    raise ConfigError("ood_val must differ from the test OOD set, got the same "
                                      f"{val_spec!r} for both; to tune on the test OOD set use --tune-on-test-ood "
                                      "(the paper's protocol)")
            val_images = load_ood_images(val_spec, channels=c, size=size, data_dir=data_dir,
                                         n_synthetic=config.n_tune, seed=config.seed + 2)
            ood_tuning = (f"{min(config.n_tune, val_images.shape[0])} images of {val_spec}"
                          + (" (synthetic)" if val_spec in SYNTHETIC_SETS else ""))
        val_out = device_data(val_images)
        tune_out_idx = _subset(rng, val_out.n, config.n_tune)
        protocol.update(name=f"validation ({_ood_name(val_spec)})", tuned_on_test_ood=False, ood_tuning=ood_tuning)
    if not tunable:
        protocol["note"] = f"{config.detector} has no tuned hyper-parameters; the same evaluation split is used"
    eval_in = eval_in[_subset(rng, eval_in.size, config.max_samples)]
    eval_out = eval_out[_subset(rng, eval_out.size, config.max_samples)]
    protocol["criterion"] = "lowest FPR at 95% TPR on the tuning data (ties: detection error, AUROC, grid order)"
    if config.max_samples is not None:
        protocol["max_samples"] = f"evaluation on at most {config.max_samples} random samples per side"

    bs = config.batch_size
    t_in, t_out = torch.from_numpy(tune_in), torch.from_numpy(tune_out_idx)
    e_in, e_out = torch.from_numpy(eval_in), torch.from_numpy(eval_out)
    tuning: list[dict] = []
    params: dict = {}
    det = config.detector
    if det == "msp":
        say("scoring (MSP)")
        score_in = msp_score(_logits(model, test, e_in, bs)).double().numpy()
        score_out = msp_score(_logits(model, ood, e_out, bs)).double().numpy()
    elif det == "energy":
        say("scoring (energy)")
        t = config.energy_temperature
        params = {"temperature": t}
        score_in = energy_score(_logits(model, test, e_in, bs), t).double().numpy()
        score_out = energy_score(_logits(model, ood, e_out, bs), t).double().numpy()
    elif det == "odin":
        grid = list(itertools.product(config.temperatures, config.epsilons))
        protocol["grid"] = {"temperature": list(config.temperatures), "epsilon": list(config.epsilons)}
        say(f"tuning ODIN over {len(grid)} settings on {len(tune_in)} + {len(tune_out_idx)} images")
        s_in = odin_score_grid(model, test, t_in, grid, batch_size=bs)
        s_out = odin_score_grid(model, val_out, t_out, grid, batch_size=bs)
        for (t, e), a, b in zip(grid, s_in, s_out):
            tuning.append({"params": {"temperature": t, "epsilon": e}, "metrics": ood_metrics(a, b)})
        best = tuning[select_best(tuning)]["params"]
        params = dict(best)
        say(f"scoring (ODIN T={best['temperature']:g}, eps={best['epsilon']:g})")
        setting = [(best["temperature"], best["epsilon"])]
        score_in = odin_score_grid(model, test, e_in, setting, batch_size=bs)[0]
        score_out = odin_score_grid(model, ood, e_out, setting, batch_size=bs)[0]
    else:  # mahalanobis
        scorer = MahalanobisScorer(model, "all" if config.feature_ensemble else "penultimate")
        say("fitting class means and tied covariance on the training split")
        scorer.fit(device_data(dataset.train_images, dataset.train_labels), batch_size=max(bs, 512))
        protocol["grid"] = {"epsilon": list(config.epsilons)}
        say(f"tuning Mahalanobis over {len(config.epsilons)} epsilons on {len(tune_in)} + {len(tune_out_idx)} images")
        g_in = scorer.score_grid(test, t_in, config.epsilons, batch_size=bs)
        g_out = scorer.score_grid(val_out, t_out, config.epsilons, batch_size=bs)
        combine = scorer.n_layers_ > 1
        if combine:
            # fit the combiner on one half of the tuning data, choose epsilon on the other half
            ha = np.random.default_rng(config.seed).permutation(len(tune_in)) < len(tune_in) // 2
            hb = np.random.default_rng(config.seed + 1).permutation(len(tune_out_idx)) < len(tune_out_idx) // 2
            protocol["combiner"] = ("logistic regression on standardised per-layer scores, fitted on half of the "
                                    "tuning data (epsilon chosen on the other half), then refitted on all of it")
        for e in config.epsilons:
            e = float(e)
            if combine:
                lr = _fit_combiner(g_in[e][ha], g_out[e][hb], config.seed)
                m = ood_metrics(lr.decision_function(g_in[e][~ha]), lr.decision_function(g_out[e][~hb]))
            else:
                m = ood_metrics(g_in[e][:, 0], g_out[e][:, 0])
            tuning.append({"params": {"epsilon": e}, "metrics": m})
        eps = tuning[select_best(tuning)]["params"]["epsilon"]
        params = {"epsilon": eps, "layers": "all feature maps" if combine else "penultimate",
                  "n_layers": scorer.n_layers_}
        say(f"scoring (Mahalanobis eps={eps:g})")
        l_in = scorer.score_grid(test, e_in, [eps], batch_size=bs)[eps]
        l_out = scorer.score_grid(ood, e_out, [eps], batch_size=bs)[eps]
        if combine:
            lr = _fit_combiner(g_in[eps], g_out[eps], config.seed)
            params["combiner_weights"] = lr[-1].coef_.ravel().tolist()
            score_in, score_out = lr.decision_function(l_in), lr.decision_function(l_out)
        else:
            score_in, score_out = l_in[:, 0], l_out[:, 0]
    metrics = ood_metrics(score_in, score_out)
    train = run_cfg.get("train", {}) if isinstance(run_cfg.get("train"), dict) else {}
    run_info = {
        "run": str(config.run),
        "dataset": info.get("dataset") or ds_spec,
        "dataset_spec": ds_spec,
        "model": info.get("model"),
        "trainer": run_cfg.get("trainer"),
        "method": run_cfg.get("method", "plain"),
        "crl_weight": train.get("crl_weight"),
        "rank_target": train.get("rank_target"),
        "epochs": train.get("epochs"),
        "seed": train.get("seed"),
        "ood_set": _ood_name(config.ood),
        "ood_spec": str(config.ood),
        "config": run_cfg,
    }
    logger.info("%s on %s vs %s: %s", det, run_info["dataset"], run_info["ood_set"], metrics)
    return OODResult(config, metrics, np.asarray(score_in, np.float64), np.asarray(score_out, np.float64),
                     eval_in, eval_out, params, protocol, tuning, run_info, time.perf_counter() - start)


def save_ood(result: OODResult, out: Path | str, *, overwrite: bool = False) -> Path:
    """Write ``scores.npz`` and ``ood.json`` (last: its presence marks a finished run) into ``out``."""
    out = prepare_out_dir(Path(out), marker="ood.json", overwrite=overwrite)
    atomic_savez(out / "scores.npz", score_in=result.score_in, score_out=result.score_out,
                 index_in=result.index_in, index_out=result.index_out)
    atomic_write_json(out / "ood.json", to_jsonable(result.to_json()))
    return out


def read_ood(run_dir: Path | str) -> dict:
    import json

    path = Path(run_dir) / "ood.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir} holds no ood.json; pass the --out folder of a finished `activecrl ood` run")
    return json.loads(path.read_text())
