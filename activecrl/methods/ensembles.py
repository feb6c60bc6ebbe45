"""Methods scored by the max of a softmax: ``plain``, ``aes`` (averaged snapshots) and ``ensemble``.

``plain``: one model trained with ``--trainer``; probabilities = its softmax.
``aes`` (Averaged Early Stopping, Geifman et al. 2019): ``snapshots`` copies of the weights taken
during one run (:func:`snapshot_epochs`), their softmax outputs averaged.
``ensemble`` (Deep Ensembles, Lakshminarayanan et al. 2017): ``members`` models with seeds
``seed, seed + 1, ...``, their softmax outputs averaged.
"""

from __future__ import annotations

import copy
import math
from typing import Callable

import torch
from torch import nn

from activecrl.core.errors import ConfigError
from activecrl.inference.predict import predict
from activecrl.training.trainers import EpochInfo
from activecrl.core.validate import check_int
from activecrl.methods.base import Method, average_softmax, register_method


@register_method("plain")
class PlainMethod(Method):
    """One model trained with ``--trainer``; confidence = max probability."""

    name = "plain"
    report_order = 0

    @classmethod
    def report_label(cls, config, trainer, default_trainer):
        return trainer

    def predictive(self, data, indices=None):
        logits = predict(self.models_[0], data, indices, batch_size=self.config.eval_batch_size,
                         features=False).logits.double()
        return torch.softmax(logits, dim=1).numpy(), logits.numpy()


def snapshot_epochs(epochs: int, k: int, start: float = 0.5) -> list[int]:
    """The 1-based epochs after which AES keeps a snapshot: k evenly spaced, the last one = ``epochs``.

    They span the window of the last ``W = epochs - floor(start * epochs)`` epochs:
    ``epochs - round(i * W / k)`` for ``i = 0..k-1``, in increasing order.
    """
    epochs = check_int("epochs", epochs, 1)
    k = check_int("snapshots", k, 1)
    if not (isinstance(start, (int, float)) and 0 <= start < 1):
        raise ConfigError(f"snapshot_start must be a fraction of training in [0, 1), got {start!r} instead")
    window = epochs - int(math.floor(start * epochs))
    if k > window:
        raise ConfigError(
            f"snapshots must be at most {window} (the epochs after epoch {epochs - window} of {epochs}, where "
            f"AES takes them), got {k} instead; lower --snapshots, train longer or lower --snapshot-start"
        )
    return sorted(epochs - round(i * window / k) for i in range(k))


class SnapshotCollector:
    """A trainer ``progress`` callback keeping host copies of ``model.state_dict()`` at ``epochs``."""

    def __init__(self, model: nn.Module, epochs: list[int], then: Callable[[EpochInfo], None] | None = None):
        self.model = model
        self.epochs = set(int(e) for e in epochs)
        self.then = then
        self.states: list[dict[str, torch.Tensor]] = []
        self.taken: list[int] = []

    def __call__(self, info: EpochInfo) -> None:
        if info.epoch in self.epochs:
            self.states.append({k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()})
            self.taken.append(info.epoch)
        if self.then is not None:
            self.then(info)


def _with_states(model: nn.Module, states: list[dict]):
    """``model`` with each of ``states`` loaded in turn (snapshots without holding k models)."""
    for state in states:
        model.load_state_dict(state)
        yield model


@register_method("aes")
class AESMethod(Method):
    """Averaged snapshots of one run; confidence = max of the averaged probabilities."""

    name = "aes"
    confidence_label = "max probability of the average"
    saved_model = "the final weights (the last AES snapshot)"
    report_order = 1

    @classmethod
    def report_label(cls, config, trainer, default_trainer):
        return f"AES(k={config.get('snapshots')})" + ("" if default_trainer else f" {trainer}")

    def resolve(self, config):
        snapshot_epochs(config.train.epochs, config.snapshots, config.snapshot_start)
        return config

    def watch(self, model, train_config, progress):
        c = self.config
        self.collector_ = SnapshotCollector(model, snapshot_epochs(train_config.epochs, c.snapshots, c.snapshot_start),
                                            then=progress)
        return self.collector_

    def predictive(self, data, indices=None):
        # the snapshots are loaded one at a time into a scratch copy of the model
        snapshots = _with_states(copy.deepcopy(self.models_[0]), self.collector_.states)
        return average_softmax(snapshots, data, indices, self.config.eval_batch_size), None

    def describe(self) -> dict:
        return {"snapshots": len(self.collector_.states), "snapshot_epochs": self.collector_.taken,
                "snapshot_start": self.config.snapshot_start}


@register_method("ensemble")
class EnsembleMethod(Method):
    """``members`` independently seeded models; confidence = max of the averaged probabilities."""

    name = "ensemble"
    confidence_label = "max probability of the average"
    saved_model = "ensemble member 0 (all members in members.pt)"
    report_order = 4

    @classmethod
    def report_label(cls, config, trainer, default_trainer):
        return f"Ensemble×{config.get('members')} {trainer}"

    def resolve(self, config):
        check_int("members", config.members, 2, "; an ensemble needs at least 2 members")
        return config

    @property
    def members(self) -> int:
        return self.config.members

    def predictive(self, data, indices=None):
        return average_softmax(self.models_, data, indices, self.config.eval_batch_size), None

    def describe(self) -> dict:
        return {"members": self.members, "member_seeds": self.seeds_}

    @property
    def member_states(self):
        return [{k: v.detach().cpu() for k, v in m.state_dict().items()} for m in self.models_]
