"""Rounds of a labeling project: what ``activecrl label next`` runs, on the engine of ``activecrl run``.

A round trains a model on the human labels so far and lets the strategy pick the next batch from
the unlabeled pool, through the same code as a stage of the experiment loop: the loop's
:class:`~activecrl.al.loop.TrialRunner` trains (``train``: the same trainers, the stage's torch
seed) and queries (``query``: the same strategies, the stage's generator), on a pool that is the
project's images in path order. Without labels the round is a cold start: the loop's
:func:`~activecrl.al.loop.initial_query`, uniformly at random (``--strategy random``) or with a
strategy that needs no model (TypiClust by default) on the project's embeddings.

So a simulated project (``oracle``: a file with every image's label, answering each batch at
once) makes the picks of ``activecrl run`` with the same strategy, trainer, seed and budgets, on
the same pixels: its cold start is the run's seed set and its round ``r`` after that the run's
stage ``r - 1``.

The model trains on images (a registered image model such as ``small_cnn4``, at ``image_size``)
or on embeddings (``linear``/``mlp``, the default ``linear`` on the label-free patch features; or
a ``timm:NAME`` backbone embedded once with a linear head on top): see :mod:`activecrl.label.pool`.
Its predictions over the pool are stored (``Project.record_predictions``) for ``status`` and
``export --auto-label``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from activecrl.al.config import INITIAL_STRATEGIES, ALConfig
from activecrl.al.loop import (CheckedRun, TrialRunner, _with_class_count, check_run_config, initial_query,
                               run_threads, stage_rng)
from activecrl.core.errors import ConfigError, DataError
from activecrl.core.runtime import configure_backends, resolve_device, torch_threads
from activecrl.data import FeatureData, ImageDataset, device_split
from activecrl.inference.predict import predict
from activecrl.label.batches import Batch
from activecrl.label.formats import write_csv
from activecrl.label.images import first_of
from activecrl.label.importing import ImportResult
from activecrl.label.pool import DEFAULT_IMAGE_SIZE, is_feature_mode, pool_embeddings, pool_images
from activecrl.label.project import Project, read_import_file
from activecrl.label.tracking import RoundTracking
from activecrl.strategies import get_strategy

logger = logging.getLogger(__name__)

__all__ = ["RoundSettings", "RoundResult", "round_settings", "next_round", "simulate", "COLD_START_STRATEGY"]

COLD_START_STRATEGY = "typiclust"
DEFAULTS = {"model": "linear", "trainer": "crl", "strategy": "least_conf", "image_size": DEFAULT_IMAGE_SIZE,
            "pretrained": False, "weights": None}
COLD_VERSION = "cold-start"
_STAGE_PREFIX = "stage-"


@dataclass(frozen=True)
class RoundSettings:
    """The choices of a round: the project's defaults (``label init``) with this round's overrides."""

    model: str
    trainer: str
    strategy: str
    image_size: int
    pretrained: bool = False
    weights: str | None = None

    @property
    def feature_mode(self) -> bool:
        return is_feature_mode(self.model)

    @property
    def head(self) -> str:
        """The model trained in a round: the head itself, or ``linear`` on a timm backbone's features."""
        return "linear" if self.model.startswith("timm:") else self.model


@dataclass
class RoundResult:
    """What ``next_round`` did: the batch it issued (or re-issued) and where it wrote it."""

    batch: Batch
    path: Path
    settings: RoundSettings
    strategy: str  # the strategy that picked (the cold-start one without labels)
    cold_start: bool = False
    reissued: bool = False
    stage: int | None = None  # the loop's stage this round matches (None: cold start or re-issue)
    n_labeled: int = 0
    inputs: str = ""  # what the model saw: "images 32x32", "k-means patch features ...", "timm:..."
    seconds: float = 0.0
    imported: ImportResult | None = None  # the oracle's answers, when one was given
    picks: list[str] = field(default_factory=list)
    train_seconds: float | None = None  # the model's training (None: no model this round)
    query_seconds: float | None = None  # the pick (a cold start's includes computing its embeddings)
    epoch_losses: list[float] = field(default_factory=list)  # the model's mean training loss per epoch


