"""The ``activecrl`` command: a thin typer/rich layer over the library.

Each command parses options, builds a config dataclass, calls one library function and renders
the result. Everything here can be done from a notebook with the same functions. The library
modules that load torch are imported inside the commands, so ``activecrl --help`` never loads it;
the flags come from the config dataclasses, which import without torch.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.live import Live
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from activecrl import __version__
from activecrl.al.config import ALConfig
from activecrl.cli.label import label_app
from activecrl.cli.options import Command, Group, build_config, config_command, split_list
from activecrl.core.config import preset_names
from activecrl.core.errors import ActiveCRLError
from activecrl.embeddings.config import EmbedConfig, PretrainConfig
from activecrl.methods.config import TrainRunConfig
from activecrl.ood.config import OODConfig

app = typer.Typer(cls=Group, add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Deep active learning with confidence-aware training (CRL, Moon et al. 2020).")
console = Console()
app.add_typer(label_app, name="label")


def _print_version(value: bool) -> None:
    if value:
        console.print(f"activecrl {__version__}")
        raise typer.Exit()


@app.callback()
def _app(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True, metavar="",
                                      help="Print the version and exit."),
         threads: Optional[int] = typer.Option(None, "--threads", min=1,
                                               help="CPU threads for torch (default: 1 per million model parameters, "
                                                    "at most the CPUs this process may use)")):
    """Deep active learning with confidence-aware training (CRL, Moon et al. 2020)."""
    _global_options["threads"] = threads  # run and train put it in their config (recorded, kept on --resume)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


_global_options: dict = {}  # set by the callback above on every invocation


def _with_global_threads(overrides: dict) -> dict:
    """``activecrl --threads N run`` means ``run --threads N``: both go into the config (recorded in the
    run folder, kept on --resume); the command's own flag wins."""
    threads = _global_options.get("threads")
    return overrides if threads is None or "threads" in overrides else {**overrides, "threads": threads}


def _print_table(table: Table) -> None:
    """Print a table without ever cutting a number: where the output is not a terminal (a log file,
    ``tee``, CI) rich would squeeze it to 80 columns and end cells in "…", so it is printed at its
    natural width; on a terminal narrower than the table, cells wrap (fold) instead of being cut."""
    from rich.measure import Measurement

    for column in table.columns:
        column.overflow = "fold"
    if console.is_terminal:
        console.print(table)
        return
    width = console.width
    console.width = max(width, Measurement.get(console, console.options.update_width(10**6), table).maximum)
    try:
        console.print(table)
    finally:
        console.width = width


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)], force=True)


def metrics_table(title: str, rows: list[tuple[str, dict]], paper_scale: bool = True,
                  ci95: dict | None = None) -> Table:
    """One column per metric (``–`` where a run lacks one); with ``ci95`` and one run, a metric per line."""
    from activecrl.evaluation.metrics import METRIC_NAMES, PAPER_SCALE_NOTE, format_metric
    from activecrl.evaluation.report import TRAIN_HEADERS

    fmt = lambda v, m: format_metric(v, m, paper_scale=paper_scale)  # noqa: E731
    table = Table(title=title, caption=PAPER_SCALE_NOTE if paper_scale else None)
    if ci95 and len(rows) == 1:  # nine values with intervals only fit a terminal one per line
        for col in ("metric", rows[0][0], "95% CI (bootstrap)"):
            table.add_column(col, justify="left" if col == "metric" else "right")
        for m in METRIC_NAMES:
            ci = ci95.get(m)
            table.add_row(TRAIN_HEADERS[m], fmt(rows[0][1].get(m), m), f"[{fmt(ci[0], m)}, {fmt(ci[1], m)}]" if ci else "–")
        return table
    table.add_column("run")
    for name in METRIC_NAMES:
        table.add_column(TRAIN_HEADERS[name], justify="right")
    for label, metrics in rows:
        table.add_row(label, *(fmt(metrics.get(m), m) for m in METRIC_NAMES))
    return table


