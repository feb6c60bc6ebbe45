"""The active-learning stage loop (Moon et al. 2020, section 4.3).

For each trial: draw a random seed set; then for each stage train a model on the labeled set,
evaluate it on the test split, score the unlabeled pool with one forward pass, let the strategy
pick ``budget`` indices, and label them. The loop knows nothing about losses or optimisers (the
trainer's job) and strategies know nothing about training.

Crash safety without a state file: every random choice of stage ``s`` of trial ``t`` comes from
a generator seeded by ``(seed, t, s)``, so the labeled set and RNG state of any stage can be
rebuilt from the records alone (seed set + the indices queried so far). A record is appended
only once its stage is complete, so a run killed at any moment loses at most that stage.

Records go through ``records.append_trial_record``: one file per trial, merged into
``results.jsonl``, so the trials of one run folder may run in parallel (``activecrl sweep``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from activecrl.strategies import QueryContext, get_strategy

from activecrl import __version__
from activecrl.core.config import config_options, flatten, load_toml, merge
from activecrl.data import FeatureData, dataset_path, dataset_train_files, device_splits, load_dataset
from activecrl.embeddings.load import load_embeddings, load_test_embeddings
from activecrl.core.errors import ConfigError
from activecrl.inference.predict import predict
from activecrl.core.io import atomic_torch_save, atomic_write_json, prepare_out_dir
from activecrl.inference.mc_dropout import DEFAULT_MC_DROPOUT
from activecrl.evaluation.metrics import classification_metrics
from activecrl.backbones import backbone_options, with_backbone_stats
from activecrl.models import build_model, model_factory
from activecrl.inference.outputs import PoolOutputs
from activecrl.al.records import RESULTS_FILE, StageRecord, append_trial_record, read_records  # noqa: F401 (re-exported)
from activecrl.core.runtime import (PeakMemory, configure_backends, resolve_device, resolve_threads, seed_everything,
                                    torch_threads)
from activecrl.al.config import ALConfig
from activecrl.tracking import TRACKING_KEY, LoopTracking, check_tracking
from activecrl.training.trainers import EpochInfo, build_trainer

logger = logging.getLogger(__name__)


CONFIG_FILE = "config.json"


class LoopCallbacks:
    """Progress hooks; the CLI renders them with rich, a notebook may print or ignore them."""

    def trial_start(self, trial: int, n_trials: int) -> None: ...
    def stage_start(self, trial: int, stage: int, n_labeled: int) -> None: ...
    def epoch(self, info: EpochInfo) -> None: ...
    def query_start(self, trial: int, stage: int, n_pool: int) -> None: ...
    def stage_end(self, record: StageRecord) -> None: ...


def stage_rng(seed: int, trial: int, stage: int) -> np.random.Generator:
    """The generator for all random choices of one stage (stage -1: the seed set)."""
    return np.random.default_rng([seed, trial, stage + 1])


def torch_seed(seed: int, trial: int, stage: int) -> int:
    return int(np.random.SeedSequence([seed, trial, stage + 1, 7]).generate_state(1)[0])


def resolve_dropout(config: ALConfig, strategy) -> float:
    if config.dropout is not None:
        if strategy.requires_dropout and config.dropout == 0:
            raise ConfigError(
                f"strategy {strategy.name!r} needs dropout before the classifier, got dropout 0 instead; "
                f"omit --dropout (default {DEFAULT_MC_DROPOUT}) or set a rate in (0, 1)"
            )
        return float(config.dropout)
    if strategy.requires_dropout:
        # a warning, not info: the user did not ask for dropout and the CLI shows warnings by default
        logger.warning("strategy %r samples dropout: training with dropout %.2f before the classifier "
                       "(set --dropout to change)", strategy.name, DEFAULT_MC_DROPOUT)
        return DEFAULT_MC_DROPOUT
    return 0.0


def check_run_config(config: ALConfig):
    """The names and options of ``config`` that only a lookup can check: (strategy, trainer, dropout).

    ``run_active_learning`` calls this before it writes anything; ``activecrl list`` shows exactly
    the names that pass it.
    """
    strategy = get_strategy(config.strategy, **config.strategy_params)
    trainer = build_trainer(config.trainer, config.train)
    dropout = resolve_dropout(config, strategy)
    model_factory(config.model)  # a registered name or timm:NAME
    return strategy, trainer, dropout


def feature_mode(config: ALConfig) -> bool:
    """Whether the run's model trains on ``--embeddings`` rows (``linear``, ``mlp``) instead of images."""
    return bool(getattr(model_factory(config.model), "feature_input", False))


