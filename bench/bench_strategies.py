"""Benchmark the two query strategies whose cost matters: core-set and MC dropout.

(1) core-set: our k-center greedy (faiss nearest-labeled init + one matrix-vector product per
    pick, memory O(n*d)) against the usual reference implementation that builds the full
    (labeled+pool) x (labeled+pool) distance matrix with torch.cdist and runs the greedy on it.
    Each runs in its own subprocess so that peak RSS (VmHWM, reset after making the data) is isolated; the table shows time,
    peak RSS above the process's RSS after making the data, and whether the picks agree.
    Ours is also run alone at --big-n (default 50,000 x 512, the paper's CIFAR pool).
(2) MC dropout: T head-only samples on cached features against T full passes of the pool through
    ResNet-18 (dropout 0.3), CPU. Full passes are timed for --mc-ref-samples passes and scaled
    linearly to T (every pass is the same work); both paths are checked to give the same scores.

    PYTHONPATH=. python bench/bench_strategies.py            # defaults: ~3-4 min on 2 CPU cores
    PYTHONPATH=. python bench/bench_strategies.py --n 5000 --big-n 10000 --mc-pool 64  # quick
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


# ------------------------------------------------------------------------------ core-set
def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak_rss() -> bool:
    """Reset VmHWM (peak RSS) so it measures the algorithm, not making the data (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _make_features(n_pool: int, n_labeled: int, d: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    # clustered features, like penultimate features of a trained classifier
    centers = rng.normal(scale=3.0, size=(10, d)).astype(np.float32)
    lab = centers[rng.integers(10, size=n_labeled)] + rng.normal(size=(n_labeled, d)).astype(np.float32)
    pool = centers[rng.integers(10, size=n_pool)] + rng.normal(size=(n_pool, d)).astype(np.float32)
    return torch.from_numpy(pool), torch.from_numpy(lab)


def reference_k_center(pool: torch.Tensor, labeled: torch.Tensor, budget: int) -> np.ndarray:
    """The usual peer implementation: full distance matrix of all points, then greedy on it."""
    allf = torch.cat([labeled, pool])
    m = labeled.shape[0]
    dist = torch.cdist(allf, allf)  # (m + n) x (m + n)
    min_dist = dist[m:, :m].min(dim=1).values.clone()
    picks = []
    for _ in range(budget):
        j = int(torch.argmax(min_dist))
        picks.append(j)
        min_dist = torch.minimum(min_dist, dist[m:, m + j])
    return np.array(picks)


def ours_k_center(pool: torch.Tensor, labeled: torch.Tensor, budget: int, device: str) -> np.ndarray:
    from strategies import k_center_greedy
    return k_center_greedy(pool, labeled, budget, np.random.default_rng(0), device)


def coreset_worker(args) -> None:
    """Runs in a subprocess: one implementation, prints one JSON line."""
    torch.set_num_threads(args.threads)
    pool, lab = _make_features(args.n, args.labeled, args.d)
    import faiss  # noqa: F401  (library load is not the algorithm's memory)
    import strategies  # noqa: F401
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    reset = _reset_peak_rss()
    base_rss = _status_mb("VmRSS")
    t0 = time.perf_counter()
    if args.worker == "reference":
        dev = torch.device(args.device)
        picks = reference_k_center(pool.to(dev), lab.to(dev), args.budget)
    else:
        picks = ours_k_center(pool, lab, args.budget, args.device)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    out = {"impl": args.worker, "n": args.n, "d": args.d, "seconds": elapsed,
           "peak_rss_over_data_mb": (_status_mb("VmHWM") if reset else
                                                             resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024) - base_rss, "data_mb": (pool.numel() + lab.numel()) * 4 / 2**20,
           "picks": picks.tolist()}
    if args.device.startswith("cuda"):
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out))


def _covering_radius(pool: torch.Tensor, labeled: torch.Tensor, picks: np.ndarray) -> float:
    from strategies.coreset import nearest_center_sq_dist
    centers = torch.cat([labeled, pool[torch.from_numpy(picks)]])
    return float(nearest_center_sq_dist(pool, centers, "cpu").max().sqrt())


