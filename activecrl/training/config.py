"""``TrainConfig``, the options of every trainer, and the names each option accepts: importable
without torch, so the CLI derives its flags (and a notebook builds configs) without loading it.

The model-head options live here too (``HEADS``, ``VARIANCE_HEADS``, ``COS_TEMP``, their checks):
``TrainConfig.head`` selects the head that ``activecrl.models.build_model`` builds, and both check
it with the same function.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, fields, replace

from activecrl.core.errors import ConfigError
from activecrl.core.registry import did_you_mean
from activecrl.core.validate import SEED_LIMIT, check_int
from activecrl.training.schedules import SCHEDULES, swa_start_epoch

RANK_TARGETS = ("softmax", "entropy", "margin")  # CRL's confidence kappa (activecrl.training.crl)
AVERAGING = ("none", "swa", "ema")  # activecrl.training.weight_averaging
OPTIMIZERS = ("sgd", "sam")
HEADS = ("linear", "cosine")  # built by activecrl.models.build_model(..., head=...)
VARIANCE_HEADS = ("sample", "class")  # log-variance heads of the aleatoric trainer
COS_TEMP = 8.0  # temperature of the cosine head (SURE's 8)


def _number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_head(head, cos_temp) -> None:
    """``head`` one of ``HEADS`` and ``cos_temp`` a number > 0, else ConfigError."""
    if head not in HEADS:
        raise ConfigError(f"head must be one of {', '.join(HEADS)}, got {head!r}{did_you_mean(head, HEADS)} instead")
    if not _number(cos_temp) or cos_temp <= 0:
        raise ConfigError(f"cos_temp must be a number > 0 (SURE: 8), got {cos_temp!r} instead")


def check_variance_head(name: str, value, *, none_ok: bool = False) -> None:
    """``value`` one of ``VARIANCE_HEADS`` (or None with ``none_ok``), else ConfigError naming option ``name``."""
    if value is None and none_ok:
        return
    if value not in VARIANCE_HEADS:
        raise ConfigError(f"{name} must be {'None or ' if none_ok else ''}one of {', '.join(VARIANCE_HEADS)}, got "
                          f"{value!r} instead")


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
    # -- ingredients; recipes (`--trainer sam|swa|fmfp|sure`) set some of these ------
    schedule: str = field(default="step", metadata={"help": "lr schedule: step (milestones, gamma) | cosine | "
                                                            "onecycle (see activecrl.training.schedules)"})
    warmup: float | None = field(default=None, metadata={"help": "fraction of the steps with a linear lr warm-up "
                                                                 "(onecycle: its rising phase, default 0.3; else 0)"})
    optimizer: str = field(default="sgd", metadata={"help": "sgd | sam (sharpness-aware SGD, Foret et al. 2021: "
                                                            "two forward-backward passes per step)"})
    sam_rho: float = field(default=0.05, metadata={"help": "SAM neighbourhood radius rho (papers: 0.05)"})
    sam_adaptive: bool = field(default=False, metadata={"help": "adaptive SAM (ASAM, Kwon et al. 2021); the "
                                                                "papers use plain SAM"})
    averaging: str = field(default="none", metadata={"help": "weight averaging: none | swa (per epoch from "
                                                             "swa_start) | ema (per step); the average is the "
                                                             "model evaluated, saved and queried"})
    swa_start: float = field(default=0.6, metadata={"help": "SWA averages after each epoch past this fraction "
                                                            "of the epochs (papers: 120 of 200)"})
    swa_lr: float | None = field(default=None, metadata={"help": "constant lr of the SWA phase (default lr/2: "
                                                                 "the papers' 0.05 with lr 0.1)"})
    swa_anneal: float = field(default=0.05, metadata={"help": "fraction of the epochs over which the lr is "
                                                              "annealed to swa_lr (SWALR's 10 of 200)"})
    ema_decay: float = field(default=0.999, metadata={"help": "EMA decay per step (with a warm-up: "
                                                              "min(decay, (1+n)/(10+n)))"})
    mixup_weight: float = field(default=0.0, metadata={"help": "RegMixup weight eta (Pinto et al. 2022): "
                                                               "CE + eta * mixup CE; 0 = off (SURE: 0.5)"})
    mixup_beta: float = field(default=10.0, metadata={"help": "RegMixup mixing lam ~ Beta(a, a) (SURE: 10)"})
    head: str = field(default="linear", metadata={"help": "classifier head: linear | cosine (SURE's cosine "
                                                          "classifier, logits = cos_temp * cos(f, w_k))"})
    cos_temp: float = field(default=COS_TEMP, metadata={"help": "temperature of the cosine head (SURE: 8)"})

    def __post_init__(self):
        self.milestones = tuple(float(m) for m in self.milestones)
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, what: str, value, choices=()) -> None:
            if not ok:
                raise ConfigError(f"{what}, got {value!r}{did_you_mean(value, choices)} instead")

        check_int("epochs", self.epochs, 1)
        check_int("seed", self.seed, 0, below=SEED_LIMIT)
        check_int("batch_size", self.batch_size, 2, "; BatchNorm needs two samples per batch")
        need(self.lr > 0 and math.isfinite(self.lr), "lr must be a positive number", self.lr)
        need(0 <= self.momentum < 1, "momentum must be in [0, 1)", self.momentum)
        need(self.momentum > 0 or not self.nesterov, "momentum must be > 0 with nesterov (or turn nesterov off)",
             self.momentum)
        need(self.weight_decay >= 0, "weight_decay must be >= 0", self.weight_decay)
        need(all(0 < m <= 1 for m in self.milestones),
             "milestones must be fractions of the epochs in (0, 1], e.g. (0.5, 0.8333)", self.milestones)
        need(0 < self.gamma <= 1, "gamma must be in (0, 1]", self.gamma)
        need(self.crl_weight >= 0, "crl_weight must be >= 0", self.crl_weight)
        need(self.rank_target in RANK_TARGETS, f"rank_target must be one of {', '.join(RANK_TARGETS)}",
             self.rank_target, RANK_TARGETS)
        self._validate_ingredients(need)

    def _validate_ingredients(self, need) -> None:
        need(self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}", self.schedule,
             SCHEDULES)
        need(self.warmup is None or (_number(self.warmup) and 0 <= self.warmup < 1),
             "warmup must be a fraction of the training steps in [0, 1), or unset", self.warmup)
        need(self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}", self.optimizer,
             OPTIMIZERS)
        need(_number(self.sam_rho) and self.sam_rho > 0,
             "sam_rho must be a number > 0 (the SAM papers use 0.05)", self.sam_rho)
        need(self.averaging in AVERAGING, f"averaging must be one of {', '.join(AVERAGING)}", self.averaging,
             AVERAGING)
        need(_number(self.swa_start) and 0 <= self.swa_start < 1,
             "swa_start must be a fraction of the epochs in [0, 1) (papers: 0.6)", self.swa_start)
        if self.averaging == "swa":
            start = swa_start_epoch(self)
            need(start < self.epochs,
                 f"swa_start must leave at least one epoch to average: it starts averaging after epoch {start} of "
                 f"{self.epochs}; lower swa_start or train more epochs", self.swa_start)
        need(self.swa_lr is None or (_number(self.swa_lr) and self.swa_lr > 0),
             "swa_lr must be a positive number, or unset for lr/2", self.swa_lr)
        need(_number(self.swa_anneal) and 0 <= self.swa_anneal <= 1,
             "swa_anneal must be a fraction of the epochs in [0, 1]", self.swa_anneal)
        need(_number(self.ema_decay) and 0 < self.ema_decay < 1, "ema_decay must be in (0, 1), e.g. 0.999",
             self.ema_decay)
        need(_number(self.mixup_weight) and self.mixup_weight >= 0, "mixup_weight must be a number >= 0",
             self.mixup_weight)
        need(_number(self.mixup_beta) and self.mixup_beta > 0, "mixup_beta must be a number > 0 (SURE: 10)",
             self.mixup_beta)
        check_head(self.head, self.cos_temp)

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


#: The CPU recipe for short runs (README "A CPU recipe not behind a plain script"): what
#: ``activecrl train``'s and the demo's defaults and the CPU presets set on top of ``TrainConfig``'s
#: paper defaults. In 15-20 epoch runs it is 2+ points ahead of the paper's step schedule.
SHORT_RUN_RECIPE = {"schedule": "onecycle", "nesterov": True, "weight_decay": 5e-4}
