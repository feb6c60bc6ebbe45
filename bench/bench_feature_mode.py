"""Feature-mode active learning (``activecrl run --embeddings E --model linear``) against training from
scratch: accuracy and time per stage at 1,000-5,000 random labels.

Three parts:

* ``loop``: ``run_active_learning`` with ``--model linear`` (or ``mlp``) on each ``--embeddings`` folder, random
  sampling, ``--initial``/``--budget``/``--stages`` (default 1,000 + 1,000 x 4), one trial, one CPU
  thread, once per ``--recipes`` entry (``default``: the loop's ``[train]``; the others are listed
  in ``RECIPES``). Per stage: test accuracy, training seconds, and the stage's wall time (train,
  test evaluation and query, from the loop's callbacks).
* ``probes``: the same budgets, labelled sets drawn as nested random subsets (seeded), scored by
  methods outside the loop on the same embeddings: logistic regression with C chosen by 5-fold
  cross-validation on the labelled rows only; 20-NN (cosine, majority vote); label spreading
  (Zhou et al. 2004, "Learning with local and global consistency", with the
  class mass normalisation of Zhu et al. 2003) over the kNN graph of the whole pool, its (k, alpha)
  chosen on 5,000 held-out training images, read out on the test split through the pool's
  nearest neighbours.
* ``timing``: one stage at each ``--timing`` label count, from scratch (the ``--preset``'s image
  model and training, baseline trainer) and in feature mode (``--model`` with the first
  ``--timing-recipe``), alternating, so both see the same load of a shared machine; the ratio of
  their training seconds and of their stage wall times.
* ``scratch``: the per-stage accuracy and training seconds recorded by ``activecrl run`` folders
  (``--scratch``), e.g. small_cnn4 trained from scratch with the ``cifar10_shared_cpu`` recipe.

    OMP_NUM_THREADS=1 PYTHONPATH=. python bench/bench_feature_mode.py --dataset data/cifar10.tar.gz \\
        --embeddings emb-patches --scratch runs/scratch --json feature_mode.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from activecrl.al.loop import ALConfig, LoopCallbacks, run_active_learning
from activecrl.al.records import read_records
from activecrl.data import load_dataset
from activecrl.embeddings.load import load_embeddings, load_test_embeddings

DEV = 5000  # training images outside the labelled set that choose label spreading's (k, alpha)

# [train] tables tried for the linear head; "default" is the loop's own (20 epochs, batch 32, one-cycle 0.1)
RECIPES = {
    "default": {},
    "e100-b64": {"epochs": 100, "batch_size": 64},
    "e100-b64-wd5e-3": {"epochs": 100, "batch_size": 64, "weight_decay": 5e-3},
    "e100-b64-lr0.01": {"epochs": 100, "batch_size": 64, "lr": 0.01},
    "wd5e-3": {"weight_decay": 5e-3},
    "wd2e-2": {"weight_decay": 2e-2},
    "e100-b64-wd2e-2": {"epochs": 100, "batch_size": 64, "weight_decay": 2e-2},
    "wd5e-2": {"weight_decay": 5e-2},
    "b256-wd5e-2": {"batch_size": 256, "weight_decay": 5e-2},
    "b256-e50-wd5e-2": {"batch_size": 256, "epochs": 50, "weight_decay": 5e-2},
    "b128-e30-wd5e-2": {"batch_size": 128, "epochs": 30, "weight_decay": 5e-2},
}


class _StageClock(LoopCallbacks):
    """Wall seconds of each stage: from its start to its record (train, evaluation, query)."""

    def __init__(self):
        self.started, self.seconds = 0.0, []

    def stage_start(self, trial, stage, n_labeled):
        self.started = time.perf_counter()

    def stage_end(self, record):
        self.seconds.append(time.perf_counter() - self.started)


def run_loop(dataset: str, embeddings: str, recipe: dict, args) -> list[dict]:
    config = ALConfig(dataset=dataset, embeddings=embeddings, model=args.model, strategy="random",
                      initial=args.initial, budget=args.budget, stages=args.stages, trials=1, seed=args.seed,
                      device="cpu", threads=1, train=recipe)
    clock = _StageClock()
    with tempfile.TemporaryDirectory() as tmp:
        records = run_active_learning(config, Path(tmp) / "run", callbacks=clock)
    return [{"labels": r.n_labeled, "accuracy": r.metrics["accuracy"], "train_s": r.train_seconds,
             "stage_s": s} for r, s in zip(records, clock.seconds)]


def one_stage(config: ALConfig) -> dict:
    clock = _StageClock()
    with tempfile.TemporaryDirectory() as tmp:
        record = run_active_learning(config, Path(tmp) / "run", callbacks=clock)[0]
    return {"accuracy": record.metrics["accuracy"], "train_s": record.train_seconds, "stage_s": clock.seconds[0]}


def run_timing(dataset: str, embeddings: str, args) -> list[dict]:
    """Alternating single stages: from scratch, then feature mode, at each label count."""
    from activecrl.core.config import load_toml, merge

    rows = []
    for n in args.timing:
        common = {"dataset": dataset, "strategy": "random", "initial": n, "stages": 1, "trials": 1,
                  "seed": args.seed, "device": "cpu", "threads": 1}
        scratch = ALConfig.from_dict(merge(load_toml(args.preset), {**common, "trainer": "baseline"}))
        feature = ALConfig(**common, embeddings=embeddings, model=args.model, train=RECIPES[args.timing_recipe])
        row = {"labels": n, "scratch": one_stage(scratch), "feature": one_stage(feature)}
        for key in ("train_s", "stage_s"):
            row[f"speedup_{key}"] = row["scratch"][key] / row["feature"][key]
        print("timing", json.dumps(row), flush=True)
        rows.append(row)
    return rows


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean, std = train.mean(0), train.std(0) + 1e-6
    return (train - mean) / std, (test - mean) / std


def _logistic(x, y, xt, seed):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV

    search = GridSearchCV(LogisticRegression(max_iter=2000), {"C": [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0]}, cv=5)
    search.fit(x, y)
    return search.predict(xt), {"C": search.best_params_["C"]}


def _knn(x, y, xt, k=20, classes=10):
    sims = xt @ x.T
    top = np.argpartition(-sims, kth=min(k, len(x) - 1), axis=1)[:, :k]
    votes = np.zeros((len(xt), classes))
    np.add.at(votes, (np.repeat(np.arange(len(xt)), top.shape[1]), y[top].ravel()), 1)
    return votes.argmax(1)


def neighbours(queries: np.ndarray, pool: np.ndarray, k: int, skip_self: bool) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, indices) of each query's k most cosine-similar pool rows (unit rows), in blocks."""
    import torch

    pool_t = torch.from_numpy(pool)
    sims, idx = [], []
    for start in range(0, len(queries), 2048):
        block = torch.from_numpy(queries[start:start + 2048]) @ pool_t.T
        if skip_self:  # a pool row is not its own neighbour
            block[torch.arange(len(block)), torch.arange(start, start + len(block))] = -2
        s, i = block.topk(k, dim=1)
        sims.append(s.numpy())
        idx.append(i.numpy())
    return np.concatenate(sims), np.concatenate(idx)


