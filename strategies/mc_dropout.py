"""MC dropout (Gal & Ghahramani 2016) sampling: predictive entropy and BALD.

``T`` stochastic passes with only the Dropout modules in train mode (BatchNorm and everything
else stay in eval mode, so running statistics are untouched). When the model promises that all
of its dropout sits in ``model.classifier`` (``head_only_dropout``), the body is deterministic
and its output is already in ``context.pool.features``: the ``T`` samples then only rerun the
classifier head on those cached features, which is the same computation as ``T`` full passes at a
small fraction of the cost. Otherwise ``T`` full passes go over ``context.data``.

Both paths draw their dropout masks in the same order (pass by pass, batch by batch of
``context.batch_size`` rows), so with the same seed they give the same samples. Seeding happens
inside ``torch.random.fork_rng``: results are reproducible from the strategy's ``rng`` and the
global torch RNG state is left as it was.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.modules.dropout import _DropoutNd

from activecrl.errors import ConfigError

from .base import QueryContext, Strategy, register_strategy, select_top

logger = logging.getLogger(__name__)

__all__ = ["MCDropoutStats", "mc_dropout_stats", "mc_probs", "MCDropoutStrategy", "BALDStrategy"]


@dataclass
class MCDropoutStats:
    mean_probs: torch.Tensor  # (n, K) float64 CPU: mean over samples of softmax
    mean_entropy: torch.Tensor  # (n,) float64 CPU: mean over samples of each sample's entropy
    n_samples: int
    head_only: bool  # True when only the classifier head was resampled

    @property
    def predictive_entropy(self) -> torch.Tensor:
        p = self.mean_probs
        return -torch.special.xlogy(p, p).sum(dim=1)

    @property
    def mutual_information(self) -> torch.Tensor:
        return self.predictive_entropy - self.mean_entropy


def _active_dropouts(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, _DropoutNd) and m.p > 0]


def _dropout_outside_classifier(model: nn.Module, active: list[nn.Module]) -> bool:
    classifier = getattr(model, "classifier", None)
    if not isinstance(classifier, nn.Module):
        return True
    inside = {id(m) for m in classifier.modules()}
    return any(id(m) not in inside for m in active)


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    for p in model.parameters():
        return p.device
    return fallback


@contextlib.contextmanager
def _dropout_only_train(model: nn.Module):
    """eval() everywhere, train() on Dropout modules only; every module's mode restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    for m in model.modules():
        if isinstance(m, _DropoutNd):
            m.train()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def _seeded(device: torch.device, seed: int):
    """Seed the RNG that dropout on ``device`` uses, restoring the global state afterwards."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        with torch.random.fork_rng(devices=[index], device_type="cuda"):
            torch.default_generator.manual_seed(seed)
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
            yield
    else:
        with torch.random.fork_rng(devices=[]):
            if device.type == "cpu":
                torch.default_generator.manual_seed(seed)
            else:  # mps and others: the global seed reaches them
                torch.manual_seed(seed)
            yield


def _seed_from(seed) -> int:
    if isinstance(seed, np.random.Generator):
        return int(seed.integers(2**63 - 1))
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigError(f"seed must be an integer or a numpy Generator, got {seed!r} instead")
    return int(seed)


def _check_n_samples(n_samples, minimum: int = 1) -> int:
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < minimum:
        raise ConfigError(f"n_samples must be an integer >= {minimum}, got {n_samples!r} instead")
    return int(n_samples)


@torch.no_grad()
def mc_dropout_stats(model: nn.Module | None, context: QueryContext, n_samples: int = 50, seed=0,
                     head_only: bool | None = None, amp: bool = True) -> MCDropoutStats:
    """Mean softmax and mean per-sample entropy over ``n_samples`` dropout samples of the pool.

    ``head_only``: None picks the head path when ``model.head_only_dropout`` is True and pool
    features are present; True/False force the head path / full passes over ``context.data``.
    ``seed``: int or ``np.random.Generator`` (one int is drawn from it). ``amp``: bfloat16
    autocast on CUDA, as in ``activecrl.inference.predict``.
    """
    n_samples = _check_n_samples(n_samples)
    if model is None:
        raise ConfigError("MC dropout needs the trained model in context.model, got None instead")
    active = _active_dropouts(model)
    if not active:
        rates = [m.p for m in model.modules() if isinstance(m, _DropoutNd)]
        raise ConfigError(
            f"mc_dropout needs a model with dropout before its classifier, got dropout rate "
            f"{max(rates, default=0.0):g}; train with --dropout 0.3 (build_model(..., dropout=0.3)) "
            f"or choose another strategy"
        )
    outside = _dropout_outside_classifier(model, active)
    features = context.pool.features
    if head_only is None:
        promised = bool(getattr(model, "head_only_dropout", False))
        if promised and outside:
            logger.warning("model.head_only_dropout is True but some Dropout modules are outside "
                           "model.classifier; using full passes")
        head_only = promised and not outside and features is not None
        if promised and features is None:
            logger.info("pool outputs have no features; MC dropout falls back to full passes")
    elif head_only:
        if outside:
            raise ConfigError("head-only MC dropout needs every Dropout module inside model.classifier, "
                              "got dropout in the body instead; use head_only=False")
        if features is None:
            raise ConfigError("head-only MC dropout needs context.pool.features, got None instead; "
                              "compute them with predict(..., features=True)")
    if not head_only and context.data is None:
        raise ConfigError(
            "MC dropout over a model with dropout in its body needs full passes over the pool: "
            "context.data must be the training split's DeviceData, got None instead"
        )

    device = _model_device(model, context.device)
    n = len(context.pool)
    acc = torch.float32 if device.type == "mps" else torch.float64
    sum_p = torch.zeros((n, context.pool.logits.shape[1]), dtype=acc, device=device)
    sum_h = torch.zeros(n, dtype=acc, device=device)
    bs = context.batch_size
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda")

    def accumulate(logits, where):
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        logp = torch.log_softmax(logits.to(acc), dim=1)
        p = logp.exp()
        h = -(p * logp).sum(dim=1)
        if isinstance(where, slice):
            sum_p[where] += p
            sum_h[where] += h
        else:
            sum_p.index_add_(0, where, p)
            sum_h.index_add_(0, where, h)

    with _dropout_only_train(model), _seeded(device, _seed_from(seed)):
        if head_only:
            feats = features.to(device)
            for _ in range(n_samples):
                for start in range(0, n, bs):
                    with autocast:
                        logits = model.classifier(feats[start:start + bs])
                    accumulate(logits, slice(start, start + bs))
        else:
            pool_idx = context.pool.indices.to(device)
            sorter = torch.argsort(pool_idx)
            sorted_idx = pool_idx[sorter]
            for t in range(n_samples):
                seen = 0
                for x, _, idx in context.data.eval_batches(context.pool.indices, bs):
                    x = x.to(device, non_blocking=True)
                    idx = torch.as_tensor(idx, device=device)
                    pos = sorter[torch.searchsorted(sorted_idx, idx).clamp_max(n - 1)]
                    if t == 0 and not torch.equal(pool_idx[pos], idx):
                        raise ConfigError("context.data.eval_batches yielded indices that are not in "
                                          "context.pool.indices; data must be the training split")
                    with autocast:
                        logits = model(x)
                    accumulate(logits, pos)
                    seen += idx.numel()
                if seen != n:
                    raise ConfigError(f"context.data.eval_batches must cover the {n} pool samples, "
                                      f"got {seen} instead")
    logger.debug("MC dropout: %d samples of %d pool points (%s)", n_samples, n,
                 "head only" if head_only else "full passes")
    return MCDropoutStats(
        mean_probs=(sum_p / n_samples).double().cpu(),
        mean_entropy=(sum_h / n_samples).double().cpu(),
        n_samples=n_samples,
        head_only=bool(head_only),
    )


def mc_probs(model: nn.Module | None, context: QueryContext, n_samples: int = 50, seed=0,
             head_only: bool | None = None) -> torch.Tensor:
    """Mean softmax over ``n_samples`` dropout samples, (n, K) float64 CPU."""
    return mc_dropout_stats(model, context, n_samples, seed, head_only).mean_probs


@register_strategy("mc_dropout")
class MCDropoutStrategy(Strategy):
    """Highest entropy of the mean softmax over ``n_samples`` MC dropout samples."""

    requires_dropout = True
    _min_samples = 1

    def __init__(self, n_samples: int = 50):
        self.n_samples = n_samples

    def scores(self, stats: MCDropoutStats) -> torch.Tensor:
        return stats.predictive_entropy

    def select(self, context: QueryContext, budget: int, rng: np.random.Generator) -> np.ndarray:
        stats = mc_dropout_stats(context.model, context, _check_n_samples(self.n_samples, self._min_samples),
                                 seed=rng)
        return select_top(self.scores(stats), context.pool.indices, budget)


@register_strategy("bald")
class BALDStrategy(MCDropoutStrategy):
    """Highest mutual information between prediction and weights (Houlsby et al. 2011):
    entropy of the mean softmax minus the mean of the per-sample entropies."""

    _min_samples = 2  # one sample has zero mutual information everywhere

    def scores(self, stats: MCDropoutStats) -> torch.Tensor:
        return stats.mutual_information