@app.command(cls=Command)
@config_command(TrainRunConfig)
def train(
    overrides: dict,
    out: Path = typer.Option(..., help="run folder for metrics.json, predictions.npz, model.pt"),
    config: Optional[str] = typer.Option(None, help="TOML file (or preset name) of these options; flags override it"),
    overwrite: bool = typer.Option(False, help="replace an existing run in --out"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log what the library does"),
):
    """Train one model (or a comparison method's models) and report the confidence metrics on its test split."""
    from activecrl.core.io import prepare_out_dir
    from activecrl.methods.run import planned_epochs, run_label, save_train_run, train_and_evaluate
    from activecrl.tracking import open_tracking

    _setup_logging(verbose)
    config = build_config(TrainRunConfig, _with_global_threads(overrides), config, train.config_options)
    train_cfg = config.train
    total = planned_epochs(config)  # checks the method's options: fails before training, not after
    prepare_out_dir(out, marker="metrics.json", overwrite=overwrite, create=False)  # fail before training
    label = run_label(config)
    try:
        with open_tracking(config, out, "train") as tracked:  # --track: checked before training
            with _epoch_progress(f"{config.model} / {label}", total) as on_epoch:
                result = train_and_evaluate(config, progress=tracked.epoch_logger(on_epoch))
            save_train_run(result, out, overwrite=True)
            tracked.log_metrics({**result.metrics, "train_seconds": result.train_seconds}, step=0)
            tracked.log_artifacts([out / "metrics.json"])
    except KeyboardInterrupt:
        # a train run is saved whole at the end (metrics.json last): no partial run to continue
        console.print(f"[yellow]interrupted[/]: nothing was saved to {escape(str(out))} (train writes its run only "
                      f"once training and evaluation are done, metrics.json last); rerun the same command to start "
                      f"again", soft_wrap=True)
        raise typer.Exit(130) from None
    _print_table(metrics_table(f"{config.dataset} · {config.model} · {label} · {train_cfg.epochs} epochs "
                               f"({result.train_seconds:.0f}s, {result.threads_used} CPU thread(s))",
                               [(label, result.metrics)], ci95=result.ci95))
    if "temperature" in result.method_info:
        console.print(f"temperature scaling: T = {result.method_info['temperature']:.4f}")
    console.print(f"saved to [bold]{out}[/]")


class _epoch_progress:
    """A rich progress bar fed by the trainer's per-epoch callback."""

    def __init__(self, label: str, epochs: int):
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), console=console)
        self.task = self.progress.add_task(label, total=epochs, loss="-")

    def __enter__(self):
        self.progress.start()
        return lambda info: self.progress.update(self.task, completed=info.epoch, loss=f"{info.loss:.4f}")

    def __exit__(self, *exc):
        self.progress.stop()


@app.command(cls=Command)
@config_command(ALConfig, exclude={"train.seed"},  # each stage's training seed derives from (--seed, trial, stage)
                aliases={"warm_start": "--warm-start/--retrain"})
