"""Throughput of `activecrl sweep` against running the same trials one after another.

Four small active-learning trials (2 grid points x 2 trials; digits, small_cnn, one torch thread
each) run twice: one after another in this process (what `activecrl --threads 1 run` does for
each point), and as a sweep on a local Ray instance with --cpus-per-trial 1 (and, on a GPU
machine, --gpus-per-trial 0.25: four trials sharing one GPU). Prints both wall times and the
throughput ratio, with and without the Ray instance's start-up, and checks that both produced
the same queries.

    PYTHONPATH=. python bench/bench_sweep.py                           # CPU: 4 trials, 1 CPU each
    PYTHONPATH=. python bench/bench_sweep.py --device cuda --gpus-per-trial 0.25 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from activecrl.al.loop import read_records, run_active_learning
from activecrl.al.sweep import SweepCallbacks, expand_grid, run_sweep


class _FirstSubmit(SweepCallbacks):
    """Notes when the tasks were submitted (the first update), to time the sweep without Ray's start."""

    def __init__(self):
        self.first = None

    def update(self, statuses):
        self.first = self.first or time.perf_counter()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--gpus-per-trial", type=float, default=0.0)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--model", default="small_cnn")
    p.add_argument("--initial", type=int, default=200)
    p.add_argument("--budget", type=int, default=200)
    p.add_argument("--stages", type=int, default=3)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args()
    torch.set_num_threads(max(1, int(args.cpus_per_trial)))
    base = dict(dataset=args.dataset, model=args.model, trainer="crl", initial=args.initial, budget=args.budget,
                stages=args.stages, trials=2, seed=0, device=args.device,
                train={"epochs": args.epochs, "batch_size": 32})
    spec = expand_grid(base, {"strategy": ["random", "least_conf"]}, source="bench")
    work = Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    try:
        # warm the dataset cache so neither side pays the first decode
        from activecrl.data import load_dataset

        load_dataset(args.dataset)
        start = time.perf_counter()
        for point in spec.points:  # the reference: one trial after another, one thread
            run_active_learning(point.config, work / "seq" / point.name)
        sequential = time.perf_counter() - start

        marks = _FirstSubmit()
        start = time.perf_counter()
        statuses = run_sweep(spec, work / "sweep", cpus_per_trial=args.cpus_per_trial,
                             gpus_per_trial=args.gpus_per_trial, callbacks=marks)
        end = time.perf_counter()
        assert all(s.state == "finished" for s in statuses), [(s.name, s.error) for s in statuses]
        swept, after_start = end - start, end - marks.first

        same = all([r.queried for r in read_records(work / "seq" / p.name)] ==
                   [r.queried for r in read_records(work / "sweep" / p.name)] for p in spec.points)
        n = sum(p.config.trials for p in spec.points)
        result = {"trials": n, "device": args.device, "cpus_per_trial": args.cpus_per_trial,
                  "gpus_per_trial": args.gpus_per_trial, "sequential_s": round(sequential, 1),
                  "sweep_s": round(swept, 1), "sweep_after_ray_start_s": round(after_start, 1),
                  "ratio": round(sequential / swept, 2), "ratio_after_ray_start": round(sequential / after_start, 2),
                  "same_queries": same, "load_average": os.getloadavg(), "cpus": len(os.sched_getaffinity(0))}
        print(f"{n} trials one after another: {sequential:.1f} s")
        print(f"{n} trials as a sweep:          {swept:.1f} s (including the local Ray start; "
              f"{after_start:.1f} s after it)")
        print(f"throughput ratio: {sequential / swept:.2f}x ({sequential / after_start:.2f}x without the Ray start); "
              f"same queries: {same}; load average {os.getloadavg()[0]:.1f} on {result['cpus']} CPUs")
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