@dataclass
class CheckedRun:
    """What ``check_run`` established for a run: its strategy, trainer, dropout and dataset."""

    strategy: Any
    trainer: Any
    dropout: float
    dataset: Any  # ImageDataset
    model_options: dict  # e.g. the aleatoric trainer's variance head
    embeddings: np.ndarray | None = None  # --embeddings, (n_train, d) float32
    embeddings_info: dict | None = None  # its path, shape and sha256 (config.json)
    seed_strategy: Any = None  # --initial-strategy other than random
    test_embeddings: np.ndarray | None = None  # feature mode: the test split's rows, (n_test, d)


def check_run(config: ALConfig, *, dataset=None, names=None) -> CheckedRun:
    """Every check a run makes before it writes anything: names, options, the dataset and its
    sizes, and that the model can serve the run (``names``: ``check_run_config``'s result, when
    the caller has it). ``activecrl sweep`` runs it for each grid point before any task starts;
    the device is checked by the caller (a sweep's driver may have no GPU).
    """
    strategy, trainer, dropout = names or check_run_config(config)
    if dataset is None:
        dataset = load_dataset(config.dataset, data_dir=config.data_dir, download=config.download,
                               skip_bad_images=config.skip_bad_images)
    if dataset.num_classes < 2:
        raise ConfigError(f"--dataset must have at least 2 classes to train a classifier, got {dataset.num_classes} "
                          f"({', '.join(dataset.classes)}) in {config.dataset}; an image folder needs train/ and test/ "
                          f"with a subfolder per class (a flat folder of unlabeled images suits `activecrl pretrain` "
                          f"and `activecrl label init`)")
    if config.initial > dataset.n_train:
        raise ConfigError(f"initial must be at most the training split size {dataset.n_train}, "
                          f"got {config.initial} instead")
    embeddings, embeddings_info, test_embeddings = None, None, None
    if feature_mode(config) and config.embeddings is None:
        raise ConfigError(f"--model {config.model} trains on embeddings, got no --embeddings instead; pass a folder "
                          f"written by `activecrl embed` or `activecrl pretrain` (embeddings.npy and "
                          f"test_embeddings.npy), or choose an image model")
    if config.embeddings is not None:  # loaded once per run, checked before anything is written
        embeddings, embeddings_info = load_embeddings(config.embeddings, dataset.n_train)
        if feature_mode(config):
            test_embeddings, _ = load_test_embeddings(config.embeddings, dataset.n_test, embeddings.shape[1])
    # strategies with a class-count parameter (probcover's purity k-means) default to the dataset's
    # classes: with --embeddings they see no logits whose width would tell them
    strategy = _with_class_count(strategy, config.strategy, config.strategy_params, dataset.num_classes)
    seed_strategy = None if config.initial_strategy == "random" else \
        _with_class_count(get_strategy(config.initial_strategy), config.initial_strategy, {}, dataset.num_classes)
    checked = CheckedRun(strategy, trainer, dropout, dataset, {**trainer.model_options(), **backbone_options(config)},
                         embeddings, embeddings_info, seed_strategy, test_embeddings)
    _build_model(config, checked)  # a model that cannot serve this run fails here
    return checked


def _build_model(config: ALConfig, checked: CheckedRun):
    dataset, dropout = checked.dataset, checked.dropout
    # a feature-mode model's input is one embedding row: its width stands where an image's channels do
    width = dataset.in_channels if checked.test_embeddings is None else checked.embeddings.shape[1]
    model = build_model(config.model, num_classes=dataset.num_classes, in_channels=width,
                        image_size=dataset.image_size, dropout=dropout, **checked.model_options)
    if dropout > 0 and not getattr(model, "supports_dropout", True):
        raise ConfigError(f"model {config.model!r} cannot take dropout before its classifier, but the run "
                          f"needs dropout {dropout:g} (strategy {checked.strategy.name!r} or --dropout); choose a "
                          f"model that supports it (see `activecrl list`)")
    return model


