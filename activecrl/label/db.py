"""The project database: ``PROJECT/project.db``, SQLite (stdlib), one schema, one connection helper.

WAL journal (readers never block the writer, and a kill -9 mid-write leaves the last committed
state), foreign keys on, a busy timeout so a second writer waits for the lock before failing with
a clear message. Every change runs inside ``transaction`` (``BEGIN IMMEDIATE``: the write lock is
taken up front, so two writers queue instead of deadlocking on a read-to-write upgrade).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

from activecrl.core.errors import ActiveCRLError

__all__ = ["ProjectError", "ProjectBusy", "SCHEMA_VERSION", "DB_NAME", "AUDIT_IMAGE_IDS", "connect", "create_schema", "transaction",
           "check_project", "check_schema", "has_schema", "get_meta", "set_meta"]

SCHEMA_VERSION = 1
# the audit images: drawn for batches that were not discarded (the unbiased sample of the pool)
AUDIT_IMAGE_IDS = ("SELECT b.image_id FROM batch_items b JOIN batches t ON t.id = b.batch_id "
                   "WHERE b.audit = 1 AND t.status != 'discarded'")
DB_NAME = "project.db"
BUSY_TIMEOUT_S = 30.0


class ProjectError(ActiveCRLError):
    """A labeling project is missing, unfinished, of another schema version, or given bad input."""


class ProjectBusy(ProjectError):
    """Another process held the project's write lock for longer than the busy timeout."""


SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE classes (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE images (
    id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, bytes INTEGER NOT NULL, hash TEXT NOT NULL,
    width INTEGER, height INTEGER);
CREATE TABLE imports (
    id INTEGER PRIMARY KEY, file_hash TEXT NOT NULL UNIQUE, file_name TEXT NOT NULL, format TEXT NOT NULL,
    imported_at TEXT NOT NULL DEFAULT (datetime('now')), n_labels INTEGER NOT NULL);
CREATE TABLE labels (
    image_id INTEGER PRIMARY KEY REFERENCES images(id), class_id INTEGER NOT NULL REFERENCES classes(id),
    import_id INTEGER REFERENCES imports(id));
CREATE TABLE label_history (
    id INTEGER PRIMARY KEY, image_id INTEGER NOT NULL REFERENCES images(id),
    old_class_id INTEGER NOT NULL REFERENCES classes(id), new_class_id INTEGER NOT NULL REFERENCES classes(id),
    import_id INTEGER NOT NULL REFERENCES imports(id));
CREATE TABLE annotations (
    id INTEGER PRIMARY KEY, import_id INTEGER NOT NULL REFERENCES imports(id),
    image_id INTEGER NOT NULL REFERENCES images(id), class_id INTEGER REFERENCES classes(id),
    annotator TEXT, lead_time REAL, cancelled INTEGER NOT NULL, ground_truth INTEGER NOT NULL);
CREATE TABLE conflicts (
    image_id INTEGER PRIMARY KEY REFERENCES images(id), import_id INTEGER NOT NULL REFERENCES imports(id),
    detail TEXT NOT NULL);
CREATE TABLE batches (
    id INTEGER PRIMARY KEY, round INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('open', 'imported', 'discarded')),
    strategy TEXT, model_version TEXT, created_at TEXT NOT NULL DEFAULT (datetime('now')));
CREATE TABLE batch_items (
    batch_id INTEGER NOT NULL REFERENCES batches(id), image_id INTEGER NOT NULL REFERENCES images(id),
    position INTEGER NOT NULL, suggested_class_id INTEGER REFERENCES classes(id), confidence REAL,
    audit INTEGER NOT NULL, PRIMARY KEY (batch_id, image_id));
CREATE TABLE predictions (
    image_id INTEGER PRIMARY KEY REFERENCES images(id), class_id INTEGER NOT NULL REFERENCES classes(id),
    confidence REAL NOT NULL, model_version TEXT NOT NULL);
CREATE INDEX annotations_image ON annotations(image_id);
CREATE INDEX batch_items_image ON batch_items(image_id);
"""


def connect(path: Path) -> sqlite3.Connection:
    """Open the database with WAL, foreign keys and a busy timeout; autocommit off (explicit BEGIN)."""
    con = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA foreign_keys=ON")
    con.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process kills
    return con


@contextlib.contextmanager
def transaction(con: sqlite3.Connection):
    """All or nothing: BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any exception."""
    try:
        con.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise ProjectBusy(f"the project is being written by another process (waited {BUSY_TIMEOUT_S:.0f} s for "
                              "its lock); run the command again when that one has finished") from exc
        raise
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def create_schema(con: sqlite3.Connection, defaults: dict) -> None:
    """Create the tables and the meta rows inside the caller's transaction."""
    for statement in SCHEMA.split(";"):
        if statement.strip():
            con.execute(statement)
    set_meta(con, "defaults", defaults)
    # written last in the same transaction: its presence means init committed as a whole
    set_meta(con, "schema_version", SCHEMA_VERSION)


def get_meta(con: sqlite3.Connection, key: str):
    row = con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return None if row is None else json.loads(row[0])


def set_meta(con: sqlite3.Connection, key: str, value) -> None:
    con.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value)))


def has_schema(con: sqlite3.Connection) -> bool:
    row = con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
    return row is not None and con.execute("SELECT 1 FROM meta WHERE key='schema_version'").fetchone() is not None


def check_project(path: Path) -> Path:
    """The database file of the project folder ``path``, or a clear error if it is not a project."""
    db = Path(path) / DB_NAME
    if not Path(path).is_dir():
        raise ProjectError(f"PROJECT must be a labeling project folder, got {str(path)!r}, which does not exist; "
                           "create it with `activecrl label init PROJECT --images DIR --classes a,b,c`")
    if not db.is_file():
        raise ProjectError(f"PROJECT must be a labeling project folder, got {str(path)!r}, which has no {DB_NAME}; "
                           "create it with `activecrl label init PROJECT --images DIR --classes a,b,c`")
    return db


def check_schema(con: sqlite3.Connection, path: Path) -> None:
    if not has_schema(con):
        raise ProjectError(f"{str(path)!r} holds an unfinished project (its init was interrupted); "
                           "run `activecrl label init` on it again")
    version = get_meta(con, "schema_version")
    if version != SCHEMA_VERSION:
        raise ProjectError(f"the project's schema version must be {SCHEMA_VERSION}, got {version} instead; "
                           "use the activecrl version that created it")
