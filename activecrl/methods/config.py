"""``TrainRunConfig``: the options of one ``activecrl train`` run, importable without torch, so the
CLI derives its flags (and a notebook builds configs) without loading it."""

from __future__ import annotations

from dataclasses import dataclass, field

from activecrl.model_options import MODEL_HELP, backbone_options, check_backbone_options
from activecrl.core.validate import check_int, check_threads_option, check_track, tracking_help
from activecrl.training.config import SHORT_RUN_RECIPE, TrainConfig

TRACKING_HELP = tracking_help("the --out folder")


def quick_train_config() -> TrainConfig:
    """``activecrl train``'s default schedule: a quick run (seconds on digits), like ``run``'s demo.

    The paper's 300 epochs stay ``TrainConfig``'s own defaults and the ``*_train_paper`` presets in
    ``configs/``. A 20-epoch run uses the CPU recipe (one-cycle lr, Nesterov momentum,
    weight decay 5e-4), which is ahead of the paper's step schedule in runs this short; the
    ``*_train_paper`` presets restore the paper's schedule."""
    return TrainConfig(epochs=20, **SHORT_RUN_RECIPE)


@dataclass
class TrainRunConfig:
    # Each field is a CLI flag of `activecrl train` (--mc-samples) and a TOML key; metadata["help"] is its help.
    dataset: str = field(default="digits", metadata={
        "help": "digits | cifar10 | cifar100 | svhn | an ImageFolder folder or archive"})
    model: str = field(default="small_cnn", metadata={"help": MODEL_HELP["model"]})
    pretrained: bool = field(default=False, metadata={"help": MODEL_HELP["pretrained"]})
    weights: str | None = field(default=None, metadata={"help": MODEL_HELP["weights"]})
    freeze_backbone: bool = field(default=False, metadata={"help": MODEL_HELP["freeze_backbone"]})
    input_size: int | None = field(default=None, metadata={"help": MODEL_HELP["input_size"]})
    trainer: str = field(default="baseline", metadata={"help": "baseline | crl | sam | swa | fmfp | sure | a registered trainer (see `activecrl list`)"})
    dropout: float = field(default=0.0, metadata={
        "help": "dropout before the classifier (mc_dropout/aleatoric: 0 means 0.3)"})
    data_dir: str | None = field(default=None, metadata={
        "help": "dataset folder (default $ACTIVECRL_DATA, else ~/.cache/activecrl)"})
    download: bool = field(default=True, metadata={"help": "let torchvision download a named dataset if missing"})
    skip_bad_images: bool = field(default=False, metadata={"help": (
        "leave out the images of a --dataset folder that do not decode (recorded in the run folder) instead of "
        "stopping")})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N"})
    eval_batch_size: int = field(default=1024, metadata={"help": "batch size of the evaluation passes"})
    train: TrainConfig = field(default_factory=quick_train_config, metadata={
        "help": "optimisation (the [train] table); the paper's 300 epochs: --epochs 300 or a *_train_paper preset"})
    threads: int | None = field(default=None, metadata={"help": (
        "CPU threads for torch (default: 1 per million model parameters, at most the CPUs this process may "
        "use); metrics.json records the count used")})
    track: tuple[str, ...] = field(default=(), metadata={"help": TRACKING_HELP["track"]})
    tracking_uri: str | None = field(default=None, metadata={"help": TRACKING_HELP["tracking_uri"]})
    # comparison methods and temperature scaling: see activecrl.methods
    method: str = field(default="plain", metadata={"help": "plain | mc_dropout | aleatoric | aes | ensemble"})
    mc_samples: int = field(default=50, metadata={"help": "MC-dropout passes at test time (mc_dropout, aleatoric)"})
    aleatoric_samples: int = field(default=50, metadata={
        "help": "Gaussian logit samples per example in the aleatoric loss"})
    variance: str = field(default="sample", metadata={
        "help": "aleatoric log-variance head: sample (one per example) | class (one per class)"})
    snapshots: int = field(default=10, metadata={"help": "AES snapshots k (the paper: 10 and 30)"})
    snapshot_start: float = field(default=0.5, metadata={
        "help": "AES takes its snapshots after this fraction of the epochs"})
    members: int = field(default=5, metadata={"help": "ensemble members (seeds seed, seed+1, ...)"})
    temperature_scaling: bool = field(default=False, metadata={
        "help": "fit a temperature on a held-out part of the training split"})
    holdout_fraction: float = field(default=0.1, metadata={
        "help": "training fraction held out for --temperature-scaling"})
    train_subset: int = field(default=0, metadata={"help": (
        "train on this many training images drawn at random (seeded by --seed; the test split is "
        "always whole); 0 = all")})
    bootstrap: int = field(default=0, metadata={"help": "bootstrap resamples of the test set for 95% intervals "
                                                        "of every metric (metrics.json ci95; e.g. 1000); 0 = none"})

    def __post_init__(self):
        check_int("bootstrap", self.bootstrap, 0, " (resamples of the test set; 0 = no intervals, e.g. 1000)")
        check_int("train_subset (--train-subset)", self.train_subset, 0, " (0 trains on every training image)")
        check_threads_option(self.threads)
        self.track = check_track(self.track)
        check_backbone_options(self.model, backbone_options(self))
