"""Benchmark entropy, least confidence and margin against a plain numpy reference, same run.

Pool of --n rows of float32 logits (standard normal times --scale), --classes classes, budget
--budget, on the CPU, for each torch thread count of --threads ("default": torch's own):
    * ours (context): ``get_strategy(name).query(QueryContext(...), budget)``, the loop's call;
    * ours (arrays): ``activecrl.strategies.query(name, budget, logits=z)``, the one call from
      plain arrays, with its input checks;
    * numpy reference, written here in the style of baal's heuristics (numpy on the float32
      logits: softmax, the score, a full ``argsort``, the ``budget`` first);
    * before: the previous implementation (float64 ``log_softmax`` of every row, the score in
      float64, a full stable sort), whose picks ours must equal in order.
Every call is repeated --repeats times, interleaved, and the median shown. Ratios: reference
time / ours, for both calls of ours against numpy and for the loop's call against before
(above 1: ours is faster). Picks: ours (both calls) against before, in order; the
numpy reference's float32 scores may order near-ties otherwise, so for it the shared picks
are shown.

    PYTHONPATH=. python bench/bench_uncertainty.py                      # 50,000 rows, 10 and 100 classes
    PYTHONPATH=. python bench/bench_uncertainty.py --n 5000 --repeats 3  # quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from activecrl.inference.outputs import PoolOutputs  # noqa: E402
from activecrl.strategies import QueryContext, get_strategy, query, select_top  # noqa: E402

NAMES = ("entropy", "least_conf", "margin")


def numpy_reference(name: str, z: np.ndarray, budget: int) -> np.ndarray:
    """baal-style: softmax in numpy, the score, ``np.argsort`` of every row."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    if name == "entropy":
        return np.argsort(-np.sum(p * np.log(p + 1e-12), axis=1))[::-1][:budget]  # highest entropy
    if name == "least_conf":
        return np.argsort(p.max(axis=1))[:budget]  # lowest max probability
    top2 = np.sort(p, axis=1)[:, -2:]
    return np.argsort(top2[:, 1] - top2[:, 0])[:budget]  # smallest margin


def before(name: str, logits: torch.Tensor, budget: int) -> np.ndarray:
    """The previous implementation: float64 scores of every row, then ``select_top``."""
    logp = torch.log_softmax(logits.to(torch.float64), dim=1)
    if name == "entropy":
        scores = -(logp.exp() * logp).sum(dim=1)
    elif name == "least_conf":
        scores = -logp.max(dim=1).values.exp()
    else:
        top2 = logp.exp().topk(2, dim=1).values
        scores = -(top2[:, 0] - top2[:, 1])
    return select_top(scores, np.arange(len(logits)), budget)


def timed(calls: dict, repeats: int) -> tuple[dict, dict]:
    """Median seconds of each call over ``repeats`` interleaved rounds, and each call's output."""
    times = {k: [] for k in calls}
    out = {}
    for _ in range(repeats):
        for k, f in calls.items():
            t0 = time.perf_counter()
            out[k] = f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}, out


def run(n: int, classes: int, budget: int, scale: float, repeats: int, seed: int) -> list[str]:
    z = (np.random.default_rng(seed).normal(size=(n, classes)) * scale).astype(np.float32)
    logits = torch.from_numpy(z)
    ctx = QueryContext(pool=PoolOutputs(indices=np.arange(n), logits=logits))
    lines = []
    for name in NAMES:
        strategy = get_strategy(name)
        t, out = timed({
            "context": lambda: strategy.query(ctx, budget, 0),
            "arrays": lambda: query(name, budget, logits=z),
            "numpy": lambda: numpy_reference(name, z, budget),
            "before": lambda: before(name, logits, budget),
        }, repeats)
        same = all(np.array_equal(out[k], out["before"]) for k in ("context", "arrays"))
        shared = len(np.intersect1d(out["numpy"], out["before"]))
        lines.append(
            f"{classes:>7} {torch.get_num_threads():>7} {name:<10} {1e3 * t['context']:>8.1f} {1e3 * t['arrays']:>8.1f} "
            f"{1e3 * t['numpy']:>8.1f} {1e3 * t['before']:>8.1f} {t['numpy'] / t['context']:>8.1f}x "
            f"{t['numpy'] / t['arrays']:>8.1f}x {t['before'] / t['context']:>8.1f}x   {'equal' if same else 'DIFFER':<6} "
            f"{shared:>6}/{budget}")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=50_000)
    p.add_argument("--classes", default="10,100")
    p.add_argument("--budget", type=int, default=2000)
    p.add_argument("--scale", type=float, default=2.0, help="logits: standard normal times this")
    p.add_argument("--threads", default="1,default", help="torch thread counts, comma-separated")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    default = torch.get_num_threads()
    print(f"pool {a.n:,} x classes, budget {a.budget}, logits N(0, {a.scale:g}^2) float32, median of "
          f"{a.repeats}; ms; ratios: numpy (or before) time / ours (context or arrays)")
    print(f"{'classes':>7} {'threads':>7} {'strategy':<10} {'context':>8} {'arrays':>8} {'numpy':>8} {'before':>8} "
          f"{'np/ctx':>9} {'np/arr':>9} {'bef/ctx':>9}   picks  numpy's shared")
    for threads in a.threads.split(","):
        torch.set_num_threads(default if threads == "default" else int(threads))
        for classes in (int(c) for c in a.classes.split(",")):
            for line in run(a.n, classes, a.budget, a.scale, a.repeats, a.seed):
                print(line, flush=True)


if __name__ == "__main__":
    main()
