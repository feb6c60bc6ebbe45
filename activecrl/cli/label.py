"""``activecrl label``: label a folder of your own images, batch by batch, with the model picking.

A thin typer sub-app over :class:`activecrl.label.project.Project` and
:func:`activecrl.label.rounds.next_round`; the library is imported inside each command, so
``activecrl --help`` loads neither torch nor SQLite.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from activecrl.cli.options import Command, Group, split_list

label_app = typer.Typer(cls=Group, no_args_is_help=True, add_completion=False,
                        help="Label your own images: the model picks which to label next (init, next, import, "
                             "status, export, add).")
console = Console()

PROJECT = typer.Argument(..., help="the project folder (created by `activecrl label init`)")
TRACK_HELP = ("also log the round to these experiment trackers: mlflow | tensorboard (repeat for both; "
              "pip install -e '.[tracking]'); one tracked run per project, continued by every round")
TRACKING_URI_HELP = ("--track mlflow: the tracking server or store (e.g. http://host:5000; default: the project's "
                     "saved one, else a SQLite file PROJECT/mlflow.db)")


def _open(project: Path):
    from activecrl.label.project import Project

    return Project.open(project)


def _logging(verbose: bool) -> None:
    from activecrl.cli.app import _setup_logging

    _setup_logging(verbose)


@label_app.command(cls=Command)
def init(project: Path = typer.Argument(..., help="a new folder for the project"),
         images: Path = typer.Option(..., help="the folder of images to label (flat or nested)"),
         classes: Optional[str] = typer.Option(None, help="the class names, comma-separated: cat,dog"),
         classes_file: Optional[Path] = typer.Option(None, help="a text file with one class name per line"),
         labels: Optional[Path] = typer.Option(None, help="labels you already have: a CSV image,label or a Label "
                                                          "Studio export"),
         image_size: Optional[int] = typer.Option(None, min=1, help="side in pixels images are resized to for the "
                                                                    "model (default 32)"),
         model: Optional[str] = typer.Option(None, help="linear (default: a linear head on label-free patch "
                                                        "features) | mlp | timm:NAME (its features, with --pretrained "
                                                        "or --weights) | an image model such as small_cnn4"),
         pretrained: bool = typer.Option(False, help="timm:NAME: download its pretrained weights"),
         weights: Optional[Path] = typer.Option(None, help="timm:NAME: a weights file to load"),
         trainer: Optional[str] = typer.Option(None, help="training recipe (default crl; see `activecrl list`)"),
         strategy: Optional[str] = typer.Option(None, help="which images to label next (default least_conf; see "
                                                           "`activecrl list`)"),
         verbose: bool = typer.Option(False, "--verbose", "-v", help="log what the library does")):
    """Start a project: register every image under --images, the classes, and labels you already have."""
    from activecrl.label.project import Project
    from activecrl.label.rounds import _check_settings, round_settings

    _logging(verbose)
    choices = dict(image_size=image_size, model=model, trainer=trainer, strategy=strategy,
                   pretrained=pretrained or None, weights=str(weights.resolve()) if weights else None)
    settings = round_settings(_Defaults(), **choices)  # bad names fail before the images are read
    _check_settings(settings)
    with console.status("hashing the images"):
        p = Project.init(project, images=images, classes=classes, classes_file=classes_file, labels=labels,
                         **choices)
    with p:
        status = p.status()
        console.print(f"project [bold]{escape(str(project))}[/]: {status.n_images} images, {len(p.classes)} classes, "
                      f"{status.n_labeled} labeled")
        console.print(f"model {settings.model}, trainer {settings.trainer}, strategy {settings.strategy}; next: "
                      f"activecrl label next {escape(str(project))} --budget N")


class _Defaults:
    """A project without stored defaults, to check ``init``'s choices before the project exists."""

    defaults: dict = {}