def run(
    overrides: dict,
    out: Optional[Path] = typer.Option(None, help="run folder (default runs/<dataset>-<strategy>-<trainer>-<time>)"),
    config: Optional[str] = typer.Option(None, help=f"a preset ({', '.join(preset_names())}) or a TOML file; "
                                                   "flags override it"),
    resume: bool = typer.Option(False, help="continue the run in --out from its last complete stage"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log what the library does"),
):
    """Run an active-learning experiment. With no options: a short offline demo on digits (under a minute on
    an idle CPU core)."""
    from activecrl.al.loop import (CONFIG_FILE, completed_stages, default_out_dir, experiment_config, resume_command,
                                   run_active_learning)
    from activecrl.al.runs import load_run, plot_curves

    _setup_logging(verbose)
    if resume and out is None:
        raise ActiveCRLError("--resume needs --out: the folder of the run to continue")
    overrides = _with_global_threads(overrides)
    if resume:  # the same options again are fine (the natural retry); different ones are refused by name
        al_config = experiment_config(overrides, config, resume=out)
    else:
        al_config = build_config(ALConfig, overrides, config, run.config_options)
    if out is None:
        out = default_out_dir(al_config)
    try:
        with _RichLoop(al_config) as callbacks:
            run_active_learning(al_config, out, resume=resume, callbacks=callbacks)
    except KeyboardInterrupt:
        if not (out / CONFIG_FILE).is_file():  # stopped before the run began: nothing to continue
            raise
        console.print(f"[yellow]interrupted[/]: {completed_stages(out)} of {al_config.trials * al_config.stages} "
                      f"stages are saved in {escape(str(out))}; continue with:\n  {escape(resume_command(out))}",
                      soft_wrap=True)  # never break the command a user will copy
        raise typer.Exit(130) from None
    summary = load_run(out)
    _print_table(_summary_table(summary))
    plot = plot_curves([summary], out / "curves.png")
    if al_config.track:
        from activecrl.tracking import log_artifacts

        log_artifacts(out, [plot])
    console.print(f"results: [bold]{out / 'results.jsonl'}[/]   plot: [bold]{plot}[/]")


class _RichLoop:
    def __init__(self, config):
        self.config = config
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), console=console)
        self.stage_task = self.progress.add_task("stages", total=config.trials * config.stages, info="")
        self.epoch_task = self.progress.add_task("epochs", total=config.train.epochs, info="")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.progress.stop()

    def trial_start(self, trial, n_trials):
        self.progress.start()  # only once the run is under way: a bad option prints no empty bars

    def stage_start(self, trial, stage, n_labeled):
        self.progress.update(self.stage_task, info=f"trial {trial + 1}/{self.config.trials}, "
                                                   f"stage {stage + 1}/{self.config.stages}, {n_labeled} labels")
        self.progress.reset(self.epoch_task, total=self.config.train.epochs, info="training")

    def epoch(self, info):
        self.progress.update(self.epoch_task, completed=info.epoch, info=f"loss {info.loss:.4f}")

    def query_start(self, trial, stage, n_pool):
        self.progress.update(self.epoch_task, info=f"querying {self.config.budget} of {n_pool}")

    def stage_end(self, record):
        self.progress.advance(self.stage_task)
        from activecrl.evaluation.metrics import format_metric

        accuracy, aurc = (format_metric(record.metrics[m], m) for m in ("accuracy", "aurc"))
        self.progress.console.print(f"trial {record.trial + 1} stage {record.stage + 1}: {record.n_labeled} labels "
                                    f"→ accuracy {accuracy}%, AURC {aurc} ×10³")


def _summary_table(summary) -> Table:
    from activecrl.evaluation.metrics import CURVE_UNITS_NOTE, format_mean_std as pm

    spread = "mean ± std over trials" if summary.n_trials.max() > 1 else "one trial, so no spread"
    table = Table(title=f"{summary.label} on {summary.config.get('dataset')}: {spread}", caption=CURVE_UNITS_NOTE)
    for col in ("stage", "labels", "trials", "accuracy", "AURC", "E-AURC", "AUGRC", "ECE", "train s", "query s"):
        table.add_column(col, justify="right")
    m = summary.mean
    nan = float("nan")
    for i, n in enumerate(summary.n_labeled):
        # one trial has no spread: a NaN std prints the value alone rather than a misleading ±0.00
        s = {k: (v if summary.n_trials[i] > 1 else v * nan) for k, v in summary.std.items()}
        table.add_row(str(i + 1), str(n), str(summary.n_trials[i]),
                      *(pm(m[k][i], s[k][i], k) for k in ("accuracy", "aurc", "eaurc", "augrc")),
                      pm(m['ece'][i], nan, 'ece'), f"{m['train_seconds'][i]:.1f}",
                      f"{m['query_seconds'][i]:.2f}")
    table.add_section()
    table.add_row("area", "", "", pm(summary.area_under_curve('accuracy'), nan, 'accuracy'),
                  pm(summary.area_under_curve('aurc'), nan, 'aurc'), "", "", "", "", "")
    return table


@app.command(cls=Command)
def plot(runs: list[Path] = typer.Argument(..., help="run folders of `activecrl run`"),
         output: Path = typer.Option(Path("curves.png"), "-o", "--output", help="image file to write")):
    """Plot accuracy and AURC against labeled-set size (mean ± std over trials) for each run."""
    from activecrl.al.runs import load_run, plot_curves

    path = plot_curves([load_run(r) for r in runs], output)
    console.print(f"wrote [bold]{path}[/]")


