"""Typer commands built from a config dataclass's fields: each option is declared once, on its
field (:mod:`entrainment_cli.options`), and every command gets ``--config FILE``."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from .. import options
from .common import command, reflow
from .help import PANELS, panel

CONFIG_HELP = (
    "YAML or TOML file of option values (keys as the option names, e.g. max_tokens or "
    "max-tokens); flags given here override it. A run's config.yaml runs the study again."
)


def _parameter(f: dataclasses.Field, tp: Any) -> inspect.Parameter:
    meta = f.metadata
    if meta.get("kind") == "list":
        tp, default = (str | None), meta["text"]
        if default is not None:
            tp = str
    else:
        default = f.default
    if meta["argument"]:
        info = typer.Argument(help=meta["help"], show_default=False, rich_help_panel="Data")
        default = inspect.Parameter.empty if default is None else default
    else:
        info = typer.Option(
            *meta["flags"],
            help=meta["help"],
            show_default=meta["show_default"],
            rich_help_panel=panel(f.name),
        )
    return inspect.Parameter(
        f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[tp, info]
    )


def _ordered(cls: type) -> list[dataclasses.Field]:
    """The options in --help order: by panel (data, model, measurement, output, scale-out,
    vLLM), in declaration order within one."""
    fields = options.option_fields(cls)
    return sorted(fields, key=lambda f: PANELS.index(panel(f.name)))


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether the option was given (on the command line or by its environment variable).
    By name: Typer ships its own copy of click, whose ParameterSource is not click's."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def build_command(
    cls: type, action: Callable[[Any], None], help: str, study: str | None = None
) -> Callable[..., None]:
    """A Typer callback whose options are the fields of ``cls``; it builds the config
    (defaults < the resumed run's config.yaml, for the ``study`` command < ``--config`` file <
    flags given) and calls ``action`` with it."""
    types = options.field_types(cls)
    params = [
        inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context),
        *(_parameter(f, types[f.name]) for f in _ordered(cls)),
        inspect.Parameter(
            "config",
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                Path | None,
                typer.Option(help=CONFIG_HELP, show_default=False, rich_help_panel="Output"),
            ],
        ),
    ]

    @command
    def callback(ctx: typer.Context, config: Path | None = None, **values: Any) -> None:
        given = {name for name in values if _given(ctx, name)}
        action(options.build(cls, values, given, config, study))

    callback.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    callback.__doc__ = reflow(help)
    return callback
