"""The notebook API of a labeling project: one method per ``activecrl label`` command.

>>> p = Project.init("proj", images="photos", classes=["cat", "dog"])
>>> batch = p.issue_batch(picks, suggested, confidences, audit=20)   # writes proj/batches/round-1.csv
>>> p.import_labels("export.json"); p.status(); p.export("labels.csv", auto_label=True, risk=0.05, delta=0.05)
"""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from activecrl.core.errors import ConfigError, DataError
from activecrl.label import batches, db, labelstudio
from activecrl.label.autolabel import ExportResult, auto_label_previews, export_labels
from activecrl.label.formats import BATCH_COLUMNS, parse_classes, read_classes_file, read_label_csv, write_csv
from activecrl.label.images import ImageInfo, find_images, first_of, scan_images
from activecrl.label.importing import ImportResult, apply_import, file_hash
from activecrl.label.records import ParsedFile
from activecrl.label.status import Status, project_status

__all__ = ["Project", "ImageCheck", "read_import_file"]

logger = logging.getLogger(__name__)
DEFAULT_KEYS = ("image_size", "model", "trainer", "strategy", "pretrained", "weights")


@dataclass(frozen=True)
class ImageCheck:
    """Images whose bytes changed, that vanished, or that appeared since they were registered."""

    changed: list[str]
    missing: list[str]
    new: list[str]

    @property
    def ok(self) -> bool:
        return not (self.changed or self.missing)