def run_threads(config: ALConfig, checked: CheckedRun, cpus: int | None = None) -> int:
    """The run's torch thread count: ``--threads``, or the automatic count for its model (on ``cpus``
    CPUs: a sweep task's share; default: the available ones)."""
    return resolve_threads(config.threads, _build_model(config, checked), cpus=cpus)


def write_run_config(out: Path, config: ALConfig, checked: CheckedRun, threads: int, extra: dict | None = None) -> None:
    """The run folder's ``config.json``: the options plus what the run derived: dropout, split size,
    thread count and the embeddings' fingerprint (``extra``: e.g. a sweep's grid point;
    ``load_saved_config`` ignores all of these)."""
    derived = {"threads_used": threads}
    if checked.embeddings_info:
        derived["embeddings_fingerprint"] = checked.embeddings_info
    if checked.dataset.skipped:
        derived["skipped_images"] = checked.dataset.skipped  # --skip-bad-images: what the run never saw
    atomic_write_json(Path(out) / CONFIG_FILE, {"activecrl_version": __version__, "dropout_used": checked.dropout,
                                                "n_train": checked.dataset.n_train, **config.to_dict(), **derived,
                                                **(extra or {})})


def run_active_learning(config: ALConfig, out_dir: Path | str, *, resume: bool = False, dataset=None,
                        callbacks: LoopCallbacks | None = None,
                        trials: Iterable[int] | None = None) -> list[StageRecord]:
    """Run (or resume) an experiment; returns all records of the run folder.

    ``trials`` runs only those trial indices (default: all of them); ``activecrl sweep`` runs
    each trial of a run folder as its own task this way, with ``resume=True``.
    """
    out = Path(out_dir)
    saved_threads = None
    if resume:
        config, saved_threads = _check_resume(config, out)
    trial_ids = list(range(config.trials)) if trials is None else [int(t) for t in trials]
    if any(not 0 <= t < config.trials for t in trial_ids):
        raise ConfigError(f"trials must be indices in [0, {config.trials}), got {trial_ids} instead")
    # fail on a bad name or option before anything else, and on the dataset before creating ``out``
    names = check_run_config(config)
    check_tracking(config.track, config.tracking_uri, out)
    device = resolve_device(config.device)
    configure_backends(device, config.deterministic)
    if not resume:
        prepare_out_dir(out, marker=CONFIG_FILE, create=False, remedy=_resume_remedy(out))  # never overwrite a run
    checked = check_run(config, dataset=dataset, names=names)
    if resume and checked.embeddings_info is not None:
        _check_same_embeddings(out, checked.embeddings_info)
    check_label_budget(config, checked.dataset.n_train, stages=not resume)  # a resumed run was accepted when it started
    train_data, test_data = run_data(config, checked, device)
    runner = TrialRunner(config, out, checked, device, train_data, test_data, callbacks or LoopCallbacks(),
                         train_files=None if dataset is not None else dataset_train_files(config.dataset))
    if checked.seed_strategy is not None and not resume:
        runner.seed_set(0)  # a seed set the strategy cannot choose (too few clusters) fails before anything is written
    threads = run_threads(config, checked)
    if device.type == "cpu":
        _check_same_threads(out, config, threads, saved_threads)
    if not resume:
        prepare_out_dir(out, marker=CONFIG_FILE, remedy=_resume_remedy(out))
        write_run_config(out, with_absolute_paths(config), checked, threads)
    if config.track:  # after config.json: the tracked runs' ids are kept in it
        runner.callbacks = LoopTracking.start(config, out, inner=runner.callbacks)
    with torch_threads(threads), _tracking_ends(runner.callbacks):
        runner.run(trial_ids)
    return read_records(out)


@contextlib.contextmanager
def _tracking_ends(callbacks):
    """End the tracked runs of ``callbacks`` (a ``LoopTracking``) with the run's outcome."""
    status = "FAILED"
    try:
        yield
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if isinstance(callbacks, LoopTracking):
            callbacks.finish(status)


