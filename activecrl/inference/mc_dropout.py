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

Logit sampling (``logit_noise=True``, the ``aleatoric`` method, Kendall & Gal 2017). The model
also has ``model.log_var_head``, a Linear on the penultimate features giving log sigma^2 (per
sample or per class). In each pass the mean logits mu_t (the classifier, under that pass's
dropout mask) and sigma_t (the variance head on the same pass's features) give one draw
``mu_t + sigma_t * eps_t``, ``eps_t ~ N(0, I)`` per row, and the softmax of that draw is what is
averaged. The variance head sits on the features, before the classifier's Dropout, exactly as in
training (``trainers._MeanAndLogVar``), so on the head-only path sigma is computed once per row
and only the classifier is resampled. ``eps`` comes from its own ``torch.Generator`` (on the CPU,
seeded from ``seed``, one (n, K) draw per pass, indexed by row), never from the generator dropout
uses: the dropout masks are the ones plain MC dropout draws with the same seed, so sigma -> 0
gives plain MC dropout, and the noise does not depend on the batch size, the path or the device.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.modules.dropout import _DropoutNd

from activecrl.core.errors import ConfigError
from activecrl.inference.predict import predict
from activecrl.models import active_dropouts, dropout_only_in_head
from activecrl.core.validate import check_int

logger = logging.getLogger(__name__)

__all__ = ["MCDropoutStats", "mc_dropout_stats", "dropout_only_train", "seeded", "active_dropouts",
           "dropout_only_in_head", "DEFAULT_MC_DROPOUT"]


# The dropout rate put before the classifier when MC sampling needs dropout and the user set
# none (0.3 is a common rate for MC-dropout heads; the paper does not state its rate). Used by
# the active-learning loop (mc_dropout/bald strategies) and by `train --method mc_dropout|aleatoric`.
DEFAULT_MC_DROPOUT = 0.3

@dataclass
class MCDropoutStats:
    mean_probs: torch.Tensor  # (n, K) float64 CPU: mean over samples of softmax
    mean_entropy: torch.Tensor  # (n,) float64 CPU: mean over samples of each sample's entropy
    n_samples: int
    head_only: bool  # True when only the classifier head was resampled
    logit_noise: bool = False  # True when each pass sampled its logits from N(mu, sigma^2)

    @property
    def predictive_entropy(self) -> torch.Tensor:
        p = self.mean_probs
        return -torch.special.xlogy(p, p).sum(dim=1)

    @property
    def mutual_information(self) -> torch.Tensor:
        """BALD (Houlsby et al. 2011): entropy of the mean minus the mean of the entropies."""
        return self.predictive_entropy - self.mean_entropy


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


def _seed_from(seed) -> int:
    if isinstance(seed, np.random.Generator):
        return int(seed.integers(2**63 - 1))
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigError(f"seed must be an integer or a numpy Generator, got {seed!r} instead")
    return int(seed)


def _noise_seed(seed: int) -> int:
    """Seed of the logit-noise generator: derived from ``seed`` but not equal to it, so the noise
    stream is not the (CPU) dropout stream seeded with ``seed``."""
    state = np.random.SeedSequence([seed % 2**64, 0x4B656E64616C6C]).generate_state(1, np.uint64)
    return int(state[0])


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
                     amp: bool = False, logit_noise: bool = False) -> MCDropoutStats:
    """Mean softmax and mean per-sample entropy over ``n_samples`` dropout samples of ``indices``
    (default: all rows) of ``data`` (a ``DeviceData``, or anything with ``eval_batches``).

    ``head_only``: None samples only ``model.classifier`` when ``model.head_only_dropout`` holds
    and all dropout is in the classifier, else full passes; True/False force one path.
    ``features``: cached eval-mode penultimate features of ``indices`` for the head path; when
    None they are computed once here with ``predict``. ``seed``: int or ``np.random.Generator``
    (one int is drawn from it). ``amp``: bfloat16 autocast on CUDA, off by default as in ``predict`` (bf16 ties). Rows come
    out in the order of ``indices``. ``logit_noise``: in each pass sample the logits once from
    N(mu, sigma^2) with log sigma^2 = ``model.log_var_head(features)`` and average the softmax of
    that sample (Kendall & Gal 2017; see the module docstring); needs ``model.features``,
    ``model.classifier`` and ``model.log_var_head``.
    """
    n_samples = check_int("n_samples", n_samples, 1)
    batch_size = check_int("batch_size", batch_size, 1)
    _check_model(model, logit_noise)
    head_only = _resolve_head_only(model, head_only)
    if data is None and not (head_only and features is not None):
        raise ConfigError(
            "MC dropout " + ("needs the features of the pool" if head_only else "needs full passes over the pool")
            + ": data (context.data for a strategy) must be the training split's DeviceData, got None instead")
    device = _run_device(model, data)
    if head_only and features is None:
        features = predict(model, data, indices, batch_size=batch_size, features=True, amp=amp).features
    rows = _rows(indices, features if head_only else None, data, device)
    if head_only and features.shape[0] != rows.numel():
        raise ConfigError(f"features must have one row per index ({rows.numel()}), got {features.shape[0]} instead")
    seed = _seed_from(seed)
    sums = _Sums(rows.numel(), device, seed if logit_noise else None)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda")
    with dropout_only_train(model), seeded(device, seed):
        if head_only:
            _head_passes(model, features.to(device), sums, n_samples, batch_size, autocast, logit_noise)
        else:
            _full_passes(model, data, indices, rows, sums, n_samples, batch_size, autocast, logit_noise)
    logger.debug("MC dropout: %d samples of %d rows (%s%s)", n_samples, rows.numel(),
                 "head only" if head_only else "full passes", ", logits sampled from N(mu, sigma^2)" if logit_noise else "")
    mean_probs, mean_entropy = sums.means(n_samples, int(getattr(model, "num_classes", 0) or 1))
    return MCDropoutStats(mean_probs=mean_probs, mean_entropy=mean_entropy, n_samples=n_samples, head_only=head_only,
                          logit_noise=bool(logit_noise))


