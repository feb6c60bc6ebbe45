"""One forward pass over (part of) a split: logits and penultimate features together.

Every query strategy and every metric reads from this one pass, so a stage of active learning
costs a single sweep of the pool unless a strategy asks for more (MC dropout over a body with
dropout).
"""

from __future__ import annotations

import torch
from torch import nn

from activecrl.inference.outputs import PoolOutputs


@torch.no_grad()
def predict(model: nn.Module, data, indices=None, *, batch_size: int = 1024, features: bool = True,
            amp: bool = False) -> PoolOutputs:
    """Eval-mode logits (and features) for ``indices`` of ``data`` (a ``DeviceData``).

    Outputs are float32 on the CPU, in the order of ``indices`` (default: the whole split).
    The model's train/eval mode is restored afterwards. ``amp`` (bf16 autocast on CUDA) is off
    by default: bf16 logits keep ~3 significant digits, which turns close uncertainty scores
    into exact ties (biasing top-k queries towards low indices) and shifts the metrics; an
    fp32/TF32 pass over a 50k pool takes about a second on a current GPU anyway.
    """
    device = data.device
    was_training = model.training
    model.eval()
    cuda = device.type == "cuda"
    logits_parts, feature_parts, index_parts = [], [], []
    try:
        for x, _, idx in data.eval_batches(indices, batch_size):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda and amp):
                if features:
                    logits, feats = model(x, return_features=True)
                    feature_parts.append(feats.float())
                else:
                    logits = model(x)
            logits_parts.append(logits.float())
            index_parts.append(idx)
    finally:
        model.train(was_training)
    n_classes = getattr(model, "num_classes", 0)
    if not logits_parts:
        return PoolOutputs(torch.empty(0, dtype=torch.long), torch.empty(0, n_classes),
                           torch.empty(0, getattr(model, "feature_dim", 0)) if features else None)
    # one device-to-host copy at the end rather than one per batch
    return PoolOutputs(
        indices=torch.cat(index_parts).cpu(),
        logits=torch.cat(logits_parts).cpu(),
        features=torch.cat(feature_parts).cpu() if features else None,
    )
