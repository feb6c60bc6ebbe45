"""The ``activecrl`` command: a thin typer/rich layer over the library.

Each command parses options, builds a config dataclass, calls one library function and renders
the result. Everything here can be done from a notebook with the same functions.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .cli_options import build_config, config_command
from .errors import ActiveCRLError
from .experiment import TrainRunConfig
from .loop import ALConfig
from .ood.run import OODConfig

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Deep active learning with confidence-aware training (CRL, Moon et al. 2020).")
console = Console()

PAPER_SCALE_NOTE = "AURC, E-AURC ×10³; NLL ×10; others in %"


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        console.print(f"activecrl {__version__}")
        raise typer.Exit()


@app.callback()
def _app(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
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


def metrics_table(title: str, rows: list[tuple[str, dict]], paper_scale: bool = True) -> Table:
    from .metrics import METRIC_NAMES, PAPER_SCALE

    table = Table(title=title, caption=PAPER_SCALE_NOTE if paper_scale else None)
    table.add_column("run")
    for name in METRIC_NAMES:
        table.add_column(name, justify="right")
    for label, metrics in rows:
        scale = PAPER_SCALE if paper_scale else {}
        table.add_row(label, *(f"{metrics[m] * scale.get(m, 1):.2f}" if paper_scale else f"{metrics[m]:.4f}"
                               for m in METRIC_NAMES))
    return table


@app.command()
@config_command(TrainRunConfig)
def train(
    overrides: dict,
    out: Path = typer.Option(..., help="run folder for metrics.json, predictions.npz, model.pt"),
    config: Optional[str] = typer.Option(None, help="TOML file (or preset name) of these options; flags override it"),
    overwrite: bool = typer.Option(False, help="replace an existing run in --out"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log what the library does"),
):
    """Train one model (or a comparison method's models) and report the eight confidence metrics on its test split."""
    from .experiment import save_train_run, train_and_evaluate
    from .io import prepare_out_dir
    from .methods import validate_method_config

    _setup_logging(verbose)
    config = build_config(TrainRunConfig, _with_global_threads(overrides), config, train.config_options)
    method, trainer, train_cfg = config.method, config.trainer, config.train
    validate_method_config(config)  # fail before training, not after
    prepare_out_dir(out, marker="metrics.json", overwrite=overwrite, create=False)  # fail before training
    label = trainer if method == "plain" else f"{method} ({trainer})"
    total = train_cfg.epochs * (config.members if method == "ensemble" else 1)
    with _epoch_progress(f"{config.model} / {label}", total) as on_epoch:
        result = train_and_evaluate(config, progress=on_epoch)
    save_train_run(result, out, overwrite=True)
    _print_table(metrics_table(f"{config.dataset} · {config.model} · {label} · {train_cfg.epochs} epochs "
                               f"({result.train_seconds:.0f}s, {result.threads_used} CPU thread(s))",
                               [(label, result.metrics)]))
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


@app.command()
@config_command(ALConfig, exclude={"train.seed"},  # each stage's training seed derives from (--seed, trial, stage)
                aliases={"warm_start": "--warm-start/--retrain"})
def run(
    overrides: dict,
    out: Optional[Path] = typer.Option(None, help="run folder (default runs/<dataset>-<strategy>-<trainer>-<time>)"),
    config: Optional[str] = typer.Option(None, help="preset name from configs/ or a TOML file; flags override it"),
    resume: bool = typer.Option(False, help="continue the run in --out from its last complete stage"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log what the library does"),
):
    """Run an active-learning experiment. With no options: a short offline demo on digits (seconds on a CPU)."""
    from .config import load_toml, merge
    from .loop import CONFIG_FILE, completed_stages, resume_command, resume_config, run_active_learning
    from .results import load_run, plot_curves

    _setup_logging(verbose)
    overrides = _with_global_threads(overrides)
    if resume:
        if out is None:
            raise ActiveCRLError("--resume needs --out: the folder of the run to continue")
        # the same options again are fine (the natural retry); different ones are refused by name
        al_config = resume_config(out, merge(load_toml(config) if config else {}, overrides))
    else:
        al_config = build_config(ALConfig, overrides, config, run.config_options)
    if out is None:
        out = Path("runs") / f"{al_config.dataset.replace('/', '_')}-{al_config.strategy.replace(':', '_')}-" \
                             f"{al_config.trainer}-{time.strftime('%Y%m%d-%H%M%S')}"
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
    console.print(f"results: [bold]{out / 'results.jsonl'}[/]   plot: [bold]{plot}[/]")


class _RichLoop:
    def __init__(self, config):
        from .loop import LoopCallbacks  # noqa: F401  (duck-typed; documented interface)

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
        self.progress.console.print(f"trial {record['trial'] + 1} stage {record['stage'] + 1}: "
                                    f"{record['n_labeled']} labels → accuracy {record['accuracy']:.4f}, "
                                    f"AURC {record['aurc'] * 1e3:.2f}")


def _pm(mean: float, std: float, n_trials: int, digits: int) -> str:
    # one trial has no spread: print the value alone rather than a misleading ±0.00
    return f"{mean:.{digits}f}" if n_trials <= 1 else f"{mean:.{digits}f}±{std:.{digits}f}"


def _summary_table(summary) -> Table:
    spread = "mean ± std over trials" if summary.n_trials.max() > 1 else "one trial, so no spread"
    table = Table(title=f"{summary.label} on {summary.config.get('dataset')}: {spread}", caption="AURC ×10³")
    for col in ("stage", "labels", "trials", "accuracy", "AURC", "E-AURC", "ECE", "train s", "query s"):
        table.add_column(col, justify="right")
    m, s = summary.mean, summary.std
    for i, n in enumerate(summary.n_labeled):
        k = int(summary.n_trials[i])
        table.add_row(str(i + 1), str(n), str(k),
                      _pm(m['accuracy'][i] * 100, s['accuracy'][i] * 100, k, 2),
                      _pm(m['aurc'][i] * 1e3, s['aurc'][i] * 1e3, k, 1),
                      _pm(m['eaurc'][i] * 1e3, s['eaurc'][i] * 1e3, k, 1),
                      f"{m['ece'][i] * 100:.2f}", f"{m['train_seconds'][i]:.1f}", f"{m['query_seconds'][i]:.2f}")
    table.add_section()
    table.add_row("area", "", "", f"{summary.area_under_curve('accuracy') * 100:.2f}",
                  f"{summary.area_under_curve('aurc') * 1e3:.1f}", "", "", "", "")
    return table


@app.command()
def plot(runs: list[Path] = typer.Argument(..., help="run folders of `activecrl run`"),
         output: Path = typer.Option(Path("curves.png"), "-o", "--output", help="image file to write")):
    """Plot accuracy and AURC against labeled-set size (mean ± std over trials) for each run."""
    from .results import load_run, plot_curves

    path = plot_curves([load_run(r) for r in runs], output)
    console.print(f"wrote [bold]{path}[/]")


@app.command()
def summary(runs: list[Path] = typer.Argument(..., help="run folders of `activecrl run`")):
    """Per-stage table (mean ± std over trials) and the area under each budget curve."""
    from .results import load_run

    loaded = [load_run(r) for r in runs]
    for s in loaded:
        _print_table(_summary_table(s))
    if len(loaded) > 1:
        table = Table(title="area under the budget curve (mean over the label range; ± std over trials, "
                            "none for one trial)")
        for col in ("run", "folder", "trials", "accuracy %", "AURC ×10³"):
            table.add_column(col)
        for s in loaded:
            acc, aurc = s.area_by_trial("accuracy") * 100, s.area_by_trial("aurc") * 1e3
            table.add_row(s.label, str(s.path), str(len(acc)), _pm(acc.mean(), acc.std(), len(acc), 2),
                          _pm(aurc.mean(), aurc.std(), len(aurc), 1))
        _print_table(table)


@app.command()
@config_command(OODConfig)
def ood(
    overrides: dict,
    out: Path = typer.Option(..., help="folder for ood.json and scores.npz"),
    config: Optional[str] = typer.Option(None, help="TOML file of these options; flags override it"),
    overwrite: bool = typer.Option(False, help="replace an existing result in --out"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log what the library does"),
):
    """Out-of-distribution detection with a trained model: writes ood.json and scores.npz."""
    from .io import prepare_out_dir
    from .ood import DETECTORS, run_ood, save_ood

    _setup_logging(verbose)
    config = build_config(OODConfig, overrides, config, ood.config_options)
    prepare_out_dir(out, marker="ood.json", overwrite=overwrite, create=False)  # fail before scoring
    with console.status("ood") as status:
        result = run_ood(config, progress=lambda msg: status.update(msg))
    save_ood(result, out, overwrite=True)
    from .metrics import OOD_METRIC_NAMES

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
    if DETECTORS.get(detector).tuned:
        console.print(tuned)
    for what, key in (("OOD set", "ood_conversion"), ("OOD tuning set", "ood_val_conversion")):
        if result.run_info.get(key):  # never convert silently: say what the model was shown
            console.print(f"[yellow]{what} converted[/]: {escape(result.run_info[key])}", soft_wrap=True)
    console.print(f"saved to [bold]{out}[/]")


@app.command()
def report(runs: list[Path] = typer.Argument(..., help="folders of `activecrl train` / `activecrl ood` runs"),
           output: Path = typer.Option(Path("report.md"), "-o", "--output", help="Markdown file to write")):
    """Paper-style tables (Table 1: train runs, Table 3: ood runs), mean ± std over seeds."""
    from .report import write_report

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
    from strategies import STRATEGIES

    from .data import DATASETS
    from .methods import METHODS
    from .models import MODELS
    from .ood import DETECTORS
    from .trainers import TRAINERS

    return {"train/run --dataset": DATASETS.names(), "train/run --model": MODELS.names(),
            "train --method": METHODS.names(), "train --trainer": TRAINERS.names(),
            "run --trainer": TRAINERS.names(), "run --strategy": STRATEGIES.names(),
            "ood --detector": DETECTORS.names()}


@app.command("list")
def list_registered():
    """Show the names each command accepts: datasets, models, methods, trainers, strategies, detectors."""
    table = Table(title="activecrl registries (plugins add names through entry points)")
    table.add_column("option")
    table.add_column("names")
    for option, names in accepted_names().items():
        table.add_row(option, ", ".join(names))
    _print_table(table)


def main() -> None:
    """Entry point: run the app, turning user errors into one red line instead of a traceback."""
    try:
        app()
    except ActiveCRLError as exc:
        # a message may hold "[nan, ...]"; soft_wrap: a command or path in it is never broken across lines
        console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        raise SystemExit(2)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: completed stages are saved; continue with --resume --out DIR")  # run says more
        raise SystemExit(130)
