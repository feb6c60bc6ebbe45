"""Typer options generated from the config dataclasses, so a config field is a flag by itself.

``@config_command(ALConfig)`` under ``@app.command()`` on ``f(overrides, *, out, ...)`` adds one
option per field of the config (nested configs flattened: ``train.epochs`` is ``--epochs``),
with the field's ``metadata["help"]`` as help and the command's effective default shown. Flags
are the field names with dashes; bools are ``--x/--no-x``; tuples take comma lists or repeated
options; dicts take repeated ``KEY=VALUE``. The command receives only what was typed, as a
nested dict (``{"train": {"epochs": 5}}``), and ``build_config`` lays it over a ``--config``
TOML over the config's defaults (``activecrl.core.config``).
"""

from __future__ import annotations

import functools
import inspect
import re
import shutil
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union

import typer
import typer.core
from rich.markup import escape  # typer renders help as rich markup: "[train]" must stay text

from activecrl.core.config import ConfigOption, config_options, from_dict, load_toml, merge, set_path
from activecrl.core.errors import ConfigError


class _FlagsWithoutType:
    """typer's help prints "<bool>" after a flag as if it took a value; a flag takes none, so its
    ``metavar`` is empty (config flags get it in :func:`_parameter`; ``--help`` here)."""

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


#: Terminals narrower than this get click's plain help: typer's rich panels give the help text only
#: the width left of three flag columns, cut flags and defaults ("…") and wrap a few words per line.
RICH_HELP_MIN_WIDTH = 120


class _ReadableHelp:
    """Help that reads at any width: typer's rich panels on wide terminals, click's plain layout
    (flags, then the help wrapped to the terminal) on narrower ones; docstrings wrapped in the
    source are one paragraph in the command list."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.help:  # a docstring's line breaks inside a paragraph are the source's, not the text's
            self.help = re.sub(r"(?<!\n)\n(?!\n)\s*", " ", inspect.cleandoc(self.help))

    def format_help(self, ctx, formatter):
        if shutil.get_terminal_size().columns >= RICH_HELP_MIN_WIDTH:
            return super().format_help(ctx, formatter)
        mode, self.rich_markup_mode = self.rich_markup_mode, None
        try:
            super().format_help(ctx, formatter)
        finally:
            self.rich_markup_mode = mode
        # the help texts are escaped for rich markup ("\[train]"); plain text shows them as written.
        # Printed here, as typer's rich help is: `activecrl` without arguments shows help only so
        text = "".join(formatter.buffer).replace("\\[", "[")
        formatter.buffer.clear()
        typer.echo(text.rstrip("\n"))

    def format_options(self, ctx, formatter):
        """The plain help's options, in the panels the rich help groups them by ("Training options ...")."""
        if isinstance(self, typer.core.TyperGroup):  # its options, then its commands (format_commands)
            return super().format_options(ctx, formatter)
        panels: dict[str, list] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                panels.setdefault(getattr(param, "rich_help_panel", None) or "Options", []).append(record)
        for panel, rows in panels.items():
            with formatter.section(panel):
                formatter.write_dl(rows)


class Command(_ReadableHelp, _FlagsWithoutType, typer.core.TyperCommand):
    """The command class of the ``activecrl`` commands (``@app.command(cls=Command)``)."""


class Group(_ReadableHelp, _FlagsWithoutType, typer.core.TyperGroup):
    """The group class of the ``activecrl`` app (``typer.Typer(cls=Group)``)."""

    def format_commands(self, ctx, formatter):
        """The plain help's command list: each command's first sentence whole, wrapped (click cuts it
        to one line with "...")."""
        commands = [(name, self.get_command(ctx, name)) for name in self.list_commands(ctx)]
        rows = [(name, cmd.get_short_help_str(limit=10**6)) for name, cmd in commands if cmd and not cmd.hidden]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _unwrap(tp) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (tp, False)."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _kind(option: ConfigOption) -> tuple[str, Any]:
    """(kind, element type): kind is bool | scalar | sequence | mapping."""
    tp, _ = _unwrap(option.type)
    origin = typing.get_origin(tp)
    if tp is bool:
        return "bool", bool
    if tp in (int, float, str, Path):
        return "scalar", tp
    if origin is Literal:
        return "scalar", type(typing.get_args(tp)[0])
    if origin in (tuple, list):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis] or [str]
        return "sequence", args[0]
    if origin is dict or tp is dict:
        return "mapping", str
    raise TypeError(f"config option {option.key} has type {option.type!r}; the CLI maps bool, int, float, str, "
                    "Path, Literal, X | None, tuple[X, ...] and dict fields: use one of those")