def round_settings(project: Project, **overrides) -> RoundSettings:
    """The project's defaults with the non-None ``overrides`` (model, trainer, strategy, image_size, ...)."""
    values = {**DEFAULTS, **{k: v for k, v in project.defaults.items() if k in DEFAULTS},
              **{k: v for k, v in overrides.items() if v is not None}}
    settings = RoundSettings(**values)
    if not isinstance(settings.image_size, int) or settings.image_size < 1:
        raise ConfigError(f"--image-size must be a positive number of pixels, got {settings.image_size!r} instead")
    if (settings.pretrained or settings.weights) and not settings.model.startswith("timm:"):
        raise ConfigError(f"--pretrained and --weights belong to a timm backbone (--model timm:NAME), got --model "
                          f"{settings.model} instead")
    if settings.weights is not None and not Path(settings.weights).is_file():
        raise ConfigError(f"--weights must be a weights file of the backbone, got {settings.weights!r}, which does not "
                          "exist")
    return settings


def _check_settings(settings: RoundSettings) -> None:
    """Unknown names fail before any image is decoded (the registries list the valid ones)."""
    from activecrl.models import model_factory
    from activecrl.training.trainers import TRAINERS

    model_factory(settings.model)
    TRAINERS.get(settings.trainer)
    get_strategy(settings.strategy)


def _images(project: Project) -> tuple[list[str], list[str]]:
    rows = project.con.execute("SELECT path, hash FROM images ORDER BY path").fetchall()
    return [p for p, _ in rows], [h for _, h in rows]


def _model_stage(project: Project) -> int:
    """How many model rounds were labeled: this round is that stage of the loop."""
    return project.con.execute("SELECT COUNT(*) FROM batches WHERE status = 'imported' AND model_version LIKE ?",
                               (_STAGE_PREFIX + "%",)).fetchone()[0]


def _batch_path(project: Project, batch: Batch, fmt: str, out) -> Path:
    return Path(out) if out else project.path / "batches" / f"round-{batch.round}.{'csv' if fmt == 'csv' else 'json'}"


def _check_sizes(budget: int, audit: int, n_pool: int) -> None:
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ConfigError(f"--budget must be a positive number of images, got {budget!r} instead")
    if budget > n_pool:
        raise ConfigError(f"--budget must be at most the {n_pool} unlabeled images, got {budget} instead; lower "
                          "--budget, or add images with `activecrl label add`")
    if isinstance(audit, bool) or not isinstance(audit, int) or not 0 <= audit <= n_pool - budget:
        raise ConfigError(f"--audit must be between 0 and the {n_pool - budget} unlabeled images left after the "
                          f"batch, got {audit!r} instead")


def _round_config(settings: RoundSettings, *, budget: int, stage: int, seed: int, device: str) -> ALConfig:
    # stages = stage + 2: the runner queries at every stage but the last
    return ALConfig(model=settings.head, trainer=settings.trainer, strategy=settings.strategy, budget=budget,
                    initial=2, stages=stage + 2, trials=1, seed=seed, device=device)


@dataclass(frozen=True)
class _PoolShape:
    """The sizes ``TrialRunner`` builds a feature-mode model from (an ImageDataset in image mode)."""

    n_train: int
    num_classes: int
    in_channels: int
    image_size: int = DEFAULT_IMAGE_SIZE


def _train_data(project: Project, settings: RoundSettings, paths, hashes, labels: np.ndarray, device, config):
    """(the pool as the model's input data, the shape the runner builds the model for, inputs' name)."""
    n_classes = len(project.classes)
    if settings.feature_mode:
        inputs = pool_embeddings(project.path, project.images_dir, paths, hashes, model=settings.model,
                                 image_size=settings.image_size, pretrained=settings.pretrained,
                                 weights=settings.weights, device=device)
        data = FeatureData(inputs.array, torch.from_numpy(labels), device=device)
        return data, _PoolShape(len(paths), n_classes, inputs.array.shape[1]), inputs.source
    inputs = pool_images(project.path, project.images_dir, paths, hashes, settings.image_size)
    empty = torch.empty((0, *inputs.array.shape[1:]), dtype=torch.uint8)
    dataset = ImageDataset(name=project.path.name or "project", train_images=inputs.array,
                           train_labels=torch.from_numpy(labels), test_images=empty,
                           test_labels=torch.empty(0, dtype=torch.int64), classes=project.classes)
    data = device_split(dataset, "train", device, channels_last=config.train.channels_last)
    return data, dataset, inputs.source


