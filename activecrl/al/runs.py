"""Reading finished (or running) active-learning runs: per-stage summaries and learning curves."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from activecrl.core.errors import ConfigError
from activecrl.al.loop import CONFIG_FILE
from activecrl.evaluation.metrics import LOWER_IS_BETTER, METRIC_NAMES
from activecrl.al.records import StageRecord, read_records


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
        return _normalised_area(self.n_labeled, self.mean[metric])

    def area_by_trial(self, metric: str = "accuracy") -> np.ndarray:
        """The same area for each trial that completed every stage (for a spread over trials)."""
        n_stages = len(self.n_labeled)
        areas = []
        for trial in sorted({r.trial for r in self.records or []}):
            rows = sorted((r for r in self.records if r.trial == trial), key=lambda r: r.stage)
            if len(rows) == n_stages:
                areas.append(_normalised_area(np.array([r.n_labeled for r in rows]),
                                              np.array([_value(r, metric) for r in rows], dtype=float)))
        return np.array(areas)


def _value(record: StageRecord, name: str) -> float:
    value = record.value(name)
    return np.nan if value is None else float(value)


def _normalised_area(x, y) -> float:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2:
        return float(y[0]) if len(y) else float("nan")
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2) / (x[-1] - x[0]))


def load_run(path: Path | str) -> RunSummary:
    path = Path(path)
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise ConfigError(f"{path} is not an activecrl run folder (no {CONFIG_FILE}); pass the --out of `activecrl run`")
    config = json.loads(config_path.read_text())
    records = read_records(path)
    if not records:
        raise ConfigError(f"{path} has no completed stage yet (results.jsonl is empty)")
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


def plot_curves(runs: list[RunSummary], out_path: Path | str, metrics=("accuracy", "aurc")) -> Path:
    """Metric against labeled-set size, mean +/- std over trials, one curve per run."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
    labels = distinct_labels(runs)
    for ax, metric in zip(axes[0], metrics):
        for run, label in zip(runs, labels):
            x, y, s = run.n_labeled, run.mean[metric], run.std[metric]
            (line,) = ax.plot(x, y, marker="o", markersize=3, label=label)
            ax.fill_between(x, y - s, y + s, color=line.get_color(), alpha=0.15)
        ax.set_xlabel("labeled training samples")
        ax.set_ylabel("test accuracy (higher is better)" if metric == "accuracy"
                      else f"test {metric.upper()} ({'lower' if metric in LOWER_IS_BETTER else 'higher'} is better)")
        ax.grid(alpha=0.3)
    datasets = sorted({Path(str(r.config.get("dataset"))).name for r in runs})  # a path: its file name
    trials = sorted({int(t) for r in runs for t in r.n_trials})
    spread = "one trial (no spread)" if trials == [1] else f"mean ± std over {'/'.join(map(str, trials))} trial(s)"
    fig.suptitle(f"{', '.join(datasets)}: {spread}")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=120)
    plt.close(fig)
    return out_path