def read_import_file(path: Path, flag: str = "FILE") -> ParsedFile:
    """A plain ``image,label`` CSV or a Label Studio export (JSON, JSON-MIN, CSV), told apart by content."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{flag} must be a CSV (image,label) or a Label Studio export, got {str(path)!r}, "
                        "which does not exist")
    if path.suffix.lower() == ".csv":
        return labelstudio.parse_export(path, flag) if labelstudio.looks_like_export(path) else read_label_csv(path, flag)
    return labelstudio.parse_export(path, flag)


def _insert_images(con: sqlite3.Connection, infos: list[ImageInfo]) -> None:
    con.executemany("INSERT INTO images (path, bytes, hash, width, height) VALUES (?, ?, ?, ?, ?)",
                    [(i.path, i.bytes, i.hash, i.width, i.height) for i in infos])


class Project:
    """A labeling project folder (``PROJECT/project.db`` + ``batches/``). Open with ``Project.open``."""

    def __init__(self, path, con: sqlite3.Connection):
        self.path = Path(path)
        self.con = con

    # -- creating and opening -------------------------------------------------------------------
    @classmethod
    def init(cls, path, *, images, classes=None, classes_file=None, labels=None, **defaults) -> "Project":
        """Register every image under ``images`` as the pool, the classes, and labels already known.

        ``defaults``: the project's choices (``image_size``, ``model``, ``trainer``, ``strategy``)
        that later rounds use unless told otherwise. All of it is one transaction: a crash leaves
        either no project or the whole one.
        """
        unknown = sorted(set(defaults) - set(DEFAULT_KEYS))
        if unknown:
            raise ConfigError(f"project defaults must be among {', '.join(DEFAULT_KEYS)}, got {', '.join(unknown)}")
        if (classes is None) == (classes_file is None):
            raise ConfigError("give the classes with exactly one of --classes a,b,c or --classes-file F")
        names = read_classes_file(classes_file) if classes_file else parse_classes(
            classes.split(",") if isinstance(classes, str) else classes)
        path, images = Path(path), Path(images).resolve()
        dbfile = path / db.DB_NAME
        if dbfile.exists():
            probe = db.connect(dbfile)
            finished = db.has_schema(probe)
            probe.close()
            if finished:
                raise ConfigError(f"PROJECT must be a new folder, got {str(path)!r}, which already holds a project; "
                                  "open it instead or choose another folder")
            for suffix in ("", "-wal", "-shm"):  # an interrupted init: start over
                Path(str(dbfile) + suffix).unlink(missing_ok=True)
        infos = scan_images(images)
        parsed = read_import_file(labels, "--labels") if labels else None
        path.mkdir(parents=True, exist_ok=True)
        con = db.connect(dbfile)
        with db.transaction(con):
            db.create_schema(con, {k: v for k, v in defaults.items() if v is not None})
            db.set_meta(con, "images_dir", str(images))
            con.executemany("INSERT INTO classes (name) VALUES (?)", [(n,) for n in names])
            _insert_images(con, infos)
            if parsed is not None:
                apply_import(con, parsed, file_hash(labels), Path(labels).name, flag="--labels")
        logger.info("registered %d images, %d classes in %s", len(infos), len(names), path)
        return cls(path, con)

    @classmethod
    def open(cls, path) -> "Project":
        dbfile = db.check_project(Path(path))
        con = db.connect(dbfile)
        try:
            db.check_schema(con, Path(path))
        except Exception:
            con.close()
            raise
        return cls(path, con)

    def close(self) -> None:
        self.con.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- images -----------------------------------------------------------------------------------
    @property
    def images_dir(self) -> Path:
        return Path(db.get_meta(self.con, "images_dir"))

    @property
    def defaults(self) -> dict:
        return db.get_meta(self.con, "defaults")

    @property
    def classes(self) -> list[str]:
        return [r[0] for r in self.con.execute("SELECT name FROM classes ORDER BY id")]

    def check_images(self) -> ImageCheck:
        """Hash every registered image again: the changed and missing ones, and new files, by name."""
        stored = dict(self.con.execute("SELECT path, hash FROM images"))
        on_disk = set(find_images(self.images_dir)) if self.images_dir.is_dir() else set()
        present = sorted(set(stored) & on_disk)
        infos = scan_images(self.images_dir, present) if present else []
        changed = [i.path for i in infos if i.hash != stored[i.path]]
        return ImageCheck(changed, sorted(set(stored) - on_disk), sorted(on_disk - set(stored)))

    def add(self, images=None, *, flag: str = "images") -> list[str]:
        """Register the images under ``images`` (default: the project's folder) that are not yet known.

        A folder other than the project's must lie inside it, since image keys are paths relative to it.
        ``flag`` names the argument in messages (the CLI's positional ``DIR``).
        """
        root = self.images_dir
        sub = Path(images).resolve() if images else root
        if not sub.is_relative_to(root):
            raise DataError(f"{flag} must be the project's images folder {str(root)!r} or inside it, got "
                            f"{str(sub)!r} instead; copy the new images there first")
        known = {r[0] for r in self.con.execute("SELECT path FROM images")}
        prefix = sub.relative_to(root).as_posix()
        found = [f if prefix == "." else f"{prefix}/{f}" for f in find_images(sub)]
        new = [f for f in found if f not in known]
        if not new:
            return []
        infos = scan_images(root, new)
        with db.transaction(self.con):
            _insert_images(self.con, infos)
        logger.info("added %d images", len(new))
        return new

    # -- rounds -----------------------------------------------------------------------------------
    def open_batch(self) -> batches.Batch | None:
        """The outstanding batch ``next`` would re-issue (check it before running the model)."""
        return batches.open_batch(self.con)

    def index_sets(self) -> batches.IndexSets:
        return batches.index_sets(self.con)

    def record_predictions(self, images, labels, confidences, model_version: str) -> None:
        """The current model's predicted class and confidence per image (replaces the previous model's)."""
        if not len(images) == len(labels) == len(confidences):
            raise ConfigError(f"images, labels and confidences must have the same length, got {len(images)}, "
                              f"{len(labels)} and {len(confidences)} instead")
        ids = dict(self.con.execute("SELECT path, id FROM images"))
        classes = dict(self.con.execute("SELECT name, id FROM classes"))
        unknown = [i for i in images if i not in ids] + [c for c in labels if c not in classes]
        if unknown:
            raise DataError(f"predictions must name project images and classes, got unknown {first_of(unknown)}")
        with db.transaction(self.con):
            self.con.execute("DELETE FROM predictions")
            self.con.executemany(
                "INSERT INTO predictions (image_id, class_id, confidence, model_version) VALUES (?, ?, ?, ?)",
                [(ids[i], classes[c], float(p), model_version) for i, c, p in zip(images, labels, confidences)])

    def issue_batch(self, picks, suggested=None, confidences=None, *, audit: int = 0, seed: int | None = None,
                    fmt: str = "csv", out=None, new: bool = False, strategy: str | None = None,
                    model_version: str | None = None, document_root=None, url_prefix: str | None = None
                    ) -> batches.Batch:
        """Issue a batch and write it (CSV or Label Studio tasks); re-issue the open one unless ``new``.

        ``fmt="labelstudio"`` also writes ``labeling-config.xml`` and ``setup.txt`` beside the tasks.
        """
        if fmt not in ("csv", "labelstudio"):
            raise ConfigError(f"--format must be csv or labelstudio, got {fmt!r} instead")
        urls = labelstudio.ImageURLs(self.images_dir, document_root, url_prefix) if fmt == "labelstudio" else None
        picks = list(picks)
        suggested = list(suggested) if suggested is not None else [None] * len(picks)
        confidences = list(confidences) if confidences is not None else [None] * len(picks)
        with db.transaction(self.con):
            batch = batches.open_batch(self.con)
            if batch is None or new:
                batches.discard_open(self.con)
                batch = batches.create_batch(self.con, picks, suggested, confidences, audit=audit, seed=seed,
                                             strategy=strategy or self.defaults.get("strategy"),
                                             model_version=model_version)
        self._write_batch(batch, fmt, out, urls)
        return batch

    def _write_batch(self, batch: batches.Batch, fmt: str, out, urls) -> Path:
        folder = self.path / "batches"
        if fmt == "csv":
            out = Path(out) if out else folder / f"round-{batch.round}.csv"
            # audit rows carry no suggestion: the labeler must not be anchored on the model's answer
            write_csv(out, BATCH_COLUMNS, [(i.image, "" if i.audit else (i.suggested_label or ""),
                                            "" if i.audit or i.confidence is None else f"{i.confidence:.6g}",
                                            int(i.audit)) for i in batch.items])
            return out
        out = Path(out) if out else folder / f"round-{batch.round}.json"
        items = [(i.image, None if i.audit else i.suggested_label, i.confidence, i.audit) for i in batch.items]
        tasks = labelstudio.make_tasks(items, urls, batch.model_version or f"round-{batch.round}")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(tasks, indent=1), encoding="utf-8")
        config = out.with_name("labeling-config.xml")
        config.write_text(labelstudio.labeling_config(self.classes), encoding="utf-8")
        out.with_name("setup.txt").write_text(labelstudio.setup_steps(config, out, urls), encoding="utf-8")
        return out

    # -- labels in and out ------------------------------------------------------------------------
    def import_labels(self, file, *, add_classes: bool = False, relabel: bool = False) -> ImportResult:
        """Import a CSV or a Label Studio export: all or nothing; the same file twice is a no-op."""
        parsed = read_import_file(file)
        digest = file_hash(file)
        with db.transaction(self.con):
            result = apply_import(self.con, parsed, digest, Path(file).name, add_classes=add_classes, relabel=relabel)
        if result.already_imported:
            logger.info("%s was imported before; nothing changed", file)
        return result

    def status(self) -> Status:
        status = project_status(self.con)
        if self.con.execute("SELECT 1 FROM predictions LIMIT 1").fetchone() is not None:
            status.auto_label = auto_label_previews(self.con)
        return status

    def export(self, out, *, auto_label: bool = False, risk: float | None = None,
               delta: float | None = None) -> ExportResult:
        return export_labels(self.con, Path(out), auto_label=auto_label, risk=risk, delta=delta)
