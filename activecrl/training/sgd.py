"""SGD for parameters on the CPU, step for step what ``torch.optim.SGD`` computes there, without its start-up.

``torch.optim.Optimizer`` imports ``torch._dynamo`` when it adds a parameter group and at every
step (its guards for ``torch.compile``): seconds of imports (sympy, torch.fx, ...) on a small
CPU, more than a labeling round spends training a linear head. For CPU tensors ``torch.optim.SGD``
runs its single-tensor loop (its foreach and fused kernels are for accelerators);
:class:`CPUSGD` is that loop, operation for operation, so the weights come out bit-identical
(``tests/test_sgd.py`` checks it against ``torch.optim.SGD``). Parameters elsewhere keep
``torch.optim.SGD`` (see :func:`make_sgd`).
"""

from __future__ import annotations

import torch

__all__ = ["CPUSGD", "make_sgd"]


class CPUSGD:
    """SGD with (Nesterov) momentum and weight decay, as ``torch.optim.SGD(params, lr, momentum,
    weight_decay=..., nesterov=...)`` with no dampening; ``param_groups[0]["lr"]`` may change between steps."""

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False):
        self.params = list(params)
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.nesterov = nesterov
        # what the training loop reads and writes, as on a torch optimizer
        self.param_groups = [{"params": self.params, "lr": lr}]
        self.momentum_buffers_: list[torch.Tensor | None] = [None] * len(self.params)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_()
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One update; a parameter without a gradient is skipped (its momentum too), as torch does."""
        lr = self.param_groups[0]["lr"]
        for i, param in enumerate(self.params):
            if param.grad is None:
                continue
            grad = param.grad
            if self.weight_decay != 0:
                grad = grad.add(param, alpha=self.weight_decay)
            if self.momentum != 0:
                buf = self.momentum_buffers_[i]
                if buf is None:
                    buf = self.momentum_buffers_[i] = grad.detach().clone()
                else:
                    buf.mul_(self.momentum).add_(grad, alpha=1)
                grad = grad.add(buf, alpha=self.momentum) if self.nesterov else buf
            param.add_(grad, alpha=-lr)


def make_sgd(params, *, lr: float, momentum: float, weight_decay: float, nesterov: bool):
    """:class:`CPUSGD` when every parameter is a plain CPU tensor, else ``torch.optim.SGD`` (same arguments)."""
    params = list(params)
    if all(type(p) is torch.nn.Parameter and p.device.type == "cpu" for p in params):
        return CPUSGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
