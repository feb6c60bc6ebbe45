"""The payoff of well-ranked confidence: auto-label coverage at a guaranteed error, CIFAR-10.

A labeling project on the CIFAR-10 train split (the pool) with a simulated labeler (an oracle
CSV of the true labels). One cold start shared by every arm: 1,000 labels picked without a model
and 1,000 audit images drawn uniformly from the pool (labeled, held out of training). Each arm
then runs rounds of ``--budget`` labels (least confidence, the project default) with one model
and trainer; after each round, on the images still unlabeled:

a) the project's own ``export --auto-label`` (``Project.export``) at each risk R, delta D:
   coverage, the certified bound and the realized error of its auto-labels on the true labels;
b) ``--draws`` independent audits: ``--audit`` images drawn uniformly without replacement from
   the unlabeled pool, SGR (Geifman & El-Yaniv 2017) certifies a threshold on them, and the rest
   of the pool is auto-labeled at that threshold. Per draw: coverage and realized error; over
   draws: mean coverage, mean realized error, and the fraction of draws whose realized error
   exceeds R (SGR promises at most D), with its Clopper-Pearson 95 % interval.

Plus the model's accuracy and AURC on the unlabeled pool and the round's seconds. One JSON per
arm and round under ``--out/<arm>/``; an arm resumes from its last round (the projects live in
``--work``). ``--report`` writes the table (``table.md``) and the plots from the JSON files.

    python bench/autolabel_payoff.py --archive $CIFAR10 --work /tmp/autolabel --rounds 8 \
        --arms features-baseline features-crl features-sure scratch-baseline scratch-crl
    python bench/autolabel_payoff.py --report
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import shutil
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from activecrl.core.errors import ConfigError
from activecrl.evaluation.metrics import aurc
from activecrl.evaluation.selective import sgr
from activecrl.label import Project
from activecrl.label.rounds import next_round
from activecrl.label.status import clopper_pearson

logger = logging.getLogger("autolabel_payoff")

MODES = {"features": "linear", "scratch": "small_cnn4"}
TRAINERS = ("baseline", "crl", "sure")
RISKS = (0.05, 0.10)


# -- the pool ------------------------------------------------------------------------------------
def extract_train(archive: Path, work: Path) -> Path:
    """The archive's ``train`` split (``*/train/<class>/*.jpg``) under ``work``, extracted once."""
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and "/train/" in f"/{m.name}"]
        if not members:
            raise SystemExit(f"--archive must hold a train/<class>/ split, got {archive} without one")
        root = work / Path(members[0].name).parts[0] / "train"
        if not root.is_dir():
            tar.extractall(work, members=members, filter="data")
    return root


def stratified_pool(train: Path, work: Path, n: int | None, seed: int) -> Path:
    """The whole train split, or ``n`` images from it (the same share of every class) as hard links."""
    if n is None:
        return train
    out = work / f"pool-{n}-seed{seed}"
    if out.is_dir():
        return out
    classes = sorted(d.name for d in train.iterdir() if d.is_dir())
    files = {c: sorted((train / c).iterdir()) for c in classes}
    total = sum(len(v) for v in files.values())
    rng = np.random.default_rng(seed)
    tmp = work / f"{out.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for c in classes:
        k = max(1, round(n * len(files[c]) / total))
        (tmp / c).mkdir(parents=True)
        for i in sorted(rng.choice(len(files[c]), size=k, replace=False)):
            (tmp / c / files[c][i].name).hardlink_to(files[c][i])
    tmp.rename(out)
    return out