@label_app.command("next", cls=Command)
def next_batch(project: Path = PROJECT,
               budget: int = typer.Option(..., help="images the model picks for this batch"),
               strategy: Optional[str] = typer.Option(None, help="override the project's strategy for this round"),
               audit: int = typer.Option(0, help="also this many uniform random unlabeled images, marked audit: "
                                                 "the unbiased sample status and export --auto-label use"),
               format: str = typer.Option("csv", "--format", help="csv | labelstudio (tasks JSON + labeling config)"),
               out: Optional[Path] = typer.Option(None, "--out", "-o", help="the batch file (default "
                                                                            "PROJECT/batches/round-<r>.csv or .json)"),
               new: bool = typer.Option(False, help="discard the batch issued and not yet imported, pick a new one"),
               oracle: Optional[Path] = typer.Option(None, help="a CSV image,label for every image: answers the "
                                                                "batch at once (simulated labeling)"),
               model: Optional[str] = typer.Option(None, help="override the project's model for this round"),
               trainer: Optional[str] = typer.Option(None, help="override the project's trainer for this round"),
               image_size: Optional[int] = typer.Option(None, min=1, help="override the project's image size"),
               seed: int = typer.Option(0, min=0, help="random seed of training, picks and the audit draw"),
               device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
               document_root: Optional[Path] = typer.Option(None, help="labelstudio: Label Studio's local files "
                                                                       "document root (default: the images "
                                                                       "folder's parent)"),
               url_prefix: Optional[str] = typer.Option(None, help="labelstudio: image URLs as PREFIX/<image> "
                                                                   "(cloud storage) instead of local files"),
               track: Optional[list[str]] = typer.Option(None, metavar="STR,...", help=escape(TRACK_HELP)),
               tracking_uri: Optional[str] = typer.Option(None, help=TRACKING_URI_HELP),
               verbose: bool = typer.Option(False, "--verbose", "-v", help="log what the library does")):
    """Train on the labels so far and write the next batch to label (re-issues a batch not yet imported)."""
    from activecrl.label.rounds import next_round
    from activecrl.label.tracking import ui_commands

    _logging(verbose)
    track = split_list(track)
    with _open(project) as p:
        with console.status("picking the next batch"):
            result = next_round(p, budget, strategy=strategy, audit=audit, fmt=format, out=out, new=new,
                                oracle=oracle, seed=seed, device=device, model=model, trainer=trainer,
                                image_size=image_size, document_root=document_root, url_prefix=url_prefix,
                                track=track, tracking_uri=tracking_uri)
        _print_round(result, format)
        if result.imported is not None:
            console.print(f"oracle: {_import_line(result.imported)}")
        for command in () if result.reissued else ui_commands(p, track):
            console.print(f"tracked, to look at it: {escape(command)}", soft_wrap=True)


def _print_round(result, fmt: str) -> None:
    batch = result.batch
    n_audit = sum(i.audit for i in batch.items)
    if result.reissued:
        console.print(f"[yellow]round {batch.round} was issued and not yet imported[/]: re-issued its "
                      f"{len(batch.items)} images (pass --new to discard it and pick again)")
    else:
        how = "cold start (no labels yet)" if result.cold_start else f"trained on {result.n_labeled} labels"
        console.print(f"round {batch.round}: {len(batch.items) - n_audit} images picked by {result.strategy}, "
                      f"{how}, on {result.inputs} ({result.seconds:.1f} s)" + (f"; {n_audit} audit" if n_audit else ""))
    table = Table(title=f"round {batch.round} (first 10 of {len(batch.items)})")
    for col in ("image", "suggested", "confidence", "audit"):
        table.add_column(col, justify="right" if col == "confidence" else "left")
    for item in batch.items[:10]:
        table.add_row(escape(item.image), escape(item.suggested_label or ""),
                      "" if item.confidence is None else f"{item.confidence:.3f}", "yes" if item.audit else "")
    console.print(table)
    console.print(f"batch: [bold]{escape(str(result.path))}[/]")
    if fmt == "labelstudio":
        console.print((result.path.parent / "setup.txt").read_text(encoding="utf-8"), highlight=False)


def _import_line(result) -> str:
    if result.already_imported:
        return f"{result.file} was imported before; nothing changed"
    line = f"{result.new_labels} new labels, {result.relabeled} relabeled, {result.unchanged} unchanged"
    if result.unlabeled:
        line += f", {result.unlabeled} without a label"
    if result.added_classes:
        line += f"; new classes: {', '.join(result.added_classes)}"
    if result.conflicts:
        line += f"; {len(result.conflicts)} conflicting (kept the old label; --relabel takes the new one)"
    return line