def run_data(config: ALConfig, checked: CheckedRun, device: torch.device):
    """(train, test) on ``device``: the embeddings' rows for a feature-mode model (standardised by
    the training split's statistics), else the images, normalised as the model expects (a timm
    backbone's pretrained mean and std)."""
    if checked.test_embeddings is not None:
        train = FeatureData(checked.embeddings, checked.dataset.train_labels, device=device)
        return train, FeatureData(checked.test_embeddings, checked.dataset.test_labels, device=device,
                                  stats=(train.mean, train.std))
    dataset = with_backbone_stats(checked.dataset, _build_model(config, checked))
    return device_splits(dataset, device, channels_last=config.train.channels_last)


@dataclass
class TrialRunner:
    """The stages of one run folder, with what ``run_active_learning`` resolved for them: each
    (trial, stage) not yet recorded is trained, evaluated, queried and recorded, in order, and
    appended when complete."""

    config: ALConfig
    out: Path
    checked: CheckedRun  # strategy, trainer, dropout, dataset, embeddings, seed-set strategy
    device: torch.device
    train_data: Any  # DeviceData of the training split (the pool)
    test_data: Any
    callbacks: LoopCallbacks = field(default_factory=LoopCallbacks)
    train_files: list[str] | None = None  # a folder dataset's files by training index: records name them
    _seed_sets: dict[int, np.ndarray] = field(default_factory=dict, init=False, repr=False)

    @property
    def n_train(self) -> int:
        return self.checked.dataset.n_train

    def seed_set(self, trial: int) -> np.ndarray:
        """The seed set of ``trial`` (chosen once per run object)."""
        if trial not in self._seed_sets:
            self._seed_sets[trial] = _seed_set(self.config, trial, self.n_train, self.checked.seed_strategy,
                                               self.checked.embeddings)
        return self._seed_sets[trial]

    def run(self, trial_ids: list[int]) -> None:
        records = read_records(self.out)
        for trial in trial_ids:
            self.run_trial(trial, records)

    def run_trial(self, trial: int, records: list[StageRecord]) -> None:
        """The stages of ``trial`` that ``records`` lack; each new record is appended to ``records``."""
        config = self.config
        done = {r.stage for r in records if r.trial == trial}
        self.callbacks.trial_start(trial, config.trials)
        labeled = _labeled_after(records, trial, config, self.n_train, seed_set=self.seed_set)
        for stage in range(config.stages):
            if stage in done:
                labeled = _labeled_after(records, trial, config, self.n_train, through_stage=stage,
                                         seed_set=self.seed_set)
                continue
            if len(labeled) == 0:
                break
            record = self.run_stage(trial, stage, labeled)
            records.append(record)
            labeled = np.union1d(labeled, np.asarray(record.queried, dtype=np.int64))

    def run_stage(self, trial: int, stage: int, labeled: np.ndarray) -> StageRecord:
        previous_state = _load_warm_state(self.out, trial, stage - 1) if self.config.warm_start and stage > 0 else None
        self.callbacks.stage_start(trial, stage, len(labeled))
        with PeakMemory(self.device) as train_peak:
            model, fit = self.train(trial, stage, labeled, previous_state)
        metrics = self.evaluate(model)
        query_peak = PeakMemory(self.device)  # stays unmeasured (NaN) after the last stage: no query
        with query_peak if stage < self.config.stages - 1 else contextlib.nullcontext():
            queried, query_seconds = self.query(model, trial, stage, labeled)
        record = StageRecord(trial=trial, seed=self.config.seed + trial, stage=stage, n_labeled=int(len(labeled)),
                             metrics=metrics, train_seconds=fit.train_seconds, query_seconds=query_seconds,
                             final_train_loss=fit.epoch_losses[-1], epoch_losses=list(fit.epoch_losses),
                             queried=queried.tolist(),
                             initial=labeled.tolist() if stage == 0 else None,
                             extra=self.queried_files(queried),
                             train_peak_rss_mib=train_peak.rss_mib, train_peak_cuda_mib=train_peak.cuda_mib,
                             query_peak_rss_mib=query_peak.rss_mib, query_peak_cuda_mib=query_peak.cuda_mib)
        self.record(model, record)
        return record

    def queried_files(self, queried: np.ndarray) -> dict:
        """``{"queried_files": [...]}`` beside the indices when the pool is a folder of files."""
        return {} if self.train_files is None else {"queried_files": [self.train_files[i] for i in queried]}

    def train(self, trial: int, stage: int, labeled: np.ndarray, previous_state: dict | None):
        """A model trained on ``labeled`` from the stage's seed (from ``previous_state`` with --warm-start)."""
        seed = torch_seed(self.config.seed, trial, stage)
        seed_everything(seed)
        model = _build_model(self.config, self.checked)
        if previous_state is not None:
            model.load_state_dict(previous_state)
        fit = build_trainer(self.config.trainer, self.config.train.updated(seed=seed)).fit(
            model, self.train_data, torch.from_numpy(labeled), progress=self.callbacks.epoch)
        return model, fit

    def evaluate(self, model) -> dict:
        """The classification metrics of ``model`` on the test split."""
        test_out = predict(model, self.test_data, batch_size=self.config.eval_batch_size, features=False)
        probs = torch.softmax(test_out.logits.double(), dim=1).numpy()
        return classification_metrics(probs, self.checked.dataset.test_labels.numpy()[test_out.indices.numpy()])

    def query(self, model, trial: int, stage: int, labeled: np.ndarray,
              pool: np.ndarray | None = None) -> tuple[np.ndarray, float]:
        """(the pool indices the strategy picks, seconds it took); nothing after the last stage.

        ``pool``: the indices to choose from (default: all but ``labeled``; a labeling project also
        leaves out its audit images)."""
        config = self.config
        if stage == config.stages - 1:
            return np.empty(0, dtype=np.int64), 0.0
        rng = stage_rng(config.seed, trial, stage)
        start = time.perf_counter()
        if pool is None:
            pool = np.setdiff1d(np.arange(self.n_train), labeled)  # computed, never stored
        if config.pool_subset is not None and config.pool_subset < len(pool):
            pool = np.sort(rng.choice(pool, config.pool_subset, replace=False))
        self.callbacks.query_start(trial, stage, len(pool))
        queried = _query(self.checked.strategy, model, self.train_data, pool, labeled, config, rng, self.device,
                         self.checked.embeddings)
        return queried, time.perf_counter() - start

    def record(self, model, record: StageRecord) -> None:
        """Append the stage's record (after its warm-start weights, if the next stage needs them)."""
        trial, stage = record.trial, record.stage
        if self.config.warm_start and stage < self.config.stages - 1:
            # named by stage: a crash between this save and the record below must not let a
            # rerun of this stage start from its own weights
            atomic_torch_save(_warm_path(self.out, trial, stage),
                              {k: v.detach().cpu() for k, v in model.state_dict().items()})
        append_trial_record(self.out, record)
        _warm_path(self.out, trial, stage - 1).unlink(missing_ok=True)  # stage is recorded: no longer needed
        self.callbacks.stage_end(record)
        logger.info("trial %d stage %d: %d labels, accuracy %.2f%%", trial + 1, stage + 1, record.n_labeled,
                    record.metrics["accuracy"] * 100)  # counted from 1 and in % as on screen


