"""Learning-rate schedules: the lr of every optimiser step as a pure function of the config.

``lr_at(config, epoch, step, steps_per_epoch)`` is evaluated before each step (a Python float
written into the optimiser's param groups: no tensor, no host sync). ``epoch`` is 0-based, ``step``
the 0-based step within the epoch.

``step``
    ``lr * gamma ** k``, k = milestones passed (``TrainConfig.milestone_epochs``), constant within
    an epoch: exactly ``torch.optim.lr_scheduler.MultiStepLR`` stepped once per epoch (the paper's).
``cosine``
    ``lr * (1 + cos(pi * t / T)) / 2`` over the steps after the warm-up (Loshchilov & Hutter 2017;
    SURE and FMFP use ``CosineAnnealingLR(T_max=epochs)`` stepped per epoch, which this equals at
    the start of every epoch).
``onecycle``
    Smith & Topin (2019) as ``torch.optim.lr_scheduler.OneCycleLR`` with its defaults
    (``anneal_strategy="cos"``, ``div_factor=25``, ``final_div_factor=1e4``): cosine from lr/25 up to
    lr over the first ``warmup`` fraction of the steps (default 0.3, torch's ``pct_start``), then
    cosine down to lr/25e4. Momentum is not cycled (``momentum`` stays the configured value).

``warmup`` (a fraction of all steps) adds a linear warm-up to ``step`` and ``cosine`` (Goyal et al.
2017): step i of the first W steps uses ``(i + 1) / W`` of the scheduled lr.

With ``averaging="swa"`` the epochs after ``swa_start`` follow the SWA schedule of the papers'
code (``torch.optim.swa_utils.SWALR``, cosine annealing; Izmailov et al. 2018): from the lr the
base schedule had when averaging began to ``swa_lr`` over ``swa_anneal`` of the epochs, then
constant, changing once per epoch.
"""

from __future__ import annotations

import math

SCHEDULES = ("step", "cosine", "onecycle")
ONECYCLE_DEFAULT_WARMUP = 0.3  # torch's OneCycleLR pct_start
_DIV, _FINAL_DIV = 25.0, 1e4  # torch's OneCycleLR div_factor, final_div_factor


def _cos(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (1.0 + math.cos(math.pi * pct))


def warmup_fraction(config) -> float:
    if config.warmup is not None:
        return float(config.warmup)
    return ONECYCLE_DEFAULT_WARMUP if config.schedule == "onecycle" else 0.0


def swa_start_epoch(config) -> int:
    """Epochs trained before SWA starts averaging (it averages after each later epoch)."""
    return int(round(config.swa_start * config.epochs))


def swa_lr(config) -> float:
    """``swa_lr``, or half the initial lr (the papers: 0.05 with lr 0.1) when not set."""
    return float(config.swa_lr) if config.swa_lr is not None else 0.5 * config.lr


def base_factor(config, epoch: int, step: int, steps_per_epoch: int) -> float:
    """The base schedule's multiplier of ``config.lr`` at (epoch, step), SWA aside."""
    total = config.epochs * steps_per_epoch
    t = epoch * steps_per_epoch + step  # global 0-based step
    warm = warmup_fraction(config) * total  # in steps
    if config.schedule == "onecycle":
        initial, final = 1.0 / _DIV, 1.0 / (_DIV * _FINAL_DIV)
        end_up, end = float(warm) - 1.0, float(total) - 1.0  # OneCycleLR's phase end steps
        if end_up > 0 and t <= end_up:
            return _cos(initial, 1.0, t / end_up)
        start = max(end_up, 0.0)
        return _cos(1.0, final, (t - start) / max(end - start, 1.0))
    if config.schedule == "cosine":
        w = int(math.ceil(warm))
        f = 0.5 * (1.0 + math.cos(math.pi * max(t - w, 0) / max(total - w, 1)))
    else:  # step
        f = config.gamma ** sum(1 for m in config.milestone_epochs() if m <= epoch)
    if warm > 0 and t < warm:
        f *= (t + 1) / warm
    return f


def lr_at(config, epoch: int, step: int, steps_per_epoch: int) -> float:
    """The learning rate of step ``step`` (0-based) of epoch ``epoch`` (0-based)."""
    if config.averaging == "swa":
        start = swa_start_epoch(config)
        if epoch >= start:
            lr_start = config.lr * base_factor(config, start, 0, steps_per_epoch)
            anneal = max(1, int(round(config.swa_anneal * config.epochs)))
            t = min(1.0, (epoch - start) / anneal)
            alpha = (1.0 - math.cos(math.pi * t)) / 2.0  # SWALR's cos anneal_func
            return swa_lr(config) * alpha + lr_start * (1.0 - alpha)
    return config.lr * base_factor(config, epoch, step, steps_per_epoch)
