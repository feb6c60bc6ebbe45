"""Out-of-distribution detection with a model saved by ``activecrl train`` (the paper's Table 3).

Detectors ``msp``, ``odin``, ``mahalanobis`` and ``energy``; every score is "higher = more
in-distribution". ODIN's (T, eps) and Mahalanobis' eps (and layer combiner) are tuned on validation
data that is never the test OOD set unless ``tune_on_test_ood`` asks for the paper's protocol.

- ``scores.py``: the scores themselves (MSP, energy, the ODIN score grid, Mahalanobis: class
  Gaussian, whitening and ``MahalanobisScorer``), and what each detector computes.
- ``data.py``: OOD images (synthetic noise sets, FGSM validation images, an OOD set converted to the
  model's channels and size by ``load_ood_set``, which also says what it converted).
- ``base.py``: what a detector plugin needs: the ``DETECTORS`` registry (entry-point group
  ``activecrl.detectors``), ``Detector``, the context it is given (``DetectorInputs``,
  ``DetectorSplit``) and what it returns (``DetectorScores``).
- ``detectors.py``: the built-in ``Detector`` classes, each tuning its grid (``select_best``) and
  scoring the evaluation data.
- ``config.py``: ``OODConfig`` (importable without torch).
- ``run.py``: ``OODResult``, the tuning protocol (the tuning / evaluation split),
  ``run_ood`` (load, split, the detector's ``score``) and ``save_ood`` / ``read_ood``.

The names below load their module on first use, so ``activecrl.ood.config`` imports without torch.
"""

import importlib

_WHERE = {
    **dict.fromkeys(("SYNTHETIC_SETS", "convert_to_model_input", "fgsm_images", "load_ood_images", "load_ood_set",
                     "synthetic_images"), "data"),
    **dict.fromkeys(("Detector", "DetectorInputs", "DetectorScores", "DetectorSplit"), "base"),
    # the registry through the module of the built-ins, so that they are registered when it is read
    **dict.fromkeys(("DETECTORS", "register_detector", "select_best"), "detectors"),
    **dict.fromkeys(("DEFAULT_EPSILONS", "DEFAULT_TEMPERATURES", "OODConfig"), "config"),
    **dict.fromkeys(("OODResult", "read_ood", "run_ood", "save_ood"), "run"),
    **dict.fromkeys(("MahalanobisScorer", "_whitener", "class_gaussian", "energy_score", "mahalanobis_sq", "msp_score",
                     "odin_score_grid"), "scores"),
}

__all__ = [
    "DETECTORS", "Detector", "DetectorInputs", "DetectorScores", "DetectorSplit", "register_detector",
    "SYNTHETIC_SETS", "OODConfig", "OODResult",
    "msp_score", "energy_score", "odin_score_grid", "class_gaussian", "mahalanobis_sq", "MahalanobisScorer",
    "synthetic_images", "fgsm_images", "select_best", "run_ood", "save_ood", "read_ood",
]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)


def __dir__():
    return sorted({*globals(), *_WHERE})
