"""Benchmark the two query strategies whose cost matters: core-set and MC dropout.

(1) core-set (k-center greedy, pool --n x --d, labeled --labeled, budget --budget, CPU):
    * ours: ``strategies.k_center_greedy`` (grouped CPU path: faiss nearest-labeled search and one
      matrix-vector product per pick, both restricted by the triangle inequality; O(n*d) memory);
    * ours with the plain loop (no grouping: every pick touches every pool row; the previous
      version of ours), to show what the grouping buys;
    * the DeepAL-style reference (Huang's deep-active-learning ``KCenterGreedy``, the pattern
      several repositories copy), written here from its description: numpy, the full
      (labeled+pool)^2 distance matrix from ``np.matmul(emb, emb.T)``, then a pool x labeled
      matrix from which each pick deletes a row (``np.delete``) and appends a column
      (``np.append``). DeepAL's embeddings are float32 torch tensors turned into numpy, so
      float32 is the faithful run (every pick timed by default); float64 (as in other copies)
      with ``--peer float32:all,float64:100``. A run that would take too long can time only its
      first picks (``dtype:count``), scaled linearly to the budget: an UNDER-estimate, since
      each pick copies a matrix that gains a column per pick;
    * a tuned full-matrix reference: ``torch.cdist`` of all points (float32, threaded), greedy
      on the matrix with one column read per pick.
    Each run is its own subprocess, so peak RSS (VmHWM, reset after making the data) is
    isolated; fast runs are repeated, interleaved, and their median is shown. The picks are
    compared (as sets, in order, and by covering radius). Also: the same references at
    --check-n points (all picks, checks agreement), ours on structureless features (no
    clusters: nothing to skip, the worst case; one run), and ours alone at --big-n (one run).
(2) MC dropout: T head-only samples on cached features against T full passes of the pool through
    ResNet-18 (dropout 0.3), CPU. Full passes are timed for --mc-ref-samples passes and scaled
    linearly to T (every pass is the same work); both paths are checked to give the same scores.

    PYTHONPATH=. python bench/bench_strategies.py            # defaults: ~7 min on 2 busy CPU cores (core-set ~6)
    PYTHONPATH=. python bench/bench_strategies.py --mc-pool 0   # core-set only
    PYTHONPATH=. python bench/bench_strategies.py --n 5000 --big-n 10000 --peer float32:all \
        --repeats 1 --mc-pool 64   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from _memory import reset_peak_rss, status_mb  # bench/_memory.py (this script's folder is on sys.path)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


# ------------------------------------------------------------------------------ core-set
def _make_features(n_pool: int, n_labeled: int, d: int, seed: int = 0, clusters: int = 10):
    rng = np.random.default_rng(seed)
    if clusters <= 0:  # structureless: one isotropic Gaussian
        return (torch.from_numpy(rng.normal(size=(n_pool, d)).astype(np.float32)),
                torch.from_numpy(rng.normal(size=(n_labeled, d)).astype(np.float32)))
    # clustered features, like penultimate features of a trained classifier
    centers = rng.normal(scale=3.0, size=(clusters, d)).astype(np.float32)
    lab = centers[rng.integers(clusters, size=n_labeled)] + rng.normal(size=(n_labeled, d)).astype(np.float32)
    pool = centers[rng.integers(clusters, size=n_pool)] + rng.normal(size=(n_pool, d)).astype(np.float32)
    return torch.from_numpy(pool), torch.from_numpy(lab)


def cdist_k_center(pool: torch.Tensor, labeled: torch.Tensor, budget: int) -> np.ndarray:
    """Tuned full-matrix reference: torch.cdist of all points, then greedy on the matrix."""
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


def deepal_k_center(pool: torch.Tensor, labeled: torch.Tensor, budget: int, dtype=np.float32,
                    max_picks: int | None = None, timing: dict | None = None) -> np.ndarray:
    """DeepAL-style reference (see the module docstring), picks in pick order (pool positions).

    Stops after ``max_picks`` picks when given; ``timing`` receives the seconds spent building
    the matrices and in the picks made."""
    t0 = time.perf_counter()
    emb = np.concatenate([labeled.numpy(), pool.numpy()]).astype(dtype)  # labeled rows first
    n_all, m = emb.shape[0], labeled.shape[0]
    is_lab = np.zeros(n_all, dtype=bool)
    is_lab[:m] = True
    dist = np.matmul(emb, emb.T)  # Gram matrix, (m + n)^2
    sq = np.array(dist.diagonal()).reshape(n_all, 1)
    dist *= -2  # in place, as DeepAL does: |a|^2 + |b|^2 - 2 a.b
    dist += sq
    dist += sq.T
    with np.errstate(invalid="ignore"):  # tiny negatives on the diagonal (never read)
        dist = np.sqrt(dist)
    mat = dist[~is_lab, :][:, is_lab]  # pool x labeled distances
    t1 = time.perf_counter()
    picks = []
    for _ in range(budget if max_picks is None else min(budget, max_picks)):
        nearest = mat.min(axis=1)  # distance of each unlabeled point to its nearest center
        row = int(nearest.argmax())
        q = int(np.arange(n_all)[~is_lab][row])
        is_lab[q] = True
        picks.append(q - m)
        mat = np.delete(mat, row, 0)  # drop the picked row, append its column (both copy mat)
        mat = np.append(mat, dist[~is_lab, q][:, None], axis=1)
    if timing is not None:
        timing.update(setup_s=t1 - t0, picks_s=time.perf_counter() - t1, n_picks=len(picks))
    return np.array(picks)


def ours_k_center(pool: torch.Tensor, labeled: torch.Tensor, budget: int, device: str) -> np.ndarray:
    from activecrl.strategies import k_center_greedy
    return k_center_greedy(pool, labeled, budget, np.random.default_rng(0), device)


def coreset_worker(args) -> None:
    """Runs in a subprocess: one implementation, prints one JSON line."""
    torch.set_num_threads(args.threads)
    pool, lab = _make_features(args.n, args.labeled, args.d, clusters=args.clusters)
    import faiss  # noqa: F401  (library load is not the algorithm's memory)
    import activecrl.strategies  # noqa: F401
    import activecrl.strategies.coreset as cs
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    reset = reset_peak_rss()
    base_rss = status_mb("VmRSS")
    timing = {}
    t0 = time.perf_counter()
    if args.worker == "cdist":
        dev = torch.device(args.device)
        picks = cdist_k_center(pool.to(dev), lab.to(dev), args.budget)
    elif args.worker == "deepal":
        picks = deepal_k_center(pool, lab, args.budget, np.dtype(args.peer_dtype),
                                args.peer_picks or None, timing)
    else:
        if args.worker == "plain":
            cs._PRUNE_MIN_N = 1 << 62  # the plain loop, whatever the size
        picks = ours_k_center(pool, lab, args.budget, args.device)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    out = {"impl": args.worker, "n": args.n, "d": args.d, "seconds": elapsed,
           "peak_rss_over_data_mb": (status_mb("VmHWM") if reset else
                                     resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024) - base_rss,
           "data_mb": (pool.numel() + lab.numel()) * 4 / 2**20, "picks": picks.tolist()}
    if timing:
        out.update(timing)
        out["measured_all"] = timing["n_picks"] == args.budget
        # linear in the number of picks: an under-estimate (later picks copy a wider matrix)
        out["seconds"] = timing["setup_s"] + timing["picks_s"] * args.budget / max(1, timing["n_picks"])
    if args.device.startswith("cuda"):
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out))


def _covering_radius(pool: torch.Tensor, labeled: torch.Tensor, picks) -> float:
    from activecrl.strategies.coreset import nearest_center_sq_dist
    centers = torch.cat([labeled, pool[torch.as_tensor(np.asarray(picks), dtype=torch.long)]])
    return float(nearest_center_sq_dist(pool, centers, "cpu").max().sqrt())


def run_worker(kind: str, args, n: int, clusters: int | None = None, dtype: str = "float32",
               max_picks: int = 0) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--n", str(n), "--d", str(args.d),
           "--labeled", str(args.labeled), "--budget", str(args.budget), "--threads", str(args.threads),
           "--device", args.device, "--clusters", str(args.clusters if clusters is None else clusters),
           "--peer-dtype", dtype, "--peer-picks", str(max_picks)]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        return {"impl": kind, "error": (res.stderr or res.stdout).strip().splitlines()[-1:]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def _median_run(runs: list[dict]) -> dict:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0]
    times = sorted(r["seconds"] for r in ok)
    best = dict(ok[0])
    best["seconds"] = statistics.median(times)
    best["all_seconds"] = times
    best["peak_rss_over_data_mb"] = statistics.median(r["peak_rss_over_data_mb"] for r in ok)
    return best


def _parse_peer(spec: str) -> list[tuple[str, int]]:
    """'float32:all,float64:100' -> [('float32', 0), ('float64', 100)] (0: every pick)."""
    out = []
    for item in filter(None, (x.strip() for x in spec.split(","))):
        dtype, _, count = item.partition(":")
        out.append((dtype, 0 if count in ("", "all") else int(count)))
    return out


def _agreement(a, b) -> str:
    a, b = np.asarray(a), np.asarray(b)
    k = min(len(a), len(b))
    in_order = np.mean(a[:k] == b[:k])
    as_set = len(set(a[:k].tolist()) & set(b[:k].tolist())) / max(1, k)
    return f"same picks as a set {as_set:.1%}, in order {in_order:.1%} (first {k})"


def check_small(args) -> None:
    """All implementations in-process at --check-n points, every pick: agreement and radius."""
    n, m, k = args.check_n, max(1, args.check_n // 10), max(1, args.check_n // 10)
    import activecrl.strategies.coreset as cs
    pool, lab = _make_features(n, m, args.d, seed=1)
    runs = {}
    saved = cs._PRUNE_MIN_N
    for name, min_n in (("ours", 1), ("ours plain loop", 1 << 62)):  # grouped path at any size
        cs._PRUNE_MIN_N = min_n
        try:
            runs[name] = ours_k_center(pool, lab, k, "cpu")
        finally:
            cs._PRUNE_MIN_N = saved
    runs["cdist"] = cdist_k_center(pool, lab, k)
    for dtype in ("float32", "float64"):
        runs[f"deepal {dtype}"] = deepal_k_center(pool, lab, k, np.dtype(dtype))
    print(f"  check at pool {n:,} x {args.d}, labeled {m:,}, budget {k:,} (every pick, in-process; "
          f"ours forced onto the grouped path):")
    for name, picks in runs.items():
        extra = "" if name == "ours" else "; " + _agreement(runs["ours"], picks)
        print(f"    {name:<15} covering radius {_covering_radius(pool, lab, picks):.4f}{extra}")


def _fmt_times(r: dict) -> str:
    if len(r.get("all_seconds", [])) > 1:
        return f" (runs: {', '.join(f'{t:.2f}' for t in r['all_seconds'])})"
    return ""


def bench_coreset(args) -> None:
    print(f"== core-set k-center greedy: pool {args.n:,} x {args.d}, labeled {args.labeled:,}, "
          f"budget {args.budget:,}, {args.clusters} clusters, device {args.device}, {args.threads} threads")
    pool, lab = _make_features(args.n, args.labeled, args.d, clusters=args.clusters)
    kinds = ["ours", "plain"] + ([] if args.skip_ref else ["cdist"])
    runs = {k: [] for k in kinds}
    for _ in range(args.repeats):  # interleaved: the host is shared, its load drifts
        for kind in kinds:
            runs[kind].append(run_worker(kind, args, args.n))
    rows = {k: _median_run(v) for k, v in runs.items()}
    if not args.skip_ref:
        for dtype, count in _parse_peer(args.peer):
            rows[f"deepal {dtype}"] = run_worker("deepal", args, args.n, dtype=dtype, max_picks=count)
    labels = {"ours": "ours", "plain": "ours, plain loop (previous)",
              "cdist": "torch.cdist full matrix"}
    for name, r in rows.items():
        label = labels.get(name, f"DeepAL-style numpy {name.split()[-1]}")
        if "error" in r:
            print(f"  {label:<30} failed: {r['error']}")
            continue
        extra = f", peak CUDA {r['peak_cuda_mb']:.0f} MB" if "peak_cuda_mb" in r else ""
        how = _fmt_times(r)
        if "setup_s" in r:
            how = (f" (matrices {r['setup_s']:.1f} s + {r['n_picks']:,} picks {r['picks_s']:.1f} s"
                   + ("" if r["measured_all"] else f", scaled x{args.budget / r['n_picks']:g} to "
                      f"{args.budget:,} picks: an under-estimate") + ")")
        print(f"  {label:<30} {r['seconds']:8.2f} s   peak RSS over data {r['peak_rss_over_data_mb']:7.0f} MB"
              f"{how}{extra}")
    print(f"  (data itself {rows['ours'].get('data_mb', 0):.0f} MB)")
    ours = rows["ours"]
    if "error" in ours:
        return
    for name, r in rows.items():
        if name == "ours" or "error" in r:
            continue
        what = {"plain": "vs the plain loop (previous version of ours)",
                "cdist": "vs a tuned torch.cdist full-matrix reference"}.get(
            name, f"vs DeepAL-style numpy reference ({name.split()[-1]}"
                  + (")" if r.get("measured_all", True) else ", extrapolated)"))
        mem_ratio = r["peak_rss_over_data_mb"] / max(ours["peak_rss_over_data_mb"], 1)
        mem = (f"{mem_ratio:.0f}x less extra memory" if mem_ratio >= 1.5 else
               f"extra memory {ours['peak_rss_over_data_mb']:.0f} vs {r['peak_rss_over_data_mb']:.0f} MB")
        radius = (f"; covering radius {_covering_radius(pool, lab, r['picks']):.4f}"
                  if len(r["picks"]) == len(ours["picks"]) else "")
        print(f"  -> {what}: ours {r['seconds'] / ours['seconds']:.1f}x faster, {mem}; "
              f"{_agreement(ours['picks'], r['picks'])}{radius}")
    print(f"  -> ours: covering radius {_covering_radius(pool, lab, ours['picks']):.4f}")
    if args.check_n:
        check_small(args)
    if args.unclustered:
        r = run_worker("ours", args, args.n, clusters=0)
        if "error" not in r:
            print(f"  ours on structureless features (one Gaussian, nothing to skip), pool {args.n:,}: "
                  f"{r['seconds']:.2f} s{_fmt_times(r)}, peak RSS over data {r['peak_rss_over_data_mb']:.0f} MB")
    if args.big_n:
        r = run_worker("ours", args, args.big_n)
        if "error" in r:
            print(f"  ours at {args.big_n:,}: failed: {r['error']}")
        else:
            print(f"  ours alone, pool {args.big_n:,} x {args.d}: {r['seconds']:.2f} s, peak RSS over data "
                  f"{r['peak_rss_over_data_mb']:.0f} MB (data {r['data_mb']:.0f} MB; a float32 full matrix would be "
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
    from activecrl.inference.outputs import PoolOutputs
    from activecrl.strategies import QueryContext, mc_dropout_stats

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
    p.add_argument("--skip-ref", action="store_true", help="skip the full-matrix references")
    p.add_argument("--peer", default="float32:all",
                   help="DeepAL-style runs, dtype:picks[,...] (picks actually timed: 'all' or a prefix "
                        "scaled linearly), e.g. float32:all,float64:100 (float64 adds ~1.5 min)")
    p.add_argument("--repeats", type=int, default=3, help="runs of ours / plain / cdist (median shown)")
    p.add_argument("--clusters", type=int, default=10, help="clusters in the synthetic features")
    p.add_argument("--check-n", type=int, default=3000, help="pool for the all-picks agreement check (0: skip)")
    p.add_argument("--no-unclustered", dest="unclustered", action="store_false",
                   help="skip ours on structureless features")
    p.add_argument("--device", default="cpu", help="device for core-set (cpu or cuda)")
    p.add_argument("--mc-pool", type=int, default=256, help="MC dropout pool size (0: skip)")
    p.add_argument("--mc-samples", type=int, default=50)
    p.add_argument("--mc-ref-samples", type=int, default=3, help="full passes actually timed (scaled to T)")
    p.add_argument("--mc-batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--skip-coreset", action="store_true")
    p.add_argument("--worker", choices=["ours", "plain", "cdist", "deepal"], help=argparse.SUPPRESS)
    p.add_argument("--peer-dtype", default="float32", help=argparse.SUPPRESS)
    p.add_argument("--peer-picks", type=int, default=0, help=argparse.SUPPRESS)
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
    print(f"total {time.perf_counter() - t0:.0f} s; load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
