"""Configs are the one source of options: every field is a flag and a TOML key, with help and defaults."""

import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
import typer
from typer.testing import CliRunner

from activecrl.cli import app as cli
from activecrl.cli.app import app
from activecrl.cli.options import config_command
from activecrl.core.config import config_options, find_config, from_dict, load_toml, preset_names
from activecrl.core.errors import ConfigError
from activecrl.methods.run import TrainRunConfig
from activecrl.al.loop import ALConfig
from activecrl.ood.run import OODConfig
from activecrl.embeddings.pretrain import PretrainConfig
from activecrl.training.config import TrainConfig

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()
COMMANDS = {"run": ALConfig, "train": TrainRunConfig, "ood": OODConfig, "pretrain": PretrainConfig}
# options a command derives itself instead of taking them (with the reason in cli.py)
DERIVED = {"run": {"train.seed"}}  # each stage's training seed comes from (--seed, trial, stage)


def _click_command(name):
    return typer.main.get_command(app).commands[name]


def _flags(name) -> set[str]:
    return {opt for p in _click_command(name).params for opt in (*p.opts, *p.secondary_opts)}


def _all_keys(cls, prefix=()):
    for f in dataclasses.fields(cls):
        nested = f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(nested):
            yield from _all_keys(type(nested), prefix + (f.name,))
        else:
            yield prefix + (f.name,), f


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_config_field_has_help_a_flag_and_a_toml_key(command):
    cls = COMMANDS[command]
    flags = _flags(command)
    by_key = {o.key: o for o in config_options(cls)}
    for path, f in _all_keys(cls):
        key = ".".join(path)
        assert f.metadata.get("help"), f"{cls.__name__}.{key} has no metadata help"
        if key in DERIVED.get(command, ()):
            continue
        option = by_key[key]
        assert "--" + option.flag.replace("_", "-") in flags, f"{command} has no flag for {key}"
        if not option.required:  # a TOML key: accepted, and lands where it belongs
            values = {}
            node = values
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = list(option.default) if isinstance(option.default, tuple) else option.default
            extra = {"run": "r", "ood": "noise"} if cls is OODConfig else {}
            built = from_dict(cls, {**extra, **values})
            target = built
            for part in path:
                target = getattr(target, part)
            assert target == option.default


def test_generated_options_reach_the_config_as_typed_values():
    seen = {}
    demo = typer.Typer()

    @demo.command()
    @config_command(ALConfig, aliases={"warm_start": "--warm-start/--retrain"})
    def go(overrides: dict, out: str = typer.Option("x")):
        seen.update(overrides, out=out)

    @demo.command()
    def other():
        pass

    result = runner.invoke(demo, ["go", "--epochs", "5", "--milestones", "0.25,0.5", "--milestones", "0.75",
                                  "--no-amp", "--retrain", "--pool-subset", "300", "--strategy-params", "weight=0.5",
                                  "--strategy-params", "name=far", "--train-seed", "3", "--out", "y"])
    assert result.exit_code == 0, result.output
    assert seen == {"train": {"epochs": 5, "milestones": (0.25, 0.5, 0.75), "amp": False, "seed": 3},
                    "warm_start": False, "pool_subset": 300, "strategy_params": {"weight": 0.5, "name": "far"},
                    "out": "y"}
    seen.clear()
    assert runner.invoke(demo, ["go"]).exit_code == 0
    assert seen == {"out": "x"}  # defaults are not overrides: a --config file keeps its values
    eager = typer.Typer()

    @eager.command()
    @config_command(TrainConfig)
    def fit(overrides: dict):
        seen.update(overrides)

    seen.clear()
    assert runner.invoke(eager, ["--epochs", "3", "--no-nesterov"]).exit_code == 0
    assert seen == {"epochs": 3, "nesterov": False} and fit.config_options[0].flag == "epochs"
    bad = runner.invoke(demo, ["go", "--milestones", "0.5,x"])
    assert isinstance(bad.exception, ConfigError) and "--milestones must be comma-separated numbers" in str(bad.exception)


class _Built(Exception):
    pass


@pytest.fixture
def captured(monkeypatch):
    """Run a command up to the config it builds (nothing trained, nothing written)."""
    configs = []
    original = cli.build_config

    def build(*args, **kwargs):
        configs.append(original(*args, **kwargs))
        raise _Built

    monkeypatch.setattr(cli, "build_config", build)

    def invoke(args):
        result = runner.invoke(app, args)
        assert isinstance(result.exception, _Built), (result.output, result.exception)
        return configs.pop() if configs else None

    return invoke


