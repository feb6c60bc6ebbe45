"""The paper's comparison methods (Moon et al. 2020, Tables 1 and 2) and temperature scaling.

``activecrl train --method NAME`` (``TrainRunConfig.method``) picks how the model is trained and
how its test predictions and confidence are formed. Every method writes the same
``metrics.json`` / ``predictions.npz`` as a plain run: ``probs`` is the predictive distribution
(averaged over samples, snapshots or members) and ``confidence`` the score the paper ranks by.

``plain``
    One model trained with ``--trainer`` (baseline or crl); confidence = max probability.
``mc_dropout`` (Gal & Ghahramani 2016)
    A model with dropout before its classifier (rate 0.3 when ``--dropout`` is not given), trained
    with ``--trainer``; at test time ``mc_samples`` (50) stochastic passes with only the Dropout
    modules in train mode (BatchNorm stays in eval mode). When all dropout sits in the head
    (``model.head_only_dropout``) the features are computed once and only ``model.classifier`` is
    resampled, which gives the same samples as full passes. Confidence = negative entropy of the
    mean probabilities (stored unnormalised; the ranking metrics only use its order).
``aleatoric`` (Aleatoric + MC dropout, Kendall & Gal 2017)
    The model gets a second linear head on the penultimate features giving log sigma^2 (one per
    sample, or one per class with ``variance="class"``; see :func:`add_variance_head`) and is
    trained by the ``aleatoric`` trainer with the sampled-softmax loss
    ``-log mean_t softmax(logits + sigma * eps_t)_y`` over ``aleatoric_samples`` (50) draws
    ``eps_t ~ N(0, I)`` (:func:`sampled_softmax_loss`). At test time it is Kendall & Gal's combined
    model: ``mc_samples`` MC-dropout passes as for ``mc_dropout``, and in each pass t one draw of the
    logits ``mu_t + sigma_t * eps_t`` (``eps_t ~ N(0, I)`` per sample, from its own seeded generator,
    so the dropout masks are those of ``mc_dropout`` with the same seed); the probabilities are the
    mean over passes of ``softmax`` of those draws, so they carry the aleatoric part as well as the
    epistemic one. The variance head reads the features before the classifier's Dropout (as in
    training), so the head-only fast path computes features and sigma once and resamples only the
    classifier. Confidence = negative entropy of the mean; ``metrics.json`` records
    ``test_logit_samples: 1`` (per pass).
``aes`` (Averaged Early Stopping, Geifman et al. 2019)
    One training run; ``snapshots`` (k = 10 or 30) copies of the weights are taken after evenly
    spaced epochs of the last ``1 - snapshot_start`` of training, ending with the final epoch:
    epochs ``E - round(i * W / k)`` for ``i = 0..k-1`` where ``W = E - floor(snapshot_start * E)``
    (with the default ``snapshot_start = 0.5`` and E = 300: k = 10 gives 165, 180, ..., 300 and
    k = 30 gives 155, 160, ..., 300; see :func:`snapshot_epochs`). Predictions average the
    snapshots' probabilities; confidence = max of the average. Snapshots are kept on the host.
``ensemble`` (Deep Ensembles, Lakshminarayanan et al. 2017)
    ``members`` (5) models with seeds ``seed, seed + 1, ...``, each trained with ``--trainer`` (Table
    2 uses CRL with lambda = 0.5: ``--trainer crl --crl-weight 0.5``); averaged probabilities,
    confidence = max of the average. All members' weights are saved in ``members.pt``.

``temperature_scaling`` (Guo et al. 2017) works with every method: a random ``holdout_fraction``
(10 %) of the training split is held out (seeded by the training seed), the model trains on the
rest, and one temperature T is fitted by minimising the NLL of the held-out predictions
(:func:`fit_temperature`); test probabilities become ``softmax(log p / T)`` (for a single model
that is ``softmax(logits / T)``). T is recorded in ``metrics.json`` under ``method``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from typing import Callable

import numpy as np
import torch
from torch import nn

from .errors import ConfigError
from .inference import predict
from .mc_dropout import DEFAULT_MC_DROPOUT, dropout_only_train, mc_dropout_stats
from .metrics import classification_metrics
from .runtime import configure_backends, resolve_device, seed_everything
from .trainers import TRAINERS, EpochInfo, Trainer, TrainConfig, build_trainer, register_trainer, resolved_config

logger = logging.getLogger(__name__)

__all__ = [
    "METHODS", "DEFAULT_MC_DROPOUT", "VARIANCE_KINDS",
    "dropout_only_train", "mc_dropout_probs", "negative_entropy",
    "add_variance_head", "sampled_softmax_loss", "AleatoricTrainer",
    "snapshot_epochs", "SnapshotCollector",
    "fit_temperature", "apply_temperature",
    "validate_method_config", "train_and_evaluate_method",
]

METHODS = ("plain", "mc_dropout", "aleatoric", "aes", "ensemble")
VARIANCE_KINDS = ("sample", "class")
_MC_METHODS = ("mc_dropout", "aleatoric")


# ============================================================================ MC dropout


def _check_positive_int(value, name: str, minimum: int = 1, hint: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r} instead{hint}")
    return int(value)


def mc_dropout_probs(model: nn.Module, data, indices=None, *, n_samples: int = 50, seed: int = 0,
                     batch_size: int = 1024, head_only: bool | None = None, amp: bool = False,
                     logit_noise: bool = False) -> np.ndarray:
    """Mean softmax over ``n_samples`` MC-dropout passes over ``indices`` of ``data`` (a DeviceData).

    (n, K) float64 on the CPU, rows in the order of ``indices``. ``head_only=None`` samples only
    ``model.classifier`` on features computed once when ``model.head_only_dropout`` holds, else
    full passes; see :mod:`activecrl.mc_dropout` for why both give the same result.
    ``logit_noise=True`` (Aleatoric + MC dropout, for a model with ``log_var_head``): each pass
    averages ``softmax(mu_t + sigma_t * eps_t)`` for one draw ``eps_t ~ N(0, I)`` per row instead of
    ``softmax(mu_t)``; the dropout masks stay those of plain MC dropout with the same seed.
    """
    n_samples = _check_positive_int(n_samples, "mc_samples")
    return mc_dropout_stats(model, data, indices, n_samples=n_samples, seed=seed, batch_size=batch_size,
                            head_only=head_only, amp=amp, logit_noise=logit_noise).mean_probs.numpy()


def negative_entropy(probs: np.ndarray) -> np.ndarray:
    """``sum_k p_k log p_k`` per row (0 log 0 = 0): higher means more confident."""
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)


# ============================================================================ Aleatoric + MC dropout


def add_variance_head(model: nn.Module, per_class: bool = False) -> nn.Module:
    """Attach ``model.log_var_head``: a Linear on the penultimate features giving log sigma^2.

    One value per sample (``per_class=False``) or one per class. ``model.forward`` is unchanged
    (it still returns the mean logits), so ``predict``, MC dropout and checkpoints work as usual;
    the head enters training through :class:`AleatoricTrainer` and evaluation through
    ``mc_dropout_probs(..., logit_noise=True)``. Returns ``model``.
    """
    feature_dim = getattr(model, "feature_dim", None)
    num_classes = getattr(model, "num_classes", None)
    if not isinstance(feature_dim, int) or not isinstance(num_classes, int):
        raise ConfigError(f"add_variance_head needs a ConfidenceModel (with feature_dim and num_classes), "
                          f"got {type(model).__name__} instead")
    device = next(model.parameters()).device
    model.log_var_head = nn.Linear(feature_dim, num_classes if per_class else 1).to(device)
    nn.init.zeros_(model.log_var_head.bias)
    return model


def sampled_softmax_loss(logits: torch.Tensor, log_var: torch.Tensor, labels: torch.Tensor,
                         n_samples: int = 50, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Kendall & Gal (2017) classification loss ``mean_b -log (1/T) sum_t softmax(l_b + s_b e_bt)_y``.

    ``logits`` (B, K); ``log_var`` (B, 1) or (B, K) = log sigma^2; ``noise`` (T, B, K) standard
    normal draws (drawn here when None, T = ``n_samples``). Computed in log space
    (``logsumexp_t log_softmax(...)_y - log T``) so it stays finite.
    """
    if logits.ndim != 2 or log_var.ndim != 2 or log_var.shape[0] != logits.shape[0] \
            or log_var.shape[1] not in (1, logits.shape[1]):
        raise ConfigError(f"logits must be (B, K) and log_var (B, 1) or (B, K), got shapes "
                          f"{tuple(logits.shape)} and {tuple(log_var.shape)} instead")
    if noise is None:
        n_samples = _check_positive_int(n_samples, "aleatoric_samples")
        noise = torch.randn((n_samples, *logits.shape), device=logits.device, dtype=logits.dtype)
    elif noise.ndim != 3 or noise.shape[1:] != logits.shape:
        raise ConfigError(f"noise must be (T, B, K) = (T, {logits.shape[0]}, {logits.shape[1]}), got shape "
                          f"{tuple(noise.shape)} instead")
    sigma = torch.exp(0.5 * log_var)
    sampled = logits.unsqueeze(0) + sigma.unsqueeze(0) * noise  # (T, B, K)
    logp = torch.log_softmax(sampled, dim=2)
    idx = labels.view(1, -1, 1).expand(noise.shape[0], -1, 1)
    logp_y = logp.gather(2, idx).squeeze(2)  # (T, B)
    return -(torch.logsumexp(logp_y, dim=0) - math.log(noise.shape[0])).mean()