def _with_class_count(strategy, spec, params: dict, n_classes: int):
    if "n_clusters" in strategy.get_params() and strategy.get_params()["n_clusters"] is None and isinstance(spec, str):
        return get_strategy(spec, **{**params, "n_clusters": n_classes})
    return strategy


def _indices_only(indices: np.ndarray) -> PoolOutputs:
    return PoolOutputs(torch.from_numpy(indices), torch.empty(len(indices), 0))


def _query(strategy, model, train_data, pool, labeled, config, rng, device, embeddings=None) -> np.ndarray:
    budget = min(config.budget, len(pool))
    if budget == 0:
        return np.empty(0, dtype=np.int64)
    if embeddings is not None and getattr(strategy, "uses_embeddings", False):
        # typiclust/probcover on --embeddings: rows are looked up by index, no forward pass
        context = QueryContext(pool=_indices_only(pool), labeled=_indices_only(labeled), device=device,
                               batch_size=config.eval_batch_size, embeddings=embeddings)
        return _checked(strategy, strategy.query(context, budget, rng), pool, budget)
    if not strategy.needs_model_outputs:  # e.g. random: no forward pass at all
        context = QueryContext(pool=_indices_only(pool), device=device, batch_size=config.eval_batch_size,
                               embeddings=embeddings)
        return _checked(strategy, strategy.query(context, budget, rng), pool, budget)
    # one forward pass: pool rows first, then (for feature-based strategies) the labeled rows
    rows = np.concatenate([pool, labeled]) if strategy.needs_features else pool
    outputs = predict(model, train_data, torch.from_numpy(rows), batch_size=config.eval_batch_size,
                      features=True)
    n = len(pool)
    pool_out = outputs.subset(torch.arange(n)) if strategy.needs_features else outputs  # no copy of the pool's rows
    labeled_out = outputs.subset(torch.arange(n, len(rows))) if strategy.needs_features else None
    context = QueryContext(pool=pool_out, labeled=labeled_out, model=model, data=train_data, device=device,
                           batch_size=config.eval_batch_size, embeddings=embeddings)
    return _checked(strategy, strategy.query(context, budget, rng), pool, budget)


