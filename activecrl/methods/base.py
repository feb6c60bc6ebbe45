"""The method interface, its registry and the checks every method shares.

A method decides how ``activecrl train`` trains (which trainer, how many models, what the model
is built with) and how the test predictions and their confidence are formed. The run itself
(data, hold-out split, temperature scaling, metrics, saving) is the same for every method and
lives in :func:`activecrl.methods.run.train_and_evaluate`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable

import numpy as np
import torch
from torch import nn

from activecrl.core.errors import ConfigError
from activecrl.inference.predict import predict
from activecrl.models import build_model
from activecrl.backbones import backbone_options
from activecrl.core.registry import Registry
from activecrl.core.runtime import seed_everything
from activecrl.training.config import check_variance_head
from activecrl.training.trainers import TRAINERS, EpochInfo, Trainer, build_trainer
from activecrl.core.validate import check_int

logger = logging.getLogger(__name__)

METHODS: Registry[type["Method"]] = Registry("method", "activecrl.methods")
register_method = METHODS.register


class Method:
    """How a ``train`` run trains its model(s) and scores the test split.

    ``__init__`` stores the run config with this method's defaults applied (``self.config``; it
    raises ConfigError for options the method cannot use); ``fit`` trains and keeps the models in
    ``models_``; ``predictive`` gives the probabilities (and logits, when they exist) of any rows
    of a split; ``confidence`` the score the ranking metrics use; ``describe`` what was done
    (``metrics.json`` ``method``). Subclasses override the hooks below and register with
    ``@register_method("name")`` (or the ``activecrl.methods`` entry-point group, or are given as
    ``module:Class``); ``build_method`` constructs one as ``cls(config=run_config)``.
    """

    name = "method"
    confidence_label = "max probability"
    report_order = 9  # where ``activecrl report`` sorts this method's rows (the built-ins: the paper's order)

    def __init__(self, config):
        self.config = self.resolve(config)

    @classmethod
    def report_label(cls, config: dict, trainer: str, default_trainer: bool) -> str:
        """This method in ``activecrl report``'s tables. ``config``: the run's saved config (a dict:
        the run may predate options added since); ``trainer``: its trainer's label;
        ``default_trainer``: whether that is the default trainer (labels may leave it out)."""
        return f"{config.get('method')} {trainer}"

    # -- hooks --------------------------------------------------------------------------------
    def resolve(self, config):
        """``config`` with this method's defaults (trainer, dropout) applied; raise if unusable."""
        return config

    @property
    def members(self) -> int:
        """How many models ``fit`` trains (seeds ``seed``, ``seed + 1``, ...)."""
        return 1

    def make_trainer(self, train_config) -> Trainer:
        return build_trainer(self.config.trainer, train_config)

    def watch(self, model: nn.Module, train_config, progress):
        """The per-epoch callback for training ``model`` (AES takes its snapshots here)."""
        return progress

    def predictive(self, data, indices=None) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities float64 (n, K), logits float64 or None) on ``indices`` of ``data``."""
        raise NotImplementedError

    def confidence(self, probs: np.ndarray) -> np.ndarray:
        return probs.max(axis=1)

    def describe(self) -> dict:
        """What the method did, for ``metrics.json`` (after ``confidence`` is recorded)."""
        return {}

    saved_model = None  # what model.pt holds when it is not simply the trained model
    member_states = None  # every member's weights (ensembles), saved to members.pt

    # -- training, the same for every method -----------------------------------------------------
    def fit(self, dataset, data, indices=None, progress: Callable[[EpochInfo], None] | None = None) -> float:
        """Train ``members`` models on ``indices`` of ``data`` (a DeviceData); returns training seconds."""
        config = self.config
        self.models_, self.seeds_ = [], []
        train_seconds = 0.0
        for m in range(self.members):
            seed = config.train.seed + m
            train_cfg = config.train.updated(seed=seed)
            trainer = self.make_trainer(train_cfg)
            seed_everything(seed)
            model = build_model(config.model, num_classes=dataset.num_classes, in_channels=dataset.in_channels,
                                image_size=dataset.image_size, dropout=config.dropout, **trainer.model_options(),
                                **backbone_options(config))
            callback = self.watch(model, train_cfg, _offset_progress(progress, m, self.members))
            logger.info("training %s with %s on %s (%s, member %d/%d, seed %d, device %s)", config.model,
                        config.trainer, dataset.name, self.name, m + 1, self.members, seed, data.device)
            fit = trainer.fit(model, data, indices, progress=callback)
            train_seconds += fit.train_seconds
            self.models_.append(model)
            self.seeds_.append(seed)
        return train_seconds


def build_method(config) -> Method:
    """The method of a ``TrainRunConfig``, with the fields every method shares checked first.

    A run with the default method (``plain``) takes its trainer's ``train_method`` when the
    trainer names one (the ``aleatoric`` trainer: its variance head is read only by the
    ``aleatoric`` method's evaluation).
    """
    if config.method == _default(config, "method"):
        implied = getattr(TRAINERS.get(config.trainer), "train_method", None)
        if implied:
            config = dataclasses.replace(config, method=implied)
    METHODS.get(config.method)  # an unknown method fails first
    check_int("mc_samples", config.mc_samples, 1)
    check_int("snapshots", config.snapshots, 1)
    check_int("aleatoric_samples", config.aleatoric_samples, 1)
    check_int("members", config.members, 1)
    check_variance_head("variance", config.variance)
    if not (isinstance(config.holdout_fraction, (int, float)) and 0 < config.holdout_fraction < 1):
        raise ConfigError(f"holdout_fraction must be in (0, 1), e.g. 0.1, got {config.holdout_fraction!r} instead")
    method = METHODS.create(config.method, config=config)
    TRAINERS.get(method.config.trainer)  # an unknown trainer fails before any work
    return method


def _default(config, name: str):
    """The default of dataclass field ``name`` of ``config``."""
    return next(f.default for f in dataclasses.fields(config) if f.name == name)


def validate_method_config(config) -> None:
    """Check the method fields of a ``TrainRunConfig``; raises ConfigError saying how to fix."""
    build_method(config)


def negative_entropy(probs: np.ndarray) -> np.ndarray:
    """``sum_k p_k log p_k`` per row (0 log 0 = 0): higher means more confident."""
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)


def average_softmax(models, data, indices, batch_size: int) -> np.ndarray:
    """Mean of the models' softmax outputs, float64 (models may be one model loaded in turn)."""
    total, count = None, 0
    for model in models:
        p = torch.softmax(predict(model, data, indices, batch_size=batch_size, features=False).logits.double(), 1)
        total, count = (p if total is None else total + p), count + 1
    return (total / count).numpy()


def _offset_progress(progress, member: int, members: int):
    if progress is None or members == 1:
        return progress

    def report(info: EpochInfo) -> None:
        progress(dataclasses.replace(info, epoch=member * info.epochs + info.epoch, epochs=members * info.epochs))

    return report
