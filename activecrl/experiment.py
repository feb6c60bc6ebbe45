"""Train one model on a dataset's training split and evaluate it on the test split.

This is the library function behind ``activecrl train`` (the paper's classification benchmark,
Table 1). Results go to a run folder: ``metrics.json``, ``predictions.npz`` and ``model.pt``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from . import __version__
from .config import from_dict
from .errors import ConfigError, DataError
from .io import atomic_savez, atomic_torch_save, atomic_write_json, prepare_out_dir, to_jsonable
from .runtime import resolve_device
from .trainers import EpochInfo, TrainConfig

logger = logging.getLogger(__name__)


@dataclass
class TrainRunConfig:
    dataset: str = "digits"
    model: str = "small_cnn"
    trainer: str = "baseline"
    dropout: float = 0.0  # dropout before the classifier
    data_dir: str | None = None
    download: bool = True
    device: str = "auto"
    eval_batch_size: int = 1024
    train: TrainConfig = field(default_factory=TrainConfig)
    # comparison methods and temperature scaling: see activecrl.methods
    method: str = "plain"  # plain | mc_dropout | aleatoric | aes | ensemble
    mc_samples: int = 50  # MC-dropout passes at test time (mc_dropout, aleatoric)
    aleatoric_samples: int = 50  # Gaussian logit samples per example in the aleatoric loss
    variance: str = "sample"  # aleatoric log-variance head: one per sample | one per class
    snapshots: int = 10  # AES: k snapshots over the last (1 - snapshot_start) of training
    snapshot_start: float = 0.5
    members: int = 5  # ensemble size (seeds seed, seed + 1, ...)
    temperature_scaling: bool = False  # fit T on a held-out part of the training split
    holdout_fraction: float = 0.1
    bootstrap: int = field(default=0, metadata={"help": "bootstrap resamples of the test set for 95% intervals "
                                                        "of every metric (metrics.json ci95); 0 = none"})

    def __post_init__(self):
        if isinstance(self.bootstrap, bool) or not isinstance(self.bootstrap, int) or self.bootstrap < 0:
            raise ConfigError(f"bootstrap must be a non-negative integer (resamples; 0 = no intervals, e.g. 1000), "
                              f"got {self.bootstrap!r} instead")


@dataclass
class TrainRunResult:
    config: TrainRunConfig
    model: nn.Module
    metrics: dict[str, float]
    probs: np.ndarray  # (n_test, n_classes) float32
    logits: np.ndarray  # (n_test, n_classes) float32
    labels: np.ndarray  # (n_test,) int64
    confidence: np.ndarray  # (n_test,) the score the ranking metrics used
    train_seconds: float
    eval_seconds: float
    model_info: dict = field(default_factory=dict)
    method_info: dict = field(default_factory=dict)  # what the method did (metrics.json "method")
    member_states: list[dict] | None = None  # ensemble members' weights (saved to members.pt)
    ci95: dict[str, list[float]] | None = None  # bootstrap intervals (config.bootstrap > 0)

    def to_json(self) -> dict:
        out = {
            "activecrl_version": __version__,
            "config": dataclasses.asdict(self.config),
            "train_seconds": self.train_seconds,
            "eval_seconds": self.eval_seconds,
            "n_test": int(self.labels.shape[0]),
            "metrics": self.metrics,
        }
        if self.method_info:
            out["method"] = self.method_info
        if self.ci95 is not None:
            out["ci95"] = self.ci95
            out["bootstrap"] = bootstrap_info(self.config.bootstrap, self.config.train.seed)
        return out


def bootstrap_info(n_resamples: int, seed: int) -> dict:
    """How ``ci95`` was made (metrics.json ``bootstrap``)."""
    return {"n_resamples": int(n_resamples), "seed": int(seed), "level": 0.95,
            "method": "percentile intervals over test sets resampled with replacement, from predictions.npz"}


def model_info_for(dataset, model_name: str, dropout: float) -> dict:
    """What ``load_trained`` needs to rebuild the model and its input pipeline."""
    return {
        "model": model_name,
        "num_classes": dataset.num_classes,
        "in_channels": dataset.in_channels,
        "image_size": dataset.image_size,
        "dropout": float(dropout),
        "dataset": dataset.name,
        "classes": list(dataset.classes),
        "mean": [float(m) for m in dataset.mean],
        "std": [float(s) for s in dataset.std],
        "augment": bool(dataset.augment),
    }


def train_and_evaluate(config: TrainRunConfig, *, dataset=None,
                       progress: Callable[[EpochInfo], None] | None = None) -> TrainRunResult:
    """Train ``config.model`` with ``config.trainer`` on the training split; evaluate on test.

    One code path serves the plain run and the comparison methods (``config.method``, temperature
    scaling): ``activecrl.methods.train_and_evaluate_method``, where ``plain`` is one member
    trained once and scored by its max softmax probability. ``config.bootstrap > 0`` adds 95 %
    bootstrap intervals of every metric (``result.ci95``; ``activecrl.bootstrap``).
    """
    from .methods import train_and_evaluate_method

    result = train_and_evaluate_method(config, dataset=dataset, progress=progress)
    if config.bootstrap > 0:
        from .bootstrap import bootstrap_intervals

        # from the arrays predictions.npz stores, so the intervals can be recomputed from the run folder
        result.ci95 = bootstrap_intervals(result.probs, result.labels, result.confidence,
                                          n_resamples=config.bootstrap, seed=config.train.seed)
    return result


def save_train_run(result: TrainRunResult, out_dir: Path, *, overwrite: bool = False) -> Path:
    """Write ``metrics.json``, ``predictions.npz`` and ``model.pt`` into ``out_dir``."""
    out = prepare_out_dir(Path(out_dir), marker="metrics.json", overwrite=overwrite)
    atomic_savez(out / "predictions.npz", probs=result.probs, confidence=result.confidence,
                 labels=result.labels, logits=result.logits)
    state = {k: v.detach().cpu() for k, v in result.model.state_dict().items()}
    atomic_torch_save(out / "model.pt", {
        "state_dict": state,
        "model_info": to_jsonable(result.model_info),
        "config": to_jsonable(dataclasses.asdict(result.config)),
        "activecrl_version": __version__,
    })
    if result.member_states:
        atomic_torch_save(out / "members.pt", {"member_states": result.member_states,
                                               "model_info": to_jsonable(result.model_info)})
    # metrics.json last: its presence marks a complete run
    atomic_write_json(out / "metrics.json", result.to_json())
    return out


def load_trained(run_dir: Path | str, device: str | torch.device = "cpu"):
    """Rebuild a model saved by ``save_train_run``: returns ``(model, model_info, config_dict)``."""
    from .models import build_model

    path = Path(run_dir)
    path = path / "model.pt" if path.is_dir() else path
    if not path.is_file():
        raise DataError(f"no saved model at {path}; pass the --out folder of an `activecrl train` run")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"{path} is not a model saved by activecrl ({type(exc).__name__}: {exc})") from None
    if not isinstance(blob, dict) or "state_dict" not in blob or "model_info" not in blob:
        raise DataError(f"{path} is not a model saved by activecrl (missing state_dict/model_info)")
    info = blob["model_info"]
    model = build_model(info["model"], num_classes=info["num_classes"], in_channels=info["in_channels"],
                        image_size=info["image_size"], dropout=info.get("dropout", 0.0))
    if info.get("variance_head"):  # an aleatoric run: the model carries a log-variance head
        from .methods import add_variance_head

        add_variance_head(model, per_class=info["variance_head"] == "class")
    model.load_state_dict(blob["state_dict"])
    model.to(resolve_device(device)).eval()
    return model, info, blob.get("config", {})


def config_from_dict(values: dict) -> TrainRunConfig:
    return from_dict(TrainRunConfig, values)


def read_metrics(run_dir: Path | str) -> dict:
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir} holds no metrics.json; pass the --out folder of a finished `activecrl train` run")
    return json.loads(path.read_text())
