"""Export the labels: every human label, and with ``auto_label`` the unlabeled images whose model
confidence clears a threshold certified by SGR (``activecrl.evaluation.selective``; Geifman &
El-Yaniv 2017) on the audit labels: the auto-labels' error rate is at most ``risk`` with
probability at least ``1 - delta``.

The guarantee is for the population the audit images were drawn from (uniformly, from the
unlabeled pool when their batch was issued) and for the model whose predictions were recorded;
record new predictions after retraining, and draw audit images from the pool being auto-labeled.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from activecrl.core.errors import ConfigError
from activecrl.evaluation.selective import SGRResult, audit_size_needed, search_steps, sgr
from activecrl.label.db import AUDIT_IMAGE_IDS
from activecrl.label.formats import EXPORT_COLUMNS, write_csv

__all__ = ["ExportResult", "AutoLabelPreview", "PREVIEW_RISKS", "auto_label_previews", "export_labels"]

#: the (risk, delta) pairs ``label status`` previews
PREVIEW_RISKS = ((0.05, 0.10), (0.10, 0.10))


@dataclass(frozen=True)
class ExportResult:
    path: Path
    n_human: int
    n_auto: int
    n_unlabeled: int  # before auto-labeling
    sgr: SGRResult | None

    @property
    def pool_coverage(self) -> float:
        """Fraction of the unlabeled images that got an auto-label."""
        return self.n_auto / self.n_unlabeled if self.n_unlabeled else 0.0


@dataclass(frozen=True)
class AutoLabelPreview:
    """What ``export --auto-label --risk R --delta D`` would do now: ``n_auto`` of the ``n_unlabeled``
    images at the certified ``bound``, or ``needed`` audit labels (with predictions) it lacks."""

    risk: float
    delta: float
    n_audit: int  # audit labels with the current model's predictions
    needed: int  # the fewest audit labels that can certify this risk (audit_size_needed)
    n_auto: int = 0
    n_unlabeled: int = 0
    bound: float | None = None  # None: nothing certified

    @property
    def share(self) -> float | None:
        """The share of the unlabeled images it would label; None while the audit labels are too few."""
        return self.n_auto / self.n_unlabeled if self.n_audit >= self.needed and self.n_unlabeled else None


def _audit_rows(con: sqlite3.Connection) -> list:
    return con.execute(
        f"SELECT p.confidence, p.class_id != l.class_id FROM labels l JOIN predictions p ON p.image_id = l.image_id "
        f"WHERE l.image_id IN ({AUDIT_IMAGE_IDS})").fetchall()


def _sgr_on(rows: list, risk: float, delta: float) -> SGRResult:
    conf, err = np.array(rows, dtype=np.float64).T
    return sgr(conf, err.astype(bool), risk, delta)


def _n_unlabeled(con: sqlite3.Connection) -> int:
    return con.execute("SELECT COUNT(*) FROM images WHERE id NOT IN (SELECT image_id FROM labels)").fetchone()[0]


def _n_unlabeled_above(con: sqlite3.Connection, threshold: float) -> int:
    return con.execute("SELECT COUNT(*) FROM predictions WHERE image_id NOT IN (SELECT image_id FROM labels) "
                       "AND confidence >= ?", (threshold,)).fetchone()[0]


def auto_label_previews(con: sqlite3.Connection, pairs=PREVIEW_RISKS) -> list[AutoLabelPreview]:
    """``export --auto-label``'s certificate per (risk, delta) of ``pairs``, without writing anything
    (``label status`` shows them); the audit labels are read once for all."""
    rows, n_unlabeled = _audit_rows(con), _n_unlabeled(con)
    return [_preview(con, rows, n_unlabeled, risk, delta) for risk, delta in pairs]


def _preview(con: sqlite3.Connection, rows: list, n_unlabeled: int, risk: float, delta: float) -> AutoLabelPreview:
    needed = audit_size_needed(risk, delta)
    preview = AutoLabelPreview(risk, delta, len(rows), needed, n_unlabeled=n_unlabeled)
    if len(rows) < needed:
        return preview
    result = _sgr_on(rows, risk, delta)
    if not result.certified:
        return preview
    return dataclasses.replace(preview, n_auto=_n_unlabeled_above(con, result.threshold), bound=result.bound)


def _certify(con: sqlite3.Connection, risk: float, delta: float) -> SGRResult:
    rows = _audit_rows(con)
    needed = audit_size_needed(risk, delta)
    if len(rows) < needed:
        raise ConfigError(
            f"--auto-label with --risk {risk} --delta {delta} needs at least {needed} audit labels with model "
            f"predictions (even with no errors, fewer cannot certify the risk at delta/{search_steps(needed)} per "
            f"threshold), got {len(rows)} instead; issue batches with --audit K, import their labels and record the "
            "model's predictions, or raise --risk/--delta")
    return _sgr_on(rows, risk, delta)


def export_labels(con: sqlite3.Connection, out: Path, *, auto_label: bool = False, risk: float | None = None,
                  delta: float | None = None) -> ExportResult:
    """Write ``image,label,source,confidence`` to ``out``; see the module docstring."""
    human = con.execute("SELECT i.path, c.name FROM labels l JOIN images i ON i.id = l.image_id "
                        "JOIN classes c ON c.id = l.class_id ORDER BY i.path").fetchall()
    rows = [(p, c, "human", "") for p, c in human]
    n_unlabeled = _n_unlabeled(con)
    result = None
    if auto_label:
        if risk is None or delta is None:
            raise ConfigError("--auto-label needs --risk R and --delta D (e.g. --risk 0.05 --delta 0.05)")
        if con.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == 0:
            raise ConfigError("--auto-label needs the model's predictions on the pool; none are recorded yet")
        result = _certify(con, risk, delta)
        auto = con.execute("SELECT i.path, c.name, p.confidence FROM predictions p JOIN images i ON i.id = p.image_id "
                           "JOIN classes c ON c.id = p.class_id WHERE p.image_id NOT IN (SELECT image_id FROM labels) "
                           "AND p.confidence >= ? ORDER BY i.path", (result.threshold,)).fetchall()
        rows += [(p, c, "auto", f"{conf:.6g}") for p, c, conf in auto]
    write_csv(out, EXPORT_COLUMNS, rows)
    return ExportResult(Path(out), len(human), len(rows) - len(human), n_unlabeled, result)