def run_worker(kind: str, args, n: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--n", str(n), "--d", str(args.d),
           "--labeled", str(args.labeled), "--budget", str(args.budget), "--threads", str(args.threads),
           "--device", args.device]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        return {"impl": kind, "error": (res.stderr or res.stdout).strip().splitlines()[-1:]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def bench_coreset(args) -> None:
    print(f"== core-set k-center greedy: pool {args.n:,} x {args.d}, labeled {args.labeled:,}, "
          f"budget {args.budget:,}, device {args.device}, {args.threads} threads")
    rows = [run_worker("ours", args, args.n)]
    if not args.skip_ref:
        rows.append(run_worker("reference", args, args.n))
    for r in rows:
        if "error" in r:
            print(f"  {r['impl']:<10} failed: {r['error']}")
            continue
        extra = f", peak CUDA {r['peak_cuda_mb']:.0f} MB" if "peak_cuda_mb" in r else ""
        print(f"  {r['impl']:<10} {r['seconds']:7.2f} s   peak RSS over data {r['peak_rss_over_data_mb']:7.0f} MB"
              f"   (data itself {r['data_mb']:.0f} MB{extra})")
    if len(rows) == 2 and all("error" not in r for r in rows):
        ours, ref = rows
        agree = np.mean(np.array(ours["picks"]) == np.array(ref["picks"]))
        print(f"  -> ours is {ref['seconds'] / ours['seconds']:.1f}x faster and uses "
              f"{max(ref['peak_rss_over_data_mb'], 1) / max(ours['peak_rss_over_data_mb'], 1):.0f}x less extra memory")
        pool, lab = _make_features(args.n, args.labeled, args.d)
        same_set = len(set(ours["picks"]) & set(ref["picks"])) / len(ref["picks"])
        r_ours, r_ref = (_covering_radius(pool, lab, np.array(r["picks"])) for r in (ours, ref))
        print(f"  -> picks identical in order: {agree:.1%}, as sets: {same_set:.1%}; covering radius "
              f"(max distance of a pool point to its nearest center) ours {r_ours:.4f}, reference {r_ref:.4f}")
    if args.big_n:
        r = run_worker("ours", args, args.big_n)
        if "error" in r:
            print(f"  ours at {args.big_n:,}: failed: {r['error']}")
        else:
            print(f"  ours alone, pool {args.big_n:,} x {args.d}: {r['seconds']:.2f} s, peak RSS over data "
                  f"{r['peak_rss_over_data_mb']:.0f} MB (data {r['data_mb']:.0f} MB; the reference's matrix would be "
                  f"{(args.big_n + args.labeled) ** 2 * 4 / 2**30:.1f} GiB)")


# ------------------------------------------------------------------------------ MC dropout
class EvalData:
    """Minimal stand-in for DeviceData.eval_batches: normalised images already in memory."""

    def __init__(self, x: torch.Tensor):
        self.x = x
        self.y = torch.zeros(len(x), dtype=torch.long)
        self.device = torch.device("cpu")

    def eval_batches(self, indices=None, batch_size=1024):
        idx = torch.arange(len(self.x)) if indices is None else torch.as_tensor(indices, dtype=torch.long)
        for s in range(0, len(idx), batch_size):
            b = idx[s:s + batch_size]
            yield self.x[b], self.y[b], b


def bench_mc(args) -> None:
    from activecrl.models import build_model
    from activecrl.outputs import PoolOutputs
    from strategies import QueryContext, mc_dropout_stats

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=10, in_channels=3, image_size=32, dropout=0.3)
    n, T, T_ref, bs = args.mc_pool, args.mc_samples, args.mc_ref_samples, args.mc_batch
    print(f"== MC dropout: ResNet-18 (dropout 0.3), pool {n} CIFAR-sized images, T={T}, batch {bs}, "
          f"CPU, {args.threads} threads")
    data = EvalData(torch.randn(n + 100, 3, 32, 32))
    idx = torch.arange(50, 50 + n)

    model.eval()
    with torch.no_grad():
        model(data.x[:4])  # warm-up
    t0 = time.perf_counter()
    with torch.no_grad():
        parts = [model(x, return_features=True) for x, _, _ in data.eval_batches(idx, bs)]
    t_feat = time.perf_counter() - t0
    logits = torch.cat([p[0] for p in parts])
    feats = torch.cat([p[1] for p in parts])
    ctx = QueryContext(pool=PoolOutputs(idx, logits, feats), model=model, data=data, batch_size=bs)

    head_times = []
    for _ in range(3):  # cheap: repeat, report the best (timeit habit; the host is shared)
        t0 = time.perf_counter()
        head = mc_dropout_stats(model, ctx, n_samples=T, seed=0)
        head_times.append(time.perf_counter() - t0)
        assert head.head_only
    t_head = min(head_times)

    t0 = time.perf_counter()
    full = mc_dropout_stats(model, ctx, n_samples=T_ref, seed=0, head_only=False)
    t_full_measured = time.perf_counter() - t0
    t_full = t_full_measured * T / T_ref
    head_same = mc_dropout_stats(model, ctx, n_samples=T_ref, seed=0)
    err = float((head_same.mean_probs - full.mean_probs).abs().max())

    print(f"  one eval pass (the predict() the loop runs anyway): {t_feat:6.2f} s")
    print(f"  ours, {T} head samples on cached features:         {t_head:6.3f} s  (best of 3; worst "
          f"{max(head_times):.3f} s)")
    print(f"  reference, {T} full passes:                         {t_full:6.1f} s"
          + (f"  (measured {T_ref} passes: {t_full_measured:.1f} s, scaled x{T / T_ref:g})" if T_ref != T else ""))
    print(f"  -> ratio full passes / head sampling: {t_full / t_head:,.0f}x; "
          f"including the shared eval pass: {t_full / (t_head + t_feat):.1f}x")
    print(f"  same seed, T={T_ref}: max |mean prob difference| head vs full = {err:.1e}")


# ------------------------------------------------------------------------------ main
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20_000, help="core-set pool size (reference comparison)")
    p.add_argument("--d", type=int, default=512, help="feature width")
    p.add_argument("--labeled", type=int, default=2_000)
    p.add_argument("--budget", type=int, default=1_000)
    p.add_argument("--big-n", type=int, default=50_000, help="pool size for ours alone (0: skip)")
    p.add_argument("--skip-ref", action="store_true", help="skip the full-matrix reference")
    p.add_argument("--device", default="cpu", help="device for core-set (cpu or cuda)")
    p.add_argument("--mc-pool", type=int, default=256, help="MC dropout pool size (0: skip)")
    p.add_argument("--mc-samples", type=int, default=50)
    p.add_argument("--mc-ref-samples", type=int, default=3, help="full passes actually timed (scaled to T)")
    p.add_argument("--mc-batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--skip-coreset", action="store_true")
    p.add_argument("--worker", choices=["ours", "reference"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        coreset_worker(args)
        return
    print(f"host: {os.cpu_count()} CPUs, torch {torch.__version__}, load average "
          f"{os.getloadavg()[0]:.2f}")
    t0 = time.perf_counter()
    if not args.skip_coreset:
        bench_coreset(args)
    if args.mc_pool:
        bench_mc(args)
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
