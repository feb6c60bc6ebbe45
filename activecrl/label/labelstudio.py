"""Label Studio round trips: tasks with the model's suggestion, the labeling config, and the exports.

Tasks: ``data.image`` is a URL Label Studio can show; our own key for the image (its path relative
to the ``--images`` folder) travels in ``data.activecrl_image``, a name that collides neither with
Label Studio's ``id`` nor with a control, and imports map back by it, never by the URL. The
model's suggestion rides along as a ``predictions`` entry whose ``from_name``/``to_name`` match the
labeling config written here (Label Studio silently ignores a prediction with a wrong
``from_name`` or an unknown class, so both come from one place).

Exports (checked against Label Studio 1.23):

- JSON (recommended): the tasks with every annotation, ``was_cancelled``, ``ground_truth``,
  ``completed_by`` (an id, or an object in some exports) and ``lead_time``.
- JSON-MIN and CSV: one row per kept annotation (cancelled ones are dropped by Label Studio), a
  task without annotations as one row without the control's column; the task's data keys become
  columns, the choice is the control's column, the annotator is ``annotator``.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from pathlib import Path
from xml.sax.saxutils import quoteattr

from activecrl.core.errors import DataError
from activecrl.label.formats import read_csv_rows
from activecrl.label.records import Annotation, ParsedFile

__all__ = ["IMAGE_KEY", "CONTROL", "IMAGE_TAG", "labeling_config", "ImageURLs", "make_tasks", "parse_export",
           "setup_steps", "looks_like_export"]

IMAGE_KEY = "activecrl_image"
CONTROL = "label"  # the Choices control's name: predictions' from_name and the export's column
IMAGE_TAG = "image"  # the Image tag's name (predictions' to_name); shows data.image
_META_COLUMNS = {"id", "annotator", "annotation_id", "created_at", "updated_at", "lead_time", "agreement", IMAGE_KEY,
                 IMAGE_TAG}


def labeling_config(classes: list[str]) -> str:
    """The labeling config XML: one image, one single-choice control over the classes."""
    choices = "\n".join(f"    <Choice value={quoteattr(c)}/>" for c in classes)
    return (f'<View>\n  <Image name="{IMAGE_TAG}" value="$image"/>\n'
            f'  <Choices name="{CONTROL}" toName="{IMAGE_TAG}" choice="single" showInLine="true" required="true">\n'
            f"{choices}\n  </Choices>\n</View>\n")


class ImageURLs:
    """Maps an image key to the URL Label Studio loads.

    ``url_prefix`` (e.g. ``s3://bucket/images`` or ``https://host/images``): prefix + "/" + key.
    Otherwise Label Studio's local file serving: ``/data/local-files/?d=<path relative to
    document_root>``; ``document_root`` defaults to the images folder's parent.
    """

    def __init__(self, images_dir: Path, document_root: Path | None = None, url_prefix: str | None = None):
        self.images_dir = Path(images_dir).resolve()
        self.document_root = Path(document_root).resolve() if document_root else self.images_dir.parent
        self.url_prefix = url_prefix
        if url_prefix is None and not self.images_dir.is_relative_to(self.document_root):
            raise DataError(f"--document-root must be a folder above the images folder {str(self.images_dir)!r}, got "
                            f"{str(self.document_root)!r} instead; Label Studio serves only files under it")

    def __call__(self, key: str) -> str:
        if self.url_prefix is not None:
            return self.url_prefix.rstrip("/") + "/" + urllib.parse.quote(key)
        rel = os.path.relpath(self.images_dir / key, self.document_root).replace(os.sep, "/")
        return "/data/local-files/?d=" + urllib.parse.quote(rel)


def make_tasks(items, urls: ImageURLs, model_version: str) -> list[dict]:
    """Tasks for ``items`` = (key, suggested label or None, confidence or None, audit)."""
    tasks = []
    for key, label, confidence, audit in items:
        task = {"data": {IMAGE_TAG: urls(key), IMAGE_KEY: key, "activecrl_audit": bool(audit)}}
        if label is not None:
            result = {"from_name": CONTROL, "to_name": IMAGE_TAG, "type": "choices", "value": {"choices": [label]}}
            task["predictions"] = [{"model_version": model_version, "score": float(confidence), "result": [result]}]
        tasks.append(task)
    return tasks


def setup_steps(classes_xml_path: Path, tasks_path: Path, urls: ImageURLs) -> str:
    """How to show these tasks in Label Studio, as text the CLI prints."""
    if urls.url_prefix is not None:
        serve = (f"1. The task URLs start with {urls.url_prefix!r}: add the matching cloud storage to the project "
                 "(Settings > Cloud Storage) so Label Studio can read them.")
    else:
        rel = os.path.relpath(urls.images_dir, urls.document_root)
        serve = ("1. Start Label Studio so it may serve local files:\n"
                 "   LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true \\\n"
                 f"   LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={urls.document_root} label-studio start\n"
                 f"   then Settings > Cloud Storage > Add Source Storage > Local files, absolute local path "
                 f"{urls.images_dir}\n   (a subfolder of the document root: {rel}); do not sync it, the tasks "
                 "below already point at the images.")
    return (f"{serve}\n2. Settings > Labeling Interface > Code: paste {classes_xml_path}.\n"
            f"3. Import {tasks_path} (Import button). The model's suggestions appear as predictions.\n"
            "4. Label, then Export as JSON (recommended), JSON-MIN or CSV and run `activecrl label import`.")


def _annotator(value) -> str | None:
    if isinstance(value, dict):  # some exports inline the user object
        value = value.get("email") or value.get("id")
    return None if value in (None, "") else str(value)


def _float(value) -> float | None:
    try:
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


def _choice(value, where: str, problems: list[str]) -> str | None:
    """The single class of a choice value: a string, a list, or ``{"choices": [...]}``."""
    if isinstance(value, dict):
        value = value.get("choices")
    if isinstance(value, str) and value.startswith(("{", "[")):  # CSV cells hold JSON for several choices
        try:
            return _choice(json.loads(value), where, problems)
        except json.JSONDecodeError:
            pass
    if isinstance(value, list):
        if len(value) > 1:
            problems.append(f"{where}: several classes {value} for one image (the control must be single-choice)")
            return None
        value = value[0] if value else None
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return str(value).strip()


def _from_json(tasks: list, problems: list[str]) -> list[Annotation]:
    out = []
    for t, task in enumerate(tasks):
        where = f"task {task.get('id', t)}"
        key = (task.get("data") or {}).get(IMAGE_KEY)
        if not key:
            problems.append(f"{where}: no data.{IMAGE_KEY} (not a task made by `activecrl label next`)")
            continue
        for ann in task.get("annotations") or []:
            results = [r for r in ann.get("result") or [] if r.get("type") == "choices"]
            foreign = [r.get("from_name") for r in results if r.get("from_name") != CONTROL]
            if foreign:
                problems.append(f"{where}: choices from control {foreign[0]!r}; the labeling config's control must "
                                f"be named {CONTROL!r} (use the config `activecrl label next` writes)")
                continue
            cancelled = bool(ann.get("was_cancelled"))
            label = None if cancelled or not results else _choice(results[0].get("value"), where, problems)
            out.append(Annotation(key, label, f"{where} annotation {ann.get('id')}", _annotator(ann.get("completed_by")),
                                  _float(ann.get("lead_time")), cancelled, bool(ann.get("ground_truth"))))
    return out


def _from_rows(rows: list[dict], problems: list[str]) -> list[Annotation]:
    out = []
    for i, row in enumerate(rows):
        where = f"task {row.get('id', i)}"
        key = row.get(IMAGE_KEY)
        if not key:
            problems.append(f"{where}: no {IMAGE_KEY} column value (not a task made by `activecrl label next`)")
            continue
        if row.get("annotation_id") in (None, ""):
            continue  # a task nobody annotated: stays outstanding
        label = _choice(row.get(CONTROL), where, problems)
        out.append(Annotation(str(key), label, f"{where} annotation {row.get('annotation_id')}",
                              _annotator(row.get("annotator")), _float(row.get("lead_time"))))
    return out


def looks_like_export(path: Path) -> bool:
    """Whether ``path`` is (by its header or first item) a Label Studio export of our tasks."""
    path = Path(path)
    head = path.read_text(encoding="utf-8-sig", errors="replace")[:65536]
    if path.suffix.lower() == ".csv":
        return IMAGE_KEY in head.splitlines()[0] if head else False
    return head.lstrip().startswith("[")


def parse_export(path: Path, flag: str = "FILE") -> ParsedFile:
    """A Label Studio export (JSON, JSON-MIN or CSV) as annotations, or a clear error."""
    path = Path(path)
    problems: list[str] = []
    if path.suffix.lower() == ".csv":
        fields, rows = read_csv_rows(path)
        if IMAGE_KEY not in fields:
            raise DataError(f"{flag} must be a Label Studio CSV export of tasks from `activecrl label next`, got "
                            f"{str(path)!r} without the {IMAGE_KEY} column")
        return ParsedFile("labelstudio-csv", _from_rows(rows, problems), problems)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{flag} must be a Label Studio export (JSON, JSON-MIN or CSV), got {str(path)!r}, "
                        f"which is not valid JSON ({exc})") from exc
    if not isinstance(data, list) or not all(isinstance(t, dict) for t in data):
        raise DataError(f"{flag} must be a Label Studio export: a JSON list of tasks, got {str(path)!r} holding "
                        f"a {type(data).__name__}; export the project as JSON, JSON-MIN or CSV")
    if not data:
        return ParsedFile("labelstudio-json", [], problems)
    if all("data" in t and ("annotations" in t or "completions" in t) for t in data):
        for t in data:
            t.setdefault("annotations", t.get("completions"))
        return ParsedFile("labelstudio-json", _from_json(data, problems), problems)
    if all(IMAGE_KEY in t for t in data):
        return ParsedFile("labelstudio-json-min", _from_rows(data, problems), problems)
    raise DataError(f"{flag} must be a Label Studio export (JSON with data/annotations, or JSON-MIN with "
                    f"{IMAGE_KEY}), got {str(path)!r}, whose items have neither; export the project again")
