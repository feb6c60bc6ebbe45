"""``ALConfig``: the options of one active-learning experiment (``activecrl run``), importable
without torch, so the CLI derives its flags (and a notebook builds configs) without loading it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from activecrl.core.config import from_dict
from activecrl.core.errors import ConfigError
from activecrl.core.registry import did_you_mean
from activecrl.core.io import to_jsonable
from activecrl.model_options import MODEL_HELP, backbone_options, check_backbone_options
from activecrl.core.validate import SEED_LIMIT, check_int, check_threads_option, check_track, tracking_help
from activecrl.training.config import SHORT_RUN_RECIPE, TrainConfig

TRACKING_HELP = tracking_help("the run folder")

#: the dropout rate of strategies that sample it when --dropout is not set
#: (``activecrl.inference.mc_dropout.DEFAULT_MC_DROPOUT``; a test checks the two agree)
MC_DROPOUT_HELP_RATE = 0.3

#: seed-set choices: random, or a strategy that needs no model, run on the --embeddings
INITIAL_STRATEGIES = ("random", "typiclust", "probcover")


def _al_train_config() -> TrainConfig:
    # the paper's active-learning schedule is 200 epochs with lr/10 at 120 and 160; the library
    # default is the short offline demo (batch 32: 100 digits in batches of 128 would be one step
    # per epoch) with the CPU recipe (one-cycle lr, Nesterov, weight decay 5e-4: ahead
    # of the paper's step schedule in short runs); the presets in configs/ hold the paper's protocol.
    return TrainConfig(epochs=20, batch_size=32, milestones=(0.6, 0.8), **SHORT_RUN_RECIPE)


@dataclass
class ALConfig:
    """One active-learning experiment. Defaults: the offline demo on ``digits``."""

    # Each field is a CLI flag of `activecrl run` (--pool-subset) and a TOML key; metadata["help"] is its help.
    dataset: str = field(default="digits", metadata={
        "help": "digits | cifar10 | cifar100 | svhn | an ImageFolder folder or archive"})
    model: str = field(default="small_cnn", metadata={"help": MODEL_HELP["model"]})
    pretrained: bool = field(default=False, metadata={"help": MODEL_HELP["pretrained"]})
    weights: str | None = field(default=None, metadata={"help": MODEL_HELP["weights"]})
    freeze_backbone: bool = field(default=False, metadata={"help": MODEL_HELP["freeze_backbone"]})
    input_size: int | None = field(default=None, metadata={"help": MODEL_HELP["input_size"]})
    trainer: str = field(default="crl", metadata={"help": "baseline | crl | sam | swa | fmfp | sure | a registered trainer (see `activecrl list`)"})
    strategy: str = field(default="least_conf", metadata={"help": "strategy name or package.module:Class"})
    strategy_params: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "keyword arguments of the strategy, e.g. weight=0.1 (repeat for more)"})
    initial: int = field(default=100, metadata={"help": "size of the random seed set"})
    budget: int = field(default=100, metadata={"help": "labels queried after each stage but the last"})
    stages: int = field(default=5, metadata={"help": "models trained per trial (the paper: 10)"})
    trials: int = field(default=3, metadata={"help": "independent trials (seeds seed, seed+1, ...)"})
    seed: int = field(default=0, metadata={"help": "base seed"})
    pool_subset: int | None = field(default=None, metadata={
        "help": "score only this many random pool samples per stage (default: the whole pool)"})
    warm_start: bool = field(default=False, metadata={
        "help": "fine-tune the previous stage's weights instead of retraining from scratch"})
    dropout: float | None = field(default=None, metadata={
        "help": f"dropout before the classifier (default 0, or {MC_DROPOUT_HELP_RATE} for strategies that sample it)"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N"})
    deterministic: bool = field(default=False, metadata={
        "help": "CUDA: deterministic kernels, no autotuning, so the same seed gives the same queries (slower)"})
    data_dir: str | None = field(default=None, metadata={
        "help": "dataset folder (default $ACTIVECRL_DATA, else ~/.cache/activecrl)"})
    download: bool = field(default=True, metadata={"help": "let torchvision download a named dataset if missing"})
    skip_bad_images: bool = field(default=False, metadata={"help": (
        "leave out the images of a --dataset folder that do not decode (recorded in the run folder) instead of "
        "stopping")})
    eval_batch_size: int = field(default=1024, metadata={"help": "batch size of the evaluation and scoring passes"})
    embeddings: str | None = field(default=None, metadata={"help": (
        "an `activecrl pretrain` folder or a .npy of shape (n_train, d): embeddings for the strategies "
        "that select by typicality/coverage (typiclust, probcover) and for --initial-strategy")})
    initial_strategy: str = field(default="random", metadata={"help": (
        "how the seed set is chosen: random | typiclust | probcover (the last two need --embeddings)")})
    threads: int | None = field(default=None, metadata={"help": (
        "CPU threads for torch (default: 1 per million model parameters, at most the CPUs this process may "
        "use); CPU results depend on it, so config.json records the count and --resume keeps it")})
    track: tuple[str, ...] = field(default=(), metadata={"help": TRACKING_HELP["track"]})
    tracking_uri: str | None = field(default=None, metadata={"help": TRACKING_HELP["tracking_uri"]})
    train: TrainConfig = field(default_factory=_al_train_config, metadata={
        "help": "training of each stage (the [train] table)"})

    def __post_init__(self):
        if isinstance(self.train, dict):
            self.train = from_dict(TrainConfig, self.train, base=_al_train_config())  # keys not given keep the run's
        # initial >= 2: BatchNorm cannot train on a single sample
        for name, minimum in (("initial", 2), ("budget", 0), ("stages", 1), ("trials", 1), ("eval_batch_size", 1)):
            check_int(name, getattr(self, name), minimum)
        check_int("seed", self.seed, 0, below=SEED_LIMIT)
        check_int("pool_subset", self.pool_subset, 1, none_ok=True)
        if self.pool_subset is not None and self.pool_subset < self.budget:
            raise ConfigError(f"pool_subset must be at least the budget ({self.budget}) so a stage can query it "
                              f"all, got {self.pool_subset} instead; raise --pool-subset or lower --budget")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout!r} instead")
        if self.initial_strategy not in INITIAL_STRATEGIES:
            raise ConfigError(f"initial_strategy must be one of {', '.join(INITIAL_STRATEGIES)}, got "
                              f"{self.initial_strategy!r}{did_you_mean(self.initial_strategy, INITIAL_STRATEGIES)} "
                              f"instead")
        if self.initial_strategy != "random" and self.embeddings is None:
            # before the first stage there is no model whose features could stand in
            raise ConfigError(f"--initial-strategy {self.initial_strategy} picks the seed set from embeddings, "
                              f"got no --embeddings instead; run `activecrl pretrain --out DIR` and pass "
                              f"--embeddings DIR, or use --initial-strategy random")
        if self.embeddings is not None and not isinstance(self.embeddings, str):
            self.embeddings = str(self.embeddings)
        check_threads_option(self.threads)
        self.track = check_track(self.track)
        check_backbone_options(self.model, backbone_options(self))

    def to_dict(self) -> dict:
        return to_jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, values: dict) -> "ALConfig":
        return from_dict(cls, values)