def _checked(strategy, picked, pool: np.ndarray, budget: int) -> np.ndarray:
    """The loop's own guard, whatever the strategy: only unlabeled pool indices, unique, exact count."""
    picked = np.asarray(picked, dtype=np.int64)
    if len(picked) != budget or len(np.unique(picked)) != budget or not np.isin(picked, pool).all():
        raise ConfigError(f"strategy {strategy.name!r} returned an invalid query (must be {budget} unique "
                          f"unlabeled pool indices)")
    return np.sort(picked)


def _seed_set(config: ALConfig, trial: int, n_train: int, strategy=None, embeddings=None) -> np.ndarray:
    """The seed set of ``trial``: random, or ``strategy`` on the embeddings of the whole split.

    Both draw from ``stage_rng(seed, trial, -1)``, so a resumed run rebuilds the same set.
    """
    return initial_query(strategy, np.arange(n_train), config.initial, stage_rng(config.seed, trial, -1), embeddings)


def initial_query(strategy, pool: np.ndarray, count: int, rng: np.random.Generator, embeddings=None) -> np.ndarray:
    """``count`` of the ``pool`` indices chosen before any label exists: uniformly at random
    (``strategy`` None) or by a strategy that needs no model, on the ``embeddings``."""
    pool = np.asarray(pool, dtype=np.int64)
    if strategy is None:
        return pool[np.sort(rng.choice(len(pool), count, replace=False))]
    context = QueryContext(pool=_indices_only(pool), embeddings=embeddings)  # no labels, no model yet
    return _checked(strategy, strategy.query(context, count, rng), pool, count)


def _labeled_after(records: list[StageRecord], trial: int, config: ALConfig, n_train: int,
                   through_stage: int | None = None, seed_set=None) -> np.ndarray:
    """Labeled set at the start of ``through_stage + 1`` (or the seed set), rebuilt from records."""
    mine = sorted((r for r in records if r.trial == trial), key=lambda r: r.stage)
    if mine and mine[0].initial is not None:
        labeled = np.asarray(mine[0].initial, dtype=np.int64)
    elif seed_set is not None:
        labeled = seed_set(trial)
    else:
        rng = stage_rng(config.seed, trial, -1)
        labeled = np.sort(rng.choice(n_train, config.initial, replace=False)).astype(np.int64)
    if through_stage is not None:
        for r in mine:
            if r.stage <= through_stage:
                labeled = np.union1d(labeled, np.asarray(r.queried, dtype=np.int64))
    return labeled


def _warm_path(out: Path, trial: int, stage: int) -> Path:
    return out / f"warm_trial{trial}_stage{stage}.pt"


def _load_warm_state(out: Path, trial: int, stage: int):
    path = _warm_path(out, trial, stage)
    if not path.exists():
        raise ConfigError(f"warm start needs {path} from the previous stage, but it is missing; rerun without --resume")
    return torch.load(path, map_location="cpu", weights_only=True)


