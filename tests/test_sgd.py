"""CPUSGD makes the same weights as torch.optim.SGD, bit for bit, and a CPU fit needs no torch._dynamo."""

import subprocess
import sys

import pytest
import torch
from torch import nn

from activecrl.core.errors import ConfigError
from activecrl.training.config import TrainConfig
from activecrl.training.sgd import CPUSGD, make_sgd


def _net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3), nn.Linear(3, 3))
    return net


def _train(make, steps=7):
    net = _net()
    params = [p for p in net.parameters() if p.requires_grad]
    opt = make(params)
    gen = torch.Generator().manual_seed(1)
    for step in range(steps):
        x, y = torch.randn(10, 6, generator=gen), torch.randint(0, 3, (10,), generator=gen)
        for group in opt.param_groups:
            group["lr"] = 0.3 / (1 + step)  # the training loop sets the lr of every step
        opt.zero_grad(set_to_none=True)
        # the last layer is left out of some steps: parameters without a gradient are skipped
        out = net[:4](x) if step % 3 == 1 else net(x)
        nn.functional.cross_entropy(out, y).backward()
        opt.step()
    return [p.detach().clone() for p in net.parameters()]


@pytest.mark.parametrize("momentum,weight_decay,nesterov", [(0.0, 0.0, False), (0.9, 0.0, False),
                                                            (0.9, 5e-4, False), (0.9, 5e-4, True), (0.0, 1e-2, False)])
def test_cpusgd_is_bit_identical_to_torch_sgd(momentum, weight_decay, nesterov):
    kwargs = dict(lr=0.3, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    ours = _train(lambda p: CPUSGD(p, **kwargs))
    ref = _train(lambda p: torch.optim.SGD(p, **kwargs))
    changed = [not torch.equal(a, b) for a, b in zip(ours, [p.detach() for p in _net().parameters()])]
    assert all(changed)  # every parameter moved, so the comparison below says something
    for a, b in zip(ours, ref):
        assert torch.equal(a, b)


def test_zero_grad_keeping_tensors_zeroes_them():
    p = nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    CPUSGD([p], lr=0.1).zero_grad(set_to_none=False)
    assert torch.equal(p.grad, torch.zeros(3))


def test_make_sgd_uses_torch_for_parameters_off_the_cpu():
    cpu = make_sgd([nn.Parameter(torch.ones(2))], lr=0.1, momentum=0.9, weight_decay=0.0, nesterov=False)
    meta = make_sgd([nn.Parameter(torch.ones(2, device="meta"))], lr=0.1, momentum=0.9, weight_decay=0.0,
                    nesterov=False)
    assert isinstance(cpu, CPUSGD) and isinstance(meta, torch.optim.SGD)


def test_nesterov_without_momentum_is_a_config_error():
    with pytest.raises(ConfigError, match="momentum must be > 0 with nesterov"):
        TrainConfig(momentum=0.0, nesterov=True)


def test_a_cpu_fit_does_not_import_torch_dynamo():
    code = ("import sys, torch\n"
            "from activecrl.data import FeatureData\n"
            "from activecrl.training.config import TrainConfig\n"
            "from activecrl.training.trainers import BaselineTrainer\n"
            "x, y = torch.randn(40, 5), torch.arange(40) % 2\n"
            "BaselineTrainer(TrainConfig(epochs=2, batch_size=8, channels_last=False)).fit(\n"
            "    torch.nn.Linear(5, 2), FeatureData(x, y, device=torch.device('cpu')))\n"
            "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
