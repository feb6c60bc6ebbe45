"""``activecrl embed --ray``: each split's images cut into shards, embedded as Ray tasks, joined in order.

The shards are contiguous runs of whole batches (only the last shard may end in a short batch),
so every forward pass sees exactly the images it would see in one process: with the same thread
count the joined array equals ``embed``'s. The encoder travels once through Ray's object store
(a timm model with its weights, or the fitted patch features), and each task receives only its
own images (a copy of its rows of an in-memory split, or its list of files, which must then be
readable at the same path on every machine). Only each shard's output rows come back.

Ray is connected on the first split to embed, so a folder reused unchanged starts no Ray at all;
the connection helpers and the local-instance settings are ``activecrl sweep``'s.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import numpy as np

from activecrl.al.sweep import MAX_RETRIES, connect_ray, import_ray
from activecrl.core.errors import ConfigError
from activecrl.embeddings.config import EmbedConfig
from activecrl.embeddings.embed import EmbedProgress, EmbedResult, embed, embed_from_config

logger = logging.getLogger(__name__)


def shard_bounds(n: int, batch_size: int, shards: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of at most ``shards`` contiguous pieces of ``n`` rows, cut between batches of
    ``batch_size`` (as even in batches as possible; no empty piece)."""
    batches = -(-n // batch_size)
    pieces = max(1, min(shards, batches))
    per, extra = divmod(batches, pieces)
    bounds, start = [], 0
    for i in range(pieces):
        stop = min(n, start + (per + (i < extra)) * batch_size)
        bounds.append((start, stop))
        start = stop
    return bounds


def _embed_shard(encoder, source, batch_size: int, device: str, dtype: str, threads: int) -> np.ndarray:
    """One Ray task: ``embed`` of one shard with ``threads`` torch threads."""
    from activecrl.core.runtime import torch_threads

    with torch_threads(threads):
        return embed(encoder, source, batch_size=batch_size, device=device, dtype=dtype)


class RayEmbedder:
    """A split embedder for ``embed_dataset(embed_split=...)`` that shards each split over Ray.

    ``shards`` None: one per CPU (``cpus_per_shard``) or GPU (``gpus_per_shard`` > 0) of the
    cluster. Use it as a context manager: a local Ray instance it started is shut down on exit.
    """

    def __init__(self, *, address: str | None = None, shards: int | None = None, cpus_per_shard: float = 1.0,
                 gpus_per_shard: float = 0.0):
        self.address = address
        self.shards = shards
        self.cpus_per_shard = cpus_per_shard
        self.gpus_per_shard = gpus_per_shard
        self.ray_ = None
        self.started_ray_ = False
        self.encoder_ref_ = None

    def __enter__(self) -> "RayEmbedder":
        return self

    def __exit__(self, *exc) -> None:
        if self.started_ray_:
            self.ray_.shutdown()
        self.ray_, self.started_ray_, self.encoder_ref_ = None, False, None

    def _connect(self):
        if self.ray_ is None:
            ray = import_ray("activecrl embed --ray runs")
            self.started_ray_ = connect_ray(ray, self.address)
            self.ray_ = ray
            self._check_cluster()
        return self.ray_

    def _check_cluster(self) -> None:
        nodes = [n.get("Resources", {}) for n in self.ray_.nodes() if n.get("Alive")]
        for flag, key, asked in (("--gpus-per-shard", "GPU", self.gpus_per_shard),
                                 ("--cpus-per-shard", "CPU", self.cpus_per_shard)):
            most = max((n.get(key, 0) for n in nodes), default=0)
            if asked > most:
                raise ConfigError(f"{flag} {asked:g} asks for more {key}s than any machine of the Ray cluster has "
                                  f"({most:g}); lower it")

    def _shard_count(self) -> int:
        if self.shards is not None:
            return self.shards
        total = self.ray_.cluster_resources()
        if self.gpus_per_shard > 0:
            return max(1, int(total.get("GPU", 0) // self.gpus_per_shard))
        return max(1, int(total.get("CPU", 1) // self.cpus_per_shard))

    def __call__(self, encoder, source, *, batch_size: int, device, dtype: str, split: str,
                 progress: Callable[[EmbedProgress], None] | None = None) -> np.ndarray:
        ray = self._connect()
        if self.encoder_ref_ is None:  # once for both splits
            self.encoder_ref_ = ray.put(encoder)
        shard_device = "cuda" if self.gpus_per_shard > 0 else "cpu"
        task = ray.remote(num_cpus=self.cpus_per_shard, num_gpus=self.gpus_per_shard,
                          max_retries=MAX_RETRIES)(_embed_shard)
        bounds = shard_bounds(len(source), batch_size, self._shard_count())
        threads = max(1, int(self.cpus_per_shard))
        refs = [task.remote(self.encoder_ref_, source.subset(a, b), batch_size, shard_device, dtype, threads)
                for a, b in bounds]
        logger.info("%s split: %d images in %d Ray shards on %s", split, len(source), len(refs), shard_device)
        sizes = {ref: b - a for ref, (a, b) in zip(refs, bounds)}
        pending, done, start = list(refs), 0, time.perf_counter()
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            done += sum(sizes[r] for r in ready)
            if progress is not None:
                progress(EmbedProgress(split, done, len(source), done / max(time.perf_counter() - start, 1e-9)))
        return np.concatenate(ray.get(refs))  # in shard order, whatever order they finished in


def embed_on_ray(config: EmbedConfig, out_dir, *,
                 progress: Callable[[EmbedProgress], None] | None = None) -> EmbedResult:
    """``embed_from_config`` with each split sharded over Ray (``config.address``, ``config.shards``,
    ``config.cpus_per_shard``, ``config.gpus_per_shard``); the same folder as without Ray."""
    with RayEmbedder(address=config.address, shards=config.shards, cpus_per_shard=config.cpus_per_shard,
                     gpus_per_shard=config.gpus_per_shard) as embedder:
        return embed_from_config(config, out_dir, progress=progress, embed_split=embedder)
