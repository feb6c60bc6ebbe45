"""The built-in OOD detectors: ``msp``, ``energy``, ``odin``, ``mahalanobis``.

Each is a :class:`~activecrl.ood.base.Detector` in ``DETECTORS`` (the interface is in ``base.py``).
``run_ood`` (``run.py``) loads the model and data and draws the tuning and evaluation split; the
detector's ``score(inputs, split, say)`` tunes its hyper-parameters on the split's tuning samples
(when it has any: ``tuned = True``) and scores the evaluation samples. The scores themselves are
in ``scores.py``.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from activecrl.core.errors import ConfigError
from activecrl.evaluation.metrics import ood_metrics
from activecrl.ood.base import DETECTORS, Detector, DetectorScores, register_detector
from activecrl.ood.scores import MahalanobisScorer, _logits, energy_score, msp_score, odin_score_grid


def _criterion(metrics: dict) -> tuple:
    return (metrics["fpr95"], metrics["detection_error"], -metrics["auroc"])


def select_best(candidates: list[dict]) -> int:
    """Index of the best candidate by (fpr95, detection_error, -auroc); ties go to the earlier one."""
    if not candidates:
        raise ConfigError("no candidate settings to tune over; give at least one temperature and epsilon")
    return min(range(len(candidates)), key=lambda i: (_criterion(candidates[i]["metrics"]), i))


class _LogitDetector(Detector):
    """A score of the logits alone: nothing to tune."""

    label = ""

    def score_logits(self, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def params(self) -> dict:
        return {}

    def score(self, inputs, split, say) -> DetectorScores:
        bs = self.config.batch_size
        say(f"scoring ({self.label})")
        score_in = self.score_logits(_logits(inputs.model, inputs.test, torch.from_numpy(split.eval_in), bs))
        score_out = self.score_logits(_logits(inputs.model, inputs.ood, torch.from_numpy(split.eval_out), bs))
        return DetectorScores(score_in.double().numpy(), score_out.double().numpy(), self.params())


@register_detector("msp")
class MSPDetector(_LogitDetector):
    """Maximum softmax probability (Hendrycks & Gimpel 2017)."""

    name, label = "msp", "MSP"
    report_order = 0

    @classmethod
    def report_label(cls, name, config):
        return "MSP"

    def score_logits(self, logits):
        return msp_score(logits)


@register_detector("energy")
class EnergyDetector(_LogitDetector):
    """Negative free energy ``T * logsumexp(logits / T)`` (Liu et al. 2020), T = ``energy_temperature``."""

    name, label = "energy", "energy"
    report_order = 1

    @classmethod
    def report_label(cls, name, config):
        return "Energy"

    @classmethod
    def report_params(cls, params):
        return {"T" if k == "temperature" else k: v for k, v in params.items()}

    def score_logits(self, logits):
        return energy_score(logits, self.config.energy_temperature)

    def params(self) -> dict:
        return {"temperature": self.config.energy_temperature}


@register_detector("odin")
class ODINDetector(Detector):
    """ODIN (Liang et al. 2018): (temperature, epsilon) tuned on the tuning data, then the best scores."""

    name, tuned = "odin", True
    report_order = 2

    @classmethod
    def report_label(cls, name, config):
        return "ODIN"

    @classmethod
    def report_params(cls, params):
        return {{"temperature": "T", "epsilon": "ε"}.get(k, k): v for k, v in params.items()}

    def score(self, inputs, split, say) -> DetectorScores:
        config, bs = self.config, self.config.batch_size
        model, tune_in, tune_out = inputs.model, split.tune_in, split.tune_out
        grid = list(itertools.product(config.temperatures, config.epsilons))
        split.protocol["grid"] = {"temperature": list(config.temperatures), "epsilon": list(config.epsilons)}
        say(f"tuning ODIN over {len(grid)} settings on {len(tune_in)} + {len(tune_out)} images")
        s_in = odin_score_grid(model, inputs.test, torch.from_numpy(tune_in), grid, batch_size=bs)
        s_out = odin_score_grid(model, split.val_out, torch.from_numpy(tune_out), grid, batch_size=bs)
        tuning = [{"params": {"temperature": t, "epsilon": e}, "metrics": ood_metrics(a, b)}
                  for (t, e), a, b in zip(grid, s_in, s_out)]
        best = tuning[select_best(tuning)]["params"]
        say(f"scoring (ODIN T={best['temperature']:g}, eps={best['epsilon']:g})")
        setting = [(best["temperature"], best["epsilon"])]
        score_in = odin_score_grid(model, inputs.test, torch.from_numpy(split.eval_in), setting, batch_size=bs)[0]
        score_out = odin_score_grid(model, inputs.ood, torch.from_numpy(split.eval_out), setting, batch_size=bs)[0]
        return DetectorScores(score_in, score_out, dict(best), tuning)


def _fit_combiner(scores_in: np.ndarray, scores_out: np.ndarray, seed: int):
    x = np.concatenate([scores_in, scores_out])
    y = np.concatenate([np.ones(len(scores_in)), np.zeros(len(scores_out))])
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed)).fit(x, y)


@register_detector("mahalanobis")
class MahalanobisDetector(Detector):
    """Lee et al. (2018): class Gaussians of training features; epsilon (and, over every block with
    ``feature_ensemble``, a logistic-regression combiner) tuned on the tuning data."""

    name, tuned = "mahalanobis", True
    report_order = 3

    @classmethod
    def report_label(cls, name, config):
        return "Mahalanobis" + (" (feature ensemble)" if config.get("feature_ensemble") else "")

    @classmethod
    def report_params(cls, params):
        # the label says "feature ensemble"; the combiner's weights and the layer count stay in ood.json
        return {"ε" if k == "epsilon" else k: v for k, v in params.items()
                if k not in ("combiner_weights", "layers", "n_layers")}

    def _tune(self, g_in: dict, g_out: dict, combine: bool) -> list[dict]:
        """Tuning metrics per epsilon of the per-layer tuning scores ``g_in`` / ``g_out`` ({eps: (n, L)}).

        With several layers the combiner is fitted on one half of the tuning data and epsilon judged on
        the other half, so the choice is not flattered by the combiner's own fit.
        """
        config = self.config
        n_in, n_out = len(next(iter(g_in.values()))), len(next(iter(g_out.values())))
        if combine:
            ha = np.random.default_rng(config.seed).permutation(n_in) < n_in // 2
            hb = np.random.default_rng(config.seed + 1).permutation(n_out) < n_out // 2
        tuning = []
        for e in config.epsilons:
            e = float(e)
            if combine:
                lr = _fit_combiner(g_in[e][ha], g_out[e][hb], config.seed)
                m = ood_metrics(lr.decision_function(g_in[e][~ha]), lr.decision_function(g_out[e][~hb]))
            else:
                m = ood_metrics(g_in[e][:, 0], g_out[e][:, 0])
            tuning.append({"params": {"epsilon": e}, "metrics": m})
        return tuning

    def score(self, inputs, split, say) -> DetectorScores:
        config, bs = self.config, self.config.batch_size
        scorer = MahalanobisScorer(inputs.model, "all" if config.feature_ensemble else "penultimate")
        say("fitting class means and tied covariance on the training split")
        scorer.fit(inputs.device_data(inputs.dataset.train_images, inputs.dataset.train_labels), batch_size=max(bs, 512))
        split.protocol["grid"] = {"epsilon": list(config.epsilons)}
        tune_in, tune_out = split.tune_in, split.tune_out
        say(f"tuning Mahalanobis over {len(config.epsilons)} epsilons on {len(tune_in)} + {len(tune_out)} images")
        g_in = scorer.score_grid(inputs.test, torch.from_numpy(tune_in), config.epsilons, batch_size=bs)
        g_out = scorer.score_grid(split.val_out, torch.from_numpy(tune_out), config.epsilons, batch_size=bs)
        combine = scorer.n_layers_ > 1
        if combine:
            split.protocol["combiner"] = ("logistic regression on standardised per-layer scores, fitted on half of "
                                          "the tuning data (epsilon chosen on the other half), then refitted on all of it")
        tuning = self._tune(g_in, g_out, combine)
        eps = tuning[select_best(tuning)]["params"]["epsilon"]
        params = {"epsilon": eps, "layers": "all feature maps" if combine else "penultimate",
                  "n_layers": scorer.n_layers_}
        say(f"scoring (Mahalanobis eps={eps:g})")
        l_in = scorer.score_grid(inputs.test, torch.from_numpy(split.eval_in), [eps], batch_size=bs)[eps]
        l_out = scorer.score_grid(inputs.ood, torch.from_numpy(split.eval_out), [eps], batch_size=bs)[eps]
        if not combine:
            return DetectorScores(l_in[:, 0], l_out[:, 0], params, tuning)
        lr = _fit_combiner(g_in[eps], g_out[eps], config.seed)  # refit on all the tuning data
        params["combiner_weights"] = lr[-1].coef_.ravel().tolist()
        return DetectorScores(lr.decision_function(l_in), lr.decision_function(l_out), params, tuning)
