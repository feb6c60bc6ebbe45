"""MC dropout sampling (Gal & Ghahramani 2016): the one engine behind the ``mc_dropout`` and
``bald`` strategies (``strategies/mc_dropout.py``) and ``activecrl train --method mc_dropout |
aleatoric`` (:func:`activecrl.methods.mc_dropout_probs`).

Only dropout is stochastic. The ``T`` samples are passes with every module in eval mode except
the Dropout modules (:func:`dropout_only_train`): BatchNorm keeps using, and never updates, its
running statistics, so the samples differ only by their dropout masks, which is the posterior
approximation MC dropout stands for, and the model is left exactly as it was.

Head-only sampling is exact. When every active Dropout sits in ``model.classifier``
(:func:`dropout_only_in_head`) and the model promises it (``model.head_only_dropout``), the body
is deterministic in that mode, so its output, the penultimate features, is the same in every
pass. Rerunning only the classifier on features computed once is then the same computation as
``T`` full passes, at a small fraction of the cost.

Both paths draw the same masks. They walk the rows in the same order, pass by pass and batch by
batch of ``batch_size`` rows, and the head's Dropout is the only RNG consumer in either, so with
one seed they consume the generator identically and give the same samples (up to float rounding
between the two computations of the features).

Seeding never touches global RNG state. :func:`seeded` forks the RNG of the CPU and of the one
CUDA device used (``torch.random.fork_rng``) and seeds only the generator that dropout on that
device draws from; on exit both are restored. Runs are reproducible from ``seed`` alone, and code
after a query or an evaluation sees the RNG state it would have seen without it.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.modules.dropout import _DropoutNd

from .errors import ConfigError
from .inference import predict

logger = logging.getLogger(__name__)

__all__ = ["MCDropoutStats", "mc_dropout_stats", "dropout_only_train", "seeded", "active_dropouts",
           "dropout_only_in_head", "check_n_samples"]


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
        """BALD (Houlsby et al. 2011): entropy of the mean minus the mean of the entropies."""
        return self.predictive_entropy - self.mean_entropy


def active_dropouts(model: nn.Module) -> list[nn.Module]:
    """The Dropout modules of ``model`` with a rate above 0."""
    return [m for m in model.modules() if isinstance(m, _DropoutNd) and m.p > 0]


def dropout_only_in_head(model: nn.Module) -> bool:
    """Whether every active Dropout module lives inside ``model.classifier``."""
    classifier = getattr(model, "classifier", None)
    inside = {id(m) for m in classifier.modules()} if isinstance(classifier, nn.Module) else set()
    return all(id(m) in inside for m in active_dropouts(model))


@contextlib.contextmanager
def dropout_only_train(model: nn.Module):
    """eval() everywhere, train() on Dropout modules only; every module's mode restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    for m in model.modules():
        if isinstance(m, _DropoutNd):
            m.train()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def seeded(device: torch.device, seed: int):
    """Seed the generator that dropout on ``device`` uses; the global RNG state is restored after."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        with torch.random.fork_rng(devices=[index], device_type="cuda"):
            torch.default_generator.manual_seed(seed)
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)  # this device only, not manual_seed_all
            yield
    else:
        with torch.random.fork_rng(devices=[]):
            if device.type == "cpu":
                torch.default_generator.manual_seed(seed)  # not torch.manual_seed: it also seeds CUDA
            else:  # mps and others: only the global seed reaches them
                torch.manual_seed(seed)
            yield


def check_n_samples(n_samples, minimum: int = 1, name: str = "n_samples") -> int:
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {n_samples!r} instead")
    return int(n_samples)


def _seed_from(seed) -> int:
    if isinstance(seed, np.random.Generator):
        return int(seed.integers(2**63 - 1))
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigError(f"seed must be an integer or a numpy Generator, got {seed!r} instead")
    return int(seed)


def _resolve_head_only(model: nn.Module, head_only: bool | None) -> bool:
    in_head = dropout_only_in_head(model)
    if head_only is None:
        promised = bool(getattr(model, "head_only_dropout", False))
        if promised and not in_head:
            logger.warning("model.head_only_dropout is True but some Dropout modules are outside "
                           "model.classifier; using full passes")
        return promised and in_head
    if head_only and not in_head:
        raise ConfigError("head-only MC dropout needs every Dropout module inside model.classifier, "
                          "got dropout in the body instead; use head_only=False")
    return bool(head_only)


@torch.no_grad()
def mc_dropout_stats(model: nn.Module, data, indices=None, *, features: torch.Tensor | None = None,
                     n_samples: int = 50, seed=0, batch_size: int = 1024, head_only: bool | None = None,
                     amp: bool = True) -> MCDropoutStats:
    """Mean softmax and mean per-sample entropy over ``n_samples`` dropout samples of ``indices``
    (default: all rows) of ``data`` (a ``DeviceData``, or anything with ``eval_batches``).

    ``head_only``: None samples only ``model.classifier`` when ``model.head_only_dropout`` holds
    and all dropout is in the classifier, else full passes; True/False force one path.
    ``features``: cached eval-mode penultimate features of ``indices`` for the head path; when
    None they are computed once here with ``predict``. ``seed``: int or ``np.random.Generator``
    (one int is drawn from it). ``amp``: bfloat16 autocast on CUDA, as in ``predict``. Rows come
    out in the order of ``indices``.
    """
    n_samples = check_n_samples(n_samples)
    batch_size = check_n_samples(batch_size, name="batch_size")
    if not active_dropouts(model):
        rates = [m.p for m in model.modules() if isinstance(m, _DropoutNd)]
        raise ConfigError(
            f"MC dropout needs a model with dropout before its classifier, got dropout rate "
            f"{max(rates, default=0.0):g}; train with --dropout 0.3 (build_model(..., dropout=0.3))"
        )
    head_only = _resolve_head_only(model, head_only)
    if data is None and not (head_only and features is not None):
        raise ConfigError(
            "MC dropout " + ("needs the features of the pool" if head_only else "needs full passes over the pool")
            + ": data (context.data for a strategy) must be the training split's DeviceData, got None instead")
    device = next((p.device for p in model.parameters()), None)
    if device is None:  # a parameterless model: run where the data is
        device = getattr(data, "device", None) or torch.device("cpu")
    if head_only and features is None:
        features = predict(model, data, indices, batch_size=batch_size, features=True, amp=amp).features
    if indices is None:
        n = features.shape[0] if head_only else data.n
        idx_all = torch.arange(n, device=device)
    else:
        idx_all = torch.as_tensor(indices, dtype=torch.long).to(device)
        n = idx_all.numel()
    if head_only and features.shape[0] != n:
        raise ConfigError(f"features must have one row per index ({n}), got {features.shape[0]} instead")

    acc = torch.float32 if device.type == "mps" else torch.float64  # mps has no float64
    sums = []  # [sum of softmax (n, K), sum of entropies (n,)], allocated once K is known
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda")

    def accumulate(logits, where):
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        z = logits.to(acc)
        p, logp = torch.softmax(z, dim=1), torch.log_softmax(z, dim=1)
        h = -(p * logp).sum(dim=1)
        if not sums:
            sums.extend([torch.zeros((n, z.shape[1]), dtype=acc, device=device),
                         torch.zeros(n, dtype=acc, device=device)])
        if isinstance(where, slice):
            sums[0][where] += p
            sums[1][where] += h
        else:
            sums[0].index_add_(0, where, p)
            sums[1].index_add_(0, where, h)

    with dropout_only_train(model), seeded(device, _seed_from(seed)):
        if head_only:
            feats = features.to(device)
            for _ in range(n_samples):
                for start in range(0, n, batch_size):
                    with autocast:
                        logits = model.classifier(feats[start:start + batch_size])
                    accumulate(logits, slice(start, start + batch_size))
        else:
            # eval_batches yields the rows in the given order; map them back by index anyway, so
            # the rows land where they belong and a data object that skips some is caught
            sorter = torch.argsort(idx_all)
            sorted_idx = idx_all[sorter]
            for t in range(n_samples):
                seen = 0
                for x, _, idx in data.eval_batches(indices, batch_size):
                    x = x.to(device, non_blocking=True)
                    idx = torch.as_tensor(idx, device=device)
                    pos = sorter[torch.searchsorted(sorted_idx, idx).clamp_max(max(n - 1, 0))]
                    if t == 0 and not torch.equal(idx_all[pos], idx):
                        raise ConfigError("data.eval_batches yielded indices that are not among the indices "
                                          "asked for; data must be the split the indices refer to")
                    with autocast:
                        logits = model(x)
                    accumulate(logits, pos)
                    seen += idx.numel()
                if seen != n:
                    raise ConfigError(f"data.eval_batches must cover the {n} indices asked for, got {seen} instead")
    if not sums:  # no rows
        k = int(getattr(model, "num_classes", 0) or 1)
        sums = [torch.zeros((0, k), dtype=acc), torch.zeros(0, dtype=acc)]
    logger.debug("MC dropout: %d samples of %d rows (%s)", n_samples, n, "head only" if head_only else "full passes")
    return MCDropoutStats(mean_probs=(sums[0] / n_samples).double().cpu(),
                          mean_entropy=(sums[1] / n_samples).double().cpu(),
                          n_samples=n_samples, head_only=head_only)
