"""Correctness Ranking Loss (Moon et al., ICML 2020, section 3.3).

Three pieces, each usable alone:
- ``confidence``: the rank target kappa computed from logits (max probability, normalised
  negative entropy, or top-1 minus top-2 margin); all lie in [0, 1].
- ``CorrectnessHistory``: per-sample counts of how often a training sample was seen in a
  mini-batch and how often it was predicted correctly then; c_i = correct_i / seen_i.
  It lives on the training device so the hot loop never syncs with the host.
- ``correctness_ranking_loss``: the mean over the b pairs (x[k], x[k+1]) of a mini-batch
  (the last paired with the first) of max(0, -g(c_i, c_j)(kappa_i - kappa_j) + |c_i - c_j|).
"""

from __future__ import annotations

import math

import torch

from activecrl.core.errors import ConfigError
from activecrl.training.config import RANK_TARGETS


def confidence(logits: torch.Tensor, kind: str = "softmax") -> torch.Tensor:
    """Confidence kappa in [0, 1] for each row of ``logits`` (n, K), differentiable.

    ``entropy`` is 1 - H(p)/log K: the paper min-max normalises negative entropy, and over the
    probability simplex -H ranges exactly over [-log K, 0], so this is that normalisation with
    the range fixed rather than taken from the batch (a batch min/max would make kappa of one
    sample depend on the others in its batch).
    """
    probs = torch.softmax(logits.float(), dim=1)
    if kind == "softmax":
        return probs.max(dim=1).values
    if kind == "entropy":
        k = probs.shape[1]
        if k < 2:
            raise ConfigError(f"entropy confidence needs at least 2 classes, got {k} instead")
        entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum(dim=1)
        return 1.0 - entropy / math.log(k)
    if kind == "margin":
        top2 = probs.topk(2, dim=1).values
        return top2[:, 0] - top2[:, 1]
    raise ConfigError(f"rank target must be one of {', '.join(RANK_TARGETS)}, got {kind!r} instead")


def correctness_ranking_loss(confidence: torch.Tensor, correctness: torch.Tensor) -> torch.Tensor:
    """Mean CRL over the b neighbouring pairs of a mini-batch (0-d tensor).

    ``confidence`` and ``correctness`` are 1-D tensors of length b, in mini-batch order.
    For the pair (i, j) = (k, k+1 mod b): max(0, -g(c_i, c_j)(kappa_i - kappa_j) + |c_i - c_j|),
    g = sign(c_i - c_j). When c_i == c_j both terms vanish, so equal-correctness pairs cost 0.
    """
    if confidence.ndim != 1 or correctness.ndim != 1 or confidence.shape != correctness.shape:
        raise ConfigError(
            "confidence and correctness must be 1-D tensors of the same length b, got shapes "
            f"{tuple(confidence.shape)} and {tuple(correctness.shape)} instead"
        )
    if confidence.numel() == 0:
        raise ConfigError("correctness_ranking_loss needs a non-empty mini-batch, got b = 0 instead")
    kappa_i = confidence
    kappa_j = torch.roll(confidence, shifts=-1)
    c_i = correctness.to(confidence.dtype)
    c_j = torch.roll(c_i, shifts=-1)
    g = torch.sign(c_i - c_j)
    return torch.clamp(-g * (kappa_i - kappa_j) + (c_i - c_j).abs(), min=0).mean()


class CorrectnessHistory:
    """How often each training sample was seen, and predicted correctly, in a mini-batch.

    Indices are indices into the training split. ``counts`` is one (2, n) float32 tensor on
    ``device`` (row 0: times seen, row 1: times correct), so a step costs one gather and one
    ``index_add_`` (safe with repeated indices) and never waits for the host.
    """

    def __init__(self, n_samples: int, device: torch.device | str = "cpu"):
        if n_samples <= 0:
            raise ConfigError(f"n_samples must be positive, got {n_samples} instead")
        self.n_samples = n_samples
        self.counts = torch.zeros(2, n_samples, dtype=torch.float32, device=device)

    @property
    def seen(self) -> torch.Tensor:  # (n,)
        return self.counts[0]

    @property
    def correct(self) -> torch.Tensor:  # (n,)
        return self.counts[1]

    def correctness(self, indices: torch.Tensor) -> torch.Tensor:
        """c_i = correct_i / seen_i for each index (0 for a sample never seen: then correct_i = 0 too)."""
        seen, correct = self.counts[:, indices]
        return correct / seen.clamp_min(1)

    @torch.no_grad()
    def update(self, indices: torch.Tensor, correct: torch.Tensor) -> None:
        """Record one step: ``correct`` is a bool/0-1 tensor aligned with ``indices``."""
        correct = correct.to(torch.float32)
        self.counts.index_add_(1, indices, torch.stack((torch.ones_like(correct), correct)))

    def state_dict(self) -> dict:
        return {"seen": self.seen.cpu(), "correct": self.correct.cpu()}
