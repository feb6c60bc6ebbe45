"""Bootstrap intervals: the vectorised count-matrix code against a loop of ``classification_metrics``.

Both compute all nine metrics on the same resampled test sets (``resample_indices``); the loop is
what a straightforward implementation does (one full metric call per resample). Timed in
alternating rounds; the ratio is median loop time per resample / median vectorised time per
resample, and the two results are checked to agree.

    python bench/bench_bootstrap.py                      # synthetic 10,000 x 10, 1,000 resamples
    python bench/bench_bootstrap.py --predictions results/cifar10_train/baseline/predictions.npz
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from activecrl.evaluation.bootstrap import bootstrap_metrics, resample_indices
from activecrl.evaluation.metrics import METRIC_NAMES, classification_metrics


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10_000, help="synthetic test-set size")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--resamples", type=int, default=1000, help="resamples for the vectorised code")
    parser.add_argument("--loop-resamples", type=int, default=50, help="resamples timed for the loop")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--predictions", default=None, help="a predictions.npz of `activecrl train` instead")
    args = parser.parse_args()
    if args.predictions:
        z = np.load(args.predictions)
        probs, labels, conf = z["probs"].astype(np.float64), z["labels"], z["confidence"]
    else:
        rng = np.random.default_rng(0)
        logits = rng.normal(size=(args.n, args.classes)) * 2
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        labels, conf = rng.integers(0, args.classes, args.n), None
    n = len(labels)
    idx = resample_indices(n, args.loop_resamples, seed=0)

    def loop():
        return [classification_metrics(probs[i], labels[i], None if conf is None else conf[i]) for i in idx]

    fast_t, loop_t = [], []
    for _ in range(args.rounds):
        start = time.perf_counter()
        bootstrap_metrics(probs, labels, conf, n_resamples=args.resamples, seed=0)
        fast_t.append((time.perf_counter() - start) / args.resamples)
        start = time.perf_counter()
        reference = loop()
        loop_t.append((time.perf_counter() - start) / args.loop_resamples)
    fast = bootstrap_metrics(probs, labels, conf, n_resamples=args.loop_resamples, seed=0)
    worst = max(abs(fast[m][r] - reference[r][m]) for m in METRIC_NAMES for r in range(args.loop_resamples))
    f, s = statistics.median(fast_t), statistics.median(loop_t)
    print(f"test set {n} x {probs.shape[1]}; max |difference| over {args.loop_resamples} resamples: {worst:.1e}")
    print(f"loop of classification_metrics: {s * 1e3:.1f} ms per resample ({s * args.resamples:.1f} s per "
          f"{args.resamples})")
    print(f"vectorised bootstrap_metrics:   {f * 1e3:.1f} ms per resample ({f * args.resamples:.1f} s per "
          f"{args.resamples})")
    print(f"ratio: {s / f:.1f}x")


if __name__ == "__main__":
    main()
