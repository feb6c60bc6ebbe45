"""Comparing active-learning runs: AUBC with intervals over trials and the pairwise penalty matrix.

``compare_runs(paths)`` reads ``activecrl run`` folders and computes, all before anything is
written (``write_compare`` then writes ``compare.json``, ``penalty.png``, ``curves.png``):

- **AUBC** per trial: the trapezoid area under accuracy vs number of labels divided by the label
  range (Zhan et al. 2021), the same for AURC; per run the mean over trials and a 95 % percentile
  bootstrap interval of that mean: the 2.5th and 97.5th percentiles of the means of
  ``TRIAL_RESAMPLES`` resamples of the trials with replacement (Efron & Tibshirani 1993, ch. 13).
  Unlike a Student-t interval (mean ± t·s/√k, which with 3 trials gave accuracies above 100 %),
  it lies between the smallest and largest trial, so inside the metric's range. A single trial
  has no interval: ``null``.
- **Penalty matrix** (Ash et al., ICLR 2020, Section 5, as Lüth et al., NeurIPS 2023 use it): for
  runs i, j of the same dataset, at every stage where both have results from at least two shared
  trials (same trial index and base ``--seed`` = the same seed set), a paired two-sided t-test on
  test accuracy over those trials at α = 0.05. With L such stages, ``P[i][j]`` gains ``1/L`` for
  each stage where i is significantly better than j (p < α and a positive mean difference).
  Matrices of several datasets are summed; rows and columns follow the order the runs were given.
  A column's mean over the other runs of its dataset says how often that run is beaten (lower is
  better).

Unfinished runs are compared on the stages they have: AUBC over the stages every run of the
dataset reached (trials that stop earlier are left out of it), the t-tests on the shared trials of
each stage; ``notes`` in the result say what was left out.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

from activecrl.core.errors import ConfigError
from activecrl.core.io import _atomic, atomic_write_json
from activecrl.al.records import StageRecord
from activecrl.al.runs import Curve, RunSummary, distinct_labels, draw_curves, load_run, normalised_area
from activecrl.evaluation.report import dataset_label

__all__ = ["CompareRun", "AreaStats", "CompareResult", "compare_run", "trial_interval", "paired_t_test",
           "penalty_matrix", "compare_runs", "write_compare", "ALPHA"]

ALPHA = 0.05
TRIAL_RESAMPLES = 10_000  # resamples of the trials for the interval of a mean (fixed seed: reproducible)


@dataclass
class CompareRun:
    """One ``activecrl run`` folder (read by ``activecrl.al.runs.load_run``) keyed for pairing: its
    records by (trial, stage), its base seed and planned size."""

    path: Path
    label: str
    dataset: str
    seed: int  # the base --seed: trial t of two runs has the same seed set only with the same seed
    planned_trials: int
    planned_stages: int
    records: dict[tuple[int, int], StageRecord]  # (trial, stage) -> record

    def trials(self) -> list[int]:
        return sorted({t for t, _ in self.records})

    def stages_of(self, trial: int) -> list[int]:
        return sorted(s for t, s in self.records if t == trial)

    def n_labeled(self, stage: int) -> int | None:
        values = {r.n_labeled for (t, s), r in self.records.items() if s == stage}
        return values.pop() if len(values) == 1 else None

    def value(self, trial: int, stage: int, metric: str) -> float:
        v = self.records[(trial, stage)].value(metric)
        return float("nan") if v is None else float(v)


@dataclass
class AreaStats:
    mean: float
    ci95: list[float] | None  # percentile bootstrap interval of the mean over trials; None with one trial
    per_trial: list[float]
    trials: list[int]

    def to_json(self) -> dict:
        return {"mean": self.mean, "ci95": self.ci95, "per_trial": self.per_trial, "trials": self.trials}


@dataclass
class CompareResult:
    runs: list[CompareRun]
    aubc: dict[str, AreaStats]  # accuracy
    aubc_aurc: dict[str, AreaStats]
    stages: dict[str, list[int]]  # dataset -> stage indices the AUBC covers
    penalty: np.ndarray  # (k, k)
    tested_stages: np.ndarray  # (k, k) L per pair (0: not comparable or another dataset)
    column_means: list[float | None]
    notes: list[str] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        return [r.label for r in self.runs]

    def to_json(self) -> dict:
        return {
            "labels": self.labels,
            "aubc": {k: v.to_json() for k, v in self.aubc.items()},
            "penalty": {"labels": self.labels, "matrix": self.penalty.tolist()},
            "aubc_aurc": {k: v.to_json() for k, v in self.aubc_aurc.items()},
            "penalty_column_means": self.column_means,
            "penalty_tested_stages": self.tested_stages.astype(int).tolist(),
            "runs": {r.label: {"path": str(r.path), "dataset": r.dataset, "seed": r.seed, "trials": r.trials(),
                               "aubc_labels": [r.n_labeled(s) for s in self.stages[r.dataset]]}
                     for r in self.runs},
            "protocol": {
                "aubc": "trapezoid area under the metric vs number of labels, divided by the label range, per trial",
                "ci95": f"percentile bootstrap interval of the mean over trials (2.5th and 97.5th percentiles "
                        f"of the means of {TRIAL_RESAMPLES} resamples of the trials with replacement)",
                "penalty": "P[i][j] += 1/L for each of the L stages (>= 2 shared trials) where a paired two-sided "
                           f"t-test on accuracy gives p < {ALPHA} and i is better; summed over datasets",
                "column_means": "mean of a column over the other runs of the same dataset (lower is better)",
                "alpha": ALPHA,
            },
            "notes": self.notes,
        }


# ----------------------------------------------------------------------------- statistics


def trial_interval(values, n_resamples: int = TRIAL_RESAMPLES, seed: int = 0) -> tuple[float, list[float] | None]:
    """(mean, 95 % percentile bootstrap interval of the mean) over trials; None for a single trial.

    The interval's ends are means of trials, so it stays within the range of the values (a metric's
    range) where a Student-t interval would not."""
    v = np.asarray(values, dtype=float)
    mean = float(v.mean())
    if v.size < 2:
        return mean, None
    picks = np.random.default_rng(seed).integers(0, v.size, size=(n_resamples, v.size))
    # a mean of equal values may round past them: clipped to the trials' range, which it lies in exactly
    low, high = np.clip(np.percentile(v[picks].mean(axis=1), [2.5, 97.5]), v.min(), v.max())
    return mean, [float(low), float(high)]


def paired_t_test(a, b) -> tuple[float, float]:
    """(mean of a - b, two-sided p) of the paired t-test (= ``scipy.stats.ttest_rel``).

    Differences that are all equal have no spread: p = 0 if they are non-zero (every trial agrees),
    p = 1 if they are all zero (identical results, e.g. the shared first stage), where scipy gives
    inf/NaN with a warning.
    """
    d = np.round(np.asarray(a, dtype=float) - np.asarray(b, dtype=float), 12)  # float noise of equal values
    if d.size < 2:
        raise ConfigError(f"a paired t-test needs at least 2 paired trials, got {d.size} instead")
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0.0:
        return mean, 0.0 if mean != 0.0 else 1.0
    t = mean / (sd / math.sqrt(d.size))
    return mean, float(2 * stats.t.sf(abs(t), d.size - 1))


def penalty_matrix(runs: list[CompareRun], metric: str = "accuracy", alpha: float = ALPHA,
                   higher_is_better: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(P, L)``: the pairwise penalty matrix and the number of tested stages per pair (see module doc)."""
    k = len(runs)
    penalty, tested = np.zeros((k, k)), np.zeros((k, k), dtype=int)
    for i in range(k):
        for j in range(i + 1, k):
            a, b = runs[i], runs[j]
            if a.dataset != b.dataset or a.seed != b.seed:  # other data, or other seed sets: no pairs
                continue
            wins_i, wins_j, n_stages = 0, 0, 0
            for stage in sorted({s for _, s in a.records} & {s for _, s in b.records}):
                shared = [t for t in a.trials() if (t, stage) in a.records and (t, stage) in b.records]
                if len(shared) < 2 or a.n_labeled(stage) != b.n_labeled(stage):
                    continue
                n_stages += 1
                diff, p = paired_t_test([a.value(t, stage, metric) for t in shared],
                                        [b.value(t, stage, metric) for t in shared])
                if p < alpha and diff != 0:
                    if (diff > 0) == higher_is_better:
                        wins_i += 1
                    else:
                        wins_j += 1
            tested[i, j] = tested[j, i] = n_stages
            if n_stages:
                penalty[i, j] += wins_i / n_stages
                penalty[j, i] += wins_j / n_stages
    return penalty, tested


