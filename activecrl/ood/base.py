"""What an OOD detector is given and returns: the public interface of ``activecrl ood`` plugins.

A detector is a :class:`Detector` subclass (or a factory ``fn(*, config) -> Detector``) in
``DETECTORS``: registered with ``@register_detector("name")``, through the ``activecrl.detectors``
entry-point group, or given as ``--detector package.module:Class``. ``run_ood`` builds it as
``cls(config=ood_config)`` and calls ``score(inputs, split, say)`` with a :class:`DetectorInputs`
(the frozen model and the data on the device) and a :class:`DetectorSplit` (which samples to tune
on and which to score); it returns :class:`DetectorScores`. The built-ins are in ``detectors.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from torch import nn

from activecrl.core.registry import Registry

DETECTORS: Registry = Registry("detector", "activecrl.detectors")
register_detector = DETECTORS.register


@dataclass
class DetectorInputs:
    """What every detector may read: the frozen model, the in-distribution test split and the OOD
    set on the device, and what is needed to put further images there the same way."""
    model: nn.Module
    info: dict  # the model's saved metadata (classes, channels, size, mean / std, dataset)
    run_cfg: dict  # the run's saved config
    ds_spec: str
    data_dir: str | None
    dataset: object  # the loaded in-distribution ImageDataset (train split for Mahalanobis' Gaussians)
    device_data: Callable  # uint8 images (+ labels) -> normalised DeviceData, no augmentation
    test: object  # DeviceData of the in-distribution test split
    ood: object  # DeviceData of the test OOD set
    conversions: dict  # what was converted to the model's input: {"ood": note or None, "ood_val": ...}


@dataclass
class DetectorSplit:
    """Tuning and evaluation indices, and the protocol text that describes them in ood.json."""
    tune_in: np.ndarray  # into the in-distribution test split (inputs.test)
    tune_out: np.ndarray  # into val_out
    val_out: object  # DeviceData the OOD tuning samples come from (the test OOD set or validation images)
    eval_in: np.ndarray  # into inputs.test
    eval_out: np.ndarray  # into inputs.ood
    protocol: dict  # a detector may add its grid here


@dataclass
class DetectorScores:
    score_in: np.ndarray  # evaluation in-distribution samples, higher = more in-distribution
    score_out: np.ndarray  # evaluation OOD samples
    params: dict  # the (tuned) hyper-parameters, for ood.json
    tuning: list[dict] = field(default_factory=list)  # tuning metrics of every candidate setting


class Detector:
    """Scores the in-distribution and OOD evaluation samples of a ``run_ood`` split.

    ``config`` is the ``OODConfig`` (stored in ``__init__``). ``score(inputs, split, say)``:
    ``inputs`` a :class:`DetectorInputs`, ``split`` a :class:`DetectorSplit`, ``say`` a progress
    callback taking a message. The ``report_*`` hooks say how ``activecrl report`` shows its runs.
    """

    name = "detector"
    tuned = False  # True: hyper-parameters are chosen on the split's tuning samples
    report_order = 9  # where ``activecrl report`` sorts this detector's rows (the built-ins: the paper's order)

    def __init__(self, config):
        self.config = config

    def score(self, inputs: DetectorInputs, split: DetectorSplit, say: Callable[[str], None]) -> DetectorScores:
        raise NotImplementedError

    @classmethod
    def report_label(cls, name: str, config: dict) -> str:
        """This detector in ``activecrl report``'s tables; ``config``: the run's saved ``OODConfig``
        (a dict), ``name``: the name it ran under."""
        return name

    @classmethod
    def report_params(cls, params: dict) -> dict:
        """The (tuned) ``params`` of a run as ``activecrl report`` shows them: {short name: value}."""
        return dict(params)
