"""Trainers: fit a model on (a subset of) a device-resident training split.

``baseline`` minimises cross-entropy; ``crl`` adds lambda * Correctness Ranking Loss (see
``activecrl.crl``). Both share one loop, which is written for the GPU: batches come from
``DeviceData`` (already on the device, augmented there), the loss is accumulated on the device,
and the host is synchronised once per epoch (to report the loss and stop on NaN), never per step.
A new trainer subclasses ``Trainer``, overrides ``loss`` (and ``setup``/``after_step`` if it keeps
state) and registers itself with ``@register_trainer("name")``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, fields, replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .crl import RANK_TARGETS, CorrectnessHistory, confidence, correctness_ranking_loss
from .errors import ConfigError, TrainingDiverged
from .models import VARIANCE_HEADS
from .registry import Registry
from .validate import SEED_LIMIT, check_int

logger = logging.getLogger(__name__)

TRAINERS: Registry[type["Trainer"]] = Registry("trainer", "activecrl.trainers")
register_trainer = TRAINERS.register


@dataclass
class TrainConfig:
    """Optimisation settings; defaults are the paper's (section 4, 300 epochs, batch 128)."""

    # Each field is a CLI flag (--batch-size) and a TOML key under [train]; metadata["help"] is its help.
    epochs: int = field(default=300, metadata={"help": "training epochs (the paper: 300)"})
    batch_size: int = field(default=128, metadata={"help": "mini-batch size (the paper: 128)"})
    lr: float = field(default=0.1, metadata={"help": "initial learning rate of SGD"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum"})
    weight_decay: float = field(default=1e-4, metadata={"help": "SGD weight decay (L2)"})
    nesterov: bool = field(default=False, metadata={"help": "Nesterov momentum"})
    # lr is multiplied by ``gamma`` at these fractions of ``epochs``: 150 and 250 of 300 in the
    # classification benchmark, 120 and 160 of 200 (0.6, 0.8) in the active-learning protocol.
    milestones: tuple[float, ...] = field(default=(0.5, 5 / 6), metadata={
        "help": "fractions of the epochs after which lr is multiplied by gamma, e.g. 0.6,0.8"})
    gamma: float = field(default=0.1, metadata={"help": "lr factor at each milestone"})
    crl_weight: float = field(default=1.0, metadata={"help": "lambda in loss = CE + lambda * CRL (crl trainer)"})
    rank_target: str = field(default="softmax", metadata={
        "help": "CRL confidence kappa: softmax | entropy | margin"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation, shuffling and augmentation"})
    amp: bool = field(default=True, metadata={"help": "bf16 autocast on CUDA (CPU runs stay in float32)"})
    channels_last: bool = field(default=True, metadata={
        "help": "NHWC activations: faster convolutions with cuDNN and with oneDNN on CPUs"})
    compile: bool = field(default=False, metadata={
        "help": "torch.compile the model (CUDA only; the first epoch pays the compile)"})

    def __post_init__(self):
        self.milestones = tuple(float(m) for m in self.milestones)
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, what: str, value) -> None:
            if not ok:
                raise ConfigError(f"{what}, got {value!r} instead")

        check_int("epochs", self.epochs, 1)
        check_int("seed", self.seed, 0, below=SEED_LIMIT)
        check_int("batch_size", self.batch_size, 2, "; BatchNorm needs two samples per batch")
        need(self.lr > 0 and math.isfinite(self.lr), "lr must be a positive number", self.lr)
        need(0 <= self.momentum < 1, "momentum must be in [0, 1)", self.momentum)
        need(self.weight_decay >= 0, "weight_decay must be >= 0", self.weight_decay)
        need(all(0 < m <= 1 for m in self.milestones),
             "milestones must be fractions of the epochs in (0, 1], e.g. (0.5, 0.8333)", self.milestones)
        need(0 < self.gamma <= 1, "gamma must be in (0, 1]", self.gamma)
        need(self.crl_weight >= 0, "crl_weight must be >= 0", self.crl_weight)
        need(self.rank_target in RANK_TARGETS, f"rank_target must be one of {', '.join(RANK_TARGETS)}",
             self.rank_target)

    def milestone_epochs(self) -> list[int]:
        """The epochs (0-based count of completed epochs) after which lr is decayed."""
        return sorted({max(1, round(m * self.epochs)) for m in self.milestones if round(m * self.epochs) < self.epochs})

    def updated(self, **changes) -> "TrainConfig":
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ConfigError(
                f"unknown training option(s) {sorted(unknown)}; valid ones are {[f.name for f in fields(self)]}"
            )
        return replace(self, **changes)


@dataclass
class EpochInfo:
    epoch: int  # 1-based
    epochs: int
    loss: float  # mean training loss over the epoch
    lr: float
    seconds: float  # since fit started


@dataclass
class FitResult:
    train_seconds: float
    epoch_losses: list[float] = field(default_factory=list)


class Trainer:
    """Base trainer: SGD with momentum and a step schedule over a training split.

    Parameters are stored in ``__init__`` (scikit-learn style); state made during ``fit`` lives in
    attributes ending in ``_`` (``fit_result_``, and the CRL trainer's ``history_``).
    """

    name = "trainer"

    def __init__(self, config: TrainConfig | None = None, **overrides):
        base = config if config is not None else TrainConfig()
        self.config = base.updated(**overrides) if overrides else base

    # -- hooks for subclasses -------------------------------------------------------------
    def model_options(self) -> dict:
        """Extra ``build_model`` keyword arguments the model this trainer fits must be built with
        (the loop and ``activecrl train`` pass them; e.g. the aleatoric trainer's variance head)."""
        return {}

    def setup(self, model: nn.Module, data, device: torch.device) -> None:
        """Called once at the start of ``fit``."""

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self, logits: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> None:
        """Called after each optimiser step with that step's (detached) outputs."""

    # -- the loop ---------------------------------------------------------------------------
    def train_step(self, forward, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                   indices: torch.Tensor) -> torch.Tensor:
        """One optimiser step on a batch; returns the detached loss (still on the device)."""
        device = x.device
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and self.config.amp):
            logits = forward(x)
            loss = self.loss(logits.float(), y, indices)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        self.after_step(logits.detach().float(), y, indices)
        return loss.detach()

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        c = self.config
        return torch.optim.SGD(model.parameters(), lr=c.lr, momentum=c.momentum,
                               weight_decay=c.weight_decay, nesterov=c.nesterov)

    def fit(self, model: nn.Module, data, indices=None, *,
            progress: Callable[[EpochInfo], None] | None = None) -> FitResult:
        """Train ``model`` in place on ``data`` (a ``DeviceData``) restricted to ``indices``.

        ``indices`` are training-split indices (default: the whole split). Seeds the global torch
        RNG (dropout) and the batch generator from ``config.seed``, so CPU runs are reproducible.
        """
        c = self.config
        device = data.device
        # DeviceData.train_batches validates the indices (range, dtype, at least 2) before any step
        indices = torch.arange(data.n, device=device) if indices is None else indices
        data.train_batches(indices, c.batch_size)  # checks now, so a bad call fails before setup
        cuda = device.type == "cuda"
        model.to(device)
        if c.channels_last:
            model.to(memory_format=torch.channels_last)
        torch.manual_seed(c.seed)
        generator = torch.Generator(device=device).manual_seed(c.seed)
        optimizer = self.make_optimizer(model)
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, c.milestone_epochs(), gamma=c.gamma)
        forward = torch.compile(model) if (c.compile and cuda) else model
        self.setup(model, data, device)

        model.train()
        start = time.perf_counter()
        losses: list[float] = []
        for epoch in range(1, c.epochs + 1):
            total = torch.zeros((), device=device)
            count = 0
            for x, y, idx in data.train_batches(indices, c.batch_size, generator):
                loss = self.train_step(forward, optimizer, x, y, idx)
                total += loss * y.shape[0]
                count += y.shape[0]
            scheduler.step()
            mean_loss = (total / max(count, 1)).item()  # the one host sync of the epoch
            if not math.isfinite(mean_loss):
                raise TrainingDiverged(
                    f"training loss became {mean_loss} in epoch {epoch} of {c.epochs} ({self.name} trainer, "
                    f"lr {optimizer.param_groups[0]['lr']:g}); lower --lr or check the data for NaNs"
                )
            losses.append(mean_loss)
            info = EpochInfo(epoch, c.epochs, mean_loss, optimizer.param_groups[0]["lr"], time.perf_counter() - start)
            logger.debug("epoch %d/%d loss %.4f", epoch, c.epochs, mean_loss)
            if progress is not None:
                progress(info)
        # the epoch-mean check misses weights that blow up on the last step: check them once here
        if not torch.stack([p.detach().isfinite().all() for p in model.parameters()]).all():
            raise TrainingDiverged(
                f"the weights became NaN or infinite during training ({self.name} trainer, lr {c.lr:g}); "
                f"lower --lr or check the data for NaNs"
            )
        if cuda:
            torch.cuda.synchronize(device)
        self.fit_result_ = FitResult(time.perf_counter() - start, losses)
        return self.fit_result_


@register_trainer("baseline")
class BaselineTrainer(Trainer):
    """Plain cross-entropy."""

    name = "baseline"

    def loss(self, logits, labels, indices):
        return F.cross_entropy(logits, labels)


@register_trainer("crl")
class CRLTrainer(Trainer):
    """Cross-entropy + lambda * Correctness Ranking Loss (Moon et al. 2020, Eq. 3).

    The correctness history covers the whole training split (indexed by training-split index)
    and lives on the device. Each step's ranking loss uses the history *before* that step;
    the step's own predictions are recorded afterwards, as in the paper's implementation.
    """

    name = "crl"

    def setup(self, model, data, device):
        self.history_ = CorrectnessHistory(data.n, device=device)

    def loss(self, logits, labels, indices):
        ce = F.cross_entropy(logits, labels)
        kappa = confidence(logits, self.config.rank_target)  # differentiable: CRL shapes the confidences
        ranking = correctness_ranking_loss(kappa, self.history_.correctness(indices))
        return ce + self.config.crl_weight * ranking

    def after_step(self, logits, labels, indices):
        self.history_.update(indices, logits.argmax(dim=1) == labels)


def sampled_softmax_loss(logits: torch.Tensor, log_var: torch.Tensor, labels: torch.Tensor,
                         n_samples: int = 50, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Kendall & Gal (2017) classification loss ``mean_b -log (1/T) sum_t softmax(l_b + s_b e_bt)_y``.

    ``logits`` (B, K); ``log_var`` (B, 1) or (B, K) = log sigma^2; ``noise`` (T, B, K) standard
    normal draws (drawn here when None, T = ``n_samples``). Computed in log space
    (``logsumexp_t log_softmax(...)_y - log T``) so it stays finite.
    """
    if logits.ndim != 2 or log_var.ndim != 2 or log_var.shape[0] != logits.shape[0] \
            or log_var.shape[1] not in (1, logits.shape[1]):
        raise ConfigError(f"logits must be (B, K) and log_var (B, 1) or (B, K), got shapes "
                          f"{tuple(logits.shape)} and {tuple(log_var.shape)} instead")
    if noise is None:
        n_samples = check_int("aleatoric_samples", n_samples, 1)
        noise = torch.randn((n_samples, *logits.shape), device=logits.device, dtype=logits.dtype)
    elif noise.ndim != 3 or noise.shape[1:] != logits.shape:
        raise ConfigError(f"noise must be (T, B, K) = (T, {logits.shape[0]}, {logits.shape[1]}), got shape "
                          f"{tuple(noise.shape)} instead")
    sigma = torch.exp(0.5 * log_var)
    sampled = logits.unsqueeze(0) + sigma.unsqueeze(0) * noise  # (T, B, K)
    logp = torch.log_softmax(sampled, dim=2)
    idx = labels.view(1, -1, 1).expand(noise.shape[0], -1, 1)
    logp_y = logp.gather(2, idx).squeeze(2)  # (T, B)
    return -(torch.logsumexp(logp_y, dim=0) - math.log(noise.shape[0])).mean()


class _MeanAndLogVar(nn.Module):
    """Training view of a model with a variance head: [mean logits | log sigma^2] in one tensor."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        feats = self.model.features(x)
        return torch.cat([self.model.classifier(feats), self.model.log_var_head(feats)], dim=1)


@register_trainer("aleatoric")
class AleatoricTrainer(Trainer):
    """Sampled-softmax loss of Kendall & Gal (2017) for a model with ``log_var_head``.

    ``n_samples``: Gaussian logit samples per training example (T). ``variance``: the head the
    model is built with (``model_options``): one log sigma^2 per ``"sample"`` or per ``"class"``.
    ``activecrl train --trainer aleatoric`` is the Aleatoric + MC dropout method
    (``activecrl.methods``); ``activecrl run --trainer aleatoric`` trains every stage's model with
    this loss and scores it by its mean logits like any other trainer.
    """

    name = "aleatoric"

    def __init__(self, config: TrainConfig | None = None, *, n_samples: int = 50, variance: str = "sample",
                 **overrides):
        super().__init__(config, **overrides)
        self.n_samples = check_int("aleatoric_samples", n_samples, 1)
        if variance not in VARIANCE_HEADS:
            raise ConfigError(f"variance must be one of {', '.join(VARIANCE_HEADS)}, got {variance!r} instead")
        self.variance = variance

    def model_options(self) -> dict:
        return {"variance_head": self.variance}

    def fit(self, model, data, indices=None, *, progress=None):
        if not isinstance(getattr(model, "log_var_head", None), nn.Linear):
            raise ConfigError("the aleatoric trainer needs a model with a log-variance head, got "
                              f"{type(model).__name__} without one; build it with "
                              "build_model(..., variance_head='sample'), or use `activecrl train --method aleatoric`")
        self.num_classes_ = int(model.num_classes)
        return super().fit(_MeanAndLogVar(model), data, indices, progress=progress)

    def loss(self, logits, labels, indices):
        k = self.num_classes_
        return sampled_softmax_loss(logits[:, :k], logits[:, k:], labels, self.n_samples)


def build_trainer(name: str, config: TrainConfig | None = None, **overrides) -> Trainer:
    """A trainer by registered name (``baseline``, ``crl``, or a plugin's)."""
    return TRAINERS.get(name)(config, **overrides)