def _parse_literal(text: str) -> Any:
    """A TOML value (3, 0.5, true, "x") or, failing that, the text itself."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def split_list(values) -> list[str]:
    """The items of a list option: comma-separated, the option repeated, or both (``--track mlflow,tensorboard``)."""
    return [v for text in values or () for v in re.split(r"[,\s]+", text.strip()) if v]


def _convert(option: ConfigOption, value: Any) -> Any:
    kind, element = _kind(option)
    flag = option.dashed
    if kind == "sequence":
        items = split_list(value)
        try:
            return tuple(element(v) for v in items)
        except ValueError:
            what = "numbers" if element in (int, float) else f"{element.__name__} values"
            raise ConfigError(f"{flag} must be comma-separated {what} (e.g. {flag} 1,10,100 or the option "
                              f"repeated), got {','.join(value)!r} instead") from None
    if kind == "mapping":
        out = {}
        for text in value:
            key, sep, raw = text.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"{flag} must be KEY=VALUE (repeat the option for more), got {text!r} instead")
            out[key.strip()] = _parse_literal(raw.strip())
        return out
    return value


def _parameter(option: ConfigOption, name: str, aliases: dict[str, str]) -> inspect.Parameter:
    kind, element = _kind(option)
    default = None if option.required else option.default
    help_text = option.help
    if option.required:
        help_text += " (required: here or in --config)"
    tp, _ = _unwrap(option.type)
    if typing.get_origin(tp) is Literal:
        help_text += f" ({' | '.join(map(str, typing.get_args(tp)))})"
    decls = aliases.get(option.key, option.dashed)
    extra: dict[str, Any] = {}
    if kind == "bool":
        if "/" not in decls:
            decls = f"{decls}/--no-{decls[2:]}"
        annotation = Optional[bool]
        extra["metavar"] = ""  # a flag takes no value: show no type (typer's help would print "<bool>")
    elif kind == "scalar":
        annotation = Optional[element]
    else:
        annotation = Optional[list[str]]
        extra["metavar"] = "KEY=VALUE" if kind == "mapping" else f"{element.__name__.upper()},..."
        default = [",".join(format(v, ".6g") if isinstance(v, float) else str(v) for v in default)] \
            if kind == "sequence" and default else None
    title = {"train": "Training"}.get(option.section, str(option.section).capitalize())
    panel = f"{title} options (the [{option.section}] table of --config)" if option.section else None
    info = typer.Option(default, decls, help=escape(help_text), show_default=default is not None,
                        rich_help_panel=escape(panel) if panel else None, **extra)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation)


def build_config(cls, overrides: dict[str, Any], config: str | None, options: list[ConfigOption]):
    """``cls`` from its defaults, updated by the ``--config`` TOML, updated by ``overrides`` (what was typed)."""
    values = merge(load_toml(config) if config else {}, overrides)
    for option in options:
        if option.required and _get_path(values, option.path) is None:
            raise ConfigError(f"{option.dashed} is required: {option.help} "
                              f"(or set {option.key} = ... in the --config file)")
    return from_dict(cls, values)


def _get_path(values: dict, path: tuple[str, ...]) -> Any:
    for key in path:
        values = values.get(key) if isinstance(values, dict) else None
    return values


def with_config_options(cls, func: Callable, *, exclude=frozenset(), aliases: dict[str, str] | None = None):
    """``func(overrides, **cli_only)`` as a typer callback with one option per option of config ``cls``;
    ``overrides`` holds only what was typed, nested like the config (``{"train": {"epochs": 5}}``).
    ``func.config_options`` (and the callback's) become the options, for :func:`build_config`."""
    options = config_options(cls, exclude)
    aliases = aliases or {}
    signature = inspect.signature(func)
    hints = typing.get_type_hints(func)
    own = list(signature.parameters.values())[1:]  # the first one receives the overrides
    names = {"__".join(o.path): o for o in options}
    clash = set(names) & {p.name for p in own}
    if clash:
        raise TypeError(f"{func.__name__}: options {sorted(clash)} are both config fields and CLI-only options")
    params = [_parameter(o, name, aliases) for name, o in names.items()]
    params += [p.replace(annotation=hints.get(p.name, p.annotation), kind=inspect.Parameter.KEYWORD_ONLY)
               for p in own]
    for p in params:  # the command's own flags (--overwrite, --verbose) show no type either
        if p.annotation is bool and getattr(p.default, "metavar", "") is None:
            p.default.metavar = ""
    params.append(inspect.Parameter("_typer_context", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context))

    @functools.wraps(func)
    def command(_typer_context: typer.Context, **kwargs):
        values: dict[str, Any] = {}
        for name, option in names.items():
            value = kwargs.pop(name)
            # only what the user typed: a default must not override the --config file
            source = _typer_context.get_parameter_source(name)
            if getattr(source, "name", None) in ("COMMANDLINE", "ENVIRONMENT"):
                set_path(values, option.path, _convert(option, value))
        return func(values, **kwargs)

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    del command.__wrapped__  # typer must read the generated signature, not func's
    func.config_options = command.config_options = options
    return command


def config_command(cls, *, exclude: set[str] = frozenset(), aliases: dict[str, str] | None = None):
    """Decorate ``f(overrides: dict, **cli_only)`` (under ``@app.command()``) with one typer option per
    option of config dataclass ``cls``.

    ``exclude``: option keys (``"train.seed"``) the command derives itself; ``aliases``: option
    key -> typer declaration for names kept for compatibility (``"--warm-start/--retrain"``).
    """
    return lambda func: with_config_options(cls, func, exclude=exclude, aliases=aliases)