def _resume_remedy(out: Path) -> str:
    return f"choose another --out, or continue it with: {resume_command(out)}"


def resume_command(out: Path | str) -> str:
    """The command line that continues the run in ``out`` (printed after an interruption)."""
    import shlex

    return f"activecrl run --resume --out {shlex.quote(str(out))}"


def check_label_budget(config: ALConfig, n_train: int, *, stages: bool = True) -> None:
    """The seed set and (``stages``) every stage's query must fit in the training split: a budget the
    pool cannot fill is refused like an oversized seed set, rather than silently clipped in the last
    stages."""
    if config.initial > n_train:
        raise ConfigError(f"initial must be at most the training split size {n_train}, got {config.initial} instead")
    needed = config.initial + config.budget * (config.stages - 1)
    if stages and needed > n_train:
        most = (n_train - config.initial) // (config.stages - 1)
        raise ConfigError(
            f"initial + budget x (stages - 1) must be at most the training split size {n_train}, got "
            f"{config.initial} + {config.budget} x {config.stages - 1} = {needed} instead; lower --budget "
            f"(at most {most} here), --stages or --initial")


def completed_stages(out: Path | str) -> int:
    """How many (trial, stage) records ``out/results.jsonl`` holds."""
    return len({(r.trial, r.stage) for r in read_records(Path(out))})


_SAVED_EXTRAS = ("activecrl_version", "dropout_used", "n_train", "threads_used", "sweep", "embeddings_fingerprint",
                 "skipped_images", TRACKING_KEY)
# where a run executes or is tracked, not what it computes: these may change on --resume (threads: on a GPU only,
# checked once the device is known, as results on the CPU depend on the thread count)
RESUME_MAY_CHANGE = ("device", "data_dir", "download", "threads", "track", "tracking_uri")
RESUME_RULE = ("only where the run executes or is tracked may change: --device, --data-dir, --track and "
               "--tracking-uri, and --threads on a GPU; a CPU run keeps its saved thread count, as its results "
               "depend on it")
_PATH_OPTIONS = ("dataset", "embeddings")  # saved resolved, so --resume works from any folder


def _absolute(key: str, value):
    """``value`` of option ``key`` as an absolute path where it names one, else unchanged (a registered
    dataset name, a missing path: the run's checks name those)."""
    if value is None:
        return value
    try:
        path = dataset_path(value) if key == "dataset" else Path(value).expanduser().resolve()
    except ConfigError:  # DataError included: a missing dataset path is reported by the run's checks
        return value
    return value if path is None or not path.exists() else str(path)


def with_absolute_paths(config: ALConfig) -> ALConfig:
    """``config`` with a relative ``--dataset`` / ``--embeddings`` path made absolute (as ``config.json``
    records it): the printed ``activecrl run --resume --out DIR`` then works from any folder."""
    return dataclasses.replace(config, **{k: _absolute(k, getattr(config, k)) for k in _PATH_OPTIONS})


def _read_saved(out: Path | str) -> dict:
    path = Path(out) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"--resume needs an earlier run in {out}, but {path} does not exist; drop --resume to start one")
    return json.loads(path.read_text())


def load_saved_config(out: Path | str) -> ALConfig:
    """The ``ALConfig`` saved in a run folder's ``config.json``."""
    saved = _read_saved(out)
    for key in _SAVED_EXTRAS:
        saved.pop(key, None)
    return ALConfig.from_dict(saved)


def _option_name(key: str) -> str:
    """The flag of a (dotted) ALConfig key: train.epochs is --epochs; the TOML key where no flag exists."""
    return {option.key: option.dashed for option in config_options(ALConfig)}.get(key, key)


