"""``PretrainConfig`` and ``EmbedConfig``: the options of ``activecrl pretrain`` and ``activecrl
embed``, importable without torch, so the CLI derives its flags (and a notebook builds configs)
without loading it."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from activecrl.core.config import dashed
from activecrl.core.errors import ConfigError
from activecrl.core.registry import did_you_mean
from activecrl.core.io import to_jsonable
from activecrl.core.validate import check_threads_option
from activecrl.model_options import check_backbone_options, is_timm_name

METHODS = ("patches", "simclr")
EMBED_DTYPES = ("float16", "float32")


@dataclass
class PretrainConfig:
    """Label-free embeddings of a dataset's training images: ``patches`` (Coates et al. 2011) or
    ``simclr`` (Chen et al. 2020). Options marked (simclr) or (patches) apply to that method only."""

    dataset: str = field(default="digits", metadata={"help": "digits | cifar10 | cifar100 | svhn | an ImageFolder dir/archive"})
    method: str = field(default="patches", metadata={
        "help": "patches: k-means on whitened image patches (Coates et al. 2011; minutes on a CPU core) | "
                "simclr: contrastive training of --model (Chen et al. 2020; wants a GPU)"})
    centroids: int = field(default=100, metadata={
        "help": "(patches) k-means centroids K; 4K features per image (paper: 1600, for an SVM; 100 was best for kNN)"})
    patch_size: int = field(default=6, metadata={"help": "(patches) side of the square windows, in pixels (paper: 6)"})
    patch_stride: int = field(default=1, metadata={"help": "(patches) step between feature windows (paper: 1; 2 is ~4x cheaper)"})
    kmeans_patches: int = field(default=100_000, metadata={"help": "(patches) random windows k-means learns from (paper: 400000)"})
    kmeans_iters: int = field(default=10, metadata={"help": "(patches) k-means iterations (paper: 50)"})
    pca_dim: int = field(default=256, metadata={"help": "(patches) PCA width of the embeddings (capped at the number of images and features)"})
    model: str = field(default="small_cnn", metadata={"help": "(simclr) registered model whose body is the encoder"})
    epochs: int = field(default=20, metadata={"help": "(simclr) passes over the training images"})
    batch_size: int = field(default=512, metadata={"help": "(simclr) images per batch (2x views each); TypiClust: 512"})
    lr: float = field(default=0.4, metadata={"help": "(simclr) SGD learning rate, cosine-decayed to 0 (TypiClust: 0.4 at batch 512)"})
    momentum: float = field(default=0.9, metadata={"help": "(simclr) SGD momentum"})
    weight_decay: float = field(default=1e-4, metadata={"help": "(simclr) SGD weight decay"})
    temperature: float = field(default=0.1, metadata={"help": "(simclr) NT-Xent temperature (TypiClust/SCAN: 0.1)"})
    projection_dim: int = field(default=128, metadata={"help": "(simclr) output width of the projection head"})
    crop_scale: tuple[float, float] = field(default=(0.2, 1.0), metadata={"help": "(simclr) area fraction range of the random resized crop"})
    jitter: tuple[float, float, float, float] = field(
        default=(0.4, 0.4, 0.4, 0.1), metadata={"help": "(simclr) colour jitter strength: brightness, contrast, saturation, hue"})
    jitter_p: float = field(default=0.8, metadata={"help": "(simclr) probability of colour jitter per view"})
    grayscale_p: float = field(default=0.2, metadata={"help": "(simclr) probability of grayscale per view"})
    knn_k: int = field(default=20, metadata={"help": "neighbours of the kNN accuracy check (0: skip the check)"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N"})
    data_dir: str | None = field(default=None, metadata={"help": "dataset folder (else $ACTIVECRL_DATA)"})
    download: bool = field(default=True, metadata={"help": "let torchvision download named datasets"})
    eval_batch_size: int = field(default=1024, metadata={"help": "batch size of the embedding pass (patches: at most)"})
    channels_last: bool = field(default=True, metadata={"help": "(simclr) NHWC memory format (faster convolutions on CPUs and GPUs)"})

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}"
                              f"{did_you_mean(self.method, METHODS)} instead")
        for name, minimum in (("epochs", 1), ("batch_size", 2), ("projection_dim", 1), ("knn_k", 0),
                              ("eval_batch_size", 1), ("centroids", 1), ("patch_size", 1), ("patch_stride", 1),
                              ("kmeans_patches", 1), ("kmeans_iters", 1), ("pca_dim", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"{dashed(name)} must be an integer >= {minimum}, got {value!r} instead")
        if self.kmeans_patches < self.centroids:
            raise ConfigError(f"--kmeans-patches must be at least --centroids ({self.centroids}): k-means needs a "
                              f"window per centroid, got {self.kmeans_patches} instead")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise ConfigError(f"--seed must be an integer in [0, 2**63), got {self.seed!r} instead")
        for name in ("lr", "temperature"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ConfigError(f"{dashed(name)} must be a positive number, got {value!r} instead")
        for name in ("momentum", "weight_decay"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{dashed(name)} must be a non-negative number, got {value!r} instead")
        for name in ("jitter_p", "grayscale_p"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ConfigError(f"{dashed(name)} must be a probability in [0, 1], got {value!r} instead")
        self.crop_scale = tuple(float(v) for v in self.crop_scale)
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ConfigError(f"--crop-scale must be (low, high) with 0 < low <= high <= 1, got {self.crop_scale!r} instead")
        self.jitter = tuple(float(v) for v in self.jitter)
        if len(self.jitter) != 4 or min(self.jitter) < 0 or max(self.jitter[:3]) >= 1 or self.jitter[3] > 0.5:
            raise ConfigError(f"--jitter must be (brightness, contrast, saturation, hue) in [0, 1)^3 x [0, 0.5], "
                              f"got {self.jitter!r} instead")

    def to_dict(self) -> dict:
        return to_jsonable(dataclasses.asdict(self))

    @property
    def trained_epochs(self) -> int | None:
        """Epochs of network training the method runs (simclr), None for one that trains no network."""
        return self.epochs if self.method == "simclr" else None

    def describe(self) -> str:
        """What is being fitted, e.g. ``SimCLR small_cnn`` or ``k-means patch features (100 centroids)``."""
        return f"SimCLR {self.model}" if self.method == "simclr" else f"k-means patch features ({self.centroids} centroids)"


@dataclass
class EmbedConfig:
    """Embeddings of every train and test image of a dataset from a backbone: a ``timm:NAME`` model
    (pretrained, or weights from a local file) or the encoder of an ``activecrl pretrain`` run."""

    dataset: str = field(default="digits", metadata={"help": "digits | cifar10 | cifar100 | svhn | an ImageFolder dir/archive"})
    model: str | None = field(default=None, metadata={
        "help": "timm:NAME backbone, e.g. timm:vit_small_patch14_dinov2.lvd142m (pip install timm); or use --encoder"})
    encoder: str | None = field(default=None, metadata={
        "help": "an `activecrl pretrain` folder (or its encoder.pt) to embed with, instead of --model"})
    weights: str | None = field(default=None, metadata={
        "help": "(--model) local .safetensors / .pth state dict of the timm model (no download)"})
    pretrained: bool = field(default=False, metadata={
        "help": "(--model) timm's pretrained weights (downloaded once into timm's cache)"})
    input_size: int | None = field(default=None, metadata={
        "help": "(--model) side in pixels the images are resized to (default: the pretrained config's)"})
    batch_size: int = field(default=256, metadata={"help": "images per forward pass"})
    dtype: str = field(default="float16", metadata={"help": "float16 | float32: storage type of the embeddings"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N"})
    threads: int | None = field(default=None, metadata={"help": (
        "CPU threads for torch (default: 1 per million model parameters, at most the CPUs this process may use)")})
    data_dir: str | None = field(default=None, metadata={"help": "dataset folder (else $ACTIVECRL_DATA)"})
    download: bool = field(default=True, metadata={"help": "let torchvision download named datasets"})
    ray: bool = field(default=False, metadata={
        "help": "shard the images over a Ray cluster (pip install \"activecrl[distributed]\"); the shards are "
                "joined in order, the result is the single-process one"})
    address: str | None = field(default=None, metadata={
        "help": "(--ray) HOST:PORT of a Ray cluster (`ray start --head`); default: a local Ray instance"})
    shards: int | None = field(default=None, metadata={
        "help": "(--ray) pieces the images of each split are cut into (default: one per CPU or GPU of the cluster)"})
    cpus_per_shard: float = field(default=1.0, metadata={"help": "(--ray) CPUs per shard task (its torch threads)"})
    gpus_per_shard: float = field(default=0.0, metadata={"help": "(--ray) GPUs per shard task; > 0 runs shards on CUDA"})

    def __post_init__(self):
        if (self.model is None) == (self.encoder is None):
            raise ConfigError(f"embed needs exactly one of --model timm:NAME and --encoder PRETRAIN_FOLDER, got "
                              f"{'both' if self.model else 'neither'} instead")
        if self.model is not None and not is_timm_name(self.model):
            raise ConfigError(f"--model must be timm:NAME (any timm architecture), got {self.model!r} instead; for "
                              f"an `activecrl pretrain` folder use --encoder")
        options = {k: v for k, v in dict(pretrained=self.pretrained, weights=self.weights,
                                          input_size=self.input_size).items() if v not in (None, False)}
        if self.encoder is not None and options:
            raise ConfigError(f"{', '.join(dashed(k) for k in options)}: options of --model timm:NAME only, got "
                              f"--encoder {self.encoder} instead; drop them")
        check_backbone_options(self.model or "timm:", options)
        if self.dtype not in EMBED_DTYPES:
            raise ConfigError(f"--dtype must be one of {', '.join(EMBED_DTYPES)}, got {self.dtype!r} instead")
        for name, value in (("batch_size", self.batch_size), ("shards", self.shards)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{dashed(name)} must be an integer >= 1, got {value!r} instead")
        check_threads_option(self.threads)
        for name in ("cpus_per_shard", "gpus_per_shard"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{dashed(name)} must be a non-negative number, got {value!r} instead")
        if self.cpus_per_shard == 0 and self.gpus_per_shard == 0:
            raise ConfigError("--cpus-per-shard and --gpus-per-shard are both 0, so a shard would need nothing "
                              "and Ray would start all at once; give --cpus-per-shard 1 (or more)")
        if not self.ray:
            given = [n for n in ("address", "shards") if getattr(self, n) is not None]
            if given:
                raise ConfigError(f"{', '.join(dashed(n) for n in given)}: options of --ray only, got no --ray "
                                  f"instead; add --ray")
        elif self.gpus_per_shard == 0 and self.device not in ("auto", "cpu"):
            raise ConfigError(f"with --ray the shards run on CPUs unless --gpus-per-shard is > 0, got --device "
                              f"{self.device} instead; give --gpus-per-shard (e.g. 1) for CUDA shards")

    @property
    def backbone(self) -> str:
        """What ``embed_dataset`` takes: the timm name or the pretrain folder."""
        return self.model if self.model is not None else self.encoder

    def to_dict(self) -> dict:
        return to_jsonable(dataclasses.asdict(self))
