"""Importing labels: resolve each image's answers to one label, check the whole file, apply it at once.

Resolution per image (Label Studio semantics): cancelled (skipped) annotations and empty results
give no label; a ``ground_truth`` annotation wins; otherwise annotations that agree give their
label and disagreeing ones are a conflict (the image stays unlabeled and ``status`` lists it).

All or nothing: an unknown image, an unknown class (unless ``add_classes``) or a label that
contradicts a stored one (unless ``relabel``; the old label goes to ``label_history``) refuses the
whole file with the offending rows listed, and nothing changes. The caller runs ``apply_import``
inside one transaction; a file whose hash was imported before is a no-op.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from activecrl.core.errors import DataError
from activecrl.label.images import first_of
from activecrl.label.records import Annotation, ParsedFile

__all__ = ["ImportResult", "file_hash", "resolve", "apply_import"]


@dataclass
class ImportResult:
    file: str
    format: str
    already_imported: bool = False
    new_labels: int = 0
    relabeled: int = 0
    unchanged: int = 0
    conflicts: list[str] = field(default_factory=list)
    unlabeled: int = 0  # images whose annotations were all skipped or empty
    added_classes: list[str] = field(default_factory=list)


def file_hash(path: Path) -> str:
    return hashlib.blake2b(Path(path).read_bytes(), digest_size=16).hexdigest()


def resolve(annotations: list[Annotation]) -> tuple[dict[str, str], dict[str, str], set[str]]:
    """(image -> label, image -> conflict detail, images with no label) from one file's answers."""
    by_image: dict[str, list[Annotation]] = defaultdict(list)
    for a in annotations:
        by_image[a.image].append(a)
    labels, conflicts, empty = {}, {}, set()
    for image, anns in by_image.items():
        answered = [a for a in anns if a.label is not None and not a.cancelled]
        truth = {a.label for a in answered if a.ground_truth}
        candidates = truth or {a.label for a in answered}
        if len(candidates) == 1:
            labels[image] = candidates.pop()
        elif candidates:
            conflicts[image] = ", ".join(f"{a.annotator or '?'}: {a.label}" for a in answered)
        else:
            empty.add(image)
    return labels, conflicts, empty


def _offending(parsed: ParsedFile, labels: dict[str, str], images: dict[str, int], classes: dict[str, int],
               stored: dict[int, int], class_names: dict[int, str], add_classes: bool, relabel: bool) -> list[str]:
    bad = list(parsed.problems)
    for a in parsed.annotations:
        if a.image not in images:
            bad.append(f"{a.where}: unknown image {a.image!r}")
        elif a.label is not None and a.label not in classes and not add_classes:
            bad.append(f"{a.where}: unknown class {a.label!r} for {a.image} (known: {first_of(classes, 20)}; "
                       "pass --add-classes to add it)")
    if not relabel:
        for image, label in labels.items():
            old = stored.get(images.get(image, -1))
            if old is not None and class_names[old] != label:
                bad.append(f"{image}: labeled {class_names[old]!r} before, now {label!r} (pass --relabel to "
                           "replace it; the old label is kept in the history)")
    return bad


def apply_import(con: sqlite3.Connection, parsed: ParsedFile, digest: str, name: str, *, add_classes: bool = False,
                 relabel: bool = False, flag: str = "FILE") -> ImportResult:
    """Check ``parsed`` against the project and write it; call inside ``db.transaction``."""
    result = ImportResult(file=name, format=parsed.format)
    if con.execute("SELECT 1 FROM imports WHERE file_hash = ?", (digest,)).fetchone():
        result.already_imported = True
        return result
    images = dict(con.execute("SELECT path, id FROM images"))
    classes = dict(con.execute("SELECT name, id FROM classes"))
    class_names = {v: k for k, v in classes.items()}
    stored = dict(con.execute("SELECT image_id, class_id FROM labels"))
    labels, conflicts, empty = resolve(parsed.annotations)
    bad = _offending(parsed, labels, images, classes, stored, class_names, add_classes, relabel)
    if bad:
        raise DataError(f"{flag} {name!r} was refused and nothing was imported: {len(bad)} row(s) cannot be "
                        f"imported: {first_of(bad)}")
    for label in sorted({a.label for a in parsed.annotations if a.label is not None} - classes.keys()):
        classes[label] = con.execute("INSERT INTO classes (name) VALUES (?)", (label,)).lastrowid
        result.added_classes.append(label)
    import_id = con.execute("INSERT INTO imports (file_hash, file_name, format, n_labels) VALUES (?, ?, ?, 0)",
                            (digest, name, parsed.format)).lastrowid
    con.executemany(
        "INSERT INTO annotations (import_id, image_id, class_id, annotator, lead_time, cancelled, ground_truth) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(import_id, images[a.image], classes.get(a.label) if a.label is not None else None, a.annotator, a.lead_time,
          int(a.cancelled), int(a.ground_truth)) for a in parsed.annotations])
    _write_labels(con, import_id, labels, images, classes, stored, result)
    con.executemany("INSERT OR REPLACE INTO conflicts (image_id, import_id, detail) VALUES (?, ?, ?)",
                    [(images[i], import_id, d) for i, d in conflicts.items() if images[i] not in stored])
    result.conflicts = sorted(i for i in conflicts if images[i] not in stored)
    result.unlabeled = len(empty)
    con.execute("UPDATE imports SET n_labels = ? WHERE id = ?", (result.new_labels + result.relabeled, import_id))
    _close_batches(con, [images[a.image] for a in parsed.annotations])
    return result


def _write_labels(con, import_id, labels, images, classes, stored, result: ImportResult) -> None:
    new, changed = [], []
    for image, label in labels.items():
        image_id, class_id = images[image], classes[label]
        old = stored.get(image_id)
        if old is None:
            new.append((image_id, class_id, import_id))
        elif old != class_id:
            changed.append((image_id, old, class_id, import_id))
        else:
            result.unchanged += 1
    con.executemany("INSERT INTO labels (image_id, class_id, import_id) VALUES (?, ?, ?)", new)
    con.executemany("INSERT INTO label_history (image_id, old_class_id, new_class_id, import_id) VALUES (?, ?, ?, ?)",
                    changed)
    con.executemany("UPDATE labels SET class_id = ?, import_id = ? WHERE image_id = ?",
                    [(c, i, img) for img, _, c, i in changed])
    # a label settles an earlier conflict
    con.executemany("DELETE FROM conflicts WHERE image_id = ?", [(r[0],) for r in new])
    result.new_labels, result.relabeled = len(new), len(changed)


def _close_batches(con, image_ids: list[int]) -> None:
    """Open batches the file answered (any of their images) count as imported."""
    con.execute("CREATE TEMP TABLE IF NOT EXISTS touched (image_id INTEGER PRIMARY KEY)")
    con.execute("DELETE FROM touched")
    con.executemany("INSERT OR IGNORE INTO touched VALUES (?)", [(i,) for i in image_ids])
    con.execute("UPDATE batches SET status = 'imported' WHERE status = 'open' AND id IN "
                "(SELECT batch_id FROM batch_items WHERE image_id IN (SELECT image_id FROM touched))")
