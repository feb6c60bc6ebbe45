"""Rounds of labeling: issue a batch (the model's picks plus a uniform audit sample), re-issue it
while it is outstanding, and the index sets the model part trains, evaluates and scores on.

The audit images are drawn uniformly at random from the unlabeled pool (after removing the
picks), so their labels are an unbiased sample of the pool: the accuracy estimate of ``status``
and the guarantee of ``export --auto-label`` use them and only them. They are therefore kept out
of the training set (``IndexSets.labeled``), and their batch rows carry no suggestion, so the
labeler is not anchored on the model's answer.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

import numpy as np

from activecrl.core.errors import ConfigError, DataError
from activecrl.label.db import AUDIT_IMAGE_IDS
from activecrl.label.images import first_of

__all__ = ["Batch", "BatchItem", "IndexSets", "open_batch", "create_batch", "discard_open", "index_sets", "unlabeled_pool"]


@dataclass(frozen=True)
class BatchItem:
    image: str
    suggested_label: str | None
    confidence: float | None
    audit: bool


@dataclass(frozen=True)
class Batch:
    id: int
    round: int
    items: list[BatchItem]
    strategy: str | None
    model_version: str | None
    reissued: bool = False


@dataclass(frozen=True)
class IndexSets:
    """What the model part needs: image keys (paths relative to the images folder) and labels.

    ``labeled``/``labels``: human labels to train on (audit images excluded); ``audit``/
    ``audit_labels``: the unbiased sample, to evaluate on; ``pool``: images without a label, to
    score; ``classes``: the class names, a label's index in it is its class index.
    """

    classes: list[str]
    labeled: list[str]
    labels: np.ndarray
    audit: list[str]
    audit_labels: np.ndarray
    pool: list[str]


def _items(con: sqlite3.Connection, batch_id: int) -> list[BatchItem]:
    rows = con.execute(
        "SELECT i.path, c.name, b.confidence, b.audit FROM batch_items b JOIN images i ON i.id = b.image_id "
        "LEFT JOIN classes c ON c.id = b.suggested_class_id WHERE b.batch_id = ? ORDER BY b.position", (batch_id,))
    return [BatchItem(p, c, conf, bool(a)) for p, c, conf, a in rows]


def open_batch(con: sqlite3.Connection) -> Batch | None:
    """The batch issued and not yet imported, if any (``next`` re-issues it)."""
    row = con.execute("SELECT id, round, strategy, model_version FROM batches WHERE status = 'open'").fetchone()
    if row is None:
        return None
    return Batch(row[0], row[1], _items(con, row[0]), row[2], row[3], reissued=True)


def _check_picks(con, picks, suggested, confidences, pool: dict[str, int]) -> None:
    if not len(picks) == len(suggested) == len(confidences):
        raise ConfigError(f"picks, suggested labels and confidences must have the same length, got {len(picks)}, "
                          f"{len(suggested)} and {len(confidences)} instead")
    if len(set(picks)) != len(picks):
        raise ConfigError("the picks must be distinct images, got duplicates")
    if len(picks) > len(pool):
        raise ConfigError(f"--budget must be at most the {len(pool)} unlabeled images, got {len(picks)} instead")
    not_pool = [p for p in picks if p not in pool]
    if not_pool:
        raise DataError(f"every pick must be an unlabeled image of the project, got {len(not_pool)} that are not: "
                        f"{first_of(not_pool)}")
    classes = {r[0] for r in con.execute("SELECT name FROM classes")}
    unknown = sorted({s for s in suggested if s is not None} - classes)
    if unknown:
        raise DataError(f"suggested labels must be project classes, got unknown {first_of(unknown)}")


def unlabeled_pool(con: sqlite3.Connection) -> dict[str, int]:
    return dict(con.execute("SELECT path, id FROM images WHERE id NOT IN (SELECT image_id FROM labels) ORDER BY path"))


def create_batch(con: sqlite3.Connection, picks, suggested, confidences, *, audit: int = 0, seed: int | None = None,
                 strategy: str | None = None, model_version: str | None = None) -> Batch:
    """Record a new batch (inside the caller's transaction): picks + ``audit`` uniform pool images."""
    pool = unlabeled_pool(con)
    _check_picks(con, picks, suggested, confidences, pool)
    rest = sorted(set(pool) - set(picks))
    if audit < 0 or audit > len(rest):
        raise ConfigError(f"--audit must be between 0 and the {len(rest)} unlabeled images left after the picks, "
                          f"got {audit} instead")
    drawn = np.random.default_rng(seed).choice(len(rest), size=audit, replace=False) if audit else []
    round_ = 1 + con.execute("SELECT COUNT(*) FROM batches WHERE status != 'discarded'").fetchone()[0]
    batch_id = con.execute("INSERT INTO batches (round, status, strategy, model_version) VALUES (?, 'open', ?, ?)",
                           (round_, strategy, model_version)).lastrowid
    classes = dict(con.execute("SELECT name, id FROM classes"))
    rows = [(batch_id, pool[p], k, classes.get(s), None if c is None else float(c), 0)
            for k, (p, s, c) in enumerate(zip(picks, suggested, confidences))]
    rows += [(batch_id, pool[rest[j]], len(picks) + k, None, None, 1) for k, j in enumerate(drawn)]
    con.executemany("INSERT INTO batch_items (batch_id, image_id, position, suggested_class_id, confidence, audit) "
                    "VALUES (?, ?, ?, ?, ?, ?)", rows)
    return Batch(batch_id, round_, _items(con, batch_id), strategy, model_version)


def discard_open(con: sqlite3.Connection) -> None:
    con.execute("UPDATE batches SET status = 'discarded' WHERE status = 'open'")


def index_sets(con: sqlite3.Connection) -> IndexSets:
    classes = [r[0] for r in con.execute("SELECT name FROM classes ORDER BY id")]
    index = {c: k for k, c in enumerate(classes)}
    rows = con.execute(f"SELECT i.path, c.name, i.id IN ({AUDIT_IMAGE_IDS}) FROM labels l "
                       "JOIN images i ON i.id = l.image_id JOIN classes c ON c.id = l.class_id ORDER BY i.path").fetchall()
    train = [(p, index[c]) for p, c, a in rows if not a]
    audit = [(p, index[c]) for p, c, a in rows if a]
    return IndexSets(classes, [p for p, _ in train], np.array([c for _, c in train], dtype=np.int64),
                     [p for p, _ in audit], np.array([c for _, c in audit], dtype=np.int64), list(unlabeled_pool(con)))