def test_run_epochs_keeps_the_run_batch_size_and_milestones(captured, tmp_path):
    config = captured(["run", "--epochs", "5"])
    assert (config.train.epochs, config.train.batch_size, config.train.milestones) == (5, 32, (0.6, 0.8))
    toml = tmp_path / "run.toml"
    toml.write_text("strategy = 'entropy'\n[train]\nepochs = 5\n")
    config = captured(["run", "--config", str(toml), "--crl-weight", "0.5"])
    assert config.strategy == "entropy"
    assert (config.train.epochs, config.train.batch_size, config.train.milestones, config.train.crl_weight) == \
        (5, 32, (0.6, 0.8), 0.5)
    # the library path too: a partial train dict updates the run default
    assert ALConfig.from_dict({"train": {"epochs": 5}}).train == TrainConfig(
        epochs=5, batch_size=32, milestones=(0.6, 0.8), schedule="onecycle", nesterov=True, weight_decay=5e-4)
    assert ALConfig(train={"lr": 0.05}).train.batch_size == 32


def test_command_line_overrides_the_config_file_for_train_and_ood(captured, tmp_path):
    toml = tmp_path / "train.toml"
    toml.write_text("model = 'small_cnn'\nmethod = 'aes'\nsnapshots = 4\n[train]\nepochs = 7\nbatch_size = 64\n")
    config = captured(["train", "--config", str(toml), "--snapshots", "3", "--lr", "0.05", "--out", str(tmp_path / "o")])
    assert (config.method, config.snapshots, config.train.epochs, config.train.batch_size, config.train.lr) == \
        ("aes", 3, 7, 64, 0.05)
    assert config.train.milestones == TrainConfig().milestones
    toml = tmp_path / "ood.toml"
    toml.write_text("run = 'runs/x'\nood = 'noise'\ndetector = 'odin'\ntemperatures = [1, 1000]\n")
    config = captured(["ood", "--config", str(toml), "--epsilons", "0,0.002", "--out", str(tmp_path / "o")])
    assert (config.run, config.detector, config.temperatures, config.epsilons) == \
        ("runs/x", "odin", (1.0, 1000.0), (0.0, 0.002))
    missing = runner.invoke(app, ["ood", "--ood", "noise", "--out", str(tmp_path / "o")])
    assert isinstance(missing.exception, ConfigError) and "--run is required" in str(missing.exception)


def test_a_train_key_at_the_top_level_says_where_it_belongs(tmp_path):
    toml = tmp_path / "bad.toml"
    toml.write_text("epochs = 5\nstages = 2\n")
    with pytest.raises(ConfigError, match=r"'epochs' is a TrainConfig option: put it under \[train\]") as info:
        from_dict(ALConfig, load_toml(toml))
    assert "unknown" not in str(info.value)
    with pytest.raises(ConfigError, match=r"unknown ALConfig option\(s\) \['stagez'\]"):
        from_dict(ALConfig, {"stagez": 2})


def test_help_shows_defaults_and_no_bool_placeholders():
    def text(args):
        result = runner.invoke(app, args, env={"COLUMNS": "200"}, terminal_width=200)
        assert result.exit_code == 0, result.output
        return re.sub(r"\s+", " ", result.output)

    for command in ("", "run", "train", "ood", "plot", "summary", "report", "list"):
        assert "<bool>" not in text([command, "--help"] if command else ["--help"])
    run_help, train_help = text(["run", "--help"]), text(["train", "--help"])
    assert re.search(r"--epochs .*?\[default: 20\]", run_help)  # the run's own default, not TrainConfig's
    assert re.search(r"--batch-size .*?\[default: 32\]", run_help)
    assert re.search(r"--milestones .*?\[default: 0.6,0.8\]", run_help)
    assert re.search(r"--warm-start --retrain .*?\[default: retrain\]", run_help)
    assert f"[default: {TrainRunConfig().train.epochs}]" in train_help
    assert "[default: msp]" in text(["ood", "--help"])


def _readme_commands():
    """Every `activecrl train|run|ood` command line in README.md and results/*/COMMANDS.md, variables filled."""
    for doc in [ROOT / "README.md", ROOT / "results" / "README.md", *sorted(ROOT.glob("results/*/COMMANDS.md"))]:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), flags=re.S):
            env = {}
            for line in block.replace("\\\n", " ").splitlines():
                line = line.strip()
                loop = re.match(r"for (\w+) in (\S+)", line)
                if loop:
                    env[loop.group(1)] = loop.group(2)  # the loop's first value
                assign = re.match(r'(\w+)="?([^"]*)"?$', line)
                if assign:
                    env[assign.group(1)] = re.sub(r"\$(\w+)", lambda m: env.get(m.group(1), m.group(0)),
                                                  assign.group(2))
                if line.startswith("activecrl ") and "..." not in line:
                    line = re.sub(r"\$(\w+)", lambda m: env.get(m.group(1), m.group(0)), line)
                    args = shlex.split(line, comments=True)[1:]
                    while args and args[0].startswith("--"):  # global options (--threads 1)
                        args = args[2:]
                    if args and args[0] in COMMANDS:
                        yield f"{doc.name}: {line}", args


