"""RegMixup (Pinto et al., NeurIPS 2022): mixup as a regulariser added to the clean loss.

``L = CE(f(x), y) + eta * [lam * CE(f(x~), y) + (1 - lam) * CE(f(x~), y[perm])]`` with
``x~ = lam * x + (1 - lam) * x[perm]``, ``lam ~ Beta(alpha, alpha)`` drawn once per batch and a
random permutation of the batch, as in SURE's ``Mixup_Criterion`` (Li et al. 2024: alpha = 10,
eta = 0.5 on CIFAR). The mixed batch is built on the device from the device batch; ``lam`` comes
from a host generator (a Python float: no host sync), the permutation from a device generator.
The clean and the mixed batch go through the model in two forward passes, as in SURE.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def draw_mixup(rng: np.random.Generator, alpha: float, batch: int, generator: torch.Generator,
               device) -> tuple[float, torch.Tensor]:
    """``(lam, perm)`` for one batch."""
    lam = float(rng.beta(alpha, alpha))
    perm = torch.randperm(batch, generator=generator, device=device)
    return lam, perm


def mix(x: torch.Tensor, lam: float, perm: torch.Tensor) -> torch.Tensor:
    mixed = torch.lerp(x[perm], x, lam)  # lam * x + (1 - lam) * x[perm]
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        mixed = mixed.contiguous(memory_format=torch.channels_last)
    return mixed


def mixup_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, lam: float,
                        perm: torch.Tensor) -> torch.Tensor:
    """``lam * CE(logits, y) + (1 - lam) * CE(logits, y[perm])`` on the mixed batch's logits."""
    return lam * F.cross_entropy(logits, labels) + (1.0 - lam) * F.cross_entropy(logits, labels[perm])


def regmixup_term(forward, x: torch.Tensor, labels: torch.Tensor, lam: float, perm: torch.Tensor) -> torch.Tensor:
    """The mixup term (without eta) for the device batch ``x``: one forward pass of the mixed batch."""
    return mixup_cross_entropy(forward(mix(x, lam, perm)).float(), labels, lam, perm)
