"""``activecrl label next`` on a large pool: the command's wall time and peak RSS, and the round's phases.

Set-up (once, kept in ``--workdir`` for reruns): ``--n`` generated 8x8 PNGs of ``--classes`` classes
(a class template plus noise, so a model has something to learn), ``Project.init``, a random cold
start of ``--labels`` images plus ``--audit-labels`` audit images answered by the oracle (the real
import path), and the embeddings cache, built by the path a round uses (``pool_embeddings``). The
project database is saved then, and restored before every timed round, so each round starts from the
same state.

Timed (each from the saved state):
- the reference for memory: a fresh Python that only imports torch (its peak RSS);
- ``activecrl label next PROJECT --budget B --audit A`` as a subprocess of the installed command,
  its wall time and peak RSS (``ru_maxrss`` of the only child of a fresh parent), ``--repeats`` times;
- the same round through ``next_round`` in a fresh Python (the command's conditions, without the
  CLI): the time to import the library, then the round split into phases (load embeddings, train,
  query, predict, record predictions, write the batch; "other": index sets, paths, standardising
  the embeddings, checks), ``--repeats`` times.

    PYTHONPATH=. python bench/bench_label_next.py --workdir /tmp/label-next-100k
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

SIDE = 8


def make_class_folder(root: Path, n: int, n_classes: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` small RGB PNGs in folders of 1,000: image i is class ``i % n_classes``'s template plus
    noise. Returns (relative path, class name) per image: the oracle."""
    rng = np.random.default_rng(seed)
    templates = rng.integers(40, 216, size=(n_classes, SIDE, SIDE, 3)).astype(np.int16)
    truth = []
    for i in range(n):
        sub = root / f"d{i // 1000:03d}"
        if i % 1000 == 0:
            sub.mkdir(parents=True)
        k = i % n_classes
        pixels = np.clip(templates[k] + rng.normal(0, 48, size=templates[k].shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="PNG")
        name = f"{sub.name}/{i:06d}.png"
        (root / name).write_bytes(buf.getvalue())
        truth.append((name, f"c{k}"))
    return truth


def _write_oracle(path: Path, truth: list[tuple[str, str]]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "label"])
        w.writerows(truth)


def setup(work: Path, n: int, n_classes: int, labels: int, audit: int) -> dict:
    """Build (or reuse) the pool, the project with its labels, the embeddings cache, the saved state."""
    from activecrl.label import Project
    from activecrl.label.pool import pool_embeddings
    from activecrl.label.rounds import _images, next_round, round_settings

    proj, snapshot = work / "proj", work / "snapshot.db"
    times = {}
    if not snapshot.is_file():
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        t = time.perf_counter()
        _write_oracle(work / "oracle.csv", make_class_folder(work / "img", n, n_classes))
        times["generate"] = time.perf_counter() - t
        t = time.perf_counter()
        p = Project.init(proj, images=work / "img", classes=",".join(f"c{k}" for k in range(n_classes)))
        times["init"] = time.perf_counter() - t
        with p:
            next_round(p, labels, strategy="random", audit=audit, oracle=work / "oracle.csv")
            settings = round_settings(p)
            paths, hashes = _images(p)
            t = time.perf_counter()
            pool_embeddings(p.path, p.images_dir, paths, hashes, model=settings.model,
                            image_size=settings.image_size)
            times["embeddings"] = time.perf_counter() - t
            p.con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        shutil.copyfile(proj / "project.db", snapshot)
    return times


def restore(work: Path) -> None:
    proj = work / "proj"
    for suffix in ("-wal", "-shm"):
        (proj / f"project.db{suffix}").unlink(missing_ok=True)
    shutil.copyfile(work / "snapshot.db", proj / "project.db")


_CHILD = ("import resource, subprocess, sys, time\n"
          "t = time.perf_counter()\n"
          "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
          "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, rc)\n")