def write_oracle(pool: Path, out: Path) -> dict[str, str]:
    """``image,label`` for every image of the class folders (paths relative to the pool)."""
    truth = {f"{d.name}/{f.name}": d.name for d in sorted(pool.iterdir()) if d.is_dir() for f in sorted(d.iterdir())}
    with open(out, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(("image", "label"))
        writer.writerows(truth.items())
    return truth


# -- the evaluation ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Draws:
    """Per audit draw: whether SGR certified a threshold, the pool coverage, the realized error."""

    certified: np.ndarray
    coverage: np.ndarray
    realized: np.ndarray  # errors / auto-labeled (0 where nothing was auto-labeled)

    def violations(self, risk: float) -> np.ndarray:
        return self.certified & (self.realized > risk)

    def summary(self, risk: float, delta: float) -> dict:
        bad = int(self.violations(risk).sum())
        n = len(self.coverage)
        lo, hi = clopper_pearson(bad, n)
        return {"draws": n, "certified": float(self.certified.mean()), "mean_coverage": float(self.coverage.mean()),
                "mean_realized_error": float(self.realized[self.certified].mean()) if self.certified.any() else None,
                "violations": bad, "violation_fraction": bad / n, "violation_ci95": [lo, hi], "delta": delta,
                "max_realized_error": float(self.realized.max())}


def audit_draws(confidence, errors, *, m: int, risk: float, delta: float, draws: int, seed: int) -> Draws:
    """``draws`` audits of ``m`` images drawn uniformly without replacement from the pool; each
    certifies a threshold with SGR on its sample and auto-labels the rest of the pool with it.

    ``confidence``/``errors``: the model's confidence and whether it erred, per unlabeled image.
    An uncertified draw auto-labels nothing (coverage 0, realized error 0: it cannot violate).
    """
    conf = np.asarray(confidence, dtype=np.float64)
    err = np.asarray(errors, dtype=bool)
    if not m < len(conf):
        raise ConfigError(f"the audit size must be below the {len(conf)} unlabeled images, got {m} instead")
    # errors and counts at or above a threshold over the whole pool, by binary search on sorted confidences
    order = np.argsort(conf, kind="stable")
    sorted_conf = conf[order]
    err_above = np.concatenate([np.cumsum(err[order][::-1])[::-1], [0]])
    rng = np.random.default_rng(seed)
    rest = len(conf) - m
    certified, coverage, realized = np.zeros(draws, bool), np.zeros(draws), np.zeros(draws)
    for d in range(draws):
        sample = rng.choice(len(conf), size=m, replace=False)
        result = sgr(conf[sample], err[sample], risk, delta)
        if not result.certified:
            continue
        first = int(np.searchsorted(sorted_conf, result.threshold, side="left"))
        in_sample = conf[sample] >= result.threshold
        n_auto = len(conf) - first - int(in_sample.sum())
        n_err = int(err_above[first]) - int(err[sample][in_sample].sum())
        certified[d] = True
        coverage[d] = n_auto / rest
        realized[d] = n_err / n_auto if n_auto else 0.0
    return Draws(certified, coverage, realized)


def unlabeled_predictions(project: Project, truth: dict[str, str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(paths, confidence, erred) of the recorded predictions on the images still unlabeled."""
    rows = project.con.execute(
        "SELECT i.path, c.name, p.confidence FROM predictions p JOIN images i ON i.id = p.image_id "
        "JOIN classes c ON c.id = p.class_id WHERE p.image_id NOT IN (SELECT image_id FROM labels) "
        "ORDER BY i.path").fetchall()
    paths = [p for p, _, _ in rows]
    return (paths, np.array([c for _, _, c in rows], dtype=np.float64),
            np.array([truth[p] != name for p, name, _ in rows], dtype=bool))


def project_export(project: Project, truth: dict[str, str], risk: float, delta: float, out: Path) -> dict:
    """The project's ``export --auto-label``: its coverage, bound and the realized error of its auto-labels."""
    try:
        result = project.export(out, auto_label=True, risk=risk, delta=delta)
    except ConfigError as exc:  # too few audit labels for this risk
        return {"certified": False, "coverage": 0.0, "refused": str(exc)}
    with open(out, newline="") as fh:
        auto = [r for r in csv.DictReader(fh) if r["source"] == "auto"]
    wrong = sum(truth[r["image"]] != r["label"] for r in auto)
    s = result.sgr
    return {"certified": s.certified, "coverage": result.pool_coverage, "n_auto": result.n_auto,
            "threshold": s.threshold if s.certified else None, "bound": s.bound if s.certified else None,
            "audit_coverage": s.coverage, "realized_error": wrong / len(auto) if auto else None}


def evaluate_round(project: Project, truth: dict[str, str], *, m: int, delta: float, draws: int, seed: int,
                   scratch: Path) -> dict:
    paths, conf, err = unlabeled_predictions(project, truth)
    row = {"unlabeled": len(paths), "pool_accuracy": float(1 - err.mean()), "pool_aurc": aurc(conf, ~err)}
    for risk in RISKS:
        key = f"R{round(risk * 100)}"
        row[f"export_{key}"] = project_export(project, truth, risk, delta, scratch / "export.csv")
        row[f"draws_{key}"] = audit_draws(conf, err, m=m, risk=risk, delta=delta, draws=draws,
                                          seed=seed).summary(risk, delta)
    return row


# -- the runs ------------------------------------------------------------------------------------
def cold_start(work: Path, pool: Path, oracle: Path, *, budget: int, audit: int, seed: int) -> Path:
    """The project after the shared cold start (``budget`` labels + ``audit`` audit labels), once."""
    cold = work / f"cold-{pool.name}"
    if (cold / "DONE").exists():
        return cold
    shutil.rmtree(cold, ignore_errors=True)
    project = Project.init(cold, images=pool, classes=sorted(d.name for d in pool.iterdir() if d.is_dir()))
    result = next_round(project, budget, audit=audit, oracle=oracle, seed=seed, device="cpu")
    logger.info("cold start: %d labels by %s + %d audit in %.0f s", budget, result.strategy, audit, result.seconds)
    project.con.close()
    (cold / "DONE").write_text(f"{result.seconds:.1f}\n")
    return cold


def _arm_project(work: Path, cold: Path, arm: str, done: int) -> Project:
    """The arm's project with ``done`` model rounds: resumed when it has exactly those, else a fresh copy."""
    path = work / f"arms-{cold.name}" / arm
    if path.exists():
        project = Project.open(path)
        rounds = project.con.execute("SELECT COUNT(*) FROM batches WHERE status = 'imported'").fetchone()[0]
        if rounds == done + 1 and project.open_batch() is None:
            return project
        project.con.close()
        shutil.rmtree(path)
    if done:
        raise SystemExit(f"the project of {arm} does not match its {done} recorded rounds; delete the arm's JSON files")
    shutil.copytree(cold, path)
    return Project.open(path)


def run_arm(arm: str, *, work: Path, cold: Path, oracle: Path, truth: dict[str, str], out: Path, rounds: int,
            budget: int, m: int, delta: float, draws: int, seed: int) -> None:
    mode, trainer = arm.split("-")
    out.mkdir(parents=True, exist_ok=True)
    done = len(list(out.glob("round-*.json")))
    if done >= rounds:
        logger.info("%s: %d rounds recorded, skipped", arm, done)
        return
    project = _arm_project(work, cold, arm, done)
    for r in range(done + 1, rounds + 1):
        labeled = len(project.index_sets().labeled)
        result = next_round(project, budget, oracle=oracle, model=MODES[mode], trainer=trainer, seed=seed,
                            device="cpu")
        start = time.perf_counter()
        row = {"arm": arm, "mode": mode, "model": MODES[mode], "trainer": trainer, "round": r,
               "train_labels": labeled, "audit_labels": len(project.index_sets().audit),
               "round_seconds": result.seconds, **evaluate_round(project, truth, m=m, delta=delta, draws=draws,
                                                                  seed=seed + r, scratch=work)}
        row["eval_seconds"] = time.perf_counter() - start
        (out / f"round-{r:02d}.json").write_text(json.dumps(row, indent=1) + "\n")
        d10, e10 = row["draws_R10"], row["export_R10"]
        logger.info("%s round %d: %d labels, pool acc %.3f, R=10%%: export coverage %.3f, draws coverage %.3f, "
                    "violations %d/%d (%.0f s)", arm, r, labeled, row["pool_accuracy"], e10["coverage"],
                    d10["mean_coverage"], d10["violations"], d10["draws"], result.seconds)
    project.con.close()


# -- the report ----------------------------------------------------------------------------------
def load_rows(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("*/round-*.json"))]


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


ARM_ORDER = [f"{mode}-{t}" for mode in ("scratch", "features") for t in TRAINERS]


def _risk_cells(row: dict, risk: float) -> list[str]:
    e, d = row[f"export_R{round(risk * 100)}"], row[f"draws_R{round(risk * 100)}"]
    lo, hi = d["violation_ci95"]
    return [f"{_pct(e['coverage'])} / {_pct(e.get('realized_error'))}",
            f"{_pct(d['certified'])} / {_pct(d['mean_coverage'])} / {_pct(d['mean_realized_error'])}",
            f"{d['violations']}/{d['draws']} [{100 * lo:.1f}, {100 * hi:.1f}]"]


def table(rows: list[dict]) -> str:
    """One line per arm and round: accuracy and AURC on the unlabeled pool, then per risk R the
    project's export (coverage / realized error) and the draws (share certified / mean coverage /
    mean realized error of the certified ones, draws with realized error above R)."""
    head = ["arm", "train labels", "pool acc. %", "AURC ×10³"]
    for risk in RISKS:
        r = f"R={round(risk * 100)} %"
        head += [f"export {r}: cov. / err. %", f"draws {r}: certified / cov. / err. %", f"err. > R, {r} [95 % CI]"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["arm"], f"{row['train_labels']:,}", _pct(row["pool_accuracy"]), f"{1000 * row['pool_aurc']:.0f}"]
        for risk in RISKS:
            cells += _risk_cells(row, risk)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = sorted({r["arm"] for r in rows})
    fig, axes = plt.subplots(2, len(RISKS), figsize=(5 * len(RISKS), 8), squeeze=False)
    for j, risk in enumerate(RISKS):
        key = f"draws_R{round(risk * 100)}"
        for arm in arms:
            own = sorted((r for r in rows if r["arm"] == arm), key=lambda r: r["train_labels"])
            cov = [100 * r[key]["mean_coverage"] for r in own]
            style = "-" if arm.startswith("scratch") else "--"
            axes[0][j].plot([r["train_labels"] for r in own], cov, style, marker="o", label=arm)
            axes[1][j].plot([100 * r["pool_accuracy"] for r in own], cov, style, marker="o", label=arm)
        axes[0][j].set(title=f"R = {round(risk * 100)} %, D = {rows[0][key]['delta']}", xlabel="training labels",
                       ylabel="auto-labeled share of the unlabeled pool (%)")
        axes[1][j].set(xlabel="model accuracy on the unlabeled pool (%)",
                       ylabel="auto-labeled share of the unlabeled pool (%)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(out: Path) -> None:
    rows = sorted(load_rows(out), key=lambda r: (ARM_ORDER.index(r["arm"]), r["train_labels"]))
    if not rows:
        raise SystemExit(f"no results under {out}; run the arms first")
    (out / "table.md").write_text(table(rows))
    plot(rows, out / "coverage.png")
    print(table(rows))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", type=Path, help="the JPEG CIFAR-10 archive ($CIFAR10)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/autolabel_payoff"),
                        help="the extracted pool and the projects")
    parser.add_argument("--out", type=Path, default=Path("results/autolabel"), help="the JSON rows and the report")
    parser.add_argument("--arms", nargs="+", default=[f"features-{t}" for t in TRAINERS],
                        help="MODE-TRAINER, MODE in features|scratch, TRAINER in baseline|crl|sure")
    parser.add_argument("--rounds", type=int, default=8, help="model rounds per arm")
    parser.add_argument("--budget", type=int, default=1000, help="labels per round (and of the cold start)")
    parser.add_argument("--audit", type=int, default=1000, help="audit labels: the project's, and per draw")
    parser.add_argument("--draws", type=int, default=200, help="independent audit draws per round and risk")
    parser.add_argument("--delta", type=float, default=0.10)
    parser.add_argument("--pool", type=int, default=None, help="a stratified subset of the train split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", action="store_true", help="only write the table and the plots")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if not args.report:
        if args.archive is None:
            parser.error("--archive is required to run the arms")
        for arm in args.arms:
            mode, _, trainer = arm.partition("-")
            if mode not in MODES or trainer not in TRAINERS:
                parser.error(f"--arms must be MODE-TRAINER with MODE in {sorted(MODES)} and TRAINER in {TRAINERS}, "
                             f"got {arm!r} instead")
        args.work.mkdir(parents=True, exist_ok=True)
        pool = stratified_pool(extract_train(args.archive, args.work), args.work, args.pool, args.seed)
        oracle = args.work / f"oracle-{pool.name}.csv"
        truth = write_oracle(pool, oracle)
        cold = cold_start(args.work, pool, oracle, budget=args.budget, audit=args.audit, seed=args.seed)
        for arm in args.arms:
            run_arm(arm, work=args.work, cold=cold, oracle=oracle, truth=truth, out=args.out / arm,
                    rounds=args.rounds, budget=args.budget, m=args.audit, delta=args.delta, draws=args.draws,
                    seed=args.seed)
    report(args.out)


if __name__ == "__main__":
    main()
