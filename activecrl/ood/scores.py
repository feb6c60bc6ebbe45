"""OOD scores of a classifier; every score is "higher = more in-distribution".

``msp`` (Hendrycks & Gimpel 2017)
    the maximum softmax probability.
``odin`` (Liang et al. 2018)
    ``max_k softmax(f(x~) / T)_k`` with ``x~ = x - eps * sign(-grad_x log S_yhat(x; T))``. The step is
    taken in [0, 1] pixel space: in the normalised input space the gradient sign is divided by the
    dataset's per-channel std, as the original code does. T and eps are tuned (``run.py``).
``mahalanobis`` (Lee et al. 2018)
    class means and one tied covariance of training-set features (penultimate layer; with
    ``feature_ensemble`` every block of ``model.feature_maps`` pooled by channel means);
    ``M(x) = -min_c (f(x) - mu_c)^T Sigma^-1 (f(x) - mu_c)`` after the input perturbation
    ``x~ = x - eps * sign(grad_x min_c d_c(x)) / std``. With several layers a logistic regression on
    the per-layer scores, fitted on the tuning data, combines them (``run.py``). eps is tuned.
``energy`` (Liu et al. 2020)
    ``T * logsumexp(logits / T)`` with ``energy_temperature`` (1, not tuned).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from activecrl.core.errors import ConfigError, DataError


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
