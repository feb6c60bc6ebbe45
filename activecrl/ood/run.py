"""``run_ood``: load a run, split tuning / evaluation data, tune and score one detector; ``save_ood`` / ``read_ood``.

Tuning protocol (ODIN's T and eps, Mahalanobis' eps and combiner). By default it never touches the
test OOD set: the in-distribution tuning samples are ``n_tune`` (1,000) random images of the
in-distribution *test* split (seeded; the model was trained on the whole training split, so held-out
training images do not exist) and the OOD tuning samples come from ``ood_val``: synthetic noise
images (``noise``: a third each of Gaussian, uniform and smooth low-frequency noise), FGSM
adversarial images made from other in-distribution test images (``fgsm``, Lee et al.'s
"validation on adversarial samples"), or a user-given folder / dataset. The paper follows Lee et al.
and tunes on 1,000 samples of the test OOD set itself; that is available only on request
(``tune_on_test_ood``) and is labelled so in ood.json. Tuning samples, in-distribution and (when
drawn from it) OOD, are excluded from the evaluation for every detector, so all detectors of one
protocol are scored on the same images. The setting with the lowest FPR at 95 % TPR on the tuning
data wins (ties: lower detection error, then higher AUROC, then the earlier grid entry).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from activecrl import __version__
from activecrl.data import DeviceData, load_dataset
from activecrl.core.errors import ConfigError, DataError
from activecrl.methods.run import load_trained
from activecrl.core.io import atomic_savez, atomic_write_json, prepare_out_dir, to_jsonable
from activecrl.evaluation.metrics import ood_metrics
from activecrl.core.runtime import configure_backends, resolve_device, resolve_threads, torch_threads
from activecrl.ood.data import SYNTHETIC_SETS, _ood_name, fgsm_images, load_ood_set
from activecrl.ood.base import Detector, DetectorInputs, DetectorSplit
from activecrl.ood.config import OODConfig
from activecrl.ood.detectors import DETECTORS

logger = logging.getLogger(__name__)



@dataclass
class OODResult:
    config: OODConfig
    metrics: dict[str, float]
    score_in: np.ndarray
    score_out: np.ndarray
    index_in: np.ndarray  # test-split indices of the in-distribution evaluation samples
    index_out: np.ndarray  # indices into the OOD set of the evaluated OOD samples
    params: dict  # the detector's (tuned) hyper-parameters
    protocol: dict  # how they were tuned
    tuning: list[dict]  # tuning metrics of every candidate setting
    run_info: dict  # the run: dataset, model, trainer, method, seed
    seconds: float
    threads_used: int | None = None  # torch's intra-op threads (CPU results depend on them)

    def to_json(self) -> dict:
        return {
            "activecrl_version": __version__,
            **self.metrics,  # fpr95, detection_error, auroc, aupr_in, aupr_out (fractions)
            "detector": self.config.detector,
            "metrics": self.metrics,
            "params": self.params,
            "protocol": self.protocol,
            "in_distribution": self.run_info.get("dataset"),
            "ood_set": self.run_info.get("ood_set"),
            "ood_conversion": self.run_info.get("ood_conversion"),
            "n_in": int(self.score_in.size),
            "n_out": int(self.score_out.size),
            "max_samples": self.config.max_samples,
            "run": self.run_info,
            "tuning": self.tuning,
            "seconds": self.seconds,
            "threads_used": self.threads_used,
            "config": dataclasses.asdict(self.config),
        }


# ============================================================================ helpers

def _subset(rng: np.random.Generator, n: int, k: int | None) -> np.ndarray:
    if k is None or k >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=k, replace=False))


# ============================================================================ the run


def _load(config: OODConfig, say: Callable[[str], None]) -> DetectorInputs:
    """Load the trained model and check that the in-distribution dataset matches it; load the OOD set."""
    device = resolve_device(config.device)
    configure_backends(device)
    model, info, run_cfg = load_trained(config.run, device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)  # only input gradients are needed
    data_dir = config.data_dir or run_cfg.get("data_dir")
    ds_spec = run_cfg.get("dataset") or info.get("dataset")
    say(f"loading in-distribution data {ds_spec}")
    dataset = load_dataset(ds_spec, data_dir=data_dir, skip_bad_images=bool(run_cfg.get("skip_bad_images")))
    c, size, k = int(info["in_channels"]), int(info["image_size"]), int(info["num_classes"])
    if dataset.num_classes != k or dataset.in_channels != c or dataset.image_size != size:
        raise DataError(f"dataset {ds_spec!r} must match the model ({k} classes, {c}x{size}x{size}), got "
                        f"{dataset.num_classes} classes, {dataset.in_channels}x{dataset.image_size}x{dataset.image_size} "
                        "instead; pass --data-dir of the run's data")
    mean, std = info["mean"], info["std"]

    def device_data(images, labels=None):
        return DeviceData(images, labels, mean, std, augment=False, device=device)

    test = device_data(dataset.test_images, dataset.test_labels)
    say(f"loading OOD set {config.ood}")
    ood_images, conversion = load_ood_set(config.ood, channels=c, size=size, data_dir=data_dir,
                                          n_synthetic=dataset.n_test, seed=config.seed + 1)
    if conversion:
        logger.info("OOD set %s: %s", config.ood, conversion)  # the CLI prints it; ood.json records it
    return DetectorInputs(model, info, run_cfg, ds_spec, data_dir, dataset, device_data, test, device_data(ood_images),
                   {"ood": conversion})


def _validation_ood(config: OODConfig, inp: DetectorInputs, rest_in: np.ndarray) -> tuple[torch.Tensor, str, np.ndarray]:
    """OOD tuning images from ``config.ood_val`` (never the test OOD set), their protocol text, and the
    in-distribution evaluation indices (FGSM spends some of ``rest_in`` on its source images)."""
    c, size = int(inp.info["in_channels"]), int(inp.info["image_size"])
    val_spec = config.ood_val
    eval_in = rest_in
    if val_spec == "fgsm":
        # adversarial images made from in-distribution test images that are neither tuned on nor evaluated
        n_adv = min(config.n_tune, rest_in.size // 2)
        adv_src, eval_in = np.sort(rest_in[:n_adv]), np.sort(rest_in[n_adv:])
        val_images = fgsm_images(inp.model, inp.test, torch.from_numpy(adv_src), config.fgsm_epsilon,
                                 batch_size=config.batch_size)
        ood_tuning = (f"{n_adv} FGSM images (pixel step {config.fgsm_epsilon}) of other in-distribution test "
                      "images, excluded from the evaluation")
        return val_images, ood_tuning, eval_in
    if val_spec in SYNTHETIC_SETS and config.ood in SYNTHETIC_SETS:
        logger.warning("the OOD tuning set (%s) and the test OOD set (%s) are both synthetic noise: other "
                       "samples, but possibly the same distribution", val_spec, config.ood)
    if val_spec not in SYNTHETIC_SETS:
        same = Path(val_spec).expanduser().resolve() == Path(config.ood).expanduser().resolve()
        if same or val_spec == config.ood:
            raise ConfigError("ood_val must differ from the test OOD set, got the same "
                              f"{val_spec!r} for both; to tune on the test OOD set use --tune-on-test-ood "
                              "(the paper's protocol)")
    val_images, inp.conversions["ood_val"] = load_ood_set(val_spec, channels=c, size=size, data_dir=inp.data_dir,
                                                          n_synthetic=config.n_tune, seed=config.seed + 2)
    ood_tuning = (f"{min(config.n_tune, val_images.shape[0])} images of {val_spec}"
                  + (" (synthetic)" if val_spec in SYNTHETIC_SETS else ""))
    return val_images, ood_tuning, eval_in


def _split(config: OODConfig, inp: DetectorInputs, detector: Detector) -> DetectorSplit:
    """Draw the tuning samples (excluded from the evaluation) and the evaluation samples.

    One generator seeded with ``config.seed`` draws everything, in a fixed order, so the split depends
    on the seed and the data only, not on the detector: all detectors are scored on the same images.
    """
    rng = np.random.default_rng(config.seed)
    n_test = inp.dataset.n_test
    n_tune_in = min(config.n_tune, n_test // 2)
    if n_tune_in < config.n_tune:
        logger.warning("n_tune %d reduced to %d: half of the %d in-distribution test images", config.n_tune,
                       n_tune_in, n_test)
    perm = rng.permutation(n_test)
    tune_in, eval_in = np.sort(perm[:n_tune_in]), np.sort(perm[n_tune_in:])
    protocol: dict = {
        "in_distribution_tuning": f"{n_tune_in} random images of the in-distribution test split (seed {config.seed}), "
                                  "excluded from the evaluation",
    }
    if config.tune_on_test_ood:
        n_tune_out = min(config.n_tune, inp.ood.n // 2)
        perm_out = rng.permutation(inp.ood.n)
        tune_out, eval_out = np.sort(perm_out[:n_tune_out]), np.sort(perm_out[n_tune_out:])
        val_out = inp.ood
        protocol.update(name="test OOD (paper protocol, Lee et al. 2018)", tuned_on_test_ood=True,
                        ood_tuning=f"{n_tune_out} random images of the test OOD set {config.ood}, excluded from the "
                                   "evaluation")
    else:
        eval_out = np.arange(inp.ood.n)
        val_images, ood_tuning, eval_in = _validation_ood(config, inp, eval_in)
        val_out = inp.device_data(val_images)
        tune_out = _subset(rng, val_out.n, config.n_tune)
        protocol.update(name=f"validation ({_ood_name(config.ood_val)})", tuned_on_test_ood=False,
                        ood_tuning=ood_tuning)
    if not getattr(detector, "tuned", True):
        protocol["note"] = f"{config.detector} has no tuned hyper-parameters; the same evaluation split is used"
    eval_in = eval_in[_subset(rng, eval_in.size, config.max_samples)]
    eval_out = eval_out[_subset(rng, eval_out.size, config.max_samples)]
    protocol["criterion"] = "lowest FPR at 95% TPR on the tuning data (ties: detection error, AUROC, grid order)"
    if config.max_samples is not None:
        protocol["max_samples"] = f"evaluation on at most {config.max_samples} random samples per side"
    return DetectorSplit(tune_in, tune_out, val_out, eval_in, eval_out, protocol)


def _run_info(config: OODConfig, inp: DetectorInputs) -> dict:
    """The run that was scored (for report.py's tables), plus the OOD set's name."""
    run_cfg = inp.run_cfg
    train = run_cfg.get("train", {}) if isinstance(run_cfg.get("train"), dict) else {}
    return {
        "run": str(config.run),
        "dataset": inp.info.get("dataset") or inp.ds_spec,
        "dataset_spec": inp.ds_spec,
        "model": inp.info.get("model"),
        "trainer": run_cfg.get("trainer"),
        "method": run_cfg.get("method", "plain"),
        "crl_weight": train.get("crl_weight"),
        "rank_target": train.get("rank_target"),
        "epochs": train.get("epochs"),
        "seed": train.get("seed"),
        "ood_set": _ood_name(config.ood),
        "ood_spec": str(config.ood),
        # what was converted to the model's input (channels, size); None: used as they were
        "ood_conversion": inp.conversions.get("ood"),
        "ood_val_conversion": inp.conversions.get("ood_val"),
        "config": run_cfg,
    }


def run_ood(config: OODConfig, *, progress: Callable[[str], None] | None = None) -> OODResult:
    """Score the run's in-distribution test split and the OOD set with ``config.detector``."""
    say = progress or (lambda msg: None)
    start = time.perf_counter()
    detector = DETECTORS.create(config.detector, config=config)
    inp = _load(config, say)
    threads = resolve_threads(config.threads, inp.model)  # the rule of `train` and `run`
    with torch_threads(threads):  # restored afterwards: a notebook keeps its own setting
        split = _split(config, inp, detector)
        scored = detector.score(inp, split, say)
    score_in, score_out, params, tuning = scored.score_in, scored.score_out, scored.params, scored.tuning
    metrics = ood_metrics(score_in, score_out)
    run_info = _run_info(config, inp)
    logger.info("%s on %s vs %s: %s", config.detector, run_info["dataset"], run_info["ood_set"], metrics)
    return OODResult(config, metrics, np.asarray(score_in, np.float64), np.asarray(score_out, np.float64),
                     split.eval_in, split.eval_out, params, split.protocol, tuning, run_info,
                     time.perf_counter() - start, threads)


def save_ood(result: OODResult, out: Path | str, *, overwrite: bool = False) -> Path:
    """Write ``scores.npz`` and ``ood.json`` (last: its presence marks a finished run) into ``out``."""
    out = prepare_out_dir(Path(out), marker="ood.json", overwrite=overwrite)
    atomic_savez(out / "scores.npz", score_in=result.score_in, score_out=result.score_out,
                 index_in=result.index_in, index_out=result.index_out)
    atomic_write_json(out / "ood.json", to_jsonable(result.to_json()))
    return out


def read_ood(run_dir: Path | str) -> dict:
    path = Path(run_dir) / "ood.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir} holds no ood.json; pass the --out folder of a finished `activecrl ood` run")
    return json.loads(path.read_text())