# ----------------------------------------------------------------------------- loading


def compare_run(summary: RunSummary, label: str) -> CompareRun:
    """The records of a loaded run keyed by (trial, stage), under ``label``."""
    config = summary.config
    return CompareRun(summary.path, label, dataset_label(config.get("dataset")), int(config.get("seed", 0)),
                      int(config.get("trials", 0)), int(config.get("stages", 0)),
                      {(r.trial, r.stage): r for r in summary.records})


def _load(paths: list[Path]) -> list[CompareRun]:
    """The runs under :func:`activecrl.al.runs.distinct_labels`; a folder given twice is an error."""
    summaries = [load_run(p) for p in paths]
    seen: dict[Path, Path] = {}
    for summary in summaries:
        where = summary.path.resolve()
        if where in seen:
            raise ConfigError(f"run folder {summary.path} was given twice; pass each run once")
        seen[where] = summary.path
    return [compare_run(s, label) for s, label in zip(summaries, distinct_labels(summaries))]


def _progress_notes(run: CompareRun) -> list[str]:
    notes = []
    trials = run.trials()
    short = [t for t in trials if len(run.stages_of(t)) < run.planned_stages]
    if len(trials) < run.planned_trials or short:
        parts = [f"{len(trials)} of {run.planned_trials} trials started"]
        parts += [f"trial {t + 1} has {len(run.stages_of(t))} of {run.planned_stages} stages" for t in short]
        notes.append(f"{run.label} is unfinished ({'; '.join(parts)}): compared on the stages it has")
    return notes