def resume_config(out: Path | str, given: dict | None = None) -> ALConfig:
    """The saved experiment of ``out`` with ``given`` options applied, for ``--resume``.

    ``given`` holds the options of the command line (nested like ``ALConfig.to_dict()``; a preset's
    values already merged in). Options equal to the saved ones are accepted, so the natural retry
    (the same command with ``--resume`` added) works; where the run executes (``RESUME_MAY_CHANGE``)
    may change; any other difference is refused, naming each option with both values.
    """
    saved = load_saved_config(out)
    given = dict(given or {})
    for key in _PATH_OPTIONS:  # a relative and an absolute spelling of the saved path are the same option
        if key in given and _absolute(key, given[key]) == _absolute(key, getattr(saved, key)):
            given[key] = getattr(saved, key)
    merged = ALConfig.from_dict(merge(saved.to_dict(), given))  # validates and normalises types
    before, after = (flatten(c.to_dict(), leaves=("strategy_params",)) for c in (saved, merged))
    changed = [k for k in after if after[k] != before.get(k) and k.split(".")[-1] not in RESUME_MAY_CHANGE]
    if changed:
        listed = ", ".join(f"{_option_name(k)} {after[k]!r} (saved: {before.get(k)!r})" for k in changed)
        raise ConfigError(
            f"--resume continues the run saved in {Path(out) / CONFIG_FILE}, but these options differ from it: "
            f"{listed}; drop them or give the saved values ({RESUME_RULE}), or start a new run with another --out")
    return merged


def experiment_config(options: dict | None = None, preset: str | Path | None = None, *,
                      resume: Path | str | None = None) -> ALConfig:
    """The experiment ``activecrl run`` runs: ``options`` (nested like ``ALConfig.to_dict()``) over the
    ``preset`` (a TOML file or preset name) over the defaults; with ``resume``, the run saved in that
    folder with them applied (:func:`resume_config`)."""
    values = merge(load_toml(preset) if preset else {}, options or {})
    return resume_config(resume, values) if resume is not None else ALConfig.from_dict(values)


def default_out_dir(config: ALConfig, when: float | None = None) -> Path:
    """Where a run goes without ``--out``: ``runs/<dataset>-<strategy>-<trainer>-<YYYYmmdd-HHMMSS>``
    (local time of ``when``, default now), with ``/`` and ``:`` of a path or ``module:Class`` made ``_``."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(when))
    return Path("runs") / f"{config.dataset.replace('/', '_')}-{config.strategy.replace(':', '_')}-" \
                          f"{config.trainer}-{stamp}"


def _check_resume(config: ALConfig, out: Path) -> tuple[ALConfig, int | None]:
    """Resume uses the saved experiment; only where it runs and where it is tracked may change
    (``RESUME_RULE``; ``config``'s track and tracking_uri: ``resume_config`` keeps the saved ones).

    Returns that config and the thread count the saved stages were computed with (None: an older run
    that did not record it); without ``--threads`` the run continues with that count."""
    saved_threads = _read_saved(out).get("threads_used")
    saved_config = load_saved_config(out)
    threads = next((t for t in (config.threads, saved_threads, saved_config.threads) if t is not None), None)
    resumed = dataclasses.replace(saved_config, device=config.device, data_dir=config.data_dir or saved_config.data_dir,
                                  threads=threads, track=config.track, tracking_uri=config.tracking_uri)
    return resumed, saved_threads


def _check_same_threads(out: Path, config: ALConfig, threads: int, saved_threads: int | None) -> None:
    """A resumed CPU run must use the thread count its stages were computed with (None: not recorded)."""
    if saved_threads is not None and threads != saved_threads:
        raise ConfigError(
            f"--threads must be {saved_threads} to resume {out} on the CPU, got {threads} instead: {RESUME_RULE}; "
            f"drop --threads or pass --threads {saved_threads}")


def _check_same_embeddings(out: Path, info: dict) -> None:
    """A resumed run must select from the same embeddings its earlier stages used."""
    saved = json.loads((out / CONFIG_FILE).read_text()).get("embeddings_fingerprint")
    if saved and (saved.get("sha256"), list(saved.get("shape", []))) != (info["sha256"], info["shape"]):
        raise ConfigError(f"--embeddings {info['path']} changed since this run started (shape {saved.get('shape')} "
                          f"-> {info['shape']}, sha256 {saved.get('sha256', '?')[:12]} -> {info['sha256'][:12]}); "
                          f"restore the original file or start a new run with another --out")
