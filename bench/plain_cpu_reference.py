"""A plain ~60-line CIFAR-10 training script: the reference the CPU recipe is measured against.

A plain script with a CNN of the same size as ``small_cnn4``: four conv-BN-ReLU blocks
(16-32-64-128 channels, max-pool after the first three), random crop (pad 4) + horizontal flip,
SGD with Nesterov momentum 0.9, weight decay 5e-4, ``torch.optim.lr_scheduler.OneCycleLR``
(max lr 0.1, its defaults otherwise, stepped per batch), batch 128. It shares nothing with the
library except ``load_dataset`` (the same decoded images). Prints one JSON line per label count:

    ACTIVECRL_DATA=/work/data_cache OMP_NUM_THREADS=1 python bench/plain_cpu_reference.py \
        --labels 1000 2000 3000 --epochs 20 --threads 1
"""

import argparse
import json
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from activecrl.data import load_dataset


def net(c_in=3, k=10):
    layers, prev = [], c_in
    for i, w in enumerate((16, 32, 64, 128)):
        layers += [nn.Conv2d(prev, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        layers += [nn.MaxPool2d(2)] if i < 3 else []
        prev = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(prev, k))


def augment(x, g):  # x uint8 (B, C, 32, 32): pad-4 random crop + flip, one gather
    b, _, h, w = x.shape
    p = F.pad(x, (4, 4, 4, 4))
    dy, dx = torch.randint(0, 9, (b,), generator=g), torch.randint(0, 9, (b,), generator=g)
    flip = torch.rand(b, generator=g) < 0.5
    rows = (dy[:, None] + torch.arange(h))[:, :, None]
    cols = dx[:, None] + torch.where(flip[:, None], torch.arange(w - 1, -1, -1), torch.arange(w))
    return p[torch.arange(b)[:, None, None], :, rows, cols[:, None, :]].permute(0, 3, 1, 2)


def run(ds, n_labels, epochs, seed, lr=0.1, batch=128):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    idx = torch.from_numpy(np.sort(np.random.default_rng(seed).choice(ds.n_train, n_labels, replace=False)))
    mean, std = torch.tensor(ds.mean).view(1, 3, 1, 1), torch.tensor(ds.std).view(1, 3, 1, 1)
    norm = lambda x: (x.float() / 255 - mean) / std  # noqa: E731
    model = net(ds.in_channels, ds.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps = (n_labels + batch - 1) // batch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps)
    start = time.perf_counter()
    for _ in range(epochs):
        model.train()
        order = idx[torch.randperm(n_labels, generator=g)]
        for s in range(0, n_labels, batch):
            b = order[s:s + batch]
            loss = F.cross_entropy(model(norm(augment(ds.train_images[b], g))), ds.train_labels[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    train_s = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(norm(ds.test_images[i:i + 1000])).argmax(1) for i in range(0, len(ds.test_labels), 1000)])
    acc = (pred == ds.test_labels).float().mean().item()
    return dict(labels=n_labels, epochs=epochs, seed=seed, accuracy=acc, train_seconds=train_s,
                images_per_second=epochs * n_labels / train_s)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="data/cifar10.tar.gz")
    ap.add_argument("--labels", type=int, nargs="+", default=[1000, 2000, 3000])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    data = load_dataset(a.dataset)
    for n in a.labels:
        print(json.dumps(run(data, n, a.epochs, a.seed)), flush=True)
