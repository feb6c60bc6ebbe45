"""Where a labeling project stands: labels, rounds, outstanding work, the model's audited accuracy,
and the labelers' pace.

The accuracy interval is the exact Clopper-Pearson 95 % interval (binomial, two-sided), the
same exact binomial inversion the auto-label guarantee uses. Seconds per label is the median of
Label Studio's ``lead_time`` over answered annotations (the median, because an annotator who
leaves a task open inflates the mean); the next batch's time is that times the last batch's size.
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass, field

from activecrl.label.db import AUDIT_IMAGE_IDS

__all__ = ["Status", "clopper_pearson", "project_status"]


@dataclass
class Status:
    n_images: int
    n_labeled: int
    labels_per_class: dict[str, int]
    rounds: int
    open_batch: int | None  # its round, if a batch is issued and not imported
    open_batch_size: int
    outstanding: int  # images of imported batches nobody labeled yet
    conflicts: dict[str, str] = field(default_factory=dict)
    n_audit_labels: int = 0
    model_version: str | None = None
    audit_accuracy: float | None = None
    audit_interval: tuple[float, float] | None = None  # Clopper-Pearson, 95 %
    interval_method: str = "Clopper-Pearson (exact binomial), 95 %"
    seconds_per_label: float | None = None
    next_batch_seconds: float | None = None
    # what `export --auto-label` would certify now (AutoLabelPreview per previewed risk), once predictions exist
    auto_label: list = field(default_factory=list)

    @property
    def n_unlabeled(self) -> int:
        return self.n_images - self.n_labeled


def clopper_pearson(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact two-sided interval for a binomial proportion."""
    from scipy.special import betaincinv  # the Beta quantile; imported here: scipy costs ~1 s at start-up

    a = (1 - level) / 2
    lo = 0.0 if successes == 0 else float(betaincinv(successes, n - successes + 1, a))
    hi = 1.0 if successes == n else float(betaincinv(successes + 1, n - successes, 1 - a))
    return lo, hi


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def _audit(con: sqlite3.Connection, status: Status) -> None:
    rows = con.execute(
        f"SELECT l.class_id, p.class_id, p.model_version FROM labels l JOIN predictions p ON p.image_id = l.image_id "
        f"WHERE l.image_id IN ({AUDIT_IMAGE_IDS})").fetchall()
    status.n_audit_labels = con.execute(
        f"SELECT COUNT(*) FROM labels WHERE image_id IN ({AUDIT_IMAGE_IDS})").fetchone()[0]
    if rows:
        hits = sum(y == p for y, p, _ in rows)
        status.model_version = rows[0][2]
        status.audit_accuracy = hits / len(rows)
        status.audit_interval = clopper_pearson(hits, len(rows))


def _pace(con: sqlite3.Connection, status: Status) -> None:
    times = [r[0] for r in con.execute("SELECT lead_time FROM annotations WHERE lead_time IS NOT NULL "
                                       "AND class_id IS NOT NULL AND cancelled = 0")]
    status.seconds_per_label = _median(times)
    last = con.execute("SELECT COUNT(*) FROM batch_items WHERE batch_id = "
                       "(SELECT MAX(id) FROM batches WHERE status != 'discarded')").fetchone()[0]
    if status.seconds_per_label is not None and last:
        status.next_batch_seconds = status.seconds_per_label * last


def project_status(con: sqlite3.Connection) -> Status:
    n_images = con.execute("SELECT COUNT(*) FROM images").fetchone()[0]
    per_class = {name: n for name, n in con.execute(
        "SELECT c.name, COUNT(l.image_id) FROM classes c LEFT JOIN labels l ON l.class_id = c.id GROUP BY c.id "
        "ORDER BY c.id")}
    rounds = con.execute("SELECT COUNT(*) FROM batches WHERE status = 'imported'").fetchone()[0]
    open_row = con.execute("SELECT round, (SELECT COUNT(*) FROM batch_items WHERE batch_id = batches.id) "
                           "FROM batches WHERE status = 'open'").fetchone()
    outstanding = con.execute(
        "SELECT COUNT(DISTINCT b.image_id) FROM batch_items b JOIN batches t ON t.id = b.batch_id "
        "WHERE t.status = 'imported' AND b.image_id NOT IN (SELECT image_id FROM labels) "
        "AND b.image_id NOT IN (SELECT image_id FROM conflicts)").fetchone()[0]
    conflicts = dict(con.execute("SELECT i.path, c.detail FROM conflicts c JOIN images i ON i.id = c.image_id "
                                 "ORDER BY i.path"))
    status = Status(n_images, sum(per_class.values()), per_class, rounds, open_row[0] if open_row else None,
                    open_row[1] if open_row else 0, outstanding, conflicts)
    _audit(con, status)
    _pace(con, status)
    return status


def format_seconds(seconds: float | None) -> str:
    if seconds is None or math.isnan(seconds):
        return "unknown"
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.0f} s"
