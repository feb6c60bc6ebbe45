"""The paper's comparison methods (Moon et al. 2020, Tables 1 and 2) and temperature scaling.

``activecrl train --method NAME`` (``TrainRunConfig.method``) picks how the model is trained and
how its test predictions and confidence are formed. Each method is a :class:`Method` subclass in
the ``METHODS`` registry (entry-point group ``activecrl.methods``): ``base.py`` (the interface,
``build_method``), ``averaging.py`` (plain, aes, ensemble), ``mc.py`` (mc_dropout, aleatoric),
``temperature.py`` (temperature scaling); :func:`activecrl.methods.run.train_and_evaluate` runs
them. Every method writes the same ``metrics.json`` / ``predictions.npz`` as a plain run:
``probs`` is the predictive distribution (averaged over samples, snapshots or members) and
``confidence`` the score the paper ranks by.

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
    sample, or one per class with ``variance="class"``; ``build_model(..., variance_head=...)``) and is
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

The names below load on first use (every method module at once, so each method is registered), so
``activecrl.methods.config`` imports without torch.
"""

import importlib

# where the names of __all__ live; importing them all registers every built-in method
_MODULES = ("activecrl.methods.base", "activecrl.methods.ensembles", "activecrl.methods.mc_dropout",
            "activecrl.methods.temperature", "activecrl.models", "activecrl.training.trainers")

__all__ = [
    "METHODS", "Method", "register_method", "build_method", "validate_method_config",
    "PlainMethod", "MCDropoutMethod", "AleatoricMethod", "AESMethod", "EnsembleMethod",
    "mc_dropout_probs", "negative_entropy", "add_variance_head", "sampled_softmax_loss", "AleatoricTrainer",
    "snapshot_epochs", "SnapshotCollector", "fit_temperature", "apply_temperature", "holdout_split",
    "temperature_scale",
]


def __getattr__(name: str):
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    modules = [importlib.import_module(m) for m in _MODULES]
    globals().update({n: getattr(m, n) for m in modules for n in __all__ if n in vars(m)})
    return globals()[name]


def __dir__():
    return sorted({*globals(), *__all__})