# ----------------------------------------------------------------------------- the comparison


def _areas(run: CompareRun, stages: list[int], metric: str, notes: list[str]) -> AreaStats:
    x = [run.n_labeled(s) for s in stages]
    per_trial, used = [], []
    for t in run.trials():
        if all((t, s) in run.records for s in stages):
            per_trial.append(normalised_area(x, [run.value(t, s, metric) for s in stages]))
            used.append(t)
    left_out = sorted(set(run.trials()) - set(used))
    if left_out and metric == "accuracy":
        notes.append(f"{run.label}: trial(s) {[t + 1 for t in left_out]} stop before stage {stages[-1] + 1} and are "
                     "left out of its AUBC")
    mean, ci = trial_interval(per_trial)
    return AreaStats(mean, ci, per_trial, used)


def compare_runs(paths, *, alpha: float = ALPHA) -> CompareResult:
    """Load, check and compare ``activecrl run`` folders (see the module docstring). Writes nothing."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise ConfigError("compare needs run folders, got none; pass the --out folders of `activecrl run`")
    runs = _load(paths)
    notes = [n for r in runs for n in _progress_notes(r)]

    # which stages every run of a dataset reached, at the same numbers of labels
    stages: dict[str, list[int]] = {}
    for dataset in dict.fromkeys(r.dataset for r in runs):
        group = [r for r in runs if r.dataset == dataset]
        common = sorted(set.intersection(*({s for _, s in r.records} for r in group)))
        common = [s for s in common if len({r.n_labeled(s) for r in group}) == 1 and group[0].n_labeled(s)]
        if not common:
            raise ConfigError(f"the {dataset} runs share no stage with the same number of labels ("
                              + "; ".join(f"{r.label}: {sorted({r.n_labeled(s) for _, s in r.records})}"
                                          for r in group)
                              + "); compare runs of the same protocol (--initial, --budget)")
        reached = max(max(s for _, s in r.records) for r in group)
        if common[-1] < reached:
            notes.append(f"{dataset}: AUBC covers stages 1-{common[-1] + 1} ({group[0].n_labeled(common[0])}-"
                         f"{group[0].n_labeled(common[-1])} labels), the stages every run has")
        stages[dataset] = common
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                if a.seed != b.seed or not set(a.records) & set(b.records):
                    why = (f"their base seeds differ ({a.seed} vs {b.seed}), so no trial has the same seed set"
                           if a.seed != b.seed else "they have no (trial, stage) in common")
                    raise ConfigError(f"{a.label} ({a.path}) and {b.label} ({b.path}) share no trial: {why}; "
                                      "compare runs made with the same --seed")

    aubc = {r.label: _areas(r, stages[r.dataset], "accuracy", notes) for r in runs}
    aubc_aurc = {r.label: _areas(r, stages[r.dataset], "aurc", notes) for r in runs}
    penalty, tested = penalty_matrix(runs, "accuracy", alpha)
    for i, a in enumerate(runs):
        for j in range(i + 1, len(runs)):
            if a.dataset == runs[j].dataset and tested[i, j] == 0:
                notes.append(f"{a.label} vs {runs[j].label}: no stage with results of at least two shared trials; "
                             "not tested (0 in the penalty matrix)")
    column_means = []
    for j, run in enumerate(runs):
        others = [i for i, r in enumerate(runs) if i != j and r.dataset == run.dataset]
        column_means.append(float(np.mean(penalty[others, j])) if others else None)
    return CompareResult(runs, aubc, aubc_aurc, stages, penalty, tested, column_means, notes)


# ----------------------------------------------------------------------------- output


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _penalty_png(result: CompareResult) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(result.runs)
    labels = result.labels
    size = 1.2 + 0.75 * k
    fig, (ax, ax_mean) = plt.subplots(2, 1, figsize=(size + 2.5, size + 1.2), sharex=True,
                                      gridspec_kw={"height_ratios": [k, 1], "hspace": 0.08})
    top = max(1.0, float(result.penalty.max()))
    shown = np.where(np.eye(k, dtype=bool), np.nan, result.penalty)
    image = ax.imshow(shown, cmap="Reds", vmin=0, vmax=top, aspect="auto")
    for i in range(k):
        for j in range(k):
            if i == j:
                ax.text(j, i, "–", ha="center", va="center", color="0.5")
            else:
                v = result.penalty[i, j]  # zeros in grey so the wins stand out
                ax.text(j, i, f"{v:.2f}", ha="center", va="center",
                        color="white" if v > 0.6 * top else ("black" if v > 0 else "0.6"))
    ax.set_yticks(range(k), labels)
    ax.set_ylabel("row: wins (significantly better)")
    means = np.array([np.nan if m is None else m for m in result.column_means])[None, :]
    ax_mean.imshow(means, cmap="Reds", vmin=0, vmax=top, aspect="auto")
    for j, m in enumerate(means[0]):
        ax_mean.text(j, 0, "–" if np.isnan(m) else f"{m:.2f}", ha="center", va="center", fontweight="bold",
                     color="white" if not np.isnan(m) and m > 0.6 * top else "black")
    ax_mean.set_yticks([0], ["column mean\n(lower = better)"])
    ax_mean.set_xticks(range(k), labels, rotation=35, ha="right")
    ax_mean.set_xlabel("column: loses")
    datasets = ", ".join(dict.fromkeys(r.dataset for r in result.runs))
    ax.set_title(f"Penalty matrix ({datasets}): P[row][col] = share of stages where row beats col\n"
                 f"(paired t-test on accuracy over trials, p < {ALPHA})", fontsize=10)
    fig.colorbar(image, ax=[ax, ax_mean], fraction=0.04, pad=0.02)
    return _png(fig)


def _curves_png(result: CompareResult) -> bytes:
    """Accuracy and AURC per stage: the mean and 95 % bootstrap interval over the trials that reached it."""
    scales = {"accuracy": 100, "aurc": 1000}
    curves = []
    for run in result.runs:
        stages = sorted({s for _, s in run.records})
        mean, low, high = ({m: [] for m in scales} for _ in range(3))
        for metric, scale in scales.items():
            for s in stages:
                m, ci = trial_interval([run.value(t, s, metric) * scale for t in run.trials() if (t, s) in run.records])
                mean[metric].append(m)
                low[metric].append(ci[0] if ci else m)
                high[metric].append(ci[1] if ci else m)
        curves.append(Curve(run.label, np.array([run.n_labeled(s) for s in stages]), mean, low, high))
    datasets = ", ".join(dict.fromkeys(r.dataset for r in result.runs))
    fig = draw_curves(curves, {"accuracy": "test accuracy % (higher is better)",
                               "aurc": "test AURC ×10³ (lower is better)"},
                      f"{datasets}: mean and 95% bootstrap interval over trials")
    return _png(fig)


def write_compare(result: CompareResult, out: Path | str) -> dict[str, Path]:
    """Write ``compare.json``, ``penalty.png`` and ``curves.png`` into ``out`` (each file atomically,
    all rendered before the first is written)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"-o must be a folder for compare.json, penalty.png and curves.png, got the file {out} "
                          "instead; pass a folder name")
    blobs = {"penalty.png": _penalty_png(result), "curves.png": _curves_png(result)}
    payload = result.to_json()
    written = {}
    atomic_write_json(out / "compare.json", payload)
    written["compare.json"] = out / "compare.json"
    for name, data in blobs.items():
        _atomic(out / name, lambda h, data=data: h.write(data))
        written[name] = out / name
    return written