@app.command(cls=Command)
def summary(runs: list[Path] = typer.Argument(..., help="run folders of `activecrl run`")):
    """Per-stage table (mean ± std over trials) and the area under each budget curve."""
    from activecrl.al.runs import load_run
    from activecrl.evaluation.metrics import format_mean_std as pm

    loaded = [load_run(r) for r in runs]
    for s in loaded:
        _print_table(_summary_table(s))
    if len(loaded) > 1:
        table = Table(title="area under the budget curve (mean over the label range; ± std over trials, "
                            "none for one trial)")
        for col in ("run", "folder", "trials", "accuracy %", "AURC ×10³"):
            table.add_column(col)
        for s in loaded:
            acc, aurc = s.area_by_trial("accuracy"), s.area_by_trial("aurc")
            nan = float("nan")
            table.add_row(s.label, str(s.path), str(len(acc)),  # one trial: no spread, no ±
                          pm(acc.mean(), acc.std() if len(acc) > 1 else nan, "accuracy"),
                          pm(aurc.mean(), aurc.std() if len(aurc) > 1 else nan, "aurc"))
        _print_table(table)
        console.print("± is the spread over trials, not a test: for 95% intervals and paired significance tests "
                      "(penalty matrix) run [bold]activecrl compare " + " ".join(str(r) for r in runs) + " -o DIR[/]")


