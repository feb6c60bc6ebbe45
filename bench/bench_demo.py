"""Wall time of the offline demo (`activecrl run`) with the automatic thread count, with one
thread and with torch's own default (one per core), on an idle CPU and under load.

torch starts one intra-op thread per core whatever else runs there; on a CPU shared with other
processes that oversubscribes it (the demo took 9 minutes instead of seconds on a busy
2-core machine). `activecrl` now derives the count from the CPUs the process may use and the model
size (small_cnn: 1 thread). Each variant runs the demo as a user would, in its own process; the
load is N busy-looping processes that this script starts and stops itself. Ratios are against one
thread in the same condition, measured in the same run.

    PYTHONPATH=. python bench/bench_demo.py                             # the whole demo (3 trials x 5 stages)
    PYTHONPATH=. python bench/bench_demo.py --trials 1 --stages 2       # a shorter demo, same settings otherwise
    # flags: --trials --stages --epochs --load N (busy processes, default: the CPU count) --conditions idle,load
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _busy() -> None:  # a load generator: one process spinning on one core
    while True:
        pass


def run_demo(threads: int | None, args, out: Path) -> tuple[float, int]:
    """Wall seconds of one demo run in a fresh process, and the thread count its config.json records."""
    command = [sys.executable, "-m", "activecrl"] + ([] if threads is None else ["--threads", str(threads)])
    command += ["run", "--device", "cpu", "--out", str(out)]
    for name in ("trials", "stages", "epochs"):
        if getattr(args, name) is not None:
            command += [f"--{name}", str(getattr(args, name))]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # torch's own default, as a user has
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    return seconds, json.loads((out / "config.json").read_text())["threads_used"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=None, help="demo trials (default: the demo's 3)")
    p.add_argument("--stages", type=int, default=None, help="demo stages (default: the demo's 5)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per stage (default: the demo's 20)")
    p.add_argument("--load", type=int, default=os.cpu_count() or 2, help="busy processes in the 'load' condition")
    p.add_argument("--conditions", default="idle,load")
    args = p.parse_args()

    cores = os.cpu_count()
    variants = [("automatic (new default)", None), ("1 thread", 1), (f"torch default ({cores} threads)", cores)]
    print(f"demo: activecrl run --device cpu (trials {args.trials or 3}, stages {args.stages or 5}, "
          f"epochs {args.epochs or 20}); {cores} cores, {len(os.sched_getaffinity(0))} usable; "
          f"load average before: {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        for condition in args.conditions.split(","):
            workers = []
            if condition == "load":
                workers = [multiprocessing.Process(target=_busy, daemon=True) for _ in range(args.load)]
                for w in workers:
                    w.start()
            try:
                times = {}
                for k, (label, threads) in enumerate(variants):
                    seconds, used = run_demo(threads, args, Path(tmp) / f"{condition}-{k}")
                    times[label] = seconds
                    print(f"  {condition:<5} {label:<28} {used} thread(s) {seconds:8.1f} s", flush=True)
            finally:
                for w in workers:
                    w.terminate()
                    w.join()
            one = times["1 thread"]
            print(f"  {condition:<5} ratio to 1 thread: " + ", ".join(f"{label} {t / one:.2f}x"
                                                                    for label, t in times.items()), flush=True)


if __name__ == "__main__":
    main()
