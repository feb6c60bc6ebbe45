"""Cost of one CRL training step against one baseline (cross-entropy) step.

Same model, same batch, same optimiser; the only difference is the trainer's loss and its
correctness-history update. Steps are interleaved in rounds (baseline, CRL, baseline, ...) so
drift in machine load hits both alike; the ratio is median CRL step / median baseline step.

    python bench/bench_crl_step.py                       # CPU, small_cnn, batch 128
    python bench/bench_crl_step.py --model resnet18 --device cuda --steps 200
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from activecrl.models import build_model
from activecrl.core.runtime import configure_backends, resolve_device
from activecrl.training.trainers import TrainConfig, build_trainer


def make_step(trainer_name, model, x, y, idx, device, n_train):
    """The trainer's own ``train_step`` on a fixed batch (the same code ``fit`` runs)."""
    trainer = build_trainer(trainer_name, TrainConfig())
    trainer.setup(model, type("SplitSize", (), {"n": n_train})(), device)
    opt = trainer.make_optimizer(model)
    return lambda: trainer.train_step(model, opt, x, y, idx)


def timed(step, n, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / n


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="steps per round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    device = resolve_device(args.device)
    configure_backends(device)
    n_train = 50_000
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    idx = torch.randperm(n_train, device=device)[: args.batch_size]
    x = x.contiguous(memory_format=torch.channels_last)  # as DeviceData gives it (TrainConfig default)
    steps = {}
    for name in ("baseline", "crl"):
        torch.manual_seed(0)
        model = build_model(args.model, num_classes=10, image_size=32).to(device, memory_format=torch.channels_last)
        model.train()
        steps[name] = make_step(name, model, x, y, idx, device, n_train)
        timed(steps[name], 3, device)  # warm-up (allocator, cuDNN autotune)
    times = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            times[name].append(timed(step, args.steps, device))
    base, crl = statistics.median(times["baseline"]), statistics.median(times["crl"])
    print(f"model {args.model}, batch {args.batch_size}, device {device}, {args.rounds} rounds x {args.steps} steps")
    print(f"baseline step: {base * 1e3:.2f} ms   ({args.batch_size / base:,.0f} images/s)")
    print(f"crl step:      {crl * 1e3:.2f} ms   ({args.batch_size / crl:,.0f} images/s)")
    print(f"ratio crl/baseline: {crl / base:.3f}   (target <= 1.05)")


if __name__ == "__main__":
    main()
