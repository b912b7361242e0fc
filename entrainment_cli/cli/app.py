"""`entrain`: the root command; sub-commands live in their own modules."""

from __future__ import annotations

from typing import Annotated

import typer

from .. import __version__
from . import correlate, cot, plot, pretrain, qa, report

app = typer.Typer(
    name="entrain",
    help="What a language model's internals say about how hard an input is for it: "
    "hidden-state sparsity and token-confidence studies, each written to a run directory.",
    rich_markup_mode="rich",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_show_locals=False,
)
app.add_typer(qa.app, name="qa")
app.command(name="correlate")(correlate.correlate)
app.command(name="cot")(cot.cot)
app.command(name="plot")(plot.plot)
app.command(name="pretrain")(pretrain.pretrain)
app.command(name="report")(report.report)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"entrain {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Measure what a model's internals say about how hard an input is."""


def main() -> None:
    app()
