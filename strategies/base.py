"""The query-strategy contract: ``QueryContext`` in, training-split indices out.

A strategy is a small class in the scikit-learn habit: ``__init__`` only stores its parameters
as attributes, and the work happens in ``select(context, budget, rng)``, which returns the
training-split indices to label next (drawn from ``context.pool.indices``, unique, exactly
``min(budget, len(pool))`` of them). Callers go through ``Strategy.query``, which validates the
budget and then checks the returned indices against that contract, so a user-written strategy
that breaks it fails with a message naming it instead of silently corrupting the labeled set.

Strategies are found by name in ``STRATEGIES`` (filled by ``@register_strategy`` and by the
``activecrl.strategies`` entry-point group) or loaded from ``"package.module:ClassName"``.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from activecrl.core.errors import ActiveCRLError, ConfigError, RegistryError
from activecrl.inference.outputs import PoolOutputs
from activecrl.core.registry import Registry, check_params
from activecrl.core.validate import check_int

logger = logging.getLogger(__name__)

__all__ = [
    "QueryContext",
    "Strategy",
    "StrategyError",
    "STRATEGIES",
    "register_strategy",
    "get_strategy",
    "select_top",
]


class StrategyError(ActiveCRLError, RuntimeError):
    """A strategy returned indices that break the ``select`` contract."""


@dataclass
class QueryContext:
    """Everything a strategy may read to choose the next samples to label.

    ``pool``: outputs of one eval pass over the unlabeled candidates (``pool.indices`` are
    training-split indices). ``labeled``: the same for the labeled set (core-set needs its
    features), or None. ``model``/``data``/``device``/``batch_size``: for strategies that need
    further passes (MC dropout); ``data`` is a ``DeviceData`` of the training split.
    ``embeddings``: optional (n_train, d) matrix, one row per training-split image (a
    self-supervised encoder's or a user's features); strategies that work in an embedding space
    (typiclust, probcover) read it through ``Strategy.embedding`` instead of ``features``.
    ``n_classes``: the number of classes when the caller knows it (ProbCover's default number
    of k-means clusters); None: the width of ``pool.logits``. The pool and the labeled set must
    not share an index (checked here, before any work).
    From plain arrays, ``activecrl.strategies.query`` builds this context for you.
    """

    pool: PoolOutputs
    labeled: PoolOutputs | None = None
    model: nn.Module | None = None
    data: Any = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_size: int = 1024
    embeddings: np.ndarray | torch.Tensor | None = None
    n_classes: int | None = None

    def __post_init__(self):
        if not isinstance(self.pool, PoolOutputs):
            raise ConfigError(f"pool must be a PoolOutputs, got {type(self.pool).__name__} instead")
        if self.labeled is not None and not isinstance(self.labeled, PoolOutputs):
            raise ConfigError(
                f"labeled must be a PoolOutputs or None, got {type(self.labeled).__name__} instead"
            )
        if self.labeled is not None and len(self.labeled) and len(self.pool):
            lab = self.labeled.indices.numpy()
            both = lab[np.isin(lab, self.pool.indices.numpy())]
            if both.size:
                raise ConfigError(
                    f"pool and labeled must not share indices, got {both.size} index(es) in both instead "
                    f"(e.g. {both[:5].tolist()}); leave the labeled indices out of the pool"
                )
        self.device = torch.device(self.device)
        self.batch_size = check_int("batch_size", self.batch_size, 1)
        self.n_classes = check_int("n_classes", self.n_classes, 1, none_ok=True)
        if self.embeddings is not None:
            shape = tuple(self.embeddings.shape) if hasattr(self.embeddings, "shape") else None
            if shape is None or len(shape) != 2 or shape[1] < 1:
                raise ConfigError(
                    f"embeddings must be a 2-D (n_train, d) array with one row per training-split "
                    f"image, got {type(self.embeddings).__name__} of shape {shape} instead"
                )


class Strategy:
    """Base class of query strategies; subclass it and implement ``select``.

    Class attributes: ``name`` (the registry name), ``requires_dropout`` (the loop then trains
    the model with dropout before its classifier), ``needs_features`` (the pool and labeled
    ``PoolOutputs`` must carry penultimate features), ``needs_model_outputs`` (False: the
    strategy reads only ``pool.indices``, so the loop skips the forward pass over the pool and
    passes logits with zero columns), ``needs_logits`` (False: the strategy never reads the
    class scores, so ``strategies.query`` accepts a call without logits or probabilities).
    """

    name: str = "strategy"
    requires_dropout: bool = False
    needs_features: bool = False
    needs_model_outputs: bool = True
    needs_logits: bool = True
    uses_embeddings: bool = False  # reads Strategy.embedding: context.embeddings when given

    def embedding(self, context: QueryContext) -> tuple[np.ndarray, np.ndarray]:
        """(pool, labeled) embedding rows as float32 C-contiguous arrays, (n_pool, d) and
        (n_labeled, d) (zero rows when there is no labeled set: cold start).

        ``context.embeddings`` (one row per training-split image, indexed by training-split
        index) when present, else the current model's penultimate ``features`` of the pool and
        labeled outputs. Non-finite values, a wrong shape or too few rows raise ``ConfigError``
        naming this strategy.
        """
        who = self._label()
        lab = context.labeled if context.labeled is not None and len(context.labeled) else None
        if context.embeddings is not None:
            emb = context.embeddings
            n_rows = emb.shape[0]
            idx = context.pool.indices.numpy()
            lab_idx = lab.indices.numpy() if lab is not None else np.empty(0, dtype=np.int64)
            top = int(max(idx.max(initial=-1), lab_idx.max(initial=-1)))
            if top >= n_rows or min(idx.min(initial=0), lab_idx.min(initial=0)) < 0:
                raise ConfigError(
                    f"{who}: embeddings must have one row per training-split image, got {n_rows} rows "
                    f"for training-split index {top} instead; compute them on the same training split"
                )
            if isinstance(emb, torch.Tensor):
                emb = emb.detach().cpu().numpy()
            pool_x, lab_x = np.take(emb, idx, axis=0), np.take(emb, lab_idx, axis=0)
            source = "embeddings"
        else:
            if context.pool.features is None:
                raise ConfigError(
                    f"{who} needs an embedding, got neither context.embeddings nor pool features "
                    f"instead; pass embeddings (activecrl run --embeddings) or compute features with "
                    f"predict(model, data, indices, features=True)"
                )
            pool_x = context.pool.features.numpy()
            if lab is not None and lab.features is None:
                raise ConfigError(f"{who} needs features of the labeled set too, got features=None instead")
            lab_x = lab.features.numpy() if lab is not None else np.empty((0, pool_x.shape[1]), np.float32)
            source = "features"
        out = []
        for what, x in (("pool", pool_x), ("labeled", lab_x)):
            x = np.ascontiguousarray(x, dtype=np.float32)
            if x.ndim != 2 or x.shape[1] != pool_x.shape[1] or x.shape[1] < 1:
                raise ConfigError(f"{who}: {what} {source} must be 2-D with {pool_x.shape[1]} columns, "
                                  f"got shape {x.shape} instead")
            bad = ~np.isfinite(x).all(axis=1)
            if bad.any():
                raise ConfigError(
                    f"{who}: {what} {source} must be finite, got {int(bad.sum())} row(s) with NaN or "
                    f"inf instead (e.g. row {int(np.flatnonzero(bad)[0])}); check the encoder or "
                    f"the model (a diverged training gives NaN features)"
                )
            out.append(x)
        return out[0], out[1]

    def select(self, context: QueryContext, budget: int, rng: np.random.Generator) -> np.ndarray:
        """Return ``min(budget, len(context.pool))`` unique indices from ``context.pool.indices``."""
        raise NotImplementedError(f"{type(self).__name__} must implement select(context, budget, rng)")

    # ------------------------------------------------------------------ public wrapper
    def query(self, context: QueryContext, budget: int, rng: np.random.Generator | int | None = None
              ) -> np.ndarray:
        """Validate ``budget``, call ``select`` and check what it returns (int64 ndarray)."""
        budget = check_int("budget", budget, 0)
        if not isinstance(context, QueryContext):
            raise ConfigError(f"context must be a QueryContext, got {type(context).__name__} instead")
        if not isinstance(rng, np.random.Generator):
            rng = np.random.default_rng(rng)
        if self.needs_features and not (self.uses_embeddings and context.embeddings is not None):
            _require_features(self._label(), context)
        expected = min(budget, len(context.pool))
        if expected == 0:
            return np.empty(0, dtype=np.int64)
        chosen = self.select(context, budget, rng)
        return self._check_result(chosen, context, expected)

    def _label(self) -> str:
        return f"strategy {self.name!r} ({type(self).__module__}.{type(self).__qualname__})"

    def _check_result(self, chosen, context: QueryContext, expected: int) -> np.ndarray:
        who = self._label()
        if isinstance(chosen, torch.Tensor):
            chosen = chosen.detach().cpu().numpy()
        chosen = np.asarray(chosen)
        if chosen.ndim != 1 or not (np.issubdtype(chosen.dtype, np.integer) or chosen.size == 0):
            raise StrategyError(
                f"{who}: select must return a 1-D integer array of training-split indices, "
                f"got shape {chosen.shape} and dtype {chosen.dtype} instead"
            )
        chosen = chosen.astype(np.int64, copy=False)
        if chosen.size != expected:
            raise StrategyError(
                f"{who}: select must return exactly min(budget, len(pool)) = {expected} indices, "
                f"got {chosen.size} instead"
            )
        uniq, counts = np.unique(chosen, return_counts=True)
        if uniq.size != chosen.size:
            dup = uniq[counts > 1][:5].tolist()
            raise StrategyError(
                f"{who}: select must return unique indices, got {chosen.size - uniq.size} duplicate(s) "
                f"instead (e.g. {dup})"
            )
        pool_idx = context.pool.indices.numpy()
        outside = ~np.isin(chosen, pool_idx)
        if outside.any():
            raise StrategyError(
                f"{who}: select must return indices from context.pool.indices (training-split indices, "
                f"not positions), got {int(outside.sum())} outside the pool instead "
                f"(e.g. {chosen[outside][:5].tolist()})"
            )
        if context.labeled is not None and len(context.labeled):
            again = np.isin(chosen, context.labeled.indices.numpy())
            if again.any():
                raise StrategyError(
                    f"{who}: selected {int(again.sum())} already-labeled indices "
                    f"(e.g. {chosen[again][:5].tolist()}); the pool and the labeled set overlap"
                )
        return chosen

    # ------------------------------------------------------------------ sklearn-style params
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values()
                if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

    def get_params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._param_names() if hasattr(self, k)}

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"


def _require_features(who: str, context: QueryContext) -> None:
    if context.pool.features is None:
        raise ConfigError(
            f"{who} needs penultimate features, got pool outputs with features=None instead; "
            f"compute them with predict(model, data, indices, features=True)"
        )
    if context.labeled is not None and len(context.labeled) and context.labeled.features is None:
        raise ConfigError(
            f"{who} needs penultimate features of the labeled set too, got labeled outputs with "
            f"features=None instead; compute them with predict(..., features=True)"
        )
    if context.labeled is not None and len(context.labeled) and \
            context.labeled.features.shape[1] != context.pool.features.shape[1]:
        raise ConfigError(
            f"{who}: labeled features must have the pool's width {context.pool.features.shape[1]}, "
            f"got {context.labeled.features.shape[1]} instead"
        )


def select_top(scores, pool_indices, budget: int) -> np.ndarray:
    """Pool indices of the ``budget`` highest ``scores`` (ties: lower position first).

    ``scores`` is a 1-D array aligned with ``pool_indices``; NaN scores are taken last.
    """
    s = np.asarray(scores.detach().cpu().numpy() if isinstance(scores, torch.Tensor) else scores,
                   dtype=np.float64)
    idx = np.asarray(pool_indices.numpy() if isinstance(pool_indices, torch.Tensor) else pool_indices,
                     dtype=np.int64)
    if s.shape != idx.shape or s.ndim != 1:
        raise ConfigError(f"scores must have shape {idx.shape} to match the pool, got {s.shape} instead")
    k = min(int(budget), s.size)
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    nan = np.isnan(s)
    if nan.any():
        logger.warning("%d of %d scores are NaN; they are selected last", int(nan.sum()), s.size)
        s = np.where(nan, -np.inf, s)
    # stable sort on the negated scores: equal scores keep their pool order
    order = np.argsort(-s, kind="stable")[:k]
    return idx[order]


# ---------------------------------------------------------------------- registry
STRATEGIES: Registry = Registry("strategy", "activecrl.strategies", base=Strategy)


def register_strategy(name: str):
    """Class decorator: ``@register_strategy("entropy")`` registers a ``Strategy`` subclass."""

    def add(cls):
        if not (isinstance(cls, type) and issubclass(cls, Strategy)):
            raise RegistryError(
                f"register_strategy expects a Strategy subclass, got {cls!r} instead"
            )
        if "name" not in cls.__dict__:
            cls.name = name
        return STRATEGIES.register(name)(cls)

    return add


def get_strategy(spec: str, **params) -> Strategy:
    """Instantiate a strategy from a registered name or ``"package.module:ClassName"``."""
    if isinstance(spec, Strategy):
        if params:
            raise ConfigError("parameters cannot be given together with a Strategy instance")
        return spec
    if isinstance(spec, type):
        cls = spec
        label = f"{spec.__module__}.{spec.__qualname__}"
    elif isinstance(spec, str) and spec.strip():
        label = spec.strip()
        cls = STRATEGIES.get(label)
    else:
        raise ConfigError(
            f"strategy must be a registered name or 'package.module:ClassName', got {spec!r} instead"
        )
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise ConfigError(
            f"strategy {label!r} must be a subclass of strategies.Strategy, got {cls!r} instead; "
            f"subclass Strategy and implement select(context, budget, rng)"
        )
    check_params("strategy", label, cls, params)
    return cls(**params)