@label_app.command("import", cls=Command)
def import_(project: Path = PROJECT,
            file: Path = typer.Argument(..., help="a CSV image,label or a Label Studio export (JSON, JSON-MIN, CSV)"),
            add_classes: bool = typer.Option(False, help="accept labels that are not yet classes of the project"),
            relabel: bool = typer.Option(False, help="let the file's labels replace different earlier ones"),
            verbose: bool = typer.Option(False, "--verbose", "-v", help="log what the library does")):
    """Import labels: all of the file or nothing; the same file twice changes nothing."""
    _logging(verbose)
    with _open(project) as p:
        result = p.import_labels(file, add_classes=add_classes, relabel=relabel)
        console.print(f"{escape(str(file))} ({result.format}): {escape(_import_line(result))}")
        status = p.status()
        console.print(f"{status.n_labeled} of {status.n_images} images labeled; next: activecrl label next "
                      f"{escape(str(project))} --budget N")


@label_app.command(cls=Command)
def status(project: Path = PROJECT,
           json_: bool = typer.Option(False, "--json", help="print machine-readable JSON")):
    """Labels per class, rounds, the open batch, the model's audited accuracy, the labelers' pace and what
    export --auto-label would certify now (at --risk 0.05 and 0.1, --delta 0.1)."""
    with _open(project) as p:
        s = p.status()
    if json_:
        print(json.dumps({**dataclasses.asdict(s), "n_unlabeled": s.n_unlabeled}, indent=1))
        return
    table = Table(title=f"{escape(str(project))}: {s.n_labeled} of {s.n_images} images labeled")
    table.add_column("")
    table.add_column("", justify="right")
    table.add_row("rounds", str(s.rounds))
    table.add_row("open batch", "none" if s.open_batch is None else f"round {s.open_batch} ({s.open_batch_size} images)")
    table.add_row("outstanding (issued, unlabeled)", str(s.outstanding))
    if s.audit_accuracy is not None:
        lo, hi = s.audit_interval
        table.add_row(f"model accuracy on {s.n_audit_labels} audit labels ({s.model_version})",
                      f"{s.audit_accuracy:.1%} [{lo:.1%}, {hi:.1%}]")
    if s.seconds_per_label is not None:
        table.add_row("seconds per label (median)", f"{s.seconds_per_label:.1f}")
    if s.next_batch_seconds is not None:
        from activecrl.label.status import format_seconds

        table.add_row("the next batch will take about", format_seconds(s.next_batch_seconds))
    for a in s.auto_label:
        table.add_row(f"export --auto-label --risk {a.risk:g} --delta {a.delta:g} now", _preview(a))
    if s.conflicts:
        table.add_row("conflicting labels", str(len(s.conflicts)))
    console.print(table)
    per_class = Table(title="labels per class")
    per_class.add_column("class")
    per_class.add_column("labels", justify="right")
    for name, n in s.labels_per_class.items():
        per_class.add_row(escape(name), str(n))
    console.print(per_class)


def _preview(a) -> str:
    if a.n_audit < a.needed:
        return f"needs {a.needed} audit labels, has {a.n_audit}"
    if a.bound is None:
        return f"nothing certified yet ({a.n_audit} audit labels)"
    return f"{a.n_auto} images ({a.n_auto / max(a.n_unlabeled, 1):.1%} of unlabeled), error ≤ {a.bound:.1%}"


@label_app.command(cls=Command)
def export(project: Path = PROJECT,
           out: Path = typer.Option(..., "--out", "-o", help="the CSV to write (image,label,source,confidence)"),
           auto_label: bool = typer.Option(False, help="also label the unlabeled images the model is sure of, with "
                                                       "a guaranteed error rate (needs audit labels)"),
           risk: Optional[float] = typer.Option(None, help="--auto-label: the largest error rate allowed, e.g. 0.05"),
           delta: Optional[float] = typer.Option(None, help="--auto-label: the chance the guarantee may fail, "
                                                            "e.g. 0.05")):
    """Write the labels: the human ones, and with --auto-label the model's certified ones."""
    with _open(project) as p:
        result = p.export(out, auto_label=auto_label, risk=risk, delta=delta)
    line = f"{result.n_human} human labels"
    if auto_label:
        line += f" + {result.n_auto} auto-labels ({result.pool_coverage:.1%} of {result.n_unlabeled} unlabeled)"
    console.print(f"{line} in [bold]{escape(str(result.path))}[/]")


@label_app.command(cls=Command)
def add(project: Path = PROJECT,
        images: Path = typer.Argument(..., metavar="DIR", help="the project's images folder or a folder inside it")):
    """Register images added to the project's images folder since init."""
    with _open(project) as p:
        new = p.add(images, flag="DIR")
    console.print(f"added {len(new)} images" if new else "no new images")
