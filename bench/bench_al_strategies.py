"""Speed and memory of badge, typiclust and probcover (strategies/badge.py, typiclust.py,
probcover.py), each implementation in its own subprocess (peak RSS measured there).

BADGE (pool 20,000 x 512, 100 classes, budget 1,000) against references that build the
explicit gradient embeddings ``g_i = (p_i - e_{y_i}) (x) f_i`` (n x C d = 20,000 x 51,200) and run
k-means++ seeding on them:

* ``authors``: as the BADGE authors' ``init_centers`` (github.com/JordanAsh/badge,
  ``query_strategies/badge_sampling.py``): first centre the largest norm, then per pick
  ``sklearn.metrics.pairwise_distances(X, [mu])`` and a Python loop keeping the nearest-centre
  distance, D^2 sampling. Their embedding matrix is float64 (``np.zeros``); here it is float32
  (4.1 GB instead of 8.2 GB, which this machine cannot spare), which favours the reference.
* ``explicit``: the same explicit float32 matrix with precomputed norms and one ``torch.mv``
  per pick (the best one can do with the explicit matrix).

Both draw with the same ``d2_sample`` primitive as ours, so with the same ``rng`` they pick the
same points; the bench checks that at a small size, run in full. At full size the references'
picks cost the same each (one pass over the matrix), so a prefix of ``--ref-picks`` picks is
timed and scaled to the budget (building the matrix is timed in full).

typiclust and probcover run at pool --big-n x --d (50,000 x 512), no labels, budget 1,000
(typiclust: 500 k-means clusters, the authors' cap), on synthetic embeddings (--data):
``sphere`` (default): 10 Gaussian blobs on the unit sphere, each spread over a random
16-dimensional subspace with decaying scales plus isotropic noise, L2-normalised (low intrinsic
dimension, like real features); ``groups``: 10 classes x 20 sub-clusters (``make_embeddings``),
so clean that ProbCover's purity radius puts whole classes in one ball. probcover runs with its
defaults, i.e. on its approximate path (sampled purity radius, cell-probing graph) above 20,000
rows. Its reference is its exact path, measured in the same run at --ref-n rows (20,000: the
largest it takes by default) next to the approximate path forced there (``exact_max=0``);
then, in this process at --ref-n: the recall of the approximate graph against the exact one
at the same delta (all rows), faiss ``IndexIVFFlat.range_search`` with the same cells and
nprobe (the obvious tool), and the coverage that the exact and the approximate picks reach
under the exact graph.

    OMP_NUM_THREADS=1 PYTHONPATH=. python bench/bench_al_strategies.py --threads 1   # everything
    PYTHONPATH=. python bench/bench_al_strategies.py --skip-ref            # ours only
    OMP_NUM_THREADS=1 PYTHONPATH=. python bench/bench_al_strategies.py --threads 1 --skip-badge  # typiclust, probcover
    PYTHONPATH=. python bench/bench_al_strategies.py --skip-badge --embeddings feats.npy  # real embeddings
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

from _memory import reset_peak_rss, status_mb  # bench/_memory.py (this script's folder is on sys.path)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_pool(n: int, d: int, classes: int, seed: int = 0):
    """Clustered features (one cluster per class, like penultimate features) and logits that
    mostly predict the cluster, with moderate confidence."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(classes, d)).astype(np.float32)
    y = rng.integers(classes, size=n)
    feats = centers[y] + rng.normal(size=(n, d)).astype(np.float32)
    logits = rng.normal(scale=1.5, size=(n, classes)).astype(np.float32)
    logits[np.arange(n), y] += 4.0
    return torch.from_numpy(feats), torch.from_numpy(logits)


