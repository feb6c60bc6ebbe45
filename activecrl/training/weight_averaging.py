"""Weight averaging (SWA, EMA) and the batch-norm recomputation that must follow it.

``swa``: Stochastic Weight Averaging (Izmailov et al., UAI 2018; ``torch.optim.swa_utils``): the
running mean of the weights after each epoch from ``swa_start`` on, as FMFP (Zhu et al. 2022) and
SURE (Li et al. 2024) use it. ``ema``: an exponential moving average updated after every step with
decay ``min(decay, (1 + n) / (10 + n))`` (n = updates so far; the warm-up of TensorFlow's
``ExponentialMovingAverage(num_updates=...)``), so short runs are not dominated by the initial
weights. Both average parameters only (``AveragedModel``'s default); an averaged network's
BatchNorm statistics do not belong to its weights, so :func:`recompute_batchnorm` re-estimates
them with one forward pass over the training data, as ``swa_utils.update_bn`` does, but on the
device data path (``DeviceData.train_batches``) and only over the given indices (the labeled set
inside active learning). The averages live on the training device and are updated with
``torch._foreach_lerp_`` and Python-float weights: no host sync.
"""

from __future__ import annotations

import torch
from torch import nn



class WeightAverager:
    """Running average of ``model``'s parameters (``kind`` ``swa`` or ``ema``).

    ``update()`` folds in the current weights; ``copy_to()`` writes the average into the model.
    ``n_averaged_`` counts the updates.
    """

    def __init__(self, model: nn.Module, kind: str, decay: float = 0.999):
        if kind not in ("swa", "ema"):
            raise ValueError(f"kind must be swa or ema, got {kind!r}")
        self.kind = kind
        self.decay = decay
        self.params = [p for p in model.parameters()]
        self.average_ = [p.detach().clone() for p in self.params]
        self.n_averaged_ = 0

    @torch.no_grad()
    def update(self) -> None:
        n = self.n_averaged_
        if self.kind == "swa":
            weight = 1.0 / (n + 1)  # running mean: the first update copies
        else:
            weight = 1.0 - min(self.decay, (1.0 + n) / (10.0 + n))
        torch._foreach_lerp_(self.average_, [p.detach() for p in self.params], weight)
        self.n_averaged_ = n + 1

    @torch.no_grad()
    def copy_to(self) -> None:
        torch._foreach_copy_([p.data for p in self.params], self.average_)


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, data, indices, batch_size: int, generator=None, *,
                        forward=None, amp: bool = False) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them with one training-mode
    forward pass over ``indices`` of ``data`` (augmented like training). Returns the batches run.

    Like ``torch.optim.swa_utils.update_bn``: momentum ``None`` makes the running statistics the
    equal-weight mean over the batches. Parameters are not touched.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    forward = forward or model
    device = data.device
    batches = 0
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and amp):
        for x, _, _ in data.train_batches(indices, batch_size, generator):
            forward(x)
            batches += 1
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)
    return batches
