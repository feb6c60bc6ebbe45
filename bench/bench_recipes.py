"""Cost of the training ingredients against the baseline step, measured in the same run.

Step times: each trainer's own ``train_step`` (the code ``fit`` runs) on one fixed device batch,
interleaved in rounds (baseline, crl, sam, ...) so load drift hits all alike; ratio = median
step / median baseline step. Targets: ``sam`` <= 2.1x (two forward-backward passes),
``crl`` <= 1.05x. ``sure`` adds RegMixup's second forward-backward of the mixed batch to SAM's
two, so it does three clean-size passes plus two mixed-size ones (no target; reported).

SWA's batch-norm update: ``recompute_batchnorm`` over ``--n-images`` images against one training
epoch (baseline steps) over the same images, both through ``DeviceData`` (target: <= 1x, i.e. no
more than one pass over the training data; it is forward-only, so well under).

    PYTHONPATH=. python bench/bench_recipes.py                      # CPU, small_cnn, batch 128
    PYTHONPATH=. python bench/bench_recipes.py --model resnet18 --device cuda --steps 50 --epoch
    # --epoch: also time one full fit epoch of each recipe over --n-images images
"""

from __future__ import annotations

import argparse
import statistics

import torch

from activecrl.training.weight_averaging import recompute_batchnorm
from activecrl.data import DeviceData
from activecrl.models import build_model
from activecrl.core.runtime import configure_backends, resolve_device
from activecrl.training.trainers import TrainConfig, build_trainer, resolved_config
from bench_crl_step import timed  # one timing loop for the step benchmarks (this script's folder is on sys.path)

TRAINERS = ("baseline", "crl", "sam", "swa", "fmfp", "sure")


def make_step(name, model_name, x, y, idx, device, n_train):
    config = TrainConfig(epochs=10)
    torch.manual_seed(0)
    model = build_model(model_name, num_classes=10, head=resolved_config(name, config).head)
    model = model.to(device, memory_format=torch.channels_last).train()
    trainer = build_trainer(name, config)
    trainer.setup(model, type("SplitSize", (), {"n": n_train})(), device)
    opt = trainer.make_optimizer(model)
    return lambda: trainer.train_step(model, opt, x, y, idx)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10, help="steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n-images", type=int, default=2048, help="images for the BN-update / epoch timing")
    parser.add_argument("--epoch", action="store_true", help="also time one fit epoch per recipe")
    parser.add_argument("--trainers", default=",".join(TRAINERS))
    args = parser.parse_args()

    device = resolve_device(args.device)
    configure_backends(device)
    n_train = 50_000
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    idx = torch.randperm(n_train, device=device)[: args.batch_size]
    names = args.trainers.split(",")
    steps = {name: make_step(name, args.model, x, y, idx, device, n_train) for name in names}
    for step in steps.values():
        timed(step, 2, device)  # warm-up (allocator, cuDNN autotune)
    times = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            times[name].append(timed(step, args.steps, device))
    base = statistics.median(times["baseline"])
    print(f"model {args.model}, batch {args.batch_size}, device {device}, threads {torch.get_num_threads()}, "
          f"{args.rounds} rounds x {args.steps} steps")
    targets = {"crl": 1.05, "sam": 2.1}
    for name in names:
        t = statistics.median(times[name])
        target = f"   (target <= {targets[name]})" if name in targets else ""
        print(f"{name:9s} step {t * 1e3:8.2f} ms   {args.batch_size / t:8,.0f} img/s   ratio {t / base:.3f}{target}")

    # SWA's BatchNorm update vs one training epoch over the same images (DeviceData, augmented)
    images = torch.randint(0, 256, (args.n_images, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (args.n_images,))
    data = DeviceData(images, labels, (0.5,) * 3, (0.25,) * 3, augment=True, device=device, channels_last=True)
    all_idx = torch.arange(args.n_images, device=device)
    torch.manual_seed(0)
    model = build_model(args.model, num_classes=10).to(device, memory_format=torch.channels_last)
    trainer = build_trainer("baseline", TrainConfig())
    opt = trainer.make_optimizer(model)
    gen = torch.Generator(device=device).manual_seed(0)

    def epoch():
        for xb, yb, ib in data.train_batches(all_idx, args.batch_size, gen):
            trainer.train_step(model, opt, xb, yb, ib)

    def bn_update():
        recompute_batchnorm(model, data, all_idx, args.batch_size, gen)

    epoch(), bn_update()  # warm-up
    epoch_t, bn_t = [], []
    for _ in range(3):
        epoch_t.append(timed(epoch, 1, device))
        bn_t.append(timed(bn_update, 1, device))
    e, b = statistics.median(epoch_t), statistics.median(bn_t)
    print(f"one training epoch over {args.n_images} images: {e:.3f} s; BN update over them: {b:.3f} s; "
          f"ratio {b / e:.3f}   (target <= 1: one pass over the training data)")

    if args.epoch:  # one fit epoch per recipe (SWA averaging and the BN pass included)
        for name in names:
            config = TrainConfig(epochs=2, batch_size=args.batch_size, averaging="none")
            cfg = resolved_config(name, config)
            if cfg.averaging == "swa":
                cfg = cfg.updated(swa_start=0.5)  # average after epoch 2: the BN pass is in the timing
            torch.manual_seed(0)
            m = build_model(args.model, num_classes=10, head=cfg.head)
            tr = build_trainer(name, cfg)
            result = tr.fit(m, data, all_idx)
            print(f"fit {name:9s} 2 epochs over {args.n_images} images: {result.train_seconds:.2f} s "
                  f"({2 * args.n_images / result.train_seconds:,.0f} img/s incl. BN pass)")


if __name__ == "__main__":
    main()