def sphere_blobs(n: int, d: int, seed: int = 0, classes: int = 10, intrinsic: int = 16, spread: float = 0.5,
                 noise: float = 0.1):
    """``classes`` Gaussian blobs around random unit centres, each spread over its own random
    ``intrinsic``-dimensional subspace (scales decaying as 1/sqrt(i), total ``spread``) plus
    isotropic noise of norm about ``noise``, L2-normalised, float32."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    scales = np.arange(1, intrinsic + 1) ** -0.5
    scales *= spread / np.sqrt((scales ** 2).sum())
    c = rng.integers(classes, size=n)
    x = np.empty((n, d), np.float32)
    for b in range(classes):
        rows = np.flatnonzero(c == b)
        basis = np.linalg.qr(rng.normal(size=(d, intrinsic)))[0]
        x[rows] = (centres[b] + (rng.normal(size=(len(rows), intrinsic)) * scales) @ basis.T
                   + rng.normal(size=(len(rows), d)) * (noise / np.sqrt(d)))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def embeddings(args, n: int) -> np.ndarray:
    if args.embeddings:
        return np.ascontiguousarray(np.load(args.embeddings)[:n], dtype=np.float32)
    return sphere_blobs(n, args.d) if args.data == "sphere" else make_embeddings(n, args.d)


def make_embeddings(n: int, d: int, seed: int = 0, classes: int = 10, modes: int = 20):
    """Synthetic self-supervised-like embeddings: ``classes`` groups, each a mixture of ``modes``
    sub-clusters of different spread (so purity and typicality have structure at two scales)."""
    rng = np.random.default_rng(seed)
    top = rng.normal(size=(classes, d)) * 1.0
    sub = top[:, None, :] + rng.normal(size=(classes, modes, d)) * 0.5
    spread = rng.uniform(0.1, 0.4, size=(classes, modes))
    c, m = rng.integers(classes, size=n), rng.integers(modes, size=n)
    x = sub[c, m] + rng.normal(size=(n, d)) * spread[c, m][:, None] * (1.0 / np.sqrt(d)) * 8
    return x.astype(np.float32)


# ---------------------------------------------------------------------------- references
def explicit_embedding(logits: torch.Tensor, feats: torch.Tensor) -> np.ndarray:
    """The n x (C d) gradient embedding matrix (float32), as the BADGE code builds it (row i,
    block c: ``f_i * (p_ic - [c == y_i])``; the sign does not change distances)."""
    from activecrl.strategies.badge import gradient_factors

    q, f = gradient_factors(logits, feats)
    n, c = q.shape
    g = np.empty((n, c * feats.shape[1]), dtype=np.float32)
    for k in range(c):  # block by block: no (n, C, d) float64 temporary
        g[:, k * f.shape[1]:(k + 1) * f.shape[1]] = f.numpy() * q.numpy()[:, k:k + 1]
    return g


def authors_kmeans_pp(g: np.ndarray, k: int, rng: np.random.Generator, max_picks: int | None = None) -> list:
    """BADGE's init_centers on an explicit matrix (per pick: sklearn pairwise_distances and a
    Python loop for the nearest-centre distance), drawing with ``d2_sample``."""
    from sklearn.metrics import pairwise_distances

    from activecrl.strategies.badge import d2_sample

    ind = int(np.argmax([np.linalg.norm(s, 2) for s in g]))
    picks = [ind]
    dist = pairwise_distances(g, g[[ind]]).ravel().astype(float)
    stop = k if max_picks is None else min(k, max_picks)
    while len(picks) < stop:
        w = dist ** 2
        w[picks] = 0.0
        ind = d2_sample(w, rng)
        picks.append(ind)
        new = pairwise_distances(g, g[[ind]]).ravel().astype(float)
        for i in range(len(g)):  # as their code: a Python loop over the pool
            if dist[i] > new[i]:
                dist[i] = new[i]
    return picks


def explicit_kmeans_pp(g: np.ndarray, k: int, rng: np.random.Generator, max_picks: int | None = None) -> list:
    """k-means++ on the explicit matrix with one torch.mv per pick (norms precomputed)."""
    from activecrl.strategies.badge import d2_sample

    gt = torch.from_numpy(g)
    sq = np.einsum("ij,ij->i", g, g, dtype=np.float64)  # no second n x C d temporary
    picks = [int(np.argmax(sq))]
    d2 = np.full(len(g), np.inf)
    stop = k if max_picks is None else min(k, max_picks)
    while True:
        c = picks[-1]
        new = np.maximum(sq + sq[c] - 2.0 * torch.mv(gt, gt[c]).double().numpy(), 0.0)
        np.minimum(d2, new, out=d2)
        d2[picks] = 0.0
        if len(picks) >= stop:
            return picks
        picks.append(d2_sample(d2, rng))


# ---------------------------------------------------------------------------- worker
def _time_phases() -> dict:
    """Wrap probcover's steps with CPU-time counters; returns the dict they fill (seconds)."""
    import activecrl.strategies._cellgraph as cg
    import activecrl.strategies.probcover as pc

    spent: dict[str, float] = {}

    def timed(mod, name):
        fn = getattr(mod, name)

        def wrapper(*a, **k):
            t = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                spent[name] = spent.get(name, 0.0) + time.process_time() - t
        setattr(mod, name, wrapper)

    for mod, name in ((pc, "kmeans"), (pc, "sampled_purity_delta"), (pc, "purity_delta_and_graph"), (pc, "ball_check"),
                      (pc, "cell_ball_graph"), (pc, "max_coverage_greedy"), (cg, "train_cells"), (cg, "nearest_centroids"),
                      (cg, "cap_nearest")):
        timed(mod, name)
    return spent