SPREAD_GRID = [(k, alpha) for k in (10, 20) for alpha in (0.8, 0.9, 0.95, 0.99)]
HEAT = 0.1  # edge weight exp((cos - 1) / HEAT)


def spreading_scores(graph, labelled, y, classes: int, k: int, alpha: float, iters: int = 40) -> np.ndarray:
    """Label spreading (Zhou et al. 2004): F <- alpha S F + (1 - alpha) Y on the symmetrised kNN graph
    of the pool (edge weights exp((cos - 1) / HEAT)), S = D^-1/2 W D^-1/2; then class mass
    normalisation (Zhu et al. 2003: each class's column scaled to sum 1, so a class that spreads
    further does not swallow the others) and rows scaled to sum 1."""
    from scipy import sparse

    idx = graph[1][:, :k]
    n = len(idx)
    weights = np.exp((graph[0][:, :k].ravel() - 1) / HEAT)
    w = sparse.csr_matrix((weights, (np.repeat(np.arange(n), k), idx.ravel())), shape=(n, n))
    w = w.maximum(w.T)
    d = np.asarray(w.sum(1)).ravel() ** -0.5
    s = sparse.diags(d) @ w @ sparse.diags(d)
    y0 = np.zeros((n, classes))
    y0[labelled, y[labelled]] = 1
    f = y0.copy()
    for _ in range(iters):
        f = alpha * (s @ f) + (1 - alpha) * y0
    f /= f.sum(0, keepdims=True) + 1e-12
    return f / (f.sum(1, keepdims=True) + 1e-12)