READMES = list(_readme_commands())


def test_readme_has_commands_to_check():
    assert len(READMES) >= 15


@pytest.mark.parametrize("where,args", READMES, ids=[w for w, _ in READMES])
def test_readme_commands_parse(where, args, captured, monkeypatch):
    def saved(out):
        raise _Built

    from activecrl.al import loop

    monkeypatch.setattr(loop, "load_saved_config", saved)  # `run --resume` (resume_config) reads the saved config
    captured(args)


def test_presets_resolve_by_name_and_path():
    assert {"cifar10_paper", "cifar100_paper", "svhn_paper", "cifar10_shared_cpu"} <= set(preset_names())
    for name in preset_names():
        if "_train_" in name:  # a preset of `activecrl train`: the paper's classification schedule
            from activecrl.methods.run import TrainRunConfig

            assert from_dict(TrainRunConfig, load_toml(name)).train.epochs == 300
            continue
        config = from_dict(ALConfig, load_toml(name))
        assert config.train.milestones == (0.6, 0.8)
    assert load_toml("cifar10_paper.toml") == load_toml(ROOT / "configs" / "cifar10_paper.toml")
    with pytest.raises(ConfigError, match="presets: .*cifar10_paper"):
        find_config("nope")
    with pytest.raises(ConfigError):
        find_config("../README.md")


def test_saved_config_round_trips(tmp_path):
    config = ALConfig(strategy="entropy", strategy_params={"weight": 0.5}, train=TrainConfig(epochs=3))
    again = ALConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config


def test_presets_fall_back_to_the_checkout_when_configs_is_not_importable(monkeypatch):
    # an editable install made before configs/ was a package does not map it
    from activecrl.core import config as config_module

    def missing(name):
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(config_module.resources, "files", missing)
    assert "cifar10_paper" in preset_names()
    assert load_toml("cifar10_paper")["dataset"] == "cifar10"


def _can_build_wheels() -> bool:
    # the test extra installs setuptools>=70.1 (bdist_wheel built in); older ones need the wheel package
    try:
        major, minor = (int(p) for p in importlib.metadata.version("setuptools").split(".")[:2])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


@pytest.mark.skipif(not _can_build_wheels(), reason="building a wheel needs setuptools>=70.1 (pip install -e '.[test]')")
def test_presets_ship_in_the_wheel(tmp_path):
    # a non-editable install outside the repository: the presets come from the installed package
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in ("activecrl", "strategies", "configs"):
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, capture_output=True, cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("activecrl-*.whl"))
    target = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True,
                   capture_output=True, cwd=tmp_path)
    shutil.rmtree(src)  # nothing of the sources left to fall back on
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    code = ("import activecrl, activecrl.configs as configs; from activecrl.core.config import find_config, load_toml, preset_names; "
            "print(activecrl.__file__); print(configs.__file__); print(find_config('cifar10_paper')); "
            "print(preset_names()); print(load_toml('cifar10_paper')['train']['milestones'])")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=outside, capture_output=True, text=True,
                          env={**env, "PYTHONPATH": str(target)})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for line in lines[:3]:
        assert Path(line).resolve().is_relative_to(target.resolve()), lines
    assert "cifar10_shared_cpu" in lines[3] and lines[4] == "[0.6, 0.8]"
    # no generic top-level names in site-packages: a user's own strategies.py must not collide
    assert sorted(p.name for p in target.iterdir() if p.suffix != ".dist-info") == ["activecrl", "bin"]
    assert (target / "activecrl" / "strategies" / "base.py").is_file()


@dataclasses.dataclass
class _OtherTypes:
    where: Path | None = dataclasses.field(default=None, metadata={"help": "a folder"})
    mode: Literal["fast", "exact"] = dataclasses.field(default="fast", metadata={"help": "how"})
    sizes: tuple[int, ...] = dataclasses.field(default=(1, 2), metadata={"help": "sizes"})


def test_paths_literals_and_int_tuples_become_flags():
    seen = {}
    demo = typer.Typer()

    @demo.command()
    @config_command(_OtherTypes)
    def go(overrides: dict):
        seen.update(overrides)

    @demo.command()
    def other():
        pass

    result = runner.invoke(demo, ["go", "--where", "a/b", "--mode", "exact", "--sizes", "3,4"])
    assert result.exit_code == 0, result.output
    assert seen == {"where": Path("a/b"), "mode": "exact", "sizes": (3, 4)}
    text = re.sub(r"\s+", " ", runner.invoke(demo, ["go", "--help"], terminal_width=200).output)
    assert "how (fast | exact)" in text and "[default: 1,2]" in text