def worker(args) -> None:
    torch.set_num_threads(args.threads)
    import faiss  # noqa: F401  (library load is not the algorithm's memory)
    import sklearn.metrics  # noqa: F401

    import activecrl.strategies
    from activecrl.inference.outputs import PoolOutputs

    out = {"worker": args.worker}
    if args.worker in ("badge", "authors", "explicit"):
        feats, logits = make_pool(args.n, args.d, args.classes)
    else:
        emb = embeddings(args, args.n)
    reset_peak_rss()
    base = status_mb("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    rng = np.random.default_rng(0)
    if args.worker == "badge":
        ctx = strategies.QueryContext(pool=PoolOutputs(torch.arange(args.n), logits, feats), device=args.device)
        picks = strategies.get_strategy("badge").query(ctx, args.budget, rng)
    elif args.worker in ("authors", "explicit"):
        g = explicit_embedding(logits, feats)
        out["build_s"], out["build_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
        t1, c1 = time.perf_counter(), time.process_time()
        fn = authors_kmeans_pp if args.worker == "authors" else explicit_kmeans_pp
        picks = fn(g, args.budget, rng, max_picks=args.max_picks)
        out["picks_made"] = len(picks)
        out["picks_s"], out["picks_cpu_s"] = time.perf_counter() - t1, time.process_time() - c1
    else:
        ctx = strategies.QueryContext(pool=PoolOutputs(torch.arange(args.n), torch.zeros(args.n, 10)),
                                      embeddings=emb, device=args.device)
        s = strategies.get_strategy(args.worker, **(json.loads(args.params) if args.worker == "probcover" else {}))
        phases = _time_phases() if args.phases and args.worker == "probcover" else None
        picks = s.query(ctx, args.budget, rng)
        if phases is not None:
            out["phases"] = phases
        if args.worker == "probcover":
            out.update(delta=s.delta_, greedy_picks=s.n_greedy_, approximate=s.approximate_,
                       recall=s.graph_recall_, max_degree=s.max_degree_)
    out["seconds"], out["cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
    out["extra_peak_mb"] = status_mb("VmHWM") - base
    out["picks"] = [int(i) for i in picks]
    print(json.dumps(out))


def run(kind: str, args, n: int, budget: int, max_picks: int | None = None, classes=None, d=None,
        params: dict | None = None) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", kind, "--n", str(n), "--budget", str(budget),
           "--d", str(d or args.d), "--classes", str(classes or args.classes), "--threads", str(args.threads),
           "--device", args.device, "--data", args.data, "--params", json.dumps(params or {})]
    if args.phases:
        cmd.append("--phases")
    if max_picks:
        cmd += ["--max-picks", str(max_picks)]
    if args.embeddings:
        cmd += ["--embeddings", args.embeddings]
    res = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
    if res.returncode != 0:
        raise SystemExit(f"worker {kind} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _pc_line(label: str, r: dict) -> str:
    how = (f"approximate, graph recall {r['recall']:.3f} on 256 points" if r["approximate"] else "exact")
    cap = f", max_degree {r['max_degree']}" if r["max_degree"] else ""
    phases = ("\n    CPU by step: " + ", ".join(f"{k} {v:.2f} s" for k, v in r["phases"].items())
              if r.get("phases") else "")
    return (f"{label}: {r['seconds']:.2f} s (CPU {r['cpu_s']:.2f} s), extra peak {r['extra_peak_mb']:.0f} MB; "
            f"delta {r['delta']:.4f}, {r['greedy_picks']} greedy picks, {how}{cap}{phases}")


def bench_embedding(args) -> None:
    src = args.embeddings or args.data
    pc = json.loads(args.pc_params)
    for kind in ("typiclust", "probcover"):
        r = run(kind, args, args.big_n, args.budget, params=pc)
        label = f"{kind:9s} n={args.big_n} ({src}) budget {args.budget}"
        print(_pc_line(label, r) if kind == "probcover" else
              f"{label}: {r['seconds']:.2f} s (CPU {r['cpu_s']:.2f} s), extra peak {r['extra_peak_mb']:.0f} MB",
              flush=True)
    if not args.ref_n:
        return
    n = args.ref_n
    ex = run("probcover", args, n, args.budget, params={**pc, "exact_max": n})
    ap = run("probcover", args, n, args.budget, params={**pc, "exact_max": 0})
    print(_pc_line(f"probcover n={n} exact path (reference)", ex))
    print(_pc_line(f"probcover n={n} approximate path     ", ap))
    print(f"  -> at n={n}: approximate {ex['seconds'] / ap['seconds']:.1f}x faster (CPU "
          f"{ex['cpu_s'] / ap['cpu_s']:.1f}x), memory {ex['extra_peak_mb']:.0f} vs {ap['extra_peak_mb']:.0f} MB; "
          f"sampled delta / exact delta = {ap['delta'] / ex['delta']:.4f}", flush=True)
    graph_quality(args, n, ex, ap, pc)


def graph_quality(args, n: int, ex: dict, ap: dict, pc: dict) -> None:
    """In this process: recall of the approximate graph (and of faiss IVFFlat range search with
    the same cells) against the exact graph at the exact delta, and the coverage of both pick
    sets under that graph."""
    import faiss

    from activecrl.strategies._cellgraph import cell_ball_graph, default_cells, train_cells
    from activecrl.strategies._geometry import ball_graph, normalize_rows

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    x = normalize_rows(embeddings(args, n))
    delta = ex["delta"]
    t0 = time.process_time()
    ptr, idx = ball_graph(x, delta, 1 << 40, "bench")
    t_exact = time.process_time() - t0
    rows = np.repeat(np.arange(n), np.diff(ptr))
    exact = rows.astype(np.int64) * n + idx
    nprobe, cells = int(pc.get("nprobe", 8)), int(pc.get("n_cells") or default_cells(n))

    def recall(keys):
        return np.isin(exact, keys).mean()

    t0 = time.process_time()
    a_ptr, a_idx = cell_ball_graph(x, delta, np.random.default_rng(0), nprobe, cells)
    t_cells = time.process_time() - t0
    a_keys = np.repeat(np.arange(n), np.diff(a_ptr)).astype(np.int64) * n + a_idx
    # faiss IndexIVFFlat with the same k-means cells, range search (one direction, as faiss gives)
    centroids = train_cells(x, cells, np.random.default_rng(0))
    quantizer = faiss.IndexFlatL2(x.shape[1])
    quantizer.add(centroids)
    index = faiss.IndexIVFFlat(quantizer, x.shape[1], cells)
    index.is_trained = True  # the same cells as ours
    t0 = time.process_time()
    index.add(x)
    index.nprobe = nprobe
    keys = []
    for s in range(0, n, 4096):
        lims, _, ids = index.range_search(x[s:s + 4096], float(np.float32(delta) ** 2))
        hits = np.diff(lims.astype(np.int64))
        keys.append(np.repeat(np.arange(s, min(n, s + 4096)), hits).astype(np.int64) * n + ids)
    t_faiss = time.process_time() - t0
    print(f"  graph at n={n}, exact delta {delta:.4f} ({len(exact):,} edges, mean degree {len(exact) / n:.1f}):")
    print(f"    exact (ball_graph)                       CPU {t_exact:7.2f} s")
    print(f"    ours: cells, {nprobe} of {cells} probed          CPU {t_cells:7.2f} s, recall {recall(a_keys):.4f}, "
          f"{len(a_keys):,} edges ({(~np.isin(a_keys, exact)).sum()} not in the exact graph)")
    print(f"    faiss IndexIVFFlat.range_search, same    CPU {t_faiss:7.2f} s, recall "
          f"{recall(np.concatenate(keys)):.4f}", flush=True)
    covered = []
    for r in (ex, ap):
        hit = np.zeros(n, bool)
        p = np.asarray(r["picks"])
        hit[idx[np.concatenate([np.arange(ptr[i], ptr[i + 1]) for i in p])]] = True
        covered.append(hit.mean())
    print(f"    coverage at the exact delta of the {args.budget} picks: exact path {covered[0]:.4f}, "
          f"approximate path {covered[1]:.4f}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worker", default=None)
    p.add_argument("--n", type=int, default=20_000, help="BADGE pool size")
    p.add_argument("--d", type=int, default=512)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--budget", type=int, default=1000)
    p.add_argument("--max-picks", type=int, default=None)
    p.add_argument("--ref-picks", type=int, default=20, help="picks timed for each full-size reference")
    p.add_argument("--big-n", type=int, default=50_000, help="pool of typiclust / probcover")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="device of ours (badge's loop, probcover's pass); references: CPU")
    p.add_argument("--skip-ref", action="store_true")
    p.add_argument("--skip-badge", action="store_true")
    p.add_argument("--skip-embedding", action="store_true")
    p.add_argument("--embeddings", default=None,
                   help="a .npy (n, d) of real embeddings for typiclust/probcover (first --big-n rows)")
    p.add_argument("--data", choices=["sphere", "groups"], default="sphere",
                   help="synthetic embeddings for typiclust/probcover (module docstring)")
    p.add_argument("--ref-n", type=int, default=20_000,
                   help="rows where probcover's exact path is the reference (0: skip)")
    p.add_argument("--pc-params", default="{}", help="probcover parameters, JSON, for every probcover run")
    p.add_argument("--phases", action="store_true", help="print probcover's CPU time by step")
    p.add_argument("--params", default="{}", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    print(f"torch {torch.__version__}, {args.threads} threads, cpus {os.cpu_count()}, load {os.getloadavg()}")
    if not args.skip_badge:
        # small case, run in full: the references must pick exactly what ours picks
        small = dict(n=2000, budget=100, classes=10, d=64)
        ours = run("badge", args, **small)
        for ref in ([] if args.skip_ref else ["explicit", "authors"]):
            r = run(ref, args, **small)
            same = sum(a == b for a, b in zip(ours["picks"], r["picks"]))
            print(f"small case n=2000 C=10 d=64 budget 100: {ref} picks {same}/100 equal to ours, in order")
        ours = run("badge", args, args.n, args.budget)
        print(f"badge ours     n={args.n} d={args.d} C={args.classes} budget {args.budget}: "
              f"{ours['seconds']:.2f} s (CPU {ours['cpu_s']:.2f} s), extra peak {ours['extra_peak_mb']:.0f} MB "
              f"(features + logits {args.n * (args.d + args.classes) * 4 / 2**20:.0f} MB)")
        for ref in ([] if args.skip_ref else ["explicit", "authors"]):
            r = run(ref, args, args.n, args.budget, max_picks=args.ref_picks)
            total = r["build_s"] + r["picks_s"] / r["picks_made"] * args.budget
            cpu = r["build_cpu_s"] + r["picks_cpu_s"] / r["picks_made"] * args.budget
            same = sum(a == b for a, b in zip(ours["picks"], r["picks"]))
            print(f"badge {ref:8s} build {r['build_s']:.1f} s + {r['picks_made']} picks {r['picks_s']:.1f} s "
                  f"-> {args.budget} picks ~{total:.0f} s (CPU ~{cpu:.0f} s), extra peak {r['extra_peak_mb']:.0f} MB; "
                  f"first {r['picks_made']} picks equal to ours: {same}; ratio wall {total / ours['seconds']:.0f}x, "
                  f"CPU {cpu / ours['cpu_s']:.0f}x, memory {r['extra_peak_mb'] / max(ours['extra_peak_mb'], 1):.0f}x")
    if not args.skip_embedding:
        bench_embedding(args)
    print(f"load average now {os.getloadavg()}")


if __name__ == "__main__":
    main()
