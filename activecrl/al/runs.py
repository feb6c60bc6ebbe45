"""Reading active-learning run folders: the one loader of ``activecrl run`` folders, the area under
the budget curve (AUBC), run labels and the learning-curve drawer.

``activecrl summary``/``plot`` use these directly; ``activecrl compare`` (``activecrl.al.compare``)
adds its statistics (intervals over trials, penalty matrix) on top of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from activecrl.core.errors import ConfigError
from activecrl.al.loop import CONFIG_FILE
from activecrl.evaluation.metrics import LOWER_IS_BETTER, METRIC_NAMES, PAPER_SCALE, metric_unit
from activecrl.al.records import StageRecord, read_records

__all__ = ["RunSummary", "Curve", "load_run", "normalised_area", "distinct_labels", "draw_curves", "plot_curves"]


@dataclass
class RunSummary:
    path: Path
    label: str  # "least_conf (crl)"
    config: dict
    n_labeled: np.ndarray  # (n_stages,)
    n_trials: np.ndarray  # (n_stages,) how many trials reached each stage
    mean: dict[str, np.ndarray]  # metric -> (n_stages,)
    std: dict[str, np.ndarray]  # metric -> (n_stages,), population std (ddof=0) over trials

    records: list[StageRecord] | None = None

    def area_under_curve(self, metric: str = "accuracy") -> float:
        """Normalised area under the mean budget curve (trapezoid): the mean metric over the label range."""
        return normalised_area(self.n_labeled, self.mean[metric])

    def area_by_trial(self, metric: str = "accuracy") -> np.ndarray:
        """The same area for each trial that completed every stage (for a spread over trials)."""
        n_stages = len(self.n_labeled)
        areas = []
        for trial in sorted({r.trial for r in self.records or []}):
            rows = sorted((r for r in self.records if r.trial == trial), key=lambda r: r.stage)
            if len(rows) == n_stages:
                areas.append(normalised_area(np.array([r.n_labeled for r in rows]),
                                             np.array([_value(r, metric) for r in rows], dtype=float)))
        return np.array(areas)


def _value(record: StageRecord, name: str) -> float:
    value = record.value(name)
    return np.nan if value is None else float(value)


def normalised_area(n_labeled, values) -> float:
    """The AUBC (Zhan et al. 2021): trapezoid area under ``values`` vs ``n_labeled`` divided by the
    label range, i.e. the mean metric over the label range (one point: its value; none: NaN)."""
    x, y = np.asarray(n_labeled, dtype=float), np.asarray(values, dtype=float)
    if x.size < 2:
        return float(y[0]) if y.size else float("nan")
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2) / (x[-1] - x[0]))


def _read_config(path: Path) -> dict:
    if not path.exists():
        raise ConfigError(f"run folder {path} does not exist; pass the --out folders of `activecrl run`")
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise ConfigError(f"{path} must be an `activecrl run` folder (with {CONFIG_FILE} and results.jsonl), but it "
                          f"has no {CONFIG_FILE}; pass the --out folders of `activecrl run`")
    try:
        return json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{config_path} must be the JSON `activecrl run` wrote, got unreadable content "
                          f"({exc})") from None


def _read_stage_records(path: Path) -> list[StageRecord]:
    records = read_records(path)
    if not records:
        raise ConfigError(f"{path} has no completed stage yet (results.jsonl is empty); read it once its first "
                          "stage is recorded")
    for r in records:
        if r.value("accuracy") is None:
            raise ConfigError(f"{path}/results.jsonl records must hold 'accuracy', got a record of trial {r.trial} "
                              f"stage {r.stage} without it")
    return records


def load_run(path: Path | str) -> RunSummary:
    """An ``activecrl run`` folder (finished or still running): its records and the per-stage mean and
    std over the trials that reached each stage."""
    path = Path(path)
    config = _read_config(path)
    records = _read_stage_records(path)
    stages = sorted({r.stage for r in records})
    n_labeled, counts = [], []
    # today's metrics first, then any a newer version wrote (a metric a run lacks averages to NaN)
    others = sorted({m for r in records for m in r.metrics} - set(METRIC_NAMES))
    mean = {m: [] for m in (*METRIC_NAMES, *others, "train_seconds", "query_seconds")}
    std = {m: [] for m in mean}
    for stage in stages:
        rows = [r for r in records if r.stage == stage]
        n_labeled.append(int(np.mean([r.n_labeled for r in rows])))
        counts.append(len(rows))
        for m in mean:
            values = np.array([_value(r, m) for r in rows], dtype=float)
            mean[m].append(float(np.mean(values)))
            std[m].append(float(np.std(values)))
    label = f"{config.get('strategy', '?')} ({config.get('trainer', '?')})"
    return RunSummary(path, label, config, np.array(n_labeled), np.array(counts),
                      {k: np.array(v) for k, v in mean.items()}, {k: np.array(v) for k, v in std.items()},
                      records)


def distinct_labels(runs: list[RunSummary]) -> list[str]:
    """Legend labels: the run's label, plus its folder where two runs share a label (two runs of one
    strategy must not draw under one name), and the whole path where folder names collide too."""
    plain = [run.label for run in runs]
    labels = list(plain)
    for i, run in enumerate(runs):
        if plain.count(run.label) > 1:
            same = [r for r in runs if r.label == run.label]
            names = [r.path.name for r in same]
            where = run.path.name if names.count(run.path.name) == 1 else str(run.path)
            labels[i] = f"{run.label} · {where}"
    return labels


@dataclass
class Curve:
    """One run's line per metric: ``mean[metric]`` against ``x``, a band from ``low`` to ``high``."""

    label: str
    x: np.ndarray
    mean: dict[str, np.ndarray]
    low: dict[str, np.ndarray]
    high: dict[str, np.ndarray]