def _check_model(model: nn.Module, logit_noise: bool) -> None:
    """The model has active dropout, and the heads logit sampling needs."""
    if not active_dropouts(model):
        rates = [m.p for m in model.modules() if isinstance(m, _DropoutNd)]
        raise ConfigError(
            f"MC dropout needs a model with dropout before its classifier, got dropout rate "
            f"{max(rates, default=0.0):g}; train with --dropout {DEFAULT_MC_DROPOUT} "
            f"(build_model(..., dropout={DEFAULT_MC_DROPOUT}))"
        )
    if logit_noise and not (isinstance(getattr(model, "log_var_head", None), nn.Module)
                            and isinstance(getattr(model, "classifier", None), nn.Module)
                            and callable(getattr(model, "features", None))):
        raise ConfigError(f"logit sampling needs a model with features(), classifier and log_var_head, got "
                          f"{type(model).__name__} without them; build it with "
                          "build_model(..., variance_head='sample'), or use logit_noise=False")


def _run_device(model: nn.Module, data) -> torch.device:
    """Where the passes run: the model's device (a parameterless model: the data's, else the CPU)."""
    device = next((p.device for p in model.parameters()), None)
    if device is None:
        device = getattr(data, "device", None) or torch.device("cpu")
    return device


def _rows(indices, features: torch.Tensor | None, data, device: torch.device) -> torch.Tensor:
    """The row indices asked for on ``device``: ``indices``, else every row of ``features`` (the head
    path) or of ``data``."""
    if indices is not None:
        return torch.as_tensor(indices, dtype=torch.long).to(device)
    return torch.arange(features.shape[0] if features is not None else data.n, device=device)


