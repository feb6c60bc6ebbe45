"""Training throughput (images/s) of the real trainer on a CUDA GPU: a few minutes at most.

Runs ``Trainer.fit`` (device-resident uint8 data, on-device crop/flip, bf16 autocast,
channels_last) for ResNet-18 on a CIFAR-sized synthetic split, eager and with torch.compile,
for the baseline and the CRL trainer. The first epoch is warm-up (cuDNN autotune, compile);
throughput is measured over the remaining epochs. Target: >= 30,000 images/s on one
H100/H200-class GPU for resnet18 (a tuned A100 pipeline reaches about 24,000).

    python bench/gpu_throughput.py                       # all variants, 50k images, 3 epochs
    python bench/gpu_throughput.py --variants crl:compile --batch-size 512
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from activecrl.data import DeviceData
from activecrl.models import build_model
from activecrl.core.runtime import configure_backends
from activecrl.training.trainers import TrainConfig, build_trainer


def measure(trainer_name: str, compile_: bool, data: DeviceData, args) -> dict:
    torch.manual_seed(0)
    model = build_model(args.model, num_classes=10, image_size=32)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, compile=compile_, milestones=(1.0,))
    stamps = []
    build_trainer(trainer_name, config).fit(model, data, progress=lambda info: stamps.append(info.seconds))
    # epoch 1 pays warm-up; per-epoch seconds include the one host sync at each epoch end
    steady = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    return {"trainer": trainer_name, "compile": compile_, "first_epoch_s": round(stamps[0], 2),
            "epoch_s": round(steady, 3), "images_per_s": round(data.n / steady)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--variants", default="baseline:eager,crl:eager,baseline:compile,crl:compile")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU (torch.cuda.is_available() is False)")
    device = torch.device("cuda")
    configure_backends(device)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (args.n,), generator=g)
    data = DeviceData(images, labels, (0.49, 0.48, 0.45), (0.25, 0.24, 0.26), augment=True, device=device,
                      channels_last=True)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {args.model}, batch {args.batch_size}, "
          f"{args.n} images x {args.epochs} epochs")
    results = []
    for variant in args.variants.split(","):
        trainer_name, mode = variant.split(":")
        start = time.perf_counter()
        row = measure(trainer_name, mode == "compile", data, args)
        row["wall_s"] = round(time.perf_counter() - start, 1)
        results.append(row)
        print(json.dumps(row))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "args": vars(args),
                       "results": results}, handle, indent=2)


if __name__ == "__main__":
    main()
