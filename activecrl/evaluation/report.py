"""Paper-style tables from saved runs: Table 1 (``activecrl train``) and Table 3 (``activecrl ood``).

``build_report(paths)`` reads every ``metrics.json`` / ``ood.json`` under the given folders, groups
runs whose configurations differ only in the seed (and in where or how fast they ran: device, data
folder, compile/AMP flags), and gives one row per group with ``mean ± std`` over the seeds (sample
standard deviation; a single seed shows the value alone).

- Classification (Table 1 layout): rows dataset / model / method (+trainer); columns ACC, AURC,
  E-AURC, AUPR-Err, FPR-95%-TPR, ECE, NLL, Brier with the paper's scaling (AURC and E-AURC x 10^3,
  NLL x 10, the rest in %).
- OOD detection (Table 3 layout): rows in-distribution / OOD set / detector / method, plus the tuning
  protocol; columns FPR-95%-TPR, detection error, AUROC, AUPR-In, AUPR-Out, all in %.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from activecrl.core.errors import ConfigError
from activecrl.core.config import flatten
from activecrl.methods import METHODS, Method
from activecrl.methods.config import TrainRunConfig
from activecrl.ood.detectors import DETECTORS, Detector
from activecrl.training.trainers import TRAINERS
from activecrl.core.io import atomic_write_text
from activecrl.evaluation.metrics import METRIC_NAMES, OOD_METRIC_NAMES, PAPER_SCALE

logger = logging.getLogger(__name__)

__all__ = ["ReportTable", "Report", "find_runs", "method_label", "train_table", "interval_table", "ood_table", "build_report",
           "write_report"]

TRAIN_HEADERS = {"accuracy": "ACC", "aurc": "AURC", "eaurc": "E-AURC", "augrc": "AUGRC", "aupr_err": "AUPR-Err",
                 "fpr95": "FPR-95%-TPR", "ece": "ECE", "nll": "NLL", "brier": "Brier"}
OOD_HEADERS = {"fpr95": "FPR-95%-TPR", "detection_error": "Detection err", "auroc": "AUROC",
               "aupr_in": "AUPR-In", "aupr_out": "AUPR-Out"}
# config keys that say where or how fast a run went, not what it computed
_IGNORED = {"seed", "data_dir", "device", "download", "eval_batch_size", "compile", "amp", "channels_last",
            "batch_size_eval", "bootstrap", "threads"}
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainRunConfig)}  # of the fields read here


@dataclass
class ReportTable:
    title: str
    columns: list[str]
    rows: list[list[str]]
    caption: str = ""
    numeric_from: int = 0  # columns from this index on are right-aligned numbers

    def to_markdown(self) -> str:
        def esc(cell: str) -> str:
            return str(cell).replace("|", "\\|")

        lines = [f"### {self.title}", ""]
        if self.caption:
            lines += [self.caption, ""]
        lines.append("| " + " | ".join(esc(c) for c in self.columns) + " |")
        lines.append("|" + "|".join("---:" if i >= self.numeric_from else "---" for i in range(len(self.columns))) + "|")
        lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in self.rows]
        return "\n".join(lines) + "\n"


@dataclass
class Report:
    tables: list[ReportTable] = field(default_factory=list)
    n_train_runs: int = 0
    n_ood_runs: int = 0

    def to_markdown(self) -> str:
        return "\n".join(t.to_markdown() for t in self.tables)


# ----------------------------------------------------------------------------- finding runs


def find_runs(paths: Iterable[Path | str]) -> tuple[list[Path], list[Path]]:
    """(train run folders, ood run folders) among ``paths`` (searched recursively when a folder is
    neither). Plain files (e.g. a report.md matched by a shell glob) and folders without runs are
    skipped with a warning; a path that does not exist is an error."""
    train, ood = [], []
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise ConfigError(f"run folder {p} does not exist; pass folders written by `activecrl train` / `activecrl ood`")
        if p.is_file():
            logger.warning("skipping %s: not a run folder", p)
            continue
        found = False
        for marker, bucket in (("metrics.json", train), ("ood.json", ood)):
            if (p / marker).is_file():
                bucket.append(p)
                found = True
        if not found:
            for marker, bucket in (("metrics.json", train), ("ood.json", ood)):
                for f in sorted(p.rglob(marker)):
                    bucket.append(f.parent)
                    found = True
        if not found:
            logger.warning("skipping %s: holds no metrics.json (activecrl train) or ood.json (activecrl ood)", p)
    dedupe = lambda xs: list(dict.fromkeys(x.resolve() for x in xs))  # noqa: E731
    return dedupe(train), dedupe(ood)


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path} must be a JSON file written by activecrl, got unreadable content ({exc})") from None


# ----------------------------------------------------------------------------- labels and grouping


def _group_key(config: dict) -> dict:
    # options a run's config.json lacks (saved by an older version) take today's defaults, so a
    # run is grouped with its newer seeds instead of standing alone
    defaults = flatten(dataclasses.asdict(TrainRunConfig())) if "train" in config else {}
    full = {**defaults, **flatten(config)}
    return {k: v for k, v in full.items() if k.split(".")[-1] not in _IGNORED}


def dataset_label(spec) -> str:
    """``cifar10`` for ``/data/cifar10.tar.gz``; registered names as they are."""
    name = Path(str(spec)).name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _registered(registry, name, default):
    """The entry ``name`` of ``registry``, or ``default`` when this installation lacks it (a
    plugin's run); ``module:Name`` paths are not imported just to label a table."""
    return registry.get(name) if isinstance(name, str) and name in registry else default


def _method_order(config: dict) -> int:
    return getattr(_registered(METHODS, config.get("method", _DEFAULTS["method"]), Method), "report_order", 9)


def method_label(config: dict) -> str:
    """``Baseline``, ``CRL-softmax``, ``AES(k=10)``, ``MCdropout``, ``Aleatoric+MC``, ``Ensemble×5 CRL-softmax (λ=0.5)``…

    The trainer's and the method's ``report_label`` say how each shows."""
    trainer = config.get("trainer", _DEFAULTS["trainer"])
    trainer_label = getattr(_registered(TRAINERS, trainer, None), "report_label", lambda name, train: str(name))
    base = trainer_label(trainer, config.get("train") or {})
    method = _registered(METHODS, config.get("method", _DEFAULTS["method"]), Method)
    label = getattr(method, "report_label", Method.report_label)(config, base, trainer == _DEFAULTS["trainer"])
    if config.get("temperature_scaling"):
        label += " +TS"
    return label


def _mean_std(values: list[float | None], scale: float) -> str:
    """``mean±std`` over the runs that recorded the metric ("–" if none did, e.g. AUGRC before it existed;
    ``(n=k)`` when only k of them did)."""
    present = [x for x in values if x is not None]
    if not present:
        return "–"
    v = np.asarray(present, dtype=np.float64) * scale
    text = f"{v[0]:.2f}" if v.size == 1 else f"{v.mean():.2f}±{v.std(ddof=1):.2f}"
    return text if len(present) == len(values) else f"{text} (n={len(present)})"


def _with_interval(value: float | None, interval: list[float] | None, scale: float) -> str:
    if value is None:
        return "–"
    text = f"{value * scale:.2f}"
    return f"{text} [{interval[0] * scale:.2f}, {interval[1] * scale:.2f}]" if interval else text


def _groups(items: list[tuple[dict, dict]]) -> list[tuple[dict, list[dict]]]:
    """Group (key, payload) pairs by key (a JSON-able dict); keeps first-seen order."""
    groups: dict[str, tuple[dict, list[dict]]] = {}
    for key, payload in items:
        k = json.dumps(key, sort_keys=True, default=str)
        groups.setdefault(k, (key, []))[1].append(payload)
    return list(groups.values())


def _disambiguate(labels: list[list[str]], keys: list[dict], column: int, shown: list[tuple] | None = None) -> None:
    """Append the differing config entries to ``labels[i][column]`` where visible labels collide
    (``shown[i]``: further visible cells of row i that already tell rows apart)."""
    by_label: dict[tuple, list[int]] = {}
    for i, row in enumerate(labels):
        by_label.setdefault(tuple(row) + (shown[i] if shown else ()), []).append(i)
    for members in by_label.values():
        if len(members) < 2:
            continue
        all_keys = set().union(*(keys[i] for i in members))
        differing = sorted(k for k in all_keys if len({json.dumps(keys[i].get(k), default=str) for i in members}) > 1)
        for i in members:
            extra = ", ".join(f"{k.split('.')[-1]}={keys[i].get(k)}" for k in differing[:4])
            labels[i][column] += f" [{extra}]"


# ----------------------------------------------------------------------------- tables


def train_table(run_dirs: list[Path]) -> ReportTable:
    items = []
    for d in run_dirs:
        blob = _read(d / "metrics.json")
        config = blob.get("config") or {}
        if "metrics" not in blob:
            raise ConfigError(f"{d / 'metrics.json'} must hold 'metrics', got keys {sorted(blob)} instead")
        items.append((_group_key(config), {"config": config, "metrics": blob["metrics"], "dir": d}))
    groups = _groups(items)
    groups.sort(key=lambda g: (dataset_label(g[1][0]["config"].get("dataset")), str(g[1][0]["config"].get("model")),
                               _method_order(g[1][0]["config"]),
                               method_label(g[1][0]["config"])))
    labels, keys, rows = [], [], []
    for key, runs in groups:
        cfg = runs[0]["config"]
        labels.append([dataset_label(cfg.get("dataset")), str(cfg.get("model")), method_label(cfg)])
        keys.append(key)
        epochs = (cfg.get("train") or {}).get("epochs")
        rows.append([str(len(runs)), str(epochs)] + [
            _mean_std([r["metrics"].get(m) for r in runs], PAPER_SCALE[m]) for m in METRIC_NAMES])
    _disambiguate(labels, keys, 2)
    return ReportTable(
        title="Confidence estimates (Table 1 layout)",
        columns=["Dataset", "Model", "Method", "seeds", "epochs"] + [TRAIN_HEADERS[m] for m in METRIC_NAMES],
        rows=[lab + row for lab, row in zip(labels, rows)],
        caption="mean ± sample std over seeds; AURC, E-AURC and AUGRC ×10³, NLL ×10, all other values in %. "
                "ACC and AUPR-Err: higher is better; the rest: lower is better. – : not recorded by the run.",
        numeric_from=3,
    )


def interval_table(run_dirs: list[Path]) -> ReportTable | None:
    """One row per train run that stored bootstrap intervals (``ci95``): value [95 % interval]."""
    rows, sizes = [], set()
    for d in run_dirs:
        blob = _read(d / "metrics.json")
        ci95 = blob.get("ci95")
        if not ci95:
            continue
        cfg = blob.get("config") or {}
        sizes.add(str((blob.get("bootstrap") or {}).get("n_resamples", "?")))
        metrics = blob.get("metrics") or {}
        rows.append((dataset_label(cfg.get("dataset")), str(cfg.get("model")), method_label(cfg),
                     str((cfg.get("train") or {}).get("seed")), d.name,
                     [_with_interval(metrics.get(m), ci95.get(m), PAPER_SCALE[m]) for m in METRIC_NAMES]))
    if not rows:
        return None
    rows.sort(key=lambda r: r[:5])
    return ReportTable(
        title="Bootstrap 95% intervals per run (test set resampled with replacement)",
        columns=["Dataset", "Model", "Method", "seed", "run"] + [TRAIN_HEADERS[m] for m in METRIC_NAMES],
        rows=[list(r[:5]) + r[5] for r in rows],
        caption=f"value [2.5th, 97.5th percentile] over {'/'.join(sorted(sizes))} resamples of the test set, "
                "same scaling as above. They show test-sampling noise of one trained model, not seed-to-seed "
                "variation; ECE's bootstrap distribution is biased upwards (resampling adds noise to the bins).",
        numeric_from=5,
    )


def _params_label(params: dict, detector) -> str:
    parts = []
    for short, v in getattr(detector, "report_params", dict)(params).items():
        parts.append(f"{short}={v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else f"{short}={v}")
    return ", ".join(parts) or "-"


def _ood_item(run_dir: Path) -> tuple[dict, dict]:
    """(group key, payload) of one ood run: runs of one group differ only in seed and where they ran."""
    blob = _read(run_dir / "ood.json")
    if "metrics" not in blob or "detector" not in blob:
        raise ConfigError(f"{run_dir / 'ood.json'} must hold 'metrics' and 'detector', got keys {sorted(blob)} instead")
    run_cfg = (blob.get("run") or {}).get("config") or {}
    cfg = {k: v for k, v in (blob.get("config") or {}).items()
           if k not in ("run", "seed", "device", "data_dir", "batch_size", "threads")}
    key = {"run": _group_key(run_cfg), "ood": cfg, "ood_set": blob.get("ood_set"),
           "protocol": (blob.get("protocol") or {}).get("name")}
    return key, {"blob": blob, "run_cfg": run_cfg, "dir": run_dir}


def _ood_sort_key(group: tuple[dict, list[dict]]) -> tuple:
    first = group[1][0]
    b, protocol = first["blob"], first["blob"].get("protocol") or {}
    return (str(b.get("in_distribution")), str(b.get("ood_set")),
            getattr(_registered(DETECTORS, b["detector"], Detector), "report_order", 9),
            bool((b.get("config") or {}).get("feature_ensemble")), bool(protocol.get("tuned_on_test_ood")),
            str(protocol.get("name")), _method_order(first["run_cfg"]), method_label(first["run_cfg"]))


def _tuned_on(blob: dict, entry) -> str:
    """The 'tuned on' column: '-' for a detector with nothing to tune, else the tuning data."""
    protocol = blob.get("protocol") or {}
    if not getattr(entry, "tuned", True):
        return "-"
    return "test OOD (paper protocol)" if protocol.get("tuned_on_test_ood") else protocol.get("name", "?")


def _ood_row(runs: list[dict]) -> tuple[list[str], list[str]]:
    """(label cells, value cells) of one group of ood runs."""
    b = runs[0]["blob"]
    # a detector this installation lacks is shown by name, as one with tuned hyper-parameters
    entry = _registered(DETECTORS, b["detector"], None)
    detector = getattr(entry, "report_label", Detector.report_label)(b["detector"], b.get("config") or {})
    labels = [dataset_label(b.get("in_distribution")), str((b.get("run") or {}).get("model")), str(b.get("ood_set")),
              detector, method_label(runs[0]["run_cfg"])]
    params = sorted({_params_label(r["blob"].get("params") or {}, entry) for r in runs})
    n_eval = sorted({f"{r['blob'].get('n_in')}/{r['blob'].get('n_out')}" for r in runs})
    values = [_tuned_on(b, entry), "; ".join(params), str(len(runs)), "; ".join(n_eval)] + [
        _mean_std([r["blob"]["metrics"][m] for r in runs], 100.0) for m in OOD_METRIC_NAMES]
    return labels, values


def ood_table(run_dirs: list[Path]) -> ReportTable:
    groups = sorted(_groups([_ood_item(d) for d in run_dirs]), key=_ood_sort_key)
    labels, keys, rows = [], [], []
    for key, runs in groups:
        label, values = _ood_row(runs)
        labels.append(label)
        keys.append(flatten(key))
        rows.append(values)
    _disambiguate(labels, keys, 4, [(row[0],) for row in rows])  # 'tuned on' already tells rows apart
    return ReportTable(
        title="Out-of-distribution detection (Table 3 layout)",
        columns=["In-dist", "Model", "OOD", "Detector", "Method", "tuned on", "params", "seeds", "n in/out"]
                + [OOD_HEADERS[m] for m in OOD_METRIC_NAMES],
        rows=[lab + row for lab, row in zip(labels, rows)],
        caption="mean ± sample std over seeds, all values in %; in-distribution samples are the positives. "
                "FPR-95%-TPR and detection error: lower is better; AUROC and AUPRs: higher is better. "
                "'tuned on' names the data T/ε were chosen on; 'test OOD (paper protocol)' = 1,000 samples of "
                "the test OOD set itself, as Lee et al. 2018 and the paper (excluded from the evaluation).",
        numeric_from=7,
    )


def build_report(paths: Iterable[Path | str]) -> Report:
    train_dirs, ood_dirs = find_runs(paths)
    if not train_dirs and not ood_dirs:
        raise ConfigError("found no runs to report; pass folders of `activecrl train` or `activecrl ood` runs")
    report = Report(n_train_runs=len(train_dirs), n_ood_runs=len(ood_dirs))
    if train_dirs:
        report.tables.append(train_table(train_dirs))
        intervals = interval_table(train_dirs)
        if intervals is not None:
            report.tables.append(intervals)
    if ood_dirs:
        report.tables.append(ood_table(ood_dirs))
    return report


def write_report(paths: Iterable[Path | str], out: Path | str) -> tuple[Report, Path]:
    """Build the report of ``paths`` and write it to ``out`` as Markdown."""
    report = build_report(paths)
    out = Path(out)
    header = (f"# activecrl report\n\n{report.n_train_runs} training run(s), {report.n_ood_runs} OOD run(s).\n\n")
    atomic_write_text(out, header + report.to_markdown())
    return report, out