def draw_curves(curves: list[Curve], ylabels: dict[str, str], title: str):
    """A matplotlib figure with one panel per metric of ``ylabels`` (in its order), one line and band per curve."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(ylabels), figsize=(5.5 * len(ylabels), 4), squeeze=False)
    for ax, (metric, ylabel) in zip(axes[0], ylabels.items()):
        for curve in curves:
            (line,) = ax.plot(curve.x, curve.mean[metric], marker="o", markersize=3, label=curve.label)
            ax.fill_between(curve.x, curve.low[metric], curve.high[metric], color=line.get_color(), alpha=0.15)
        ax.set_xlabel("labeled training samples")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_curves(runs: list[RunSummary], out_path: Path | str, metrics=("accuracy", "aurc")) -> Path:
    """Metric against labeled-set size, mean +/- std over trials, one curve per run; in the units of the
    tables (accuracy in %, AURC ×10³: ``PAPER_SCALE``), which each axis names."""
    scale = {m: PAPER_SCALE.get(m, 1.0) for m in metrics}
    curves = [Curve(label, run.n_labeled, {m: run.mean[m] * scale[m] for m in metrics},
                    {m: (run.mean[m] - run.std[m]) * scale[m] for m in metrics},
                    {m: (run.mean[m] + run.std[m]) * scale[m] for m in metrics})
              for run, label in zip(runs, distinct_labels(runs))]
    ylabels = {m: f"test {'accuracy' if m == 'accuracy' else m.upper()} {metric_unit(m)} "
                  f"({'lower' if m in LOWER_IS_BETTER else 'higher'} is better)".replace("  ", " ") for m in metrics}
    datasets = sorted({Path(str(r.config.get("dataset"))).name for r in runs})  # a path: its file name
    trials = sorted({int(t) for r in runs for t in r.n_trials})
    spread = "one trial (no spread)" if trials == [1] else f"mean ± std over {'/'.join(map(str, trials))} trial(s)"
    fig = draw_curves(curves, ylabels, f"{', '.join(datasets)}: {spread}")
    import matplotlib.pyplot as plt  # after draw_curves, which chose the file-only backend

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path