class _MeanAndLogVar(nn.Module):
    """Training view of a model with a variance head: [mean logits | log sigma^2] in one tensor."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        feats = self.model.features(x)
        return torch.cat([self.model.classifier(feats), self.model.log_var_head(feats)], dim=1)


@register_trainer("aleatoric")
class AleatoricTrainer(Trainer):
    """Sampled-softmax loss of Kendall & Gal (2017) for a model with ``log_var_head``.

    ``n_samples``: Gaussian logit samples per training example (T). The model must have been given
    a variance head with :func:`add_variance_head` (``activecrl train --method aleatoric`` does it).
    """

    name = "aleatoric"

    def __init__(self, config: TrainConfig | None = None, *, n_samples: int = 50, **overrides):
        super().__init__(config, **overrides)
        self.n_samples = _check_positive_int(n_samples, "aleatoric_samples")

    def fit(self, model, data, indices=None, *, progress=None):
        if not isinstance(getattr(model, "log_var_head", None), nn.Linear):
            raise ConfigError("the aleatoric trainer needs a model with a log-variance head, got "
                              f"{type(model).__name__} without one; call activecrl.methods.add_variance_head(model) "
                              "first, or use `activecrl train --method aleatoric`")
        self.num_classes_ = int(model.num_classes)
        return super().fit(_MeanAndLogVar(model), data, indices, progress=progress)

    def loss(self, logits, labels, indices):
        k = self.num_classes_
        return sampled_softmax_loss(logits[:, :k], logits[:, k:], labels, self.n_samples)


# ============================================================================ AES snapshots


def snapshot_epochs(epochs: int, k: int, start: float = 0.5) -> list[int]:
    """The 1-based epochs after which AES keeps a snapshot: k evenly spaced, the last one = ``epochs``.

    They span the window of the last ``W = epochs - floor(start * epochs)`` epochs:
    ``epochs - round(i * W / k)`` for ``i = 0..k-1``, in increasing order.
    """
    epochs = _check_positive_int(epochs, "epochs")
    k = _check_positive_int(k, "snapshots")
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


# ============================================================================ temperature scaling


def _nll_at(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    from scipy.special import logsumexp

    z = logits / temperature
    return float(np.mean(logsumexp(z, axis=1) - z[np.arange(labels.size), labels]))


def fit_temperature(logits, labels, *, bounds: tuple[float, float] = (0.01, 100.0)) -> float:
    """The single temperature T minimising ``NLL(softmax(logits / T), labels)``.

    The NLL is convex in 1/T, so a bounded 1-D search on log T (scipy's Brent) finds the optimum.
    ``logits`` may be any log-probabilities (e.g. the log of an ensemble's averaged probabilities).
    """
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    if z.ndim != 2 or y.ndim != 1 or y.shape[0] != z.shape[0] or z.shape[0] == 0:
        raise ConfigError(f"logits must be (n, K) and labels (n,) with n > 0, got shapes {z.shape} and {y.shape} "
                          "instead")
    if not np.all(np.isfinite(z)):
        raise ConfigError("logits must be finite to fit a temperature; clip log-probabilities first")
    y = y.astype(np.int64)
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    res = minimize_scalar(lambda log_t: _nll_at(z, y, math.exp(log_t)), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-6})
    t = float(math.exp(res.x))
    if min(abs(res.x - lo), abs(res.x - hi)) < 1e-3:
        logger.warning("fitted temperature %.4g lies at the edge of the search range %s", t, bounds)
    return t


def apply_temperature(log_probs, temperature: float) -> np.ndarray:
    """``softmax(log_probs / T)`` row-wise, float64."""
    z = np.asarray(log_probs, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _log_probs(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(probs, 1e-300, None))


# ============================================================================ the run


def validate_method_config(config) -> None:
    """Check the method fields of a ``TrainRunConfig``; raises ConfigError saying how to fix."""
    if config.method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {config.method!r} instead")
    _check_positive_int(config.mc_samples, "mc_samples")
    _check_positive_int(config.snapshots, "snapshots")
    _check_positive_int(config.aleatoric_samples, "aleatoric_samples")
    _check_positive_int(config.members, "members", 2 if config.method == "ensemble" else 1,
                        "; an ensemble needs at least 2 members" if config.method == "ensemble" else "")
    if config.variance not in VARIANCE_KINDS:
        raise ConfigError(f"variance must be one of {', '.join(VARIANCE_KINDS)}, got {config.variance!r} instead")
    if not (isinstance(config.holdout_fraction, (int, float)) and 0 < config.holdout_fraction < 1):
        raise ConfigError(f"holdout_fraction must be in (0, 1), e.g. 0.1, got {config.holdout_fraction!r} instead")
    if config.method == "aes":
        snapshot_epochs(config.train.epochs, config.snapshots, config.snapshot_start)
    if config.method == "aleatoric" and config.trainer not in ("baseline", "aleatoric"):
        raise ConfigError(f"--method aleatoric trains with its own loss (trainer 'aleatoric'), so trainer must be "
                          f"baseline or aleatoric, got {config.trainer!r} instead; drop --trainer")


def _offset_progress(progress, member: int, members: int):
    if progress is None or members == 1:
        return progress

    def report(info: EpochInfo) -> None:
        progress(dataclasses.replace(info, epoch=member * info.epochs + info.epoch, epochs=members * info.epochs))

    return report


def _with_states(model: nn.Module, states: list[dict]):
    """``model`` with each of ``states`` loaded in turn (snapshots without holding k models)."""
    for state in states:
        model.load_state_dict(state)
        yield model


def train_and_evaluate_method(config, *, dataset=None, progress: Callable[[EpochInfo], None] | None = None):
    """Train and evaluate ``config.method`` (``plain`` included), optionally temperature-scaled.

    Returns a ``TrainRunResult`` whose ``method_info`` (written to metrics.json as ``method``)
    says what was done: snapshot epochs, member seeds, MC samples, fitted temperature, ...
    """
    from .data import device_splits, load_dataset
    from .experiment import TrainRunResult, model_info_for
    from .models import build_model

    method = "aleatoric" if config.trainer == "aleatoric" else config.method
    config = dataclasses.replace(config, method=method)
    validate_method_config(config)
    trainer_name = "aleatoric" if method == "aleatoric" else config.trainer
    dropout = config.dropout
    if method in _MC_METHODS and dropout == 0:
        dropout = DEFAULT_MC_DROPOUT
        logger.warning("%s: --dropout not given; using dropout %.1f before the classifier", method, dropout)
    config = dataclasses.replace(config, trainer=trainer_name, dropout=dropout)
    build_trainer(trainer_name, config.train)  # validates the trainer name before any work
    resolved = resolved_config(trainer_name, config.train)  # a recipe may choose the head

    device = resolve_device(config.device)
    configure_backends(device)
    if dataset is None:
        dataset = load_dataset(config.dataset, data_dir=config.data_dir, download=config.download)
    train_data, test_data = device_splits(dataset, device, channels_last=config.train.channels_last)

    info: dict = {"name": method}
    fit_idx = holdout_idx = None
    if config.temperature_scaling:
        n = dataset.n_train
        n_hold = int(round(config.holdout_fraction * n))
        if n_hold < 1 or n - n_hold < 2:
            raise ConfigError(f"holdout_fraction {config.holdout_fraction} of {n} training images leaves {n_hold} "
                              f"held out and {n - n_hold} to train on; both must be >= 1 (train >= 2)")
        perm = np.random.default_rng(config.train.seed).permutation(n)
        holdout_idx, fit_idx = np.sort(perm[:n_hold]), np.sort(perm[n_hold:])
        info.update(holdout_fraction=config.holdout_fraction, n_holdout=int(n_hold), n_train_used=int(n - n_hold))

    members = config.members if method == "ensemble" else 1
    models, train_seconds, member_seeds, snapshot_states, taken = [], 0.0, [], [], []
    for m in range(members):
        seed = config.train.seed + m
        train_cfg = config.train.updated(seed=seed)
        extra = {"n_samples": config.aleatoric_samples} if trainer_name == "aleatoric" else {}
        trainer = TRAINERS.get(trainer_name)(train_cfg, **extra)
        seed_everything(seed)
        model = build_model(config.model, num_classes=dataset.num_classes, in_channels=dataset.in_channels,
                            image_size=dataset.image_size, dropout=dropout, head=resolved.head,
                            cos_temp=resolved.cos_temp)
        if method == "aleatoric":
            add_variance_head(model, per_class=config.variance == "class")
        callback = _offset_progress(progress, m, members)
        collector = None
        if method == "aes":
            collector = SnapshotCollector(model, snapshot_epochs(train_cfg.epochs, config.snapshots,
                                                                 config.snapshot_start), then=callback)
            callback = collector
        logger.info("training %s with %s on %s (%s, member %d/%d, seed %d, device %s)", config.model, trainer_name,
                    dataset.name, method, m + 1, members, seed, device)
        fit = trainer.fit(model, train_data, None if fit_idx is None else torch.from_numpy(fit_idx),
                          progress=callback)
        train_seconds += fit.train_seconds
        models.append(model)
        member_seeds.append(seed)
        if collector is not None:
            snapshot_states, taken = collector.states, collector.taken

    start = time.perf_counter()
    bs = config.eval_batch_size

    def predictive(data, indices=None) -> tuple[np.ndarray, np.ndarray | None]:
        """(probs float64, logits or None) of the method on ``indices`` of ``data``."""
        if method == "plain":
            out = predict(models[0], data, indices, batch_size=bs, features=False)
            return torch.softmax(out.logits.double(), dim=1).numpy(), out.logits.double().numpy()
        if method in _MC_METHODS:
            return mc_dropout_probs(models[0], data, indices, n_samples=config.mc_samples,
                                    seed=config.train.seed, batch_size=bs,
                                    logit_noise=method == "aleatoric"), None
        # AES averages its snapshots (loaded one at a time into a scratch copy), an ensemble its members
        members = _with_states(copy.deepcopy(models[0]), snapshot_states) if method == "aes" else models
        total, count = None, 0
        for model in members:
            p = torch.softmax(predict(model, data, indices, batch_size=bs, features=False).logits.double(), 1)
            total, count = (p if total is None else total + p), count + 1
        return (total / count).numpy(), None

    probs, logits = predictive(test_data)
    if logits is None:
        logits = _log_probs(probs)
    if config.temperature_scaling:
        hold_probs, hold_logits = predictive(train_data, torch.from_numpy(holdout_idx))
        hold_logits = _log_probs(hold_probs) if hold_logits is None else hold_logits
        hold_labels = dataset.train_labels[holdout_idx].numpy()
        temperature = fit_temperature(hold_logits, hold_labels)
        info.update(temperature=temperature,
                    holdout_nll_before=_nll_at(hold_logits, hold_labels, 1.0),
                    holdout_nll_after=_nll_at(hold_logits, hold_labels, temperature))
        logger.info("temperature scaling: T = %.4f fitted on %d held-out training images", temperature, holdout_idx.size)
        probs = apply_temperature(logits, temperature)
        logits = logits / temperature
    labels = dataset.test_labels.numpy()
    if method in _MC_METHODS:
        conf = negative_entropy(probs)
        info.update(confidence="negative entropy of the mean probabilities", mc_samples=config.mc_samples,
                    head_only=bool(getattr(models[0], "head_only_dropout", False)), dropout=dropout)
        if method == "aleatoric":
            info.update(aleatoric_samples=config.aleatoric_samples, variance=config.variance,
                        test_logit_samples=1,
                        test_sampling="per MC-dropout pass, one draw of the logits from N(mu, sigma^2); "
                                      "probs = mean over passes of its softmax")
    else:
        conf = probs.max(axis=1)
        info.update(confidence="max probability" + (" of the average" if method in ("aes", "ensemble") else ""))
    if method == "aes":
        info.update(snapshots=len(snapshot_states), snapshot_epochs=taken, snapshot_start=config.snapshot_start)
    if method == "ensemble":
        info.update(members=members, member_seeds=member_seeds)
    metrics = classification_metrics(probs, labels, conf)
    eval_seconds = time.perf_counter() - start

    model_info = model_info_for(dataset, config.model, dropout, resolved.head, resolved.cos_temp)
    model_info["method"] = method
    if method == "aleatoric":
        model_info["variance_head"] = config.variance
    member_states = None
    if method == "ensemble":
        member_states = [{k: v.detach().cpu() for k, v in mdl.state_dict().items()} for mdl in models]
        model_info["model_pt_holds"] = "ensemble member 0 (all members in members.pt)"
    elif method == "aes":
        model_info["model_pt_holds"] = "the final weights (the last AES snapshot)"
    return TrainRunResult(config, models[0], metrics, probs.astype(np.float32), logits.astype(np.float32), labels,
                          conf, train_seconds, eval_seconds, model_info, method_info=info, member_states=member_states)