def run_measured(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of ``argv`` run as the only child of a fresh Python."""
    out = subprocess.run([sys.executable, "-c", _CHILD, *argv], capture_output=True, text=True, check=True)
    wall, kib, rc = out.stdout.split()
    if rc != "0":
        raise RuntimeError(f"{' '.join(argv)} failed with exit status {rc}")
    return float(wall), int(kib) / 1024


PHASES = {"load embeddings": ("activecrl.label.rounds", "pool_embeddings"),
          "train": ("activecrl.al.loop", "TrialRunner.train"),
          "query": ("activecrl.al.loop", "TrialRunner.query"),
          "predict": ("activecrl.label.rounds", "predict"),
          "record predictions": ("activecrl.label.project", "Project.record_predictions"),
          "write batch": ("activecrl.label.project", "Project.issue_batch")}


@contextmanager
def timed_phases(totals: dict[str, float]):
    """Wrap each phase's function so its time adds to ``totals``; unwrap on exit."""
    import importlib

    undo = []
    for phase, (module, attr) in PHASES.items():
        owner = importlib.import_module(module)
        *outer, name = attr.split(".")
        for part in outer:
            owner = getattr(owner, part)
        original = getattr(owner, name)

        def wrapper(*args, _f=original, _phase=phase, **kwargs):
            t = time.perf_counter()
            try:
                return _f(*args, **kwargs)
            finally:
                totals[_phase] = totals.get(_phase, 0.0) + time.perf_counter() - t

        setattr(owner, name, wrapper)
        undo.append((owner, name, original))
    try:
        yield totals
    finally:
        for owner, name, original in undo:
            setattr(owner, name, original)


def library_round(work: Path, budget: int, audit: int) -> dict[str, float]:
    """One round from the saved state, in phases; run as ``--phases`` in a fresh process."""
    t = time.perf_counter()
    from activecrl.label import Project
    from activecrl.label.rounds import next_round

    restore(work)
    totals: dict[str, float] = {"import": time.perf_counter() - t}
    with Project.open(work / "proj") as p, timed_phases(totals):
        t = time.perf_counter()
        next_round(p, budget, audit=audit)
        totals["total"] = time.perf_counter() - t
    totals["other"] = totals["total"] - sum(v for k, v in totals.items() if k not in ("total", "import"))
    return totals


def fresh_library_round(args) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--phases", "--workdir", str(args.workdir), "--budget",
                          str(args.budget), "--audit", str(args.audit)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/label-next-100k"))
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--labels", type=int, default=2_000, help="training labels before the timed round")
    ap.add_argument("--audit-labels", type=int, default=500, help="audit labels before the timed round")
    ap.add_argument("--budget", type=int, default=1_000)
    ap.add_argument("--audit", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--phases", action="store_true", help="(internal) one library round, its phases as JSON")
    args = ap.parse_args()
    if args.phases:
        print(json.dumps(library_round(args.workdir, args.budget, args.audit)))
        return
    made = setup(args.workdir, args.n, args.classes, args.labels, args.audit_labels)
    for step, seconds in made.items():
        print(f"set-up {step}: {seconds:.1f} s")
    emb = next((args.workdir / "proj" / "cache").glob("embeddings-*.npy"))
    emb_mib = np.load(emb, mmap_mode="r").nbytes / 2**20
    command = [str(Path(sys.executable).with_name("activecrl")), "label", "next", str(args.workdir / "proj"),
               "--budget", str(args.budget), "--audit", str(args.audit)]
    print(f"pool {args.n:,} images, embeddings {np.load(emb, mmap_mode='r').shape} float32 = {emb_mib:.0f} MiB; "
          f"cpu count {os.cpu_count()}, load {os.getloadavg()[0]:.1f}")
    _, torch_rss = run_measured([sys.executable, "-c", "import torch"])
    print(f"reference: bare `import torch`: peak RSS {torch_rss:.0f} MiB")
    runs = []
    for _ in range(args.repeats):
        restore(args.workdir)
        runs.append(run_measured(command))
    walls, rss = np.array([w for w, _ in runs]), np.array([r for _, r in runs])
    print(f"command: {' '.join(command[1:])}")
    print(f"  wall {np.median(walls):.2f} s (runs {', '.join(f'{w:.2f}' for w in walls)}), peak RSS "
          f"{rss.max():.0f} MiB = embeddings {emb_mib:.0f} + {rss.max() - emb_mib:.0f} MiB "
          f"({(rss.max() - emb_mib) / torch_rss:.2f}x a bare `import torch`)")
    rounds = [fresh_library_round(args) for _ in range(args.repeats)]
    median = {k: float(np.median([r[k] for r in rounds])) for k in rounds[0]}
    totals = ", ".join(f"{r['total']:.2f}" for r in rounds)
    print(f"library, fresh process: import {median['import']:.2f} s, round {median['total']:.2f} s (runs "
          f"{totals}); command / round: {np.median(walls) / median['total']:.1f}x")
    for phase in (*PHASES, "other"):
        print(f"  {phase:<20} {median.get(phase, 0.0):7.3f} s")
    restore(args.workdir)


if __name__ == "__main__":
    main()
