"""What an import file says, whatever its format: one ``Annotation`` per human answer."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Annotation", "ParsedFile"]


@dataclass(frozen=True)
class Annotation:
    """One answer about one image. ``label`` None: no label (skipped, cancelled or left empty)."""

    image: str  # the project's image key: the path relative to the --images folder
    label: str | None
    where: str  # where in the file, for messages: "row 3", "task 12"
    annotator: str | None = None
    lead_time: float | None = None
    cancelled: bool = False
    ground_truth: bool = False


@dataclass(frozen=True)
class ParsedFile:
    format: str  # "csv", "labelstudio-json", "labelstudio-json-min", "labelstudio-csv"
    annotations: list[Annotation]
    problems: list[str]  # rows that cannot be read (refused with the rest, all at once)