def _cold_start(project: Project, settings: RoundSettings, paths, hashes, pool: np.ndarray, budget: int,
                seed: int, device) -> tuple[np.ndarray, str, str]:
    """The first batch, before any label: the loop's seed-set choice on the project's pool."""
    name = settings.strategy if settings.strategy in INITIAL_STRATEGIES else COLD_START_STRATEGY
    rng = stage_rng(seed, 0, -1)
    if name == "random":
        return initial_query(None, pool, budget, rng), name, "no model (uniform draw)"
    inputs = pool_embeddings(project.path, project.images_dir, paths, hashes, model=settings.model if
                             settings.model.startswith("timm:") else "patches", image_size=settings.image_size,
                             pretrained=settings.pretrained, weights=settings.weights, device=device)
    strategy = _with_class_count(get_strategy(name), name, {}, len(project.classes))
    try:
        return initial_query(strategy, pool, budget, rng, inputs.array), name, inputs.source
    except ConfigError as exc:
        if settings.strategy == name:  # asked for by name: its error is the answer
            raise
        # a pool too small for the default's clusters (TypiClust wants clusters of more than 5 images)
        logger.warning("cold start: %s cannot pick %d of %d images (%s); drawing them uniformly at random",
                       name, budget, len(pool), exc)
        return initial_query(None, pool, budget, stage_rng(seed, 0, -1)), "random", "no model (uniform draw)"


def _model_round(project: Project, settings: RoundSettings, paths, hashes, sets, pool: np.ndarray,
                 labeled: np.ndarray, budget: int, seed: int, device_name: str):
    """Train on the labels, query the pool, predict it: the loop's stage through ``TrialRunner``."""
    stage = _model_stage(project)
    config = _round_config(settings, budget=budget, stage=stage, seed=seed, device=device_name)
    strategy, trainer, dropout = check_run_config(config)
    strategy = _with_class_count(strategy, config.strategy, config.strategy_params, len(project.classes))
    device = resolve_device(config.device)
    configure_backends(device, config.deterministic)
    index = {p: i for i, p in enumerate(paths)}
    labels = np.zeros(len(paths), dtype=np.int64)
    labels[labeled] = sets.labels
    data, shape, inputs = _train_data(project, settings, paths, hashes, labels, device, config)
    checked = CheckedRun(strategy, trainer, dropout, shape, trainer.model_options())
    runner = TrialRunner(config, project.path, checked, device, data, None, train_files=paths)
    scored = np.sort(np.concatenate([pool, np.array([index[p] for p in sets.audit], dtype=np.int64)]))
    with torch_threads(run_threads(config, checked)):
        model, fit = runner.train(0, stage, labeled, None)
        picks, query_seconds = runner.query(model, 0, stage, labeled, pool=pool)
        out = predict(model, data, torch.from_numpy(scored), batch_size=config.eval_batch_size, features=False)
    probs = torch.softmax(out.logits.double(), dim=1).numpy()
    timings = dict(train_seconds=fit.train_seconds, query_seconds=query_seconds, epoch_losses=list(fit.epoch_losses))
    return picks, stage, inputs, scored, probs, timings


def _label_names(project: Project, probs: np.ndarray) -> tuple[list[str], np.ndarray]:
    classes = project.classes
    return [classes[k] for k in probs.argmax(axis=1)], probs.max(axis=1)


def _oracle_answers(project: Project, batch: Batch, oracle) -> Path:
    """The oracle's labels of the batch as an ``image,label`` CSV beside the batch file."""
    parsed = read_import_file(Path(oracle), "--oracle")
    truth = {a.image: a.label for a in parsed.annotations if a.label is not None}
    missing = [i.image for i in batch.items if i.image not in truth]
    if missing:
        raise DataError(f"--oracle must give a label for every image of the batch, got none for {len(missing)}: "
                        f"{first_of(missing)}; pass a CSV image,label covering all images")
    answers = project.path / "batches" / f"round-{batch.round}-oracle.csv"
    write_csv(answers, ("image", "label"), [(i.image, truth[i.image]) for i in batch.items])
    return answers


