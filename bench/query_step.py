"""Time one active-learning query step: the forward pass over the pool plus each strategy.

The loop's query step is `predict` over the unlabeled pool (logits + penultimate features, and
the labeled set's features for core-set) followed by `Strategy.query`. On a GPU the whole step
over a 50,000-image pool should take seconds. ResNet-18 weights are random: the cost does not
depend on them.

    python bench/query_step.py --device cuda                     # 48,000 pool + 2,000 labeled
    python bench/query_step.py --device cpu --pool 2000 --labeled 200 --budget 100   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from activecrl.data import DeviceData
from activecrl.inference.predict import predict
from activecrl.models import build_model
from activecrl.core.runtime import configure_backends, resolve_device
from activecrl.strategies import QueryContext, get_strategy


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--pool", type=int, default=48_000)
    parser.add_argument("--labeled", type=int, default=2_000)
    parser.add_argument("--budget", type=int, default=2_000)
    parser.add_argument("--strategies", default="least_conf,entropy,margin,mc_dropout,bald,coreset,random")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = resolve_device(args.device)
    configure_backends(device)
    n = args.pool + args.labeled
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    data = DeviceData(images, torch.randint(0, 10, (n,), generator=g), (0.49, 0.48, 0.45), (0.25, 0.24, 0.26),
                      augment=False, device=device, channels_last=True)
    torch.manual_seed(0)
    model = build_model(args.model, num_classes=10, image_size=32, dropout=0.3).to(device,
                                                                                     memory_format=torch.channels_last)
    pool, labeled = np.arange(args.pool), np.arange(args.pool, n)
    predict(model, data, torch.arange(min(n, 2048)))  # warm-up (cuDNN autotune, allocator)
    rows = []
    for name in args.strategies.split(","):
        strategy = get_strategy(name)
        _sync(device)
        start = time.perf_counter()
        idx = np.concatenate([pool, labeled]) if strategy.needs_features else pool
        out = predict(model, data, torch.from_numpy(idx))
        _sync(device)
        forward_s = time.perf_counter() - start
        ctx = QueryContext(pool=out.subset(torch.arange(args.pool)),
                           labeled=out.subset(torch.arange(args.pool, len(idx))) if strategy.needs_features else None,
                           model=model, data=data, device=device)
        start = time.perf_counter()
        picked = strategy.query(ctx, args.budget, np.random.default_rng(0))
        _sync(device)
        select_s = time.perf_counter() - start
        assert len(picked) == args.budget
        row = {"strategy": name, "forward_s": round(forward_s, 3), "select_s": round(select_s, 3),
               "total_s": round(forward_s + select_s, 3)}
        rows.append(row)
        print(json.dumps(row))
    print(f"{device}, {args.model}, pool {args.pool}, labeled {args.labeled}, budget {args.budget}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"device": str(device), "args": vars(args), "results": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