@app.command(cls=Command)
@config_command(OODConfig)
def ood(
    overrides: dict,
    out: Path = typer.Option(..., help="folder for ood.json and scores.npz"),
    config: Optional[str] = typer.Option(None, help="TOML file of these options; flags override it"),
    overwrite: bool = typer.Option(False, help="replace an existing result in --out"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log what the library does"),
):
    """Out-of-distribution detection with a trained model: writes ood.json and scores.npz."""
    from activecrl.core.io import prepare_out_dir
    from activecrl.evaluation.metrics import OOD_METRIC_NAMES
    from activecrl.ood import DETECTORS, run_ood, save_ood

    _setup_logging(verbose)
    config = build_config(OODConfig, _with_global_threads(overrides), config, ood.config_options)
    prepare_out_dir(out, marker="ood.json", overwrite=overwrite, create=False)  # fail before scoring
    with console.status("ood") as status:
        result = run_ood(config, progress=lambda msg: status.update(msg))
    save_ood(result, out, overwrite=True)
    detector = config.detector
    table = Table(title=f"{result.run_info['dataset']} vs {result.run_info['ood_set']} · {detector} · "
                        f"{result.run_info['trainer']} ({result.run_info['method']})",
                  caption=f"in %; {result.score_in.size} in / {result.score_out.size} out")
    for name in OOD_METRIC_NAMES:
        table.add_column(name, justify="right")
    table.add_row(*(f"{result.metrics[m] * 100:.2f}" for m in OOD_METRIC_NAMES))
    _print_table(table)
    if result.params:
        console.print("params: " + ", ".join(f"{k}={v}" for k, v in result.params.items() if k != "combiner_weights"))
    tuned = "[bold yellow]tuned on the test OOD set (paper protocol)[/]" if config.tune_on_test_ood else \
        f"tuned on {result.protocol.get('ood_tuning')}"
    if getattr(DETECTORS.get(detector), "tuned", False):  # a detector given as a factory says nothing
        console.print(tuned)
    for what, key in (("OOD set", "ood_conversion"), ("OOD tuning set", "ood_val_conversion")):
        if result.run_info.get(key):  # never convert silently: say what the model was shown
            console.print(f"[yellow]{what} converted[/]: {escape(result.run_info[key])}", soft_wrap=True)
    console.print(f"saved to [bold]{out}[/]")


@app.command(cls=Command)
def report(runs: list[Path] = typer.Argument(..., help="folders of `activecrl train` / `activecrl ood` runs"),
           output: Path = typer.Option(Path("report.md"), "-o", "--output", help="Markdown file to write")):
    """Paper-style tables (Table 1: train runs, Table 3: ood runs), mean ± std over seeds."""
    from activecrl.evaluation.report import write_report

    result, path = write_report(runs, output)
    for t in result.tables:
        table = Table(title=t.title, caption=t.caption)
        for i, col in enumerate(t.columns):
            table.add_column(col, justify="right" if i >= t.numeric_from else "left")
        for row in t.rows:
            table.add_row(*row)
        _print_table(table)
    console.print(f"wrote [bold]{path}[/]")


def accepted_names() -> dict[str, list[str]]:
    """What each command's option accepts by name (besides paths), exactly what its validation passes."""
    from activecrl.data import DATASETS
    from activecrl.methods import METHODS
    from activecrl.models import MODELS
    from activecrl.ood import DETECTORS
    from activecrl.strategies import STRATEGIES
    from activecrl.training.trainers import TRAINERS

    return {"train/run --dataset": DATASETS.names(), "train/run --model": MODELS.names(),
            "train --method": METHODS.names(), "train --trainer": TRAINERS.names(),
            "run --trainer": TRAINERS.names(), "run --strategy": STRATEGIES.names(),
            "ood --detector": DETECTORS.names()}


@app.command("list", cls=Command)
def list_registered():
    """Show the names each command accepts: datasets, models, methods, trainers, strategies, detectors."""
    table = Table(title="activecrl registries (plugins add names through entry points)")
    table.add_column("option")
    table.add_column("names")
    for option, names in accepted_names().items():
        table.add_row(option, ", ".join(names))
    _print_table(table)
    console.print(escape("Every option also takes a package.module:Name path; --model also takes timm:NAME (any "
                         "timm architecture, pip install -e '.[timm]'); linear and mlp train on --embeddings rows."))
    from activecrl.training.trainers import TRAINERS, trainer_description

    recipes = Table(title="trainers: what each is made of")
    recipes.add_column("trainer")
    recipes.add_column("loss + ingredients")
    for name in TRAINERS.names():
        recipes.add_row(name, escape(trainer_description(name)))
    _print_table(recipes)


@app.command(cls=Command)
@config_command(PretrainConfig)
def pretrain(
    overrides: dict,
    out: Path = typer.Option(..., help="folder for embeddings.npy, test_embeddings.npy, encoder.pt, config.json"),
    config: Optional[str] = typer.Option(None, help="TOML file (or preset name) of these options; flags override it"),
    overwrite: bool = typer.Option(False, help="replace the embeddings already in --out"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log what the library does"),
):
    """Label-free embeddings of every training image (k-means patch features or SimCLR), for `activecrl run
    --embeddings`."""
    from activecrl.embeddings.pretrain import pretrain as run_pretrain

    _setup_logging(verbose)
    config = build_config(PretrainConfig, overrides, config, pretrain.config_options)
    if config.trained_epochs is not None:
        with _epoch_progress(config.describe(), config.trained_epochs) as on_epoch:
            result = run_pretrain(config, out, overwrite=overwrite, progress=on_epoch)
    else:
        with console.status(config.describe()):
            result = run_pretrain(config, out, overwrite=overwrite)
    n, d = result.embeddings.shape
    console.print(f"{n} x {d} embeddings (L2-normalised) in [bold]{out / 'embeddings.npy'}[/] "
                  f"({result.train_seconds:.0f}s)")
    if result.knn_accuracy is not None:
        console.print(f"{config.knn_k}-NN test accuracy on the embeddings: {result.knn_accuracy * 100:.2f}% "
                      f"({result.knn_baseline}: {result.knn_accuracy_init * 100:.2f}%)")


@app.command(cls=Command)
@config_command(EmbedConfig)
def embed(
    overrides: dict,
    out: Path = typer.Option(..., help="folder for embeddings.npy, test_embeddings.npy, labels, config.json "
                                       "(reused when the backbone, weights, data and preprocessing are unchanged)"),
    config: Optional[str] = typer.Option(None, help="TOML file of these options; flags override it"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log what the library does"),
):
    """Embed every train and test image with a pretrained backbone (timm:NAME) or a `pretrain` encoder, for
    `activecrl run --embeddings OUT --model linear`."""
    _setup_logging(verbose)
    config = build_config(EmbedConfig, _with_global_threads(overrides), config, embed.config_options)
    if config.ray:
        from activecrl.embeddings.distributed import embed_on_ray as run_embed
    else:
        from activecrl.embeddings.embed import embed_from_config as run_embed
    with _EmbedProgress() as on_batch:
        result = run_embed(config, out, progress=on_batch)
    prep = result.fingerprint["preprocessing"]
    size = "their own size" if prep["input_size"] is None else f"{prep['input_size']}x{prep['input_size']} " \
                                                                 f"({prep['interpolation']})"
    norm = "raw 0-255 pixels" if prep["mean"] is None else \
        f"mean {_rounded(prep['mean'])}, std {_rounded(prep['std'])}"
    console.print(f"preprocessing: images at {size}, {prep['channels']} channel(s), {norm}; rows L2-normalised, "
                  f"stored as {config.dtype}")
    what = f"{result.n_train} train + {result.n_test} test rows of width {result.dim}"
    if result.reused:
        console.print(f"[bold]{out}[/] already holds these embeddings ({what}; same backbone, weights, data and "
                      f"preprocessing): reused, nothing computed")
    else:
        console.print(f"{what} in [bold]{out}[/] ({result.seconds:.1f}s, {result.images_per_s:.0f} images/s)")
    console.print(f"next: activecrl run --dataset {escape(config.dataset)} --embeddings {escape(str(out))} "
                  f"--model linear", soft_wrap=True)


def _rounded(values) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


class _EmbedProgress:
    """A rich progress bar per split (test, then train) with images/s, fed by embed's progress callback."""

    def __init__(self):
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]} images/s"), TimeElapsedColumn(), console=console)
        self.tasks: dict[str, int] = {}

    def __enter__(self):
        self.progress.start()
        return self.update

    def update(self, info) -> None:
        if info.split not in self.tasks:
            self.tasks[info.split] = self.progress.add_task(f"embed {info.split}", total=info.total, rate="-")
        self.progress.update(self.tasks[info.split], completed=info.done, rate=f"{info.images_per_s:.0f}")

    def __exit__(self, *exc):
        self.progress.stop()


@app.command(cls=Command)
def rescore(runs: list[Path] = typer.Argument(..., help="folders of `activecrl train` runs (with predictions.npz)"),
            bootstrap: Optional[int] = typer.Option(None, help="also store 95% bootstrap intervals (ci95) from this "
                                                               "many test-set resamples, e.g. 1000"),
            seed: Optional[int] = typer.Option(None, help="bootstrap seed (default: the run's training seed)")):
    """Add metrics newer than a saved train run (such as AUGRC) and bootstrap intervals to its metrics.json."""
    from activecrl.evaluation.bootstrap import rescore_runs

    blobs = rescore_runs(runs, n_resamples=bootstrap, seed=seed)
    for path, blob in zip(runs, blobs):
        _print_table(metrics_table(str(path), [(path.name, blob["metrics"])], ci95=blob.get("ci95")))
    console.print(f"updated metrics.json in {len(runs)} run folder(s)")


@app.command(cls=Command)
def compare(runs: list[Path] = typer.Argument(..., help="folders of `activecrl run` runs, in the order of the rows"),
            output: Path = typer.Option(..., "-o", "--output", help="folder for compare.json, penalty.png, curves.png")):
    """AUBC per run with 95% intervals over trials, and the pairwise penalty matrix (paired t-tests per stage)."""
    from activecrl.al.compare import compare_runs, write_compare
    from activecrl.evaluation.metrics import CURVE_UNITS

    result = compare_runs(runs)
    written = write_compare(result, output)
    table = Table(title="area under the budget curve: mean [95% bootstrap interval over trials]",
                  caption="accuracy in %, AURC ×10³; 'beaten' = penalty column mean (lower is better)")
    for col in ("run", "dataset", "trials", "AUBC accuracy", "AUBC AURC", "beaten"):
        table.add_column(col, justify="left" if col in ("run", "dataset") else "right")
    for j, run in enumerate(result.runs):
        acc, aurc = result.aubc[run.label], result.aubc_aurc[run.label]
        def fmt(area, metric):
            k, d = CURVE_UNITS[metric]
            return f"{area.mean * k:.{d}f}" + (f" [{area.ci95[0] * k:.{d}f}, {area.ci95[1] * k:.{d}f}]"
                                               if area.ci95 else "")

        beaten = result.column_means[j]
        table.add_row(run.label, run.dataset, str(len(acc.trials)), fmt(acc, "accuracy"), fmt(aurc, "aurc"),
                      "–" if beaten is None else f"{beaten:.2f}")
    _print_table(table)
    for note in result.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
    console.print("wrote " + ", ".join(f"[bold]{p}[/]" for p in written.values()))


def _run_help(name: str) -> str:
    """The help of a run option (an ``ALConfig`` field), for a command that takes it without the rest."""
    return ALConfig.__dataclass_fields__[name].metadata["help"]


@app.command(cls=Command)
def sweep(
    config: str = typer.Option(..., help="sweep TOML file (e.g. configs/sweeps/digits.toml): a run's options plus a [grid] "
                                         "table of lists; every combination runs"),
    out: Path = typer.Option(..., help="sweep folder: one run folder per grid point; rerun to continue"),
    address: Optional[str] = typer.Option(None, help="HOST:PORT of a Ray cluster (`ray start --head`); "
                                                     "default: a local Ray instance on this machine"),
    cpus_per_trial: float = typer.Option(1.0, help="CPUs per trial (its torch threads)"),
    gpus_per_trial: float = typer.Option(0.0, help="GPUs per trial; 0.25 lets 4 trials share one GPU"),
    track: Optional[list[str]] = typer.Option(None, metavar="STR,...", help=escape(
        _run_help("track") + "; one parent run, a child run per grid point (overrides the TOML's track)")),
    tracking_uri: Optional[str] = typer.Option(None, help=escape(_run_help("tracking_uri"))),
    verbose: bool = typer.Option(False, "--verbose", "-v", metavar=""),
):
    """Run every combination of a grid of run options on Ray: one task per (grid point, trial)."""
    from activecrl.al.sweep import load_sweep, run_sweep

    _setup_logging(verbose)
    tracking = {"track": split_list(track) or None, "tracking_uri": tracking_uri}  # over the sweep TOML's
    spec = load_sweep(config, tracking)
    try:
        with _SweepView(out) as view:
            statuses = run_sweep(spec, out, address=address, cpus_per_trial=cpus_per_trial,
                                 gpus_per_trial=gpus_per_trial, callbacks=view)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: recorded stages are saved; rerun the same command to continue")
        raise typer.Exit(130)
    for status in statuses:
        if status.error:
            console.print(f"[bold red]{escape(status.name)} failed:[/] {escape(status.error)}")
    finished = sum(s.state == "finished" for s in statuses)
    console.print(f"{finished} of {len(statuses)} grid points finished; run folders in [bold]{out}[/] "
                  f"(`activecrl summary {out}/*/`)")
    raise typer.Exit(0 if finished == len(statuses) else 1)


class _SweepView:
    """A live table of the grid: state, stages done and elapsed time per point."""

    STYLE = {"queued": "dim", "running": "cyan", "finished": "green", "failed": "bold red"}

    def __init__(self, out: Path):
        self.out, self.start = out, time.time()
        self.live = Live(console=console, auto_refresh=False, vertical_overflow="visible")

    def __enter__(self):
        self.live.start()
        return self

    def __exit__(self, *exc):
        self.live.stop()

    def update(self, statuses) -> None:
        counts = {state: sum(s.state == state for s in statuses) for state in self.STYLE}
        table = Table(title=f"sweep {self.out}: " + ", ".join(f"{n} {state}" for state, n in counts.items()) +
                      f" · {time.time() - self.start:.0f} s")
        for col in ("point", "state", "stages", "elapsed", "error"):
            table.add_column(col, justify="right" if col in ("stages", "elapsed") else "left")
        for s in statuses:
            table.add_row(escape(s.name), f"[{self.STYLE[s.state]}]{s.state}[/]", f"{s.stages_done}/{s.stages_total}",
                          "" if s.elapsed is None else f"{s.elapsed:.0f} s", escape(s.error or ""))
        self.live.update(table, refresh=True)


def main() -> None:
    """Entry point: run the app, turning user errors into one red line instead of a traceback."""
    try:
        app()
    except ActiveCRLError as exc:
        # a message may hold "[nan, ...]"; soft_wrap: a command or path in it is never broken across lines
        console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        raise SystemExit(2)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")  # run, train and sweep say what they saved
        raise SystemExit(130)
