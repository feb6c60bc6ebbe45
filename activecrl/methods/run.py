"""Train one model on a dataset's training split and evaluate it on the test split.

This is the library function behind ``activecrl train`` (the paper's classification benchmark,
Table 1). Results go to a run folder: ``metrics.json``, ``predictions.npz`` and ``model.pt``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from activecrl import __version__
from activecrl.evaluation.bootstrap import bootstrap_info, bootstrap_intervals
from activecrl.data import device_splits, load_dataset
from activecrl.core.errors import ConfigError, DataError
from activecrl.core.io import atomic_savez, atomic_torch_save, atomic_write_json, prepare_out_dir, to_jsonable
from activecrl.methods import build_method, holdout_split, temperature_scale
from activecrl.methods.temperature import log_probs
from activecrl.evaluation.metrics import classification_metrics
from activecrl.backbones import backbone_options, check_backbone_options, rebuild_options, with_backbone_stats
from activecrl.models import build_model
from activecrl.core.runtime import configure_backends, resolve_device, resolve_threads, torch_threads
from activecrl.methods.config import TrainRunConfig
from activecrl.training.config import COS_TEMP
from activecrl.training.trainers import EpochInfo

logger = logging.getLogger(__name__)


def run_label(config: TrainRunConfig) -> str:
    """How tables and progress name a run: the trainer, with the method in front unless it is ``plain``."""
    return config.trainer if config.method == "plain" else f"{config.method} ({config.trainer})"


def planned_epochs(config: TrainRunConfig) -> int:
    """Training epochs ``train_and_evaluate`` runs in all (the epochs times the method's models, e.g. an
    ensemble's members); checks the method's options, so a bad one fails before any work."""
    return config.train.epochs * build_method(config).members


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
    threads_used: int | None = None  # torch's intra-op threads (CPU results depend on them)
    ci95: dict[str, list[float]] | None = None  # bootstrap intervals (config.bootstrap > 0)
    skipped_images: list[str] = field(default_factory=list)  # --skip-bad-images: files left out of the dataset

    def to_json(self) -> dict:
        out = {
            "activecrl_version": __version__,
            "config": dataclasses.asdict(self.config),
            "train_seconds": self.train_seconds,
            "eval_seconds": self.eval_seconds,
            "n_test": int(self.labels.shape[0]),
            "threads_used": self.threads_used,
            "metrics": self.metrics,
        }
        if self.method_info:
            out["method"] = self.method_info
        if self.skipped_images:
            out["skipped_images"] = self.skipped_images
        if self.ci95 is not None:
            out["ci95"] = self.ci95
            out["bootstrap"] = bootstrap_info(self.config.bootstrap, self.config.train.seed)
        return out


def model_info_for(dataset, model_name: str, dropout: float, variance_head: str | None = None,
                   head: str = "linear", cos_temp: float = COS_TEMP) -> dict:
    """What ``load_trained`` needs to rebuild the model and its input pipeline."""
    info = {
        "model": model_name,
        "head": head,
        "cos_temp": float(cos_temp),
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
    if variance_head is not None:  # build_model's option (the aleatoric trainer's log-variance head)
        info["variance_head"] = variance_head
    return info


def train_subset(size: int, pool, seed: int) -> np.ndarray:
    """``size`` sorted indices drawn without replacement from ``pool`` (an index array, or n for
    ``range(n)``), reproducibly from ``seed``: a CPU-sized classification benchmark on part of a
    training split. The held-out part of temperature scaling, if any, is never drawn."""
    pool = np.arange(pool) if np.isscalar(pool) else np.asarray(pool)
    if not 2 <= size <= pool.size:
        raise ConfigError(f"train_subset (--train-subset) must be between 2 and the {pool.size} training images "
                          f"available, got {size} instead; pass 0 to train on all of them")
    rng = np.random.default_rng([int(seed), 0x5B5E7])  # its own stream: not the shuffling's or the holdout's
    return np.sort(rng.choice(pool, size=size, replace=False))


def train_and_evaluate(config: TrainRunConfig, *, dataset=None,
                       progress: Callable[[EpochInfo], None] | None = None) -> TrainRunResult:
    """Train ``config.model`` as ``config.method`` says on the training split; evaluate on test.

    One pipeline for every method (``activecrl.methods``; ``plain`` is one model scored by its max
    softmax probability): check the options, load the data, hold out a part for temperature
    scaling if asked, let the method train, predict and score, then compute the metrics.
    ``config.bootstrap > 0`` adds 95 % bootstrap intervals of every metric (``result.ci95``,
    ``activecrl.evaluation.bootstrap``), from the arrays predictions.npz stores.
    """
    method = build_method(config)  # every option is checked before any work
    config = method.config
    device = resolve_device(config.device)
    configure_backends(device)
    if dataset is None:
        dataset = load_dataset(config.dataset, data_dir=config.data_dir, download=config.download,
                               skip_bad_images=config.skip_bad_images)
    probe = build_model(config.model, num_classes=dataset.num_classes, in_channels=dataset.in_channels,
                        image_size=dataset.image_size, **backbone_options(config))  # its size sets the thread count
    dataset = with_backbone_stats(dataset, probe)  # a timm backbone's pretrained normalisation
    threads = resolve_threads(config.threads, probe)
    with torch_threads(threads):  # restored afterwards: a notebook keeps its own setting
        train_data, test_data = device_splits(dataset, device, channels_last=config.train.channels_last)

        info: dict = {"name": method.name}
        fit_idx = holdout_idx = None
        if config.temperature_scaling:
            holdout_idx, fit_idx = holdout_split(config.holdout_fraction, dataset.n_train, config.train.seed)
            info.update(holdout_fraction=config.holdout_fraction, n_holdout=int(holdout_idx.size))
        if config.train_subset:
            fit_idx = train_subset(config.train_subset, dataset.n_train if fit_idx is None else fit_idx,
                                   config.train.seed)
        if fit_idx is not None:
            info.update(n_train_used=int(fit_idx.size))
        train_seconds = method.fit(dataset, train_data, None if fit_idx is None else torch.from_numpy(fit_idx),
                                   progress)

        start = time.perf_counter()
        probs, logits = method.predictive(test_data)
        logits = log_probs(probs) if logits is None else logits
        if config.temperature_scaling:
            probs, logits, scaled = temperature_scale(method, train_data, holdout_idx,
                                                      dataset.train_labels[holdout_idx].numpy(), logits)
            info.update(scaled)
        labels = dataset.test_labels.numpy()
        confidence = method.confidence(probs)
        info.update(confidence=method.confidence_label, **method.describe())
        metrics = classification_metrics(probs, labels, confidence)
        eval_seconds = time.perf_counter() - start

        model = method.models_[0]
        model_info = model_info_for(dataset, config.model, config.dropout, model.build_config.get("variance_head"),
                                    model.build_config.get("head", "linear"), model.build_config.get("cos_temp", COS_TEMP))
        model_info.update(rebuild_options(model.build_config))
        model_info["method"] = method.name
        if method.saved_model:
            model_info["model_pt_holds"] = method.saved_model
        result = TrainRunResult(config, model, metrics, probs.astype(np.float32), logits.astype(np.float32), labels,
                                confidence, train_seconds, eval_seconds, model_info, method_info=info,
                                member_states=method.member_states, threads_used=threads,
                                skipped_images=list(dataset.skipped))
        if config.bootstrap > 0:
            # from the arrays predictions.npz stores, so `activecrl rescore` recomputes the same intervals
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
                        image_size=info["image_size"], dropout=info.get("dropout", 0.0),
                        variance_head=info.get("variance_head"), head=info.get("head", "linear"),
                        cos_temp=info.get("cos_temp", COS_TEMP), **rebuild_options(info))
    model.load_state_dict(blob["state_dict"])
    model.to(resolve_device(device)).eval()
    return model, info, blob.get("config", {})
