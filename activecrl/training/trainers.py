"""Trainers: fit a model on (a subset of) a device-resident training split.

``baseline`` minimises cross-entropy; ``crl`` adds lambda * Correctness Ranking Loss (see
``activecrl.training.crl``). Both share one loop, which is written for the GPU: batches come from
``DeviceData`` (already on the device, augmented there), the loss is accumulated on the device,
and the host is synchronised once per epoch (to report the loss and stop on NaN), never per step.
A new trainer subclasses ``Trainer``, overrides ``loss`` (and ``setup``/``after_step`` if it keeps
state) and registers itself with ``@register_trainer("name")``.

The loop's ingredients are ``TrainConfig`` options, combinable with every loss: the lr schedule
(``schedule``/``warmup``, :mod:`activecrl.training.schedules`), the optimiser (``optimizer="sam"``,
:mod:`activecrl.training.sam`), weight averaging (``averaging="swa"|"ema"``, :mod:`activecrl.training.weight_averaging`:
the averaged weights end up in the model, with BatchNorm statistics recomputed on the training
indices, so what is evaluated, saved and queried is the average), a RegMixup term
(``mixup_weight``, :mod:`activecrl.training.regmixup`) and the model's head (``head="cosine"``, read by
whoever builds the model). A *recipe* (:class:`Recipe`) is a named set of those options on top of
a loss, registered like a trainer: ``sam``, ``swa``, ``fmfp`` and ``sure`` below.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, fields
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from activecrl.training.weight_averaging import WeightAverager, recompute_batchnorm
from activecrl.training.config import COS_TEMP, TrainConfig, check_variance_head
from activecrl.training.crl import CorrectnessHistory, confidence, correctness_ranking_loss
from activecrl.core.errors import ConfigError, TrainingDiverged
from activecrl.data.device import train_steps
from activecrl.training.regmixup import draw_mixup, regmixup_term
from activecrl.core.registry import Registry
from activecrl.training.sam import sam_ascend, sam_restore
from activecrl.training.schedules import lr_at, swa_start_epoch
from activecrl.training.sgd import CPUSGD, make_sgd
from activecrl.core.validate import check_int

logger = logging.getLogger(__name__)

TRAINERS: Registry[type["Trainer"]] = Registry("trainer", "activecrl.trainers")
register_trainer = TRAINERS.register


@dataclass
class EpochInfo:
    epoch: int  # 1-based
    epochs: int
    loss: float  # mean training loss over the epoch
    lr: float  # the learning rate of the epoch's last step
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
    #: the ``train --method`` a run with the default method (``plain``) becomes with this trainer
    #: (the aleatoric trainer's variance head is read only by the aleatoric method)
    train_method: str | None = None

    def __init__(self, config: TrainConfig | None = None, **overrides):
        base = config if config is not None else TrainConfig()
        self.config = base.updated(**overrides) if overrides else base

    @classmethod
    def report_label(cls, name: str, train: dict) -> str:
        """This trainer in ``activecrl report``'s tables, for a run saved with the ``[train]`` options
        ``train`` (a dict: the run may predate options added since); ``name``: the one it ran under."""
        return name

    # -- hooks for subclasses -------------------------------------------------------------
    def model_options(self) -> dict:
        """Extra ``build_model`` keyword arguments the model this trainer fits must be built with
        (the loop and ``activecrl train`` pass them; e.g. the aleatoric trainer's variance head,
        or the cosine head of ``head="cosine"``, which a recipe such as ``sure`` may set)."""
        c = self.config
        return {} if c.head == "linear" else {"head": c.head, "cos_temp": c.cos_temp}

    def setup(self, model: nn.Module, data, device: torch.device) -> None:
        """Called once at the start of ``fit``."""

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self, logits: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> None:
        """Called after each optimiser step with that step's (detached) outputs."""

    # -- the loop ---------------------------------------------------------------------------
    def objective(self, forward, x: torch.Tensor, y: torch.Tensor, indices: torch.Tensor,
                  mixup: tuple[float, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, logits)`` of a batch: ``self.loss`` on the clean logits, plus the RegMixup
        term when ``mixup = (lam, perm)`` is given. Runs inside the step's autocast."""
        logits = forward(x)
        loss = self.loss(logits.float(), y, indices)
        if mixup is not None:
            loss = loss + self.config.mixup_weight * regmixup_term(forward, x, y, *mixup)
        return loss, logits

    def train_step(self, forward, optimizer: CPUSGD | torch.optim.SGD, x: torch.Tensor, y: torch.Tensor,
                   indices: torch.Tensor) -> torch.Tensor:
        """One optimiser step on a batch; returns the detached loss (still on the device).

        With ``optimizer="sam"`` the step takes a second forward-backward pass at the perturbed
        weights (same batch, same mixup draw) and steps with that gradient (activecrl.training.sam).
        """
        c = self.config
        device = x.device
        mixup = None
        if c.mixup_weight > 0:
            mixup = draw_mixup(self.mix_rng_, c.mixup_beta, y.shape[0], self.mix_gen_, device)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and c.amp)
        with autocast:
            loss, logits = self.objective(forward, x, y, indices, mixup)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if c.optimizer == "sam":
            moved, saved = sam_ascend(self.params_, c.sam_rho, c.sam_adaptive)
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                second, _ = self.objective(forward, x, y, indices, mixup)
            second.backward()
            sam_restore(moved, saved)
        optimizer.step()
        self.after_step(logits.detach().float(), y, indices)
        return loss.detach()

    def make_optimizer(self, model: nn.Module) -> CPUSGD | torch.optim.SGD:
        c = self.config
        self.params_ = [p for p in model.parameters() if p.requires_grad]  # SAM perturbs these
        if c.mixup_weight > 0 and not hasattr(self, "mix_rng_"):  # fit seeds these; set for direct use too
            self._seed_mixup(next(model.parameters()).device)
        return make_sgd(self.params_, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay, nesterov=c.nesterov)

    def _seed_mixup(self, device) -> None:
        seed = self.config.seed
        self.mix_rng_ = np.random.default_rng([seed, 10])
        self.mix_gen_ = torch.Generator(device=device).manual_seed((seed + 0x5EED) % 2**63)

    def fit(self, model: nn.Module, data, indices=None, *,
            progress: Callable[[EpochInfo], None] | None = None) -> FitResult:
        """Train ``model`` in place on ``data`` (a ``DeviceData``) restricted to ``indices``.

        ``indices`` are training-split indices (default: the whole split). Seeds the global torch
        RNG (dropout) and the batch generator from ``config.seed``, so CPU runs are reproducible.
        With weight averaging the model ends holding the averaged weights, its BatchNorm
        statistics recomputed over ``indices``.
        """
        c = self.config
        device = data.device
        # DeviceData.train_batches validates the indices (range, dtype, at least 2) before any step
        indices = torch.arange(data.n, device=device) if indices is None else indices
        data.train_batches(indices, c.batch_size)  # checks now, so a bad call fails before setup
        n_fit = int(indices.numel()) if isinstance(indices, torch.Tensor) else len(indices)
        steps_per_epoch = train_steps(n_fit, c.batch_size)  # the batches data.train_batches yields
        cuda = device.type == "cuda"
        model.to(device)
        if c.channels_last:
            model.to(memory_format=torch.channels_last)
        torch.manual_seed(c.seed)
        generator = torch.Generator(device=device).manual_seed(c.seed)
        self._seed_mixup(device)
        optimizer = self.make_optimizer(model)
        forward = torch.compile(model) if (c.compile and cuda) else model
        averager = None if c.averaging == "none" else WeightAverager(model, c.averaging, c.ema_decay)
        swa_from = swa_start_epoch(c)
        self.setup(model, data, device)

        model.train()
        start = time.perf_counter()
        losses: list[float] = []
        lr = c.lr
        for epoch in range(1, c.epochs + 1):
            total = torch.zeros((), device=device)
            count = 0
            for step, (x, y, idx) in enumerate(data.train_batches(indices, c.batch_size, generator)):
                lr = lr_at(c, epoch - 1, step, steps_per_epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss = self.train_step(forward, optimizer, x, y, idx)
                total += loss * y.shape[0]
                count += y.shape[0]
                if c.averaging == "ema":
                    averager.update()
            if c.averaging == "swa" and epoch > swa_from:
                averager.update()
            mean_loss = (total / max(count, 1)).item()  # the one host sync of the epoch
            if not math.isfinite(mean_loss):
                raise TrainingDiverged(
                    f"training loss became {mean_loss} in epoch {epoch} of {c.epochs} ({self.name} trainer, "
                    f"lr {lr:g}); lower --lr or check the data for NaNs"
                )
            losses.append(mean_loss)
            info = EpochInfo(epoch, c.epochs, mean_loss, lr, time.perf_counter() - start)
            logger.debug("epoch %d/%d loss %.4f", epoch, c.epochs, mean_loss)
            if progress is not None:
                progress(info)
        if averager is not None:
            averager.copy_to()
            self.averaged_updates_ = averager.n_averaged_
            # a fresh generator: the BN pass sees the training augmentation, not the last epoch's draws
            bn_generator = torch.Generator(device=device).manual_seed(c.seed + 1)
            recompute_batchnorm(model, data, indices, c.batch_size, bn_generator, forward=forward, amp=c.amp)
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

    @classmethod
    def report_label(cls, name, train):
        return "Baseline" if name == BaselineTrainer.name else super().report_label(name, train)

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

    @classmethod
    def report_label(cls, name, train):
        if name != CRLTrainer.name:
            return super().report_label(name, train)
        label = f"CRL-{train.get('rank_target', 'softmax')}"
        weight = train.get("crl_weight", 1.0)
        return label if weight is None or float(weight) == 1.0 else f"{label} (λ={float(weight):g})"

    def setup(self, model, data, device):
        self.history_ = CorrectnessHistory(data.n, device=device)

    def loss(self, logits, labels, indices):
        ce = F.cross_entropy(logits, labels)
        kappa = confidence(logits, self.config.rank_target)  # differentiable: CRL shapes the confidences
        ranking = correctness_ranking_loss(kappa, self.history_.correctness(indices))
        return ce + self.config.crl_weight * ranking

    def after_step(self, logits, labels, indices):
        self.history_.update(indices, logits.argmax(dim=1) == labels)


class Recipe:
    """A named training recipe: a loss (a registered trainer class) plus ingredient settings.

    A recipe is data, not a subclass: ``Recipe("fmfp", BaselineTrainer, optimizer="sam",
    averaging="swa")``. Registered in ``TRAINERS`` it is used like a trainer class
    (``recipe(config, **overrides) -> Trainer``; ``--trainer fmfp``). Its settings fill the
    options of ``config`` that are still at their ``TrainConfig`` defaults; options the user set
    (to a non-default value) and ``overrides`` win. :func:`register_recipe` registers one.
    """

    def __init__(self, name: str, base: type[Trainer], description: str = "", **settings):
        unknown = set(settings) - {f.name for f in fields(TrainConfig)}
        if unknown:
            raise ConfigError(f"recipe {name!r} sets unknown training option(s) {sorted(unknown)}; valid ones are "
                              f"{[f.name for f in fields(TrainConfig)]}")
        if not (isinstance(base, type) and issubclass(base, Trainer)):
            raise ConfigError(f"a recipe's base must be a Trainer subclass (e.g. CRLTrainer), got {base!r} instead")
        TrainConfig().updated(**settings)  # a recipe with bad values fails when it is defined
        self.name = name
        self.base = base
        self.description = description
        self.settings = dict(settings)

    def resolve(self, config: TrainConfig | None = None) -> TrainConfig:
        """``config`` with this recipe's settings on the options left at their defaults."""
        config = config if config is not None else TrainConfig()
        defaults = TrainConfig()
        mine = {k: v for k, v in self.settings.items() if getattr(config, k) == getattr(defaults, k)}
        return config.updated(**mine)

    def __call__(self, config: TrainConfig | None = None, **overrides) -> Trainer:
        trainer = self.base(self.resolve(config), **overrides)
        trainer.name = self.name
        return trainer

    def describe(self) -> str:
        """``"crl + optimizer=sam, ..."``: what ``activecrl list`` shows."""
        parts = [f"{k}={v}" for k, v in self.settings.items()]
        return f"{self.base.name} + " + ", ".join(parts) if parts else self.base.name

    def __repr__(self) -> str:
        return f"Recipe({self.name!r}: {self.describe()})"


def register_recipe(name: str, base: str | type[Trainer] = "baseline", description: str = "", **settings) -> Recipe:
    """Register ``Recipe(name, base, **settings)`` as a trainer; ``base`` by name or class."""
    base_cls = TRAINERS.get(base) if isinstance(base, str) else base
    if isinstance(base_cls, Recipe):  # a recipe on a recipe: its settings first, then these
        settings = {**base_cls.settings, **settings}
        base_cls = base_cls.base
    return TRAINERS.register(name, Recipe(name, base_cls, description, **settings))


def trainer_description(name: str) -> str:
    """What a registered trainer is made of (for ``activecrl list``)."""
    entry = TRAINERS.get(name)
    if isinstance(entry, Recipe):
        return entry.describe()
    doc = (entry.__doc__ or "").strip().splitlines()
    return doc[0] if doc else name


def resolved_config(name: str, config: TrainConfig | None = None) -> TrainConfig:
    """The ``TrainConfig`` trainer ``name`` will run with (a recipe's settings applied).

    Raises RegistryError listing the valid names for an unknown one, ConfigError for bad settings;
    whoever builds the model reads ``head``/``cos_temp`` from it.
    """
    entry = TRAINERS.get(name)
    return entry.resolve(config) if isinstance(entry, Recipe) else (config if config is not None else TrainConfig())


# The published recipes (CIFAR, ResNet-18; SURE's run/CIFAR10/resnet18.sh and FMFP's main_fmfp.py).
# The schedule, lr, weight decay and epochs are the run's: every method is compared under one
# protocol (the papers: cosine, lr 0.1, weight decay 5e-4, 200 epochs; SWA from epoch 120 with
# SWALR to 0.05).
register_recipe("sam", "baseline", "SAM (Foret et al., ICLR 2021)", optimizer="sam", sam_rho=0.05)
register_recipe("swa", "baseline", "SWA (Izmailov et al., UAI 2018)", averaging="swa", swa_start=0.6)
register_recipe("fmfp", "baseline", "FMFP = SAM + SWA (Zhu et al., ECCV 2022)", optimizer="sam", sam_rho=0.05,
                averaging="swa", swa_start=0.6)
register_recipe("sure", "crl", "SURE (Li et al., CVPR 2024): RegMixup + CRL + SAM + SWA + cosine head",
                crl_weight=0.5, mixup_weight=0.5, mixup_beta=10.0, optimizer="sam", sam_rho=0.05,
                averaging="swa", swa_start=0.6, head="cosine", cos_temp=COS_TEMP)

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
    train_method = "aleatoric"

    def __init__(self, config: TrainConfig | None = None, *, n_samples: int = 50, variance: str = "sample",
                 **overrides):
        super().__init__(config, **overrides)
        self.n_samples = check_int("aleatoric_samples", n_samples, 1)
        check_variance_head("variance", variance)
        self.variance = variance

    def model_options(self) -> dict:
        return {**super().model_options(), "variance_head": self.variance}

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
    """A trainer by registered name (``baseline``, ``crl``, a recipe, a plugin's) or ``module:Name`` path."""
    return TRAINERS.create(name, config=config, **overrides)