class _Sums:
    """Running sums over the passes of each row's softmax and entropy (float64; float32 on mps,
    which has no float64), and the logit noise of the current pass.

    ``noise_seed``: None for plain MC dropout; else the seed the (CPU) noise generator is derived
    from (``_noise_seed``), which draws one (n, K) standard normal per pass, on its first batch."""

    def __init__(self, n: int, device: torch.device, noise_seed: int | None):
        self.n, self.device = n, device
        self.dtype = torch.float32 if device.type == "mps" else torch.float64
        self.probs = self.entropy = None  # allocated once K is known
        self.noise_gen = None
        if noise_seed is not None:
            self.noise_gen = torch.Generator(device="cpu")
            self.noise_gen.manual_seed(_noise_seed(noise_seed))
        self.noise = None

    def new_pass(self) -> None:
        self.noise = None

    def add(self, logits, where, log_var: torch.Tensor | None = None) -> None:
        """Add the softmax and entropy of ``logits`` (sampled from N(logits, exp(log_var)) when
        ``log_var`` is given) to rows ``where`` (a slice, or an index tensor)."""
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        z = logits.to(self.dtype)
        if log_var is not None:
            z = z + torch.exp(0.5 * log_var.to(self.dtype)) * self._pass_noise(z.shape[1])[where]
        p, logp = torch.softmax(z, dim=1), torch.log_softmax(z, dim=1)
        h = -(p * logp).sum(dim=1)
        if self.probs is None:
            self.probs = torch.zeros((self.n, z.shape[1]), dtype=self.dtype, device=self.device)
            self.entropy = torch.zeros(self.n, dtype=self.dtype, device=self.device)
        if isinstance(where, slice):
            self.probs[where] += p
            self.entropy[where] += h
        else:
            self.probs.index_add_(0, where, p)
            self.entropy.index_add_(0, where, h)

    def _pass_noise(self, k: int) -> torch.Tensor:
        if self.noise is None:
            self.noise = torch.randn((self.n, k), generator=self.noise_gen, dtype=torch.float64).to(self.device,
                                                                                                    self.dtype)
        return self.noise

    def means(self, n_samples: int, k_if_empty: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean softmax (n, K), mean entropy (n,)), float64 on the CPU; (0, k_if_empty) without rows."""
        if self.probs is None:
            return torch.zeros((0, k_if_empty), dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
        return (self.probs / n_samples).double().cpu(), (self.entropy / n_samples).double().cpu()


def _head_passes(model: nn.Module, feats: torch.Tensor, sums: _Sums, n_samples: int, batch_size: int, autocast,
                 logit_noise: bool) -> None:
    """``n_samples`` passes of the classifier alone over the features, batch by batch."""
    starts = range(0, feats.shape[0], batch_size)
    log_vars = [None] * len(starts)
    if logit_noise:  # the variance head is not behind the dropout: one sigma per row for all passes
        with autocast:
            log_vars = [model.log_var_head(feats[start:start + batch_size]) for start in starts]
    for _ in range(n_samples):
        sums.new_pass()
        for start, log_var in zip(starts, log_vars):
            with autocast:
                logits = model.classifier(feats[start:start + batch_size])
            sums.add(logits, slice(start, start + batch_size), log_var)


def _full_passes(model: nn.Module, data, indices, rows: torch.Tensor, sums: _Sums, n_samples: int, batch_size: int,
                 autocast, logit_noise: bool) -> None:
    """``n_samples`` full passes over ``data.eval_batches(indices)``, each row added where it was asked for.

    eval_batches yields the rows in the given order; they are mapped back by index anyway, so the
    rows land where they belong and a data object that skips some or yields others is caught."""
    n = rows.numel()
    sorter = torch.argsort(rows)
    sorted_rows = rows[sorter]
    for t in range(n_samples):
        sums.new_pass()
        seen = 0
        for x, _, idx in data.eval_batches(indices, batch_size):
            x = x.to(sums.device, non_blocking=True)
            idx = torch.as_tensor(idx, device=sums.device)
            pos = sorter[torch.searchsorted(sorted_rows, idx).clamp_max(max(n - 1, 0))]
            if t == 0 and not torch.equal(rows[pos], idx):
                raise ConfigError("data.eval_batches yielded indices that are not among the indices "
                                  "asked for; data must be the split the indices refer to")
            log_var = None
            with autocast:
                if logit_noise:  # both heads on this pass's features, as in training
                    feats = model.features(x)
                    logits, log_var = model.classifier(feats), model.log_var_head(feats)
                else:
                    logits = model(x)
            sums.add(logits, pos, log_var)
            seen += idx.numel()
        if seen != n:
            raise ConfigError(f"data.eval_batches must cover the {n} indices asked for, got {seen} instead")
