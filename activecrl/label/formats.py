"""Plain CSV files: the class list, labels (``image,label``), batches and exported labels."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from activecrl.core.errors import DataError
from activecrl.label.images import first_of
from activecrl.label.records import Annotation, ParsedFile

__all__ = ["parse_classes", "read_classes_file", "read_label_csv", "write_csv", "BATCH_COLUMNS", "EXPORT_COLUMNS"]

BATCH_COLUMNS = ("image", "suggested_label", "confidence", "audit")
EXPORT_COLUMNS = ("image", "label", "source", "confidence")


def parse_classes(names, flag: str = "--classes") -> list[str]:
    """Clean class names: stripped, non-empty, no duplicates (listed if any)."""
    names = [str(n).strip() for n in names]
    names = [n for n in names if n]
    if not names:
        raise DataError(f"{flag} must name at least one class, got none; e.g. --classes cat,dog")
    seen, dups = set(), []
    for n in names:
        if n in seen and n not in dups:
            dups.append(n)
        seen.add(n)
    if dups:
        raise DataError(f"{flag} must name each class once, got duplicates: {first_of(dups)}; remove them")
    return names


def read_classes_file(path: Path) -> list[str]:
    """One class per line (blank lines and ``#`` comments ignored)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--classes-file must be a text file with one class per line, got {str(path)!r}, "
                        "which does not exist")
    lines = [line.split("#", 1)[0] for line in path.read_text(encoding="utf-8").splitlines()]
    return parse_classes(lines, flag="--classes-file")


def read_csv_rows(path: Path) -> tuple[list[str], list[dict]]:
    text = Path(path).read_text(encoding="utf-8-sig")  # utf-8-sig: spreadsheets add a BOM
    reader = csv.DictReader(io.StringIO(text))
    rows = list(reader)
    return [f.strip() for f in (reader.fieldnames or [])], rows


def read_label_csv(path: Path, flag: str = "FILE") -> ParsedFile:
    """A CSV with the columns ``image`` and ``label`` (others ignored); an empty label = no label."""
    fields, rows = read_csv_rows(path)
    missing = [c for c in ("image", "label") if c not in fields]
    if missing:
        raise DataError(f"{flag} must be a CSV with the columns image,label (or a Label Studio export), got "
                        f"{str(path)!r} with columns {fields or 'none'}; add the header line image,label")
    annotations, problems = [], []
    for i, row in enumerate(rows, start=2):  # row 1 is the header
        image = (row.get("image") or "").strip()
        if not image:
            problems.append(f"row {i}: empty image")
            continue
        label = (row.get("label") or "").strip() or None
        annotations.append(Annotation(image=image, label=label, where=f"row {i}"))
    return ParsedFile("csv", annotations, problems)


def write_csv(path: Path, columns, rows) -> None:
    """Write ``rows`` (tuples in ``columns`` order) to ``path`` atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(rows)
    tmp.replace(path)
