"""Data path benchmark: torchvision DataLoader + PIL transforms vs activecrl's DeviceData.

Both feed the same model (``small_cnn``, same initial weights, SGD) for a fixed number of
training steps on CPU, with the same augmentation (RandomCrop(32, padding=4) +
RandomHorizontalFlip + normalisation). A second comparison iterates batches without a model.

    PYTHONPATH=. python bench/bench_datapath.py                      # CIFAR-10 from the shared archive
    PYTHONPATH=. python bench/bench_datapath.py --synthetic          # random uint8 images, no files

The reference DataLoader is timed with each ``--workers`` setting; the fastest counts as the
reference, so the ratio is against the best the reference can do on this machine. Timings
start after ``--warmup`` batches (worker start-up and first-touch costs excluded), and each is
the fastest of ``--repeats`` rounds; a round times every path once, so a load spike from other
jobs on a shared machine does not land on one path only.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from activecrl.data import DeviceData, channel_stats, load_dataset  # noqa: E402

DEFAULT_ARCHIVE = Path("data/cifar10.tar.gz")


def get_data(args):
    if args.synthetic:
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (args.synthetic_n, 3, 32, 32), dtype=torch.uint8, generator=g)
        labels = torch.randint(0, 10, (args.synthetic_n,), generator=g)
        mean, std = channel_stats(images)
        return "synthetic", images, labels, mean, std, None
    start = time.perf_counter()
    ds = load_dataset(args.archive, data_dir=args.data_dir)
    load_s = time.perf_counter() - start
    return ds.name, ds.train_images, ds.train_labels, ds.mean, ds.std, load_s


def make_model(init_state=None):
    try:
        from activecrl.models import build_model

        model = build_model("small_cnn", num_classes=10, in_channels=3, image_size=32)
        name = "activecrl small_cnn"
    except ImportError:  # models.py missing: a tiny stand-in CNN
        model = torch.nn.Sequential(
            torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.BatchNorm2d(64), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, 10))
        name = "local tiny CNN"
    if init_state is not None:
        model.load_state_dict(init_state)
    return model, name


class PILDataset(torch.utils.data.Dataset):
    """What a typical training script does: PIL images in memory + torchvision transforms."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, mean, std):
        from PIL import Image
        from torchvision import transforms

        self.images = [Image.fromarray(a) for a in images_hwc]
        self.labels = labels
        self.transform = transforms.Compose([
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ])

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), int(self.labels[i])


def loader_batches(dataset, batch_size, workers, seed):
    g = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         drop_last=True, generator=g, persistent_workers=False,
                                         prefetch_factor=4 if workers else None)
    while True:
        yield from loader


def device_batches(data: DeviceData, batch_size, seed):
    g = torch.Generator(device=data.device).manual_seed(seed)
    indices = torch.arange(data.n, device=data.device)
    while True:
        for x, y, _ in data.train_batches(indices, batch_size, g):
            yield x, y


def time_batches(batches, n, warmup, step=None):
    """Seconds for ``n`` batches after ``warmup`` ones; ``step(x, y)`` is a training step or None."""
    it = iter(batches)
    for _ in range(warmup):
        x, y = next(it)
        if step is not None:
            step(x, y)
    start = time.perf_counter()
    for _ in range(n):
        x, y = next(it)
        if step is not None:
            step(x, y)
        else:
            x.sum()  # touch the batch, like a consumer would
    elapsed = time.perf_counter() - start
    close = getattr(it, "close", None)
    if close:
        close()
    return elapsed


def make_step(init_state, device):
    model, _ = make_model(init_state)
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

    def step(x, y):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE, help="ImageFolder archive/dir (CIFAR-10)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="cache dir for load_dataset (default $ACTIVECRL_DATA or ~/.cache/activecrl)")
    p.add_argument("--synthetic", action="store_true", help="random uint8 images instead of CIFAR-10")
    p.add_argument("--synthetic-n", type=int, default=10000)
    p.add_argument("--steps", type=int, default=25, help="timed training steps per data path")
    p.add_argument("--data-batches", type=int, default=100, help="timed batches in the data-only comparison")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", default="0,2", help="DataLoader num_workers settings to try (comma-separated)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads in the main process (default: torch's choice); 1 is far "
                        "steadier when other jobs share the cores")
    p.add_argument("--repeats", type=int, default=2,
                   help="time each measurement this many times and keep the fastest (shared machines are noisy)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.synthetic and not args.archive.exists():
        print(f"{args.archive} not found; falling back to --synthetic")
        args.synthetic = True

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    name, images, labels, mean, std, load_s = get_data(args)
    model, model_name = make_model()
    init_state = copy.deepcopy(model.state_dict())
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    bs = args.batch_size

    print(f"# data path benchmark  {time.strftime('%Y-%m-%d %H:%M')}  {platform.node()}  "
          f"{os.cpu_count()} CPU cores, torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, "
          f"load avg {os.getloadavg()[0]:.2f}")
    print(f"data: {name}, {images.shape[0]} training images" +
          (f" (load_dataset: {load_s:.2f} s)" if load_s is not None else ""))
    print(f"model: {model_name}, batch {bs}, SGD, device {device}; {args.steps} timed steps, "
          f"{args.data_batches} timed data-only batches, {args.warmup} warm-up batches, "
          f"best of {args.repeats}\n")

    t0 = time.perf_counter()
    reference = PILDataset(images.permute(0, 2, 3, 1).numpy(), labels.numpy(), mean, std)
    print(f"(reference: built {len(reference)} PIL images in {time.perf_counter() - t0:.1f} s, not timed)")
    fast = DeviceData(images, labels, mean, std, augment=True, device=device)

    paths = [(f"DataLoader+PIL, num_workers={w}", lambda w=w: loader_batches(reference, bs, w, args.seed))
             for w in workers]
    paths.append(("DeviceData.train_batches", lambda: device_batches(fast, bs, args.seed)))
    data_s = {label: float("inf") for label, _ in paths}
    train_s = dict(data_s)
    for _ in range(max(1, args.repeats)):  # rounds interleave the paths, so load changes hit all alike
        for label, make_batches in paths:
            data_s[label] = min(data_s[label], time_batches(make_batches(), args.data_batches, args.warmup))
            train_s[label] = min(train_s[label], time_batches(make_batches(), args.steps, args.warmup,
                                                              make_step(init_state, device)))
    rows = [(label, args.data_batches * bs / data_s[label], args.steps * bs / train_s[label])
            for label, _ in paths]
    rows, ours = rows[:-1], rows[-1]

    print(f"\n{'path':<34}{'data only img/s':>16}{'(ms/batch)':>11}{'train img/s':>13}{'(ms/step)':>11}")
    for r in rows + [ours]:
        print(f"{r[0]:<34}{r[1]:>16,.0f}{1000 * bs / r[1]:>11.1f}{r[2]:>13,.0f}{1000 * bs / r[2]:>11.0f}")
    best_data = max(r[1] for r in rows)
    best_train = max(r[2] for r in rows)
    print(f"\nratio DeviceData / best DataLoader: data only {ours[1] / best_data:.1f}x, "
          f"train steps {ours[2] / best_train:.2f}x")


if __name__ == "__main__":
    main()
