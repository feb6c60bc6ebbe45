"""What one forward pass over a set of training-split samples gives the rest of the tool.

``PoolOutputs`` is the contract between the trainer (which produces it, in one pass) and the
query strategies (which consume it). Indices are always indices into the training split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from activecrl.core.errors import ConfigError


@dataclass
class PoolOutputs:
    indices: torch.Tensor  # (n,) int64, indices into the training split
    logits: torch.Tensor  # (n, n_classes) float32, or float64 when given in float64 (see from_probs)
    features: torch.Tensor | None = None  # (n, feature_dim) float32, penultimate layer

    def __post_init__(self):
        self.indices = torch.as_tensor(self.indices, dtype=torch.long)
        # float64 stays float64: log-probabilities rounded to float32 reorder near-ties
        wide = getattr(self.logits, "dtype", None) in (torch.float64, np.float64)
        self.logits = torch.as_tensor(self.logits, dtype=torch.float64 if wide else torch.float32)
        if self.logits.ndim != 2:
            raise ConfigError(f"logits must be 2-D (n, n_classes), got shape {tuple(self.logits.shape)} instead")
        n = self.logits.shape[0]
        if self.indices.shape != (n,):
            raise ConfigError(
                f"indices must have shape ({n},) to match the logits, got {tuple(self.indices.shape)} instead"
            )
        if self.features is not None:
            self.features = torch.as_tensor(self.features, dtype=torch.float32)
            if self.features.ndim != 2 or self.features.shape[0] != n:
                raise ConfigError(
                    f"features must have shape ({n}, d), got {tuple(self.features.shape)} instead"
                )

    def __len__(self) -> int:
        return self.logits.shape[0]

    @property
    def probs(self) -> torch.Tensor:  # (n, n_classes)
        return torch.softmax(self.logits.float(), dim=1)

    @classmethod
    def from_probs(cls, probs, indices=None, features=None) -> "PoolOutputs":
        """Build outputs from probabilities (tests, external models).

        The logits are the float64 log-probabilities, so scores computed from them (entropy,
        margin, ...) match those of the logits that gave the probabilities to float64 precision;
        a zero probability becomes the log of the smallest normal float64 (its weight in any
        score is then below float64 resolution, and no ``0 * log 0`` NaN appears).
        """
        if isinstance(probs, torch.Tensor):
            probs = probs.detach().cpu().numpy()
        p = torch.as_tensor(np.asarray(probs, dtype=np.float64))
        if p.ndim != 2:
            raise ConfigError(f"probs must be 2-D (n, n_classes), got shape {tuple(p.shape)} instead")
        if indices is None:
            indices = torch.arange(p.shape[0])
        logits = torch.log(p.clamp_min(np.finfo(np.float64).tiny))
        return cls(indices=indices, logits=logits, features=features)

    def subset(self, positions: torch.Tensor) -> "PoolOutputs":
        """Rows at ``positions`` (positions in this object, not training indices)."""
        positions = torch.as_tensor(positions, dtype=torch.long)
        return PoolOutputs(
            indices=self.indices[positions],
            logits=self.logits[positions],
            features=None if self.features is None else self.features[positions],
        )
