"""Methods that sample dropout at test time: ``mc_dropout`` and ``aleatoric`` (+ MC dropout).

``mc_dropout`` (Gal & Ghahramani 2016): ``mc_samples`` stochastic passes with only the Dropout
modules in train mode (:mod:`activecrl.inference.mc_dropout`). ``aleatoric`` (Kendall & Gal 2017): the model
also has a log-variance head (``build_model(..., variance_head=...)``), is trained by the
``aleatoric`` trainer (sampled-softmax loss), and each MC pass samples its logits once from
N(mu, sigma^2). Both rank by the negative entropy of the mean probabilities.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
from torch import nn

from activecrl.core.errors import ConfigError
from activecrl.inference.mc_dropout import DEFAULT_MC_DROPOUT, mc_dropout_stats
from activecrl.training.trainers import build_trainer
from activecrl.core.validate import check_int
from activecrl.methods.base import Method, negative_entropy, register_method

logger = logging.getLogger(__name__)


def mc_dropout_probs(model: nn.Module, data, indices=None, *, n_samples: int = 50, seed: int = 0,
                     batch_size: int = 1024, head_only: bool | None = None, amp: bool = False,
                     logit_noise: bool = False) -> np.ndarray:
    """Mean softmax over ``n_samples`` MC-dropout passes over ``indices`` of ``data`` (a DeviceData).

    (n, K) float64 on the CPU, rows in the order of ``indices``: the ``mean_probs`` of
    :func:`activecrl.inference.mc_dropout.mc_dropout_stats` as numpy. ``logit_noise=True`` (Aleatoric + MC
    dropout, for a model with ``log_var_head``): each pass averages ``softmax(mu_t + sigma_t * eps_t)``.
    """
    n_samples = check_int("mc_samples", n_samples, 1)
    return mc_dropout_stats(model, data, indices, n_samples=n_samples, seed=seed, batch_size=batch_size,
                            head_only=head_only, amp=amp, logit_noise=logit_noise).mean_probs.numpy()


@register_method("mc_dropout")
class MCDropoutMethod(Method):
    """Dropout before the classifier (``DEFAULT_MC_DROPOUT`` when ``--dropout`` is 0), sampled at test time."""

    name = "mc_dropout"
    confidence_label = "negative entropy of the mean probabilities"
    logit_noise = False
    report_order = 2

    @classmethod
    def report_label(cls, config, trainer, default_trainer):
        return "MCdropout" + ("" if default_trainer else f" {trainer}")

    def resolve(self, config):
        if config.dropout == 0:
            logger.warning("%s: --dropout not given; using dropout %.1f before the classifier", self.name,
                           DEFAULT_MC_DROPOUT)
            config = dataclasses.replace(config, dropout=DEFAULT_MC_DROPOUT)
        return config

    def predictive(self, data, indices=None):
        c = self.config
        return mc_dropout_probs(self.models_[0], data, indices, n_samples=c.mc_samples, seed=c.train.seed,
                                batch_size=c.eval_batch_size, logit_noise=self.logit_noise), None

    def confidence(self, probs: np.ndarray) -> np.ndarray:
        return negative_entropy(probs)

    def describe(self) -> dict:
        return {"mc_samples": self.config.mc_samples,
                "head_only": bool(getattr(self.models_[0], "head_only_dropout", False)),
                "dropout": self.config.dropout}


@register_method("aleatoric")
class AleatoricMethod(MCDropoutMethod):
    """MC dropout on a model with a log-variance head, trained with the ``aleatoric`` trainer."""

    name = "aleatoric"
    logit_noise = True
    report_order = 3

    @classmethod
    def report_label(cls, config, trainer, default_trainer):
        return "Aleatoric+MC"

    def resolve(self, config):
        if config.trainer not in ("baseline", "aleatoric"):
            raise ConfigError(f"--method aleatoric trains with its own loss (trainer 'aleatoric'), so trainer must "
                              f"be baseline or aleatoric, got {config.trainer!r} instead; drop --trainer")
        return super().resolve(dataclasses.replace(config, trainer="aleatoric"))

    def make_trainer(self, train_config):
        return build_trainer("aleatoric", train_config, n_samples=self.config.aleatoric_samples,
                             variance=self.config.variance)

    def describe(self) -> dict:
        return {**super().describe(), "aleatoric_samples": self.config.aleatoric_samples,
                "variance": self.config.variance, "test_logit_samples": 1,
                "test_sampling": "per MC-dropout pass, one draw of the logits from N(mu, sigma^2); "
                                 "probs = mean over passes of its softmax"}