def next_round(project: Project, budget: int, *, strategy: str | None = None, audit: int = 0, fmt: str = "csv",
               out=None, new: bool = False, oracle=None, seed: int = 0, device: str = "auto",
               model: str | None = None, trainer: str | None = None, image_size: int | None = None,
               pretrained: bool | None = None, weights: str | None = None,
               document_root=None, url_prefix: str | None = None, track: Sequence[str] | str = (),
               tracking_uri: str | None = None) -> RoundResult:
    """Issue the next batch: re-issue the open one (unless ``new``), or train, pick and write a new one.

    ``oracle``: a CSV (``image,label`` for every image) that answers the batch at once (imported),
    for simulated projects. ``track``: also log the round to these trackers (mlflow, tensorboard),
    in the project's one tracked run (:mod:`activecrl.label.tracking`; ``tracking_uri``: MLflow's).
    """
    tracking = RoundTracking.start(project, track, tracking_uri)  # a tracker that cannot work fails here, first
    settings = round_settings(project, model=model, trainer=trainer, strategy=strategy, image_size=image_size,
                              pretrained=pretrained, weights=weights)
    start = time.perf_counter()
    open_batch = project.open_batch()
    if open_batch is not None and not new:
        batch = project.issue_batch([], fmt=fmt, out=out, document_root=document_root, url_prefix=url_prefix)
        result = RoundResult(batch, _batch_path(project, batch, fmt, out), settings, batch.strategy or "",
                             reissued=True, picks=[i.image for i in batch.items if not i.audit])
    else:
        result = _new_round(project, settings, budget, audit=audit, fmt=fmt, out=out, seed=seed, device=device,
                            document_root=document_root, url_prefix=url_prefix)
    if oracle is not None:
        result.imported = project.import_labels(_oracle_answers(project, result.batch, oracle))
    result.seconds = time.perf_counter() - start
    tracking.log(project, result, budget=budget, audit=audit, seed=seed, device=device, format=fmt)
    return result


def _new_round(project: Project, settings: RoundSettings, budget: int, *, audit, fmt, out, seed, device,
               document_root, url_prefix) -> RoundResult:
    _check_settings(settings)
    sets = project.index_sets()
    _check_sizes(budget, audit, len(sets.pool))
    paths, hashes = _images(project)
    index = {p: i for i, p in enumerate(paths)}
    pool = np.array([index[p] for p in sets.pool], dtype=np.int64)
    labeled = np.array([index[p] for p in sets.labeled], dtype=np.int64)
    if len(labeled) == 0:
        start = time.perf_counter()
        picks, name, inputs = _cold_start(project, settings, paths, hashes, pool, budget, seed, device)
        timings = dict(query_seconds=time.perf_counter() - start)
        suggested = confidences = None
        version, stage = COLD_VERSION, None
    else:
        if len(labeled) < 2:
            raise ConfigError(f"a round trains on at least 2 labeled images, got {len(labeled)}; label more (import "
                              "them with `activecrl label import`), or start with a cold start")
        picks, stage, inputs, scored, probs, timings = _model_round(project, settings, paths, hashes, sets, pool,
                                                                    labeled, budget, seed, device)
        names, conf = _label_names(project, probs)
        version = f"{_STAGE_PREFIX}{stage}"
        project.record_predictions([paths[i] for i in scored], names, conf, version)
        by_index = dict(zip(scored.tolist(), zip(names, conf.tolist())))
        suggested = [by_index[i][0] for i in picks]
        confidences = [by_index[i][1] for i in picks]
        name = settings.strategy
    audit_seed = int(np.random.SeedSequence([seed, len(paths), len(labeled), 11]).generate_state(1)[0])
    batch = project.issue_batch([paths[i] for i in picks], suggested, confidences, audit=audit, seed=audit_seed,
                                fmt=fmt, out=out, new=True, strategy=name, model_version=version,
                                document_root=document_root, url_prefix=url_prefix)
    logger.info("round %d: %d images picked by %s (%s)", batch.round, len(picks), name, inputs)
    return RoundResult(batch, _batch_path(project, batch, fmt, out), settings, name, cold_start=stage is None,
                       stage=stage, n_labeled=len(labeled), inputs=inputs, picks=[paths[i] for i in picks], **timings)


def simulate(project: Project, oracle, budgets: Sequence[int], **options) -> list[RoundResult]:
    """Run one round per entry of ``budgets``, each answered at once by ``oracle`` (a CSV with every
    image's label): a labeling project played out with a simulated labeler. ``options`` go to
    :func:`next_round` (strategy, audit, seed, model, ...)."""
    return [next_round(project, budget, oracle=oracle, **options) for budget in budgets]
