"""Sharpness-Aware Minimization (Foret et al., ICLR 2021) as two functions around any optimiser.

A SAM step: gradient g at w; move to ``w + e``, ``e = rho * g / ||g||`` (adaptive ASAM, Kwon et
al. 2021: ``e = rho * w^2 g / ||w g||``); gradient at ``w + e``; back to w; the base optimiser
(SGD with momentum and weight decay) steps with that second gradient. This follows the
``SAM.first_step`` / ``second_step`` of davda54/sam, which the FMFP (Zhu et al., ECCV 2022) and
SURE (Li et al., CVPR 2024) code copy with ``rho=0.05, adaptive=False``; like them, BatchNorm
statistics are updated in both passes. The norm is a device tensor and the weights are
restored from a copy (not by subtracting e), so a step never synchronises with the host and
``w`` comes back bit for bit.
"""

from __future__ import annotations

import torch

DEFAULT_RHO = 0.05  # Foret et al. 2021 on CIFAR; FMFP and SURE keep the SAM class default


@torch.no_grad()
def sam_ascend(params: list[torch.Tensor], rho: float, adaptive: bool = False):
    """Move ``params`` (those with a ``.grad``) to ``w + e``; returns ``(moved, saved_w)`` for
    :func:`sam_restore`."""
    moved = [p for p in params if p.grad is not None]
    if not moved:
        return moved, []
    grads = [p.grad for p in moved]
    scaled = torch._foreach_mul(grads, [p.abs() for p in moved]) if adaptive else grads
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(scaled)))
    step = torch._foreach_mul(scaled, [p.abs() for p in moved]) if adaptive else list(grads)
    step = torch._foreach_mul(step, rho / (norm + 1e-12))  # tensor scale: no host sync
    saved = [p.detach().clone() for p in moved]
    torch._foreach_add_(moved, step)
    return moved, saved


@torch.no_grad()
def sam_restore(moved: list[torch.Tensor], saved: list[torch.Tensor]) -> None:
    """Put back the weights ``sam_ascend`` saved (the gradients stay: those at ``w + e``)."""
    if moved:
        torch._foreach_copy_(moved, saved)
