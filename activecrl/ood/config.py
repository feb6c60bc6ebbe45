"""``OODConfig``: the options of ``activecrl ood``, importable without torch, so the CLI derives its
flags (and a notebook builds configs) without loading it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from activecrl.core.errors import ConfigError
from activecrl.core.validate import check_int, check_threads_option

DEFAULT_TEMPERATURES = (1.0, 10.0, 100.0, 1000.0)
DEFAULT_EPSILONS = (0.0, 0.0005, 0.001, 0.0014, 0.002, 0.005, 0.01)  # Lee et al.'s grid


# ============================================================================ config / result


@dataclass
class OODConfig:
    # Each field is a CLI flag of `activecrl ood` (--n-tune) and a TOML key; metadata["help"] is its help.
    run: str = field(metadata={"help": "folder of an `activecrl train` run (its model.pt)"})
    ood: str = field(metadata={
        "help": "test OOD set: image folder/archive, registered dataset name, or noise"})
    detector: str = field(default="msp", metadata={
        "help": "msp | odin | mahalanobis | energy | a registered detector or package.module:Class"})
    data_dir: str | None = field(default=None, metadata={
        "help": "dataset folder (default: the run's, else $ACTIVECRL_DATA)"})
    ood_val: str = field(default="noise", metadata={
        "help": "OOD tuning data: noise | gaussian | uniform | smooth | fgsm | a path | a dataset"})
    tune_on_test_ood: bool = field(default=False, metadata={
        "help": "paper protocol (Lee et al.): tune on --n-tune samples of the test OOD set"})
    n_tune: int = field(default=1000, metadata={"help": "tuning samples per side (excluded from the evaluation)"})
    temperatures: tuple[float, ...] = field(default=DEFAULT_TEMPERATURES, metadata={
        "help": "ODIN temperature grid, e.g. 1,10,100,1000"})
    epsilons: tuple[float, ...] = field(default=DEFAULT_EPSILONS, metadata={
        "help": "input-perturbation grid of ODIN and Mahalanobis, e.g. 0,0.001,0.002"})
    energy_temperature: float = field(default=1.0, metadata={"help": "temperature of the energy score"})
    feature_ensemble: bool = field(default=False, metadata={
        "help": "Mahalanobis over every block, combined by logistic regression"})
    fgsm_epsilon: float = field(default=0.05, metadata={
        "help": "pixel-space step of the FGSM validation images (--ood-val fgsm)"})
    max_samples: int | None = field(default=None, metadata={
        "help": "evaluate on at most this many random samples per side (default: all)"})
    seed: int = field(default=0, metadata={"help": "seed of the tuning/evaluation split"})
    batch_size: int = field(default=256, metadata={"help": "batch size of the scoring passes"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N"})
    threads: int | None = field(default=None, metadata={"help": (
        "CPU threads for torch (default: 1 per million model parameters, at most the CPUs this process may "
        "use); ood.json records the count used")})

    def __post_init__(self):
        self.temperatures = tuple(float(t) for t in self.temperatures)
        self.epsilons = tuple(float(e) for e in self.epsilons)
        from activecrl.ood.detectors import DETECTORS  # the registry loads torch: only once a config is built

        DETECTORS.get(self.detector)  # an unknown name raises, listing the valid ones
        if not self.temperatures or any(not math.isfinite(t) or t <= 0 for t in self.temperatures):
            raise ConfigError(f"temperatures must be positive numbers, e.g. 1 10 100 1000, got {self.temperatures} "
                              "instead")
        if not self.epsilons or any(not math.isfinite(e) or e < 0 for e in self.epsilons):
            raise ConfigError(f"epsilons must be numbers >= 0, e.g. 0 0.001 0.002, got {self.epsilons} instead")
        if not math.isfinite(self.energy_temperature) or self.energy_temperature <= 0:
            raise ConfigError(f"energy_temperature must be positive, got {self.energy_temperature!r} instead")
        check_int("n_tune", self.n_tune, 2)
        check_int("batch_size", self.batch_size, 1)
        check_int("max_samples", self.max_samples, 2, " (None: all)", none_ok=True)
        if not 0 < self.fgsm_epsilon < 1:
            raise ConfigError(f"fgsm_epsilon must be in (0, 1) (pixel scale), got {self.fgsm_epsilon!r} instead")
        check_threads_option(self.threads)