def label_spreading(graph, test_graph, labelled, dev, y, classes: int) -> tuple[np.ndarray, dict]:
    """Test predictions of the grid point (k, alpha) most accurate on the ``dev`` rows (training
    images outside the labelled set, never the test split); a test row sums the scores of its k
    nearest pool rows."""
    best = None
    for k, alpha in SPREAD_GRID:
        f = spreading_scores(graph, labelled, y, classes, k, alpha)
        dev_acc = float((f[dev].argmax(1) == y[dev]).mean())
        if best is None or dev_acc > best[0]:
            best = (dev_acc, k, alpha, f)
    dev_acc, k, alpha, f = best
    return f[test_graph[1][:, :k]].sum(1).argmax(1), {"k": k, "alpha": alpha, "dev_accuracy": dev_acc}


def run_probes(emb: np.ndarray, test: np.ndarray, y: np.ndarray, yt: np.ndarray, budgets, seed) -> list[dict]:
    unit, unit_t = [a / np.linalg.norm(a, axis=1, keepdims=True) for a in (emb, test)]  # cosine geometry
    std, std_t = _standardise(emb, test)
    order = np.random.default_rng(seed).permutation(len(emb))
    start = time.perf_counter()
    graph, test_graph = neighbours(unit, unit, 20, skip_self=True), neighbours(unit_t, unit, 20, skip_self=False)
    print(f"kNN graphs of the pool and the test split: {time.perf_counter() - start:.1f} s", flush=True)
    rows = []
    for n in budgets:
        idx = order[:n]
        row = {"labels": n}
        start = time.perf_counter()
        pred, params = _logistic(std[idx], y[idx], std_t, seed)
        row["logreg"] = {"accuracy": float((pred == yt).mean()), "seconds": time.perf_counter() - start, **params}
        start = time.perf_counter()
        pred = _knn(unit[idx], y[idx], unit_t, classes=int(y.max()) + 1)
        row["knn20"] = {"accuracy": float((pred == yt).mean()), "seconds": time.perf_counter() - start}
        start = time.perf_counter()
        pred, params = label_spreading(graph, test_graph, idx, order[n:n + DEV], y, int(y.max()) + 1)
        row["spreading"] = {"accuracy": float((pred == yt).mean()), "seconds": time.perf_counter() - start,
                            **params}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def scratch_rows(folder: Path) -> list[dict]:
    records = read_records(folder)
    by_labels: dict[int, list] = {}
    for r in records:
        by_labels.setdefault(r.n_labeled, []).append(r)
    return [{"labels": n, "trials": len(rs), "accuracy": float(np.mean([r.metrics["accuracy"] for r in rs])),
             "train_s": float(np.mean([r.train_seconds for r in rs]))} for n, rs in sorted(by_labels.items())]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--embeddings", nargs="*", default=[], help="embedding folders (pretrain / embed)")
    parser.add_argument("--scratch", nargs="*", default=[], help="`activecrl run` folders of from-scratch training")
    parser.add_argument("--model", default="linear", choices=["linear", "mlp"], help="feature-mode model of the loop")
    parser.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--initial", type=int, default=1000)
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--stages", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timing", type=int, nargs="*", default=[], help="label counts of the timing part")
    parser.add_argument("--timing-recipe", default="default", choices=list(RECIPES))
    parser.add_argument("--preset", default="cifar10_shared_cpu", help="the from-scratch side of --timing")
    parser.add_argument("--skip-loop", action="store_true")
    parser.add_argument("--skip-probes", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    budgets = [args.initial + i * args.budget for i in range(args.stages)]
    out: dict = {"budgets": budgets, "loop": {}, "probes": {}, "scratch": {}, "timing": {}}
    for folder in args.scratch:
        out["scratch"][folder] = scratch_rows(Path(folder))
        print("scratch", folder, json.dumps(out["scratch"][folder]), flush=True)
    ds = load_dataset(args.dataset) if args.embeddings and not args.skip_probes else None
    for emb_dir in args.embeddings:
        if args.timing:
            out["timing"][emb_dir] = run_timing(args.dataset, emb_dir, args)
        if not args.skip_loop:
            for name in args.recipes:
                rows = run_loop(args.dataset, emb_dir, RECIPES[name], args)
                out["loop"][f"{emb_dir} {args.model} {name}"] = rows
                print("loop", emb_dir, args.model, name, json.dumps(rows), flush=True)
        if ds is not None:
            emb, _ = load_embeddings(emb_dir, ds.n_train)
            test, _ = load_test_embeddings(emb_dir, ds.n_test, emb.shape[1])
            out["probes"][emb_dir] = run_probes(np.asarray(emb, np.float32), np.asarray(test, np.float32),
                                                ds.train_labels.numpy(), ds.test_labels.numpy(), budgets, args.seed)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
